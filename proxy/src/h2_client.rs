//! The HTTP/2 client's side of a forwarded request ([`crate::forward`]): its body read
//! from the stream's DATA frames and written upstream by its length or as chunks, and
//! the answer written as an HTTP/2 response: the head through Pingora's HTTP/2 session,
//! the body relayed by its upstream framing into DATA frames (`StreamBody`), never
//! chunked (RFC 9113 8.1). Interim answers are not passed on (Pingora's HTTP/2 server
//! sends one response head per stream).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::HttpSession;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::body::{self, Encode, LAST_CHUNK, RelayError, Source, push_chunk};
use crate::decision::Answer;
use crate::exchange::Ctx;
use crate::forward::{Downstream, Unsent, UpstreamFailure};
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::h2_stream::{answer_stream, write_answer};
use crate::response_head::{Framed, Received, ResponseBody};
use crate::upstream_tls::UpstreamStream;

/// One HTTP/2 stream of a client, as the client side of its request.
pub(crate) struct H2Client {
    /// Pingora's session of the stream: the request's head and body, the response.
    pub(crate) session: HttpSession,
    /// The client's address, for the log.
    pub(crate) peer: Option<SocketAddr>,
}

impl Downstream for H2Client {
    fn client(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The head goes with the body's first bytes; each DATA frame is written as it
    /// comes (as a chunk when the request had no `Content-Length`).
    async fn send_body(
        &mut self,
        up: &mut UpstreamStream,
        head: Vec<u8>,
        framing: Framing,
        _expect_continue: bool,
        timeout: Duration,
    ) -> Result<(), Unsent> {
        let send = |e| Unsent::Upstream(UpstreamFailure::Send(e));
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut out = head;
        loop {
            let data = tokio::time::timeout(timeout, self.session.read_body_bytes())
                .await
                .map_err(|_| Unsent::ClientTooSlow)?;
            let Some(data) = data.map_err(|_| Unsent::ClientLeft)? else {
                break;
            };
            if framing == Framing::Chunked {
                push_chunk(&mut out, &data);
            } else {
                // HTTP/2 checks DATA against `Content-Length` (RFC 9113 8.1.1); so does
                // the gateway, since the upstream reads by it.
                left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(Unsent::Malformed)?;
                out.extend_from_slice(&data);
            }
            if !out.is_empty() {
                up.write_all(&out).await.map_err(send)?;
                up.flush().await.map_err(send)?;
                out.clear();
            }
        }
        match framing {
            Framing::Chunked => out.extend_from_slice(LAST_CHUNK),
            // The stream ended before its length.
            _ if left != 0 => return Err(Unsent::ClientLeft),
            _ => {}
        }
        up.write_all(&out).await.map_err(send)?;
        up.flush().await.map_err(send)
    }

    async fn interim(&mut self, _received: &Received, _ctx: &Ctx) {}

    async fn relay(
        &mut self,
        gw: &Gateway,
        up: &mut UpstreamStream,
        received: &Received,
        body: ResponseBody,
        ctx: &mut Ctx,
    ) -> bool {
        let (framed, source) = match body {
            ResponseBody::None => (Framed::Bodiless, None),
            ResponseBody::Length(n) => (Framed::Length(n), Some(Source::Length(n))),
            ResponseBody::Chunked => (Framed::Close, Some(Source::Chunked)),
            ResponseBody::Close => (Framed::Close, Some(Source::UntilClose)),
        };
        let Some(head) = received.header(framed) else {
            ctx.upstream_failed = true;
            return false;
        };
        ctx.status = received.status;
        let source = source.filter(|s| *s != Source::Length(0));
        let end = source.is_none();
        if self
            .session
            .write_response_header(Box::new(head), end)
            .is_err()
        {
            return false;
        }
        let Some(source) = source else {
            // Bytes behind a bodiless answer: the upstream is not kept.
            return received.after().is_empty();
        };
        let Some(writer) = self.session.take_response_body_writer() else {
            return false;
        };
        let left = match source {
            Source::Length(n) => Some(n),
            _ => None,
        };
        let mut sink = StreamBody {
            stream: writer,
            left,
        };
        let timeout = Some(gw.settings().upstream.read_timeout);
        let relayed = body::relay(
            up,
            received.after(),
            &mut sink,
            Vec::new(),
            source,
            Encode::Plain,
            timeout,
        );
        match relayed.await {
            Ok(relayed) => sink.end() && !relayed.extra,
            Err(e) => {
                // The head is out: the stream is reset when the session is dropped.
                if !matches!(e, RelayError::Write(_)) {
                    ctx.upstream_failed = true;
                    tracing::warn!(error = %e, "the upstream's answer body ended early");
                }
                false
            }
        }
    }

    async fn whole(&mut self, received: &Received, body: Vec<u8>, ctx: &mut Ctx) -> bool {
        let Some(head) = received.header(Framed::Length(body.len() as u64)) else {
            return false;
        };
        ctx.status = received.status;
        if self
            .session
            .write_response_header(Box::new(head), false)
            .is_err()
        {
            return false;
        }
        self.session
            .write_body(Bytes::from(body), true)
            .await
            .is_ok()
    }

    async fn refuse(&mut self, gw: &Gateway, req: &RequestHeader, answer: Answer, ctx: &mut Ctx) {
        answer_stream(gw, self, req, answer, ctx).await;
    }

    async fn unavailable(&mut self, gw: &Gateway, req: &RequestHeader, answer: &Answer) {
        write_answer(gw, &mut self.session, req, answer).await;
    }
}

/// A response body written into an HTTP/2 stream as DATA frames, each as large as the
/// stream's flow-control window allows (`h2` buffers nothing beyond it).
struct StreamBody {
    stream: SendStream<Bytes>,
    /// Bytes still to come of a body by its length: its last frame ends the stream.
    left: Option<u64>,
}

impl StreamBody {
    /// Ends the stream, unless its last frame did (an empty DATA frame with
    /// END_STREAM); `true` when it ended.
    fn end(&mut self) -> bool {
        match self.left {
            Some(0) => true,
            Some(_) => false,
            None => self.stream.send_data(Bytes::new(), true).is_ok(),
        }
    }
}

impl AsyncWrite for StreamBody {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let stream = &mut this.stream;
        let mut room = stream.capacity().min(buf.len());
        if room == 0 {
            // Capacity is asked for what is to be written, granted as the client's
            // window allows; the task waits for it.
            stream.reserve_capacity(buf.len());
            room = loop {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => continue,
                    Some(Ok(n)) => break n.min(buf.len()),
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                    None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                }
            };
        }
        // A body by its length ends with its last bytes: no empty frame after them.
        let left = this.left.map(|n| n.saturating_sub(room as u64));
        let data = Bytes::copy_from_slice(&buf[..room]);
        match stream.send_data(data, left == Some(0)) {
            Ok(()) => {
                this.left = left;
                Poll::Ready(Ok(room))
            }
            Err(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames go out as the connection's task writes them.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for H2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Client")
            .field("peer", &self.peer)
            .finish()
    }
}

impl std::fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamBody")
    }
}
