//! What `proxy.metrics_listen` serves (docs/operations.md, "Health and readiness"):
//! Prometheus text at `/metrics` (the default registry, with the `process_*` series),
//! `/healthz` (`200` while the process serves) and `/readyz` (`200` only when the keys
//! are loaded, an upstream server is healthy and the gateway is not draining, else
//! `503` with the reason). Every other path is `404`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use crate::keys::KeyStore;
use crate::upstreams::Upstreams;

/// Why the gateway is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// No verification keys yet (`jwks_url` or `oidc_issuer` before its first fetch).
    KeysUnavailable,
    /// Every upstream server fails its health check.
    NoHealthyUpstream,
    /// SIGTERM or a graceful upgrade: open requests are draining.
    Draining,
}

impl NotReady {
    /// The reason's code in the `503` body.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::KeysUnavailable => "keys_unavailable",
            NotReady::NoHealthyUpstream => "no_healthy_upstream",
            NotReady::Draining => "draining",
        }
    }
}

/// The probes' view of the gateway.
#[derive(Debug, Clone)]
pub struct Probes {
    /// The verification keys.
    pub keys: Arc<KeyStore>,
    /// The upstream servers and their health.
    pub upstreams: Upstreams,
    /// Set once shutdown (SIGTERM, SIGQUIT) began.
    pub draining: Arc<AtomicBool>,
}

impl Probes {
    /// Ready, or the first reason it is not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            return Err(NotReady::Draining);
        }
        if !self.keys.available() {
            return Err(NotReady::KeysUnavailable);
        }
        match &self.upstreams {
            // A single server is not health-checked (docs/configuration.md,
            // `upstream.health_check`): requests go to it whatever its state.
            Upstreams::One(_) => Ok(()),
            Upstreams::Many(lb) => {
                let backends = lb.backends();
                if backends.get_backend().iter().any(|b| backends.ready(b)) {
                    Ok(())
                } else {
                    Err(NotReady::NoHealthyUpstream)
                }
            }
        }
    }

    /// The answer to `method path`.
    pub fn answer(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into());
        }
        if *method != Method::GET && *method != Method::HEAD {
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method_not_allowed"}"#.into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path {
            "/metrics" => metrics(),
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            _ => match self.readiness() {
                Ok(()) => json(StatusCode::OK, r#"{"ready":true}"#.into()),
                Err(why) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(r#"{{"ready":false,"reason":"{}"}}"#, why.as_str()),
                ),
            },
        }
    }

    /// The HTTP server for `metrics_listen`, gzip-compressing for clients that ask, as
    /// Prometheus scrapers do.
    pub fn server(self) -> HttpServer<Self> {
        let mut server = HttpServer::new_app(self);
        server.add_module(ResponseCompressionBuilder::enable(7));
        server
    }
}

fn json(status: StatusCode, body: String) -> Response<Vec<u8>> {
    respond(status, "application/json", body.into_bytes())
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = status;
    let headers = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    *r.body_mut() = body;
    r
}

/// The default registry in Prometheus' text format.
fn metrics() -> Response<Vec<u8>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&prometheus::gather(), &mut body) {
        Ok(()) => respond(StatusCode::OK, encoder.format_type(), body),
        Err(e) => {
            tracing::error!("cannot encode the metrics: {e}");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"metrics_unavailable"}"#.into(),
            )
        }
    }
}

#[async_trait]
impl ServeHttp for Probes {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        self.answer(&req.method, req.uri.path())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::keys::KeySource;

    fn probes(source: KeySource) -> Probes {
        let keys = KeyStore::load(source, &[jsonwebtoken::Algorithm::RS256])
            .unwrap_or_else(|(k, e)| panic!("{k}: {e}"));
        Probes {
            keys: Arc::new(keys),
            upstreams: Upstreams::One(SocketAddr::from(([127, 0, 0, 1], 1))),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    #[test]
    fn ready_once_keys_arrived_and_not_while_draining() {
        let p = probes(KeySource::JwksUrl("http://127.0.0.1:1/jwks".into()));
        assert_eq!(p.readiness(), Err(NotReady::KeysUnavailable));
        let r = p.answer(&Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body(), br#"{"ready":false,"reason":"keys_unavailable"}"#);
        p.keys.install(crate::keys::KeySet::default());
        assert_eq!(p.readiness(), Ok(()));
        assert_eq!(p.answer(&Method::GET, "/readyz").status(), StatusCode::OK);
        p.draining.store(true, Ordering::Release);
        assert_eq!(p.readiness(), Err(NotReady::Draining));
        assert_eq!(p.answer(&Method::GET, "/healthz").status(), StatusCode::OK);
    }

    #[test]
    fn only_the_three_paths_are_served() {
        let p = probes(KeySource::JwksUrl("http://127.0.0.1:1/jwks".into()));
        for path in ["/", "/health", "/metrics/", "/readyz/x", "/socket.io/"] {
            assert_eq!(
                p.answer(&Method::GET, path).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        assert_eq!(
            p.answer(&Method::POST, "/healthz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let m = p.answer(&Method::GET, "/metrics");
        assert_eq!(m.status(), StatusCode::OK);
        assert!(
            m.headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/plain")),
            "{:?}",
            m.headers()
        );
    }
}
