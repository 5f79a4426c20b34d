//! An upstream that records every request that reaches it and answers `200 ok`: the
//! witness for "the upstream saw nothing" and for what exactly was forwarded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::Request;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// The request target exactly as received (path and query).
    pub target: String,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked; at most 1 MiB is read).
    pub body: Vec<u8>,
}

impl Seen {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of a header (panics if repeated).
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} repeated: {all:?}");
        all.first().copied()
    }
}

/// A running recorder.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// Starts on a free port.
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        Self::serve(listener)
    }

    /// Starts on a given address (to bring a "down" upstream back).
    pub async fn start_on(addr: SocketAddr) -> Recorder {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Recorder {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let log = log.clone();
            async move {
                let (req, body) = {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20)
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    (Request::from_parts(parts, ()), body)
                };
                let s = Seen {
                    method: req.method().to_string(),
                    target: req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body,
                };
                log.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                "ok"
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The last request received (panics when there is none).
    pub fn last(&self) -> Seen {
        self.seen()
            .pop()
            .unwrap_or_else(|| panic!("the upstream received nothing"))
    }
}
