//! The HTTP/1 client's side of a forwarded request ([`crate::forward`]): its body
//! relayed from the connection by its framing (after `100 Continue` when it asked for
//! it), interim answers passed on, and the answer written as the gateway frames it
//! (a length, chunks, or the connection's close for an HTTP/1.0 client).

use std::net::SocketAddr;
use std::time::Duration;

use pingora::http::RequestHeader;
use tokio::io::AsyncWriteExt;

use crate::body::{self, Encode, RelayError, Source};
use crate::conn::Conn;
use crate::decision::Answer;
use crate::exchange::{Ctx, answer_it, connection_field, source_of};
use crate::forward::{Downstream, Unsent, UpstreamFailure};
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::response_head::{Framed, Received, ResponseBody};
use crate::upstream_tls::UpstreamStream;

impl Downstream for Conn {
    fn client(&self) -> Option<SocketAddr> {
        self.peer_addr()
    }

    async fn send_body(
        &mut self,
        up: &mut UpstreamStream,
        head: Vec<u8>,
        framing: Framing,
        expect_continue: bool,
        timeout: Duration,
    ) -> Result<(), Unsent> {
        if expect_continue {
            let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
            if self.write_all(cont).await.is_err() || self.flush().await.is_err() {
                return Err(Unsent::ClientLeft);
            }
        }
        let encode = if framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Plain
        };
        let source = source_of(framing);
        match body::relay(self, &[], up, head, source, encode, Some(timeout)).await {
            Ok(_) => Ok(()),
            Err(RelayError::Write(e)) => Err(Unsent::Upstream(UpstreamFailure::Send(e))),
            Err(RelayError::Malformed) => Err(Unsent::Malformed),
            Err(RelayError::TimedOut) => Err(Unsent::ClientTooSlow),
            Err(_) => Err(Unsent::ClientLeft),
        }
    }

    /// Passed on to an HTTP/1.1 client (an HTTP/1.0 one knows no interim answers).
    async fn interim(&mut self, received: &Received, ctx: &Ctx) {
        if ctx.http10 {
            return;
        }
        let mut out = Vec::with_capacity(received.head_len);
        received.render(&mut out, Framed::Bodiless, None);
        // A client that left is noticed when the final answer is written.
        let _ = self.write_all(&out).await;
        let _ = self.flush().await;
    }

    async fn relay(
        &mut self,
        gw: &Gateway,
        up: &mut UpstreamStream,
        received: &Received,
        body: ResponseBody,
        ctx: &mut Ctx,
    ) -> bool {
        let (framed, source, encode) = match (body, ctx.http10) {
            (ResponseBody::None, _) => (Framed::Bodiless, None, Encode::Plain),
            (ResponseBody::Length(n), _) => {
                (Framed::Length(n), Some(Source::Length(n)), Encode::Plain)
            }
            // An HTTP/1.0 client reads to the close.
            (ResponseBody::Chunked, true) => (Framed::Close, Some(Source::Chunked), Encode::Plain),
            (ResponseBody::Close, true) => (Framed::Close, Some(Source::UntilClose), Encode::Plain),
            // An HTTP/1.1 client gets chunks, and keeps its connection.
            (ResponseBody::Chunked, false) => {
                (Framed::Chunked, Some(Source::Chunked), Encode::Chunked)
            }
            (ResponseBody::Close, false) => {
                (Framed::Chunked, Some(Source::UntilClose), Encode::Chunked)
            }
        };
        if framed == Framed::Close {
            ctx.keep_alive = false;
        }
        ctx.status = received.status;
        let mut out = Vec::with_capacity(received.head_len + 256);
        received.render(&mut out, framed, connection_field(ctx));
        let Some(source) = source else {
            let written = self.write_all(&out).await.and(self.flush().await);
            if written.is_err() {
                ctx.keep_alive = false;
            }
            // Bytes behind a bodiless answer: the upstream is not kept.
            return written.is_ok() && received.after().is_empty();
        };
        let timeout = Some(gw.settings().upstream.read_timeout);
        match body::relay(up, received.after(), self, out, source, encode, timeout).await {
            Ok(relayed) => !relayed.extra,
            Err(e) => {
                // The head is out: the client learns of the failure by the close.
                ctx.keep_alive = false;
                if !matches!(e, RelayError::Write(_)) {
                    ctx.upstream_failed = true;
                    tracing::warn!(error = %e, "the upstream's answer body ended early");
                }
                false
            }
        }
    }

    async fn whole(&mut self, received: &Received, body: Vec<u8>, ctx: &mut Ctx) -> bool {
        ctx.status = received.status;
        let mut out = Vec::with_capacity(received.head_len + body.len() + 64);
        received.render(
            &mut out,
            Framed::Length(body.len() as u64),
            connection_field(ctx),
        );
        out.extend_from_slice(&body);
        if self.write_all(&out).await.is_err() || self.flush().await.is_err() {
            ctx.keep_alive = false;
            return false;
        }
        true
    }

    async fn refuse(&mut self, gw: &Gateway, req: &RequestHeader, answer: Answer, ctx: &mut Ctx) {
        answer_it(gw, self, req, Framing::None, answer, ctx).await;
    }

    async fn unavailable(&mut self, gw: &Gateway, req: &RequestHeader, answer: &Answer) {
        let origin = req.headers.get(http::header::ORIGIN);
        let bytes = answer.render(origin, &gw.settings().auth.cors_origins, Some("close"));
        let _ = self.write_all(&bytes).await;
        let _ = self.flush().await;
    }
}
