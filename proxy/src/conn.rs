//! A client connection as the gateway reads it: the request head is read by the
//! gateway itself ([`crate::tunnel::read_head`]) to decide which path carries the
//! request, and whatever was read ahead is replayed to that path before the socket's
//! next bytes. It wraps any Pingora [`Stream`] (plain TCP today, TLS later) behind the
//! same traits, so no code depends on the transport.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once while looking for a request head.
const SCRATCH_BYTES: usize = 8 * 1024;

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
}

impl Conn {
    /// Wraps an accepted connection.
    pub fn new(inner: Stream) -> Self {
        Conn {
            inner,
            ahead: Vec::new(),
            at: 0,
        }
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
