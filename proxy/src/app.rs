//! Each accepted connection (docs/websockets.md): the gateway reads every request
//! head itself ([`head::read_head`], bounded in size and time, parsed once), hands a
//! WebSocket upgrade to its own tunnel ([`tunnel::carry`]), and gives every other
//! request to Pingora's HTTP path: its head replayed and its body by the framing the
//! gateway read, never a byte more ([`Conn::deliver`]). Keep-alive connections come
//! back here after each request, so the next request's head (pipelined or not) and an
//! upgrade after earlier requests are read here too. An HTTP/2 connection (TLS with ALPN `h2`) goes to
//! Pingora's HTTP/2 server whole.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::conn::Conn;
use crate::gateway::Gateway;
use crate::http_path::HttpPath;
use crate::{head, tunnel};

/// The gateway's server application.
pub struct App {
    gateway: Arc<Gateway>,
    http: Arc<HttpProxy<HttpPath>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    /// The application around a gateway and its Pingora HTTP proxy.
    pub fn new(gateway: Arc<Gateway>, http: HttpProxy<HttpPath>) -> Self {
        App {
            gateway,
            http: Arc::new(http),
        }
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
            // every stream through the same HTTP path. WebSockets are not carried over
            // HTTP/2 (no RFC 8441 extended CONNECT): browsers open an HTTP/1.1
            // connection for them, which comes through the branch below.
            return ServerApp::process_new(&self.http, stream, shutdown).await;
        }
        let mut conn = Box::new(Conn::new(stream));
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            let head = match head::read_head(&mut conn).await {
                Ok(head) => head,
                Err(why) => {
                    tunnel::refuse_head(&self.gateway, &mut conn, why).await;
                    return None;
                }
            };
            if let Some(req) = head.upgrade {
                // Boxed: a connection waiting for its next head does not carry the
                // tunnel's state inline.
                Box::pin(tunnel::carry(
                    &self.gateway,
                    conn,
                    head.len,
                    head.framing,
                    req,
                ))
                .await;
                return None;
            }
            // Pingora's reader gets this one message, and nothing after it.
            conn.deliver(head.len, head.framing);
            let mut session = ServerSession::new_http1(conn);
            match persistent.take() {
                Some(p) => p.apply_to_session(&mut session),
                None => session.set_keepalive((!*shutdown.borrow()).then_some(60)),
            }
            let reused = self.http.process_new_http(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            persistent = settings;
            // The stream comes back as it was handed over: our connection.
            conn = stream.into_any().downcast::<Conn>().ok()?;
        }
    }

    async fn cleanup(&self) {
        self.http.http_cleanup().await;
    }
}
