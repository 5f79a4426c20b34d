//! A client connection as the gateway reads it: the request head is read by the
//! gateway itself ([`crate::head::read_head`]) to decide which path carries the
//! request, and whatever was read ahead is replayed to that path before the socket's
//! next bytes. It wraps any Pingora [`Stream`] (plain TCP today, TLS later) behind the
//! same traits, so no code depends on the transport.
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
        }
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

    /// Marks `n` bytes read ahead as consumed.
    pub fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.ahead.len());
        if self.at == self.ahead.len() {
            self.ahead = Vec::new();
            self.at = 0;
        }
    }

    /// Reads more from the socket into the read-ahead bytes; `0` at end of stream.
    /// The read goes into the worker thread's buffer and only what arrived is kept, so
    /// a connection waiting for its first byte holds no buffer at all.
    pub async fn read_ahead(&mut self) -> std::io::Result<usize> {
        if self.at > 0 {
            self.ahead.drain(..self.at);
            self.at = 0;
        }
        std::future::poll_fn(|cx| {
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
        })
        .await
    }

    /// The client's address, if it is an IP socket.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let ahead = self.ahead();
        if !ahead.is_empty() {
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            self.consume(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
