//! A client connection as the gateway reads it: the request head is read by the
//! gateway itself ([`crate::head::read_head`]) to decide which path carries the
//! request, and whatever was read ahead is replayed to that path before the socket's
//! next bytes. It wraps any Pingora [`Stream`] (plain TCP or TLS) behind the same
//! traits, so no code depends on the transport.
//!
//! What a reader behind the gateway may read is one message at a time (docs/request-handling.md "What
//! the gateway does to a request"): after the gateway read a head, [`Conn::deliver`]
//! lets through that head and its body by the framing the gateway parsed
//! ([`crate::framing`]), and nothing more. The bytes of a pipelined next request stay
//! here until the gateway reads their head itself (RFC 9112 9.3.2), and the bytes
//! behind an upgrade head stay here until the upstream switched protocols
//! ([`Conn::open_through`]).
//!
//! Writes on the HTTP path are coalesced here, as Pingora's own write buffer would:
//! its HTTP/1 writer sends a response head and body in separate writes and flushes
//! after them, so one `send` carries both. The buffer is taken at the connection's
//! first response and kept for the ones after it (one allocation per connection, as
//! Pingora's own buffer); a connection that never answered holds none, and a tunnel
//! frees it and writes straight through, so a held WebSocket keeps no write buffer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::{BadChunk, ChunkedEnd, Framing};
use crate::head::MAX_HEAD;

/// Bytes read at once while looking for a request head.
const SCRATCH_BYTES: usize = 8 * 1024;

/// Writes up to this size are gathered until a flush (one MSS on loopback's usual
/// 1500-byte MTU, Pingora's default write buffer); larger ones go straight out.
const COALESCE_BYTES: usize = 1460;

