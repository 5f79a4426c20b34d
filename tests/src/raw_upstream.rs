//! A raw HTTP/1.1 upstream: it keeps every connection alive, parses each request head
//! (`httparse`) and body (`Content-Length` or chunked) in a loop, records what it parsed
//! (and every byte it received), answers every request with one fixed response, or with
//! what a script decides per request ([`RawUpstream::scripted`]: any bytes, after a
//! delay, then the connection kept or closed), and goes on reading. The witness for
//! bytes smuggled behind a request on one connection: an upstream built on a full HTTP
//! library may refuse or hide what a plain keep-alive server would act on.

use std::collections::HashSet;
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
    /// The head exactly as received, request line to blank line.
    pub head: Vec<u8>,
    /// Whether the body came chunked (else by `Content-Length`, or none).
    pub chunked: bool,
    /// The body bytes exactly as received (chunk sizes, extensions and trailers
    /// included).
    pub body_raw: Vec<u8>,
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

/// What a scripted upstream does for one request ([`RawUpstream::scripted`]).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Waited before anything is written.
    pub delay: Duration,
    /// Written as they are: a complete response, a truncated one, or anything.
    pub bytes: Vec<u8>,
    /// The connection is closed after `bytes` (else the next request is read).
    pub close: bool,
    /// Written after `bytes` and a pause, before the next request is read: an upstream
    /// that answers one request twice.
    pub then: Option<(Duration, Vec<u8>)>,
}

impl Reply {
    /// `bytes`, the connection kept alive.
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            ..Reply::default()
        }
    }

    /// `bytes`, then the connection closed.
    pub fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: true,
            ..Reply::default()
        }
    }

    /// The same reply after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// The same reply, then `more` after `pause` (a second answer to one request).
    pub fn then(mut self, pause: Duration, more: impl Into<Vec<u8>>) -> Reply {
        self.then = Some((pause, more.into()));
        self
    }
}

/// A script: the reply to each request as parsed (head and body).
type Script = Arc<dyn Fn(&RawSeen) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    seen: Mutex<Vec<RawSeen>>,
    /// Every byte received, per connection.
    received: Mutex<Vec<Vec<u8>>>,
    /// The connections that ended.
    ended_conns: Mutex<HashSet<usize>>,
    accepted: AtomicUsize,
    ended: AtomicUsize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("accepted", &self.accepted)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        Self::serving(Arc::new(move |_: &RawSeen| Reply::keep(response)), false).await
    }

    /// Starts on a free port, answering each request with what `script` returns for it.
    /// A request that expects `100-continue` is answered `100 Continue` before its body
    /// is read, as Node's and most servers do (RFC 9110 10.1.1).
    pub async fn scripted(
        script: impl Fn(&RawSeen) -> Reply + Send + Sync + 'static,
    ) -> RawUpstream {
        Self::serving(Arc::new(script), true).await
    }

    async fn serving(script: Script, continue_100: bool) -> RawUpstream {
        let (listener, addr) = crate::procs::local_listener().await;
        let state: Arc<State> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = shared.accepted.fetch_add(1, Ordering::SeqCst);
                lock(&shared.received).push(Vec::new());
                let state = shared.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let mut conn = Conn {
                        stream,
                        conn: n,
                        state: &state,
                    };
                    conn.serve(&*script, continue_100).await;
                    drop(conn);
                    lock(&state.ended_conns).insert(n);
                    state.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawUpstream { addr, state }
    }

    /// Every request parsed so far, in order of arrival.
    pub fn seen(&self) -> Vec<RawSeen> {
        lock(&self.state.seen).clone()
    }

    /// Every byte received so far, per accepted connection (in order of acceptance).
    pub fn received(&self) -> Vec<Vec<u8>> {
        lock(&self.state.received).clone()
    }

    /// Waits up to `limit` until connection `conn` has ended (its peer closed it, or
    /// this upstream did after a reply); false when it is still open.
    pub async fn wait_conn_ended(&self, conn: usize, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if lock(&self.state.ended_conns).contains(&conn) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// One accepted connection.
struct Conn<'s> {
    stream: TcpStream,
    conn: usize,
    state: &'s State,
}

impl Conn<'_> {
    /// Reads more bytes into `buf` (and the record); false at the end of the stream or
    /// on an error.
    async fn fill(&mut self, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = lock(&self.state.received).get_mut(self.conn) {
                    r.extend_from_slice(&chunk[..n]);
                }
                true
            }
        }
    }

    async fn serve(
        &mut self,
        script: &(dyn Fn(&RawSeen) -> Reply + Send + Sync),
        continue_100: bool,
    ) {
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
                        let mut seen = RawSeen {
                            conn: self.conn,
                            method: req.method.unwrap_or_default().to_string(),
                            target: req.path.unwrap_or_default().to_string(),
                            headers,
                            body: Vec::new(),
                            head: buf[..len].to_vec(),
                            chunked: false,
                            body_raw: Vec::new(),
                        };
                        seen.chunked = seen
                            .all("transfer-encoding")
                            .iter()
                            .any(|v| v.to_ascii_lowercase().contains("chunked"));
                        let length = seen
                            .all("content-length")
                            .first()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        let framing = if seen.chunked {
                            None
                        } else {
                            Some(length.unwrap_or(0))
                        };
                        break (len, seen, framing);
                    }
                    Ok(httparse::Status::Partial) => {
                        if !self.fill(&mut buf).await {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            };
            buf.drain(..head_len);
            let expects = seen
                .all("expect")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("100-continue"));
            if continue_100
                && expects
                && self
                    .stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return;
            }
            // Its body.
            match framing {
                Some(n) => {
                    while buf.len() < n {
                        if !self.fill(&mut buf).await {
                            return;
                        }
                    }
                    seen.body = buf.drain(..n).collect();
                    seen.body_raw.clone_from(&seen.body);
                }
                None => loop {
                    match crate::http1::chunked(&buf) {
                        Ok(Some((len, body))) => {
                            seen.body_raw = buf.drain(..len).collect();
                            seen.body = body;
                            break;
                        }
                        Ok(None) => {
                            if !self.fill(&mut buf).await {
                                return;
                            }
                        }
                        Err(()) => return,
                    }
                },
            }
            let reply = script(&seen);
            lock(&self.state.seen).push(seen);
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            if self.stream.write_all(&reply.bytes).await.is_err() || reply.close {
                return;
            }
            if let Some((pause, more)) = &reply.then {
                tokio::time::sleep(*pause).await;
                if self.stream.write_all(more).await.is_err() {
                    return;
                }
            }
        }
    }
}
