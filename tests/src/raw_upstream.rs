//! A raw HTTP/1.1 upstream: it keeps every connection alive, parses each request head
//! (`httparse`) and body (`Content-Length` or chunked) in a loop, records what it parsed,
//! answers every request with one fixed response and goes on reading. The witness for
//! bytes smuggled behind a request on one connection: an upstream built on a full HTTP
//! library may refuse or hide what a plain keep-alive server would act on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The answer of [`RawUpstream::start`] to every request.
pub const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/// One request as parsed on the upstream's side of a connection.
#[derive(Debug, Clone)]
pub struct RawSeen {
    /// Which accepted connection it came on (0, 1, ...).
    pub conn: usize,
    /// Method.
    pub method: String,
    /// The request target exactly as received.
    pub target: String,
    /// Headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawSeen {
    /// Every value of a header (any letter case of its name).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, Default)]
struct State {
    seen: Mutex<Vec<RawSeen>>,
    accepted: AtomicUsize,
    ended: AtomicUsize,
}

/// A running raw upstream.
#[derive(Debug, Clone)]
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl RawUpstream {
    /// Starts on a free port, answering [`NOT_FOUND`] to every request.
    pub async fn start() -> RawUpstream {
        Self::answering(NOT_FOUND).await
    }

    /// Starts on a free port, answering `response` (a complete HTTP/1.1 response) to
    /// every request.
    pub async fn answering(response: &'static [u8]) -> RawUpstream {
        let (listener, addr) = crate::procs::local_listener().await;
        let state: Arc<State> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    serve(stream, n, &state, response).await;
                    state.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawUpstream { addr, state }
    }

    /// Every request parsed so far, in order of arrival.
    pub fn seen(&self) -> Vec<RawSeen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` until every accepted connection has ended (its peer closed
    /// it, so nothing more can arrive on it); false when some are still open.
    pub async fn wait_all_ended(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.state.ended.load(Ordering::SeqCst) >= self.accepted() {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads more bytes into `buf`; false at the end of the stream or on an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn serve(mut stream: TcpStream, conn: usize, state: &State, response: &[u8]) {
    let mut buf = Vec::new();
    loop {
        // One head.
        let (head_len, mut seen, framing) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let seen = RawSeen {
                        conn,
                        method: req.method.unwrap_or_default().to_string(),
                        target: req.path.unwrap_or_default().to_string(),
                        headers,
                        body: Vec::new(),
                    };
                    let chunked = seen
                        .all("transfer-encoding")
                        .iter()
                        .any(|v| v.to_ascii_lowercase().contains("chunked"));
                    let length = seen
                        .all("content-length")
                        .first()
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let framing = if chunked {
                        None
                    } else {
                        Some(length.unwrap_or(0))
                    };
                    break (len, seen, framing);
                }
                Ok(httparse::Status::Partial) => {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        buf.drain(..head_len);
        // Its body.
        match framing {
            Some(n) => {
                while buf.len() < n {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                seen.body = buf.drain(..n).collect();
            }
            None => loop {
                match crate::http1::chunked(&buf) {
                    Ok(Some((len, body))) => {
                        buf.drain(..len);
                        seen.body = body;
                        break;
                    }
                    Ok(None) => {
                        if !fill(&mut stream, &mut buf).await {
                            return;
                        }
                    }
                    Err(()) => return,
                }
            },
        }
        state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seen);
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}