thread_local! {
    /// This worker thread's read buffer: borrowed only inside a poll, never across an
    /// await.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// A client connection with bytes read ahead.
#[derive(Debug)]
pub struct Conn {
    inner: Stream,
    /// Bytes read from `inner` and not yet consumed; emptied (and freed) once replayed.
    ahead: Vec<u8>,
    /// How much of `ahead` was consumed.
    at: usize,
    /// Written bytes not yet sent (at most [`COALESCE_BYTES`]); sent by a flush.
    out: Vec<u8>,
    /// Whether small writes are gathered into `out` (the HTTP path) or sent at once
    /// (a tunnel, which flushes after every write anyway).
    coalesce: bool,
    /// What a reader may still read of the current message.
    budget: Budget,
    /// Bytes at the start of the read-ahead ones that the budget already let through
    /// (scanned once, not yet read).
    cleared: usize,
}

/// What a reader may still read from a [`Conn`].
#[derive(Debug)]
enum Budget {
    /// Nothing: no head was delivered yet, or the message is complete. Reads report the
    /// end of the connection, or wait.
    Done,
    /// This many more bytes (the head, then a body by its length).
    Length(u64),
    /// The head's bytes, then a chunked body.
    HeadThenChunked(u64, ChunkedEnd),
    /// A chunked body, until its end.
    Chunked(ChunkedEnd),
    /// Everything: an upgraded connection.
    Through,
}

impl Conn {
    /// Wraps an accepted connection.
    pub fn new(inner: Stream) -> Self {
        Conn {
            inner,
            ahead: Vec::new(),
            at: 0,
            out: Vec::new(),
            coalesce: true,
            budget: Budget::Done,
            cleared: 0,
        }
    }

    /// Lets a reader read the next message: the head of `head_len` bytes at the start of
    /// the read-ahead bytes, then its body by `framing`, and nothing after it.
    pub fn deliver(&mut self, head_len: usize, framing: Framing) {
        let head = head_len as u64;
        self.cleared = 0;
        self.budget = match framing {
            Framing::None if head == 0 => Budget::Done,
            Framing::None => Budget::Length(head),
            Framing::Length(n) if head.saturating_add(n) == 0 => Budget::Done,
            Framing::Length(n) => Budget::Length(head.saturating_add(n)),
            // The head was consumed already: the body's chunks come first.
            Framing::Chunked if head == 0 => Budget::Chunked(ChunkedEnd::default()),
            Framing::Chunked => Budget::HeadThenChunked(head, ChunkedEnd::default()),
        };
    }

    /// Lets a reader read everything from now on (the upstream switched protocols).
    pub fn open_through(&mut self) {
        self.cleared = 0;
        self.budget = Budget::Through;
    }

    /// Clears more of the read-ahead bytes for the reader, by the budget; how many are
    /// cleared now.
    fn clear_ahead(&mut self) -> Result<usize, BadChunk> {
        if self.cleared > 0 {
            return Ok(self.cleared);
        }
        let avail = self.ahead.len() - self.at;
        let fresh = &self.ahead[self.at..];
        let n = match &mut self.budget {
            Budget::Done => 0,
            Budget::Through => avail,
            Budget::Length(left) => {
                let n = (*left).min(avail as u64);
                *left -= n;
                if *left == 0 {
                    self.budget = Budget::Done;
                }
                n as usize
            }
            Budget::HeadThenChunked(left, _) => {
                let n = (*left).min(avail as u64);
                *left -= n;
                if *left == 0 {
                    let Budget::HeadThenChunked(_, chunked) =
                        std::mem::replace(&mut self.budget, Budget::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.budget = Budget::Chunked(chunked);
                }
                n as usize
            }
            Budget::Chunked(chunked) => {
                let n = chunked.scan(fresh)?;
                if chunked.done() {
                    self.budget = Budget::Done;
                }
                n
            }
        };
        self.cleared = n;
        Ok(n)
    }

    /// The message is complete: reads from the socket only to notice its end, keeping
    /// what arrives (the next request, read by the gateway later) up to [`MAX_HEAD`].
    fn poll_after_message(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.ahead.len() - self.at <= MAX_HEAD {
            match self.poll_read_ahead(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Pending
    }

    /// From now on every write goes straight to the socket: for a tunnel, so that a
    /// held connection keeps no write buffer. Call it with nothing left to flush.
    pub fn write_through(&mut self) {
        debug_assert!(self.out.is_empty(), "unflushed bytes before write_through");
        self.coalesce = false;
        self.out = Vec::new();
    }

    /// Sends what [`Self::out`] holds.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.out.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The bytes read ahead and not yet consumed.
    pub fn ahead(&self) -> &[u8] {
        &self.ahead[self.at..]
    }

    /// Marks `n` bytes read ahead as consumed (by the gateway's own reader).
    pub fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.ahead.len());
        self.cleared = self.cleared.saturating_sub(n);
        if self.at == self.ahead.len() {
            self.ahead = Vec::new();
            self.at = 0;
        }
    }

    /// Marks `n` bytes that a reader read (cleared by the budget) as consumed.
    fn consume_delivered(&mut self, n: usize) {
        self.at += n;
        if self.at == self.ahead.len() {
            self.ahead = Vec::new();
            self.at = 0;
        }
    }

    /// Reads more from the socket into the read-ahead bytes; `0` at end of stream.
    /// The read goes into the worker thread's buffer and only what arrived is kept, so
    /// a connection waiting for its first byte holds no buffer at all.
    pub async fn read_ahead(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_ahead(cx)).await
    }

    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.at > 0 && self.at == self.ahead.len() {
            self.ahead.clear();
            self.at = 0;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let read = buf.filled();
                    self.ahead.extend_from_slice(read);
                    Poll::Ready(Ok(read.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// The client's address, if it is an IP socket.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
    }
}

/// What a reader behind the gateway reads: the read-ahead bytes and then the socket,
/// never past the message the budget lets through.
impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let cleared = this
                .clear_ahead()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if cleared > 0 {
                let n = cleared.min(buf.remaining());
                buf.put_slice(&this.ahead[this.at..this.at + n]);
                this.cleared -= n;
                this.consume_delivered(n);
                return Poll::Ready(Ok(()));
            }
            match &this.budget {
                Budget::Done => return this.poll_after_message(cx),
                // Nothing read ahead: straight from the socket, by the budget.
                Budget::Through => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Budget::Length(left) if this.ahead.len() == this.at => {
                    let left = usize::try_from(*left).unwrap_or(usize::MAX);
                    let room = buf.remaining().min(left).min(SCRATCH_BYTES);
                    let n = ready!(SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let mut limited = ReadBuf::new(&mut scratch[..room]);
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                        buf.put_slice(limited.filled());
                        Poll::Ready(Ok::<_, std::io::Error>(limited.filled().len()))
                    }))?;
                    if let Budget::Length(left) = &mut this.budget {
                        *left -= n as u64;
                        if *left == 0 {
                            this.budget = Budget::Done;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                _ => {
                    if ready!(this.poll_read_ahead(cx))? == 0 {
                        // The client closed mid-message: the reader sees the end.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if !this.coalesce {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.out.len() + buf.len() > COALESCE_BYTES {
            ready!(this.poll_send_out(cx))?;
        }
        if buf.len() >= COALESCE_BYTES {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(COALESCE_BYTES);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Conn {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Conn {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Conn {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Conn {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Conn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Conn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Peeking is only used for HTTP/2 prior knowledge, which this listener does not offer.
impl Peek for Conn {}
