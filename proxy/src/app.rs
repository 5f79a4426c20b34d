//! Each accepted connection (docs/websockets.md): the gateway reads every request
//! head itself ([`head::read_head`], bounded in size and time, parsed once), hands a
//! WebSocket upgrade to its own tunnel ([`tunnel::carry`]), and carries every other
//! request itself ([`exchange::serve`]). Keep-alive connections come back here after
//! each request, so the next request's head (pipelined or not) and an upgrade after
//! earlier requests are read here too. An HTTP/2 connection (TLS with ALPN `h2`) is
//! framed by Pingora's HTTP/2 server, and each of its streams carried by the gateway's
//! own code ([`h2_stream::serve`]): the same decision, answers and upstream pool.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::conn::Conn;
use crate::exchange::{self, Next};
use crate::gateway::Gateway;
use crate::pool::Pool;
use crate::{h2_stream, head, tunnel};

/// The gateway's server application.
pub struct App {
    gateway: Arc<Gateway>,
    /// Kept-alive upstream connections, shared by HTTP/1 requests and HTTP/2 streams.
    pool: Arc<Pool>,
    /// What Pingora's HTTP/2 server hands each stream to.
    h2: Arc<Streams>,
}

/// The streams of HTTP/2 connections: Pingora's HTTP/2 server (its handshake, framing,
/// flow control and graceful `GOAWAY`) runs each in a task of its own and hands it
/// here; nothing else of Pingora's HTTP handling is used.
struct Streams {
    gateway: Arc<Gateway>,
    pool: Arc<Pool>,
}

#[async_trait]
impl HttpServerApp for Streams {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Only HTTP/2 streams come here ([`App::process_new`] hands nothing else).
        if let ServerSession::H2(stream) = session {
            h2_stream::serve(&self.gateway, &self.pool, stream).await;
        }
        None
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    /// An HTTP/1 connection, request after request: each head read by the gateway, an
    /// upgrade handed to the tunnel, every other request carried by [`exchange::serve`]
    /// (boxed, so that a connection waiting for its next head holds no request state).
    pub(crate) async fn serve_http1(&self, stream: Stream, shutdown: ShutdownWatch) {
        let mut conn = Box::new(Conn::new(stream));
        let mut kept = self.pool.for_client();
        loop {
            let head = match head::read_head(&mut conn).await {
                Ok(head) => head,
                Err(why) => {
                    tunnel::refuse_head(&self.gateway, &mut conn, why).await;
                    return;
                }
            };
            if head.upgrade {
                let (len, framing) = (head.len, head.framing);
                drop(kept);
                tunnel::carry(&self.gateway, conn, len, framing, head.request).await;
                return;
            }
            let draining = *shutdown.borrow();
            let serve = exchange::serve(&self.gateway, &mut kept, &mut conn, head, draining);
            if Box::pin(serve).await == Next::Close {
                let _ = conn.shutdown().await;
                return;
            }
        }
    }

    /// The application around a gateway.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let upstream = &gateway.settings().upstream;
        let pool = Arc::new(Pool::new(&upstream.servers, upstream.pool_idle));
        let h2 = Arc::new(Streams {
            gateway: gateway.clone(),
            pool: pool.clone(),
        });
        App { gateway, pool, h2 }
    }
}

#[async_trait]
impl ServerApp for App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            // HTTP/2 (offered by ALPN on TLS, docs/tls.md): Pingora's own HTTP/2 server,
            // every stream to [`h2_stream::serve`]. WebSockets are not carried over
            // HTTP/2 (no RFC 8441 extended CONNECT): browsers open an HTTP/1.1
            // connection for them, which comes through the branch below.
            return ServerApp::process_new(&self.h2, stream, shutdown).await;
        }
        // The connection leaves Pingora's per-connection task, which keeps its
        // listener's TLS handshake state inline (about 9 KiB with the `rustls` feature)
        // for as long as it runs: an idle keep-alive connection and a held WebSocket
        // keep only their own state (docs/performance.md "What a held WebSocket keeps").
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve_http1(stream, shutdown).await });
        None
    }
}
