//! Upgrades carried by the gateway itself (README "WebSockets"): the request head is
//! read here, decided by the same [`Gateway::authenticate`] as every HTTP request,
//! sent to the chosen upstream, and after its `101` the bytes are relayed both ways.
//!
//! Why not Pingora's upgrade path: Pingora 0.9.1 can take the upgrade request's queued
//! end-of-body for the end of the tunnel when the `101` is read first, and resets the
//! connection (cloudflare/pingora#946, fixed in unreleased PRs #947 and #1016); it also
//! keeps a 64 KiB buffer per direction of every upgraded connection. Here an idle
//! tunnel holds no copy buffer: bytes are read into one buffer per worker thread and
//! written straight through; only a write that would block keeps its remainder.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::conn::Conn;
use crate::decision::{Answer, Decision, Outcome};
use crate::gateway::Gateway;
use crate::socketio::{self, EngineRequest, WsRefusal};
use crate::verify::AuthError;

/// Largest request or response head read (`431` past it for a request).
pub const MAX_HEAD: usize = 64 * 1024;

/// How long a connection may stay silent before its next request head starts (as
/// Pingora's keep-alive and idle timeout).
pub const IDLE: Duration = Duration::from_secs(60);

/// How long a request head may take from its first byte to its end, however it is
/// trickled (a deadline for the whole head, not for each read).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the upstream may take to answer an upgrade.
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the other direction may go on after one side of a tunnel closed.
const LINGER: Duration = Duration::from_secs(2);

/// After `exp + leeway`, how long the gateway waits for the upstream to finish a frame
/// in flight before it closes without a close frame.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// Bytes read at once, into the worker's buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// The one copy buffer of this worker thread: borrowed only inside a poll, never
    /// across an await, so every tunnel of the thread shares it.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// A request head read from the client.
#[derive(Debug)]
pub struct Head {
    /// Length of the head in the connection's read-ahead bytes.
    pub len: usize,
    /// Whether it asks for a WebSocket upgrade: carried here.
    pub upgrade: bool,
}

/// Why no head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum NoHead {
    /// The connection closed or stayed idle between requests: nothing to answer.
    Closed,
    /// The head grew past [`MAX_HEAD`]: `431`.
    TooLarge,
    /// The head did not end within [`HEAD_TIMEOUT`]: closed.
    TooSlow,
    /// Not HTTP/1.x: handed to Pingora, whose parser answers it.
    Unparsable,
}

/// Where the head ends in `buf`, looking only at bytes from `from` on (minus the
/// three that could start the blank line): each byte is scanned once however the head
/// is trickled.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Reads the next request head into `conn`'s read-ahead bytes: the first byte within
/// [`IDLE`], the whole head within [`HEAD_TIMEOUT`] of it, at most [`MAX_HEAD`] bytes.
pub async fn read_head(conn: &mut Conn) -> Result<Head, NoHead> {
    let mut scanned = 0;
    let mut deadline = None;
    loop {
        let ahead = conn.ahead();
        if !ahead.is_empty() {
            if let Some(len) = head_end(ahead, scanned) {
                if len > MAX_HEAD {
                    return Err(NoHead::TooLarge);
                }
                return Ok(Head {
                    len,
                    upgrade: asks_upgrade(&ahead[..len]),
                });
            }
            if ahead.len() > MAX_HEAD {
                return Err(NoHead::TooLarge);
            }
            // Bytes no request head can hold (a TLS hello, garbage): let Pingora's
            // parser answer them now rather than wait for a head that never ends.
            if !ahead[0].is_ascii_alphabetic() || ahead[scanned..].iter().any(|b| never_in_head(*b))
            {
                return Err(NoHead::Unparsable);
            }
            scanned = ahead.len();
        }
        let limit = *deadline.get_or_insert_with(|| {
            let wait = if ahead.is_empty() { IDLE } else { HEAD_TIMEOUT };
            tokio::time::Instant::now() + wait
        });
        // Pingora's coarse shared timers: no timer-wheel entry per read.
        let left = limit.saturating_duration_since(tokio::time::Instant::now());
        match pingora::prelude::fast_timeout::fast_timeout(left, conn.read_ahead()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Closed),
            Ok(Ok(_)) => {
                if scanned == 0 {
                    // The head's first bytes: from now on the head deadline runs.
                    deadline = Some(tokio::time::Instant::now() + HEAD_TIMEOUT);
                }
            }
            Err(_) if conn.ahead().is_empty() => return Err(NoHead::Closed),
            Err(_) => return Err(NoHead::TooSlow),
        }
    }
}

/// A byte that never appears in an HTTP/1 head: controls other than tab, CR and LF.
fn never_in_head(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f
}

/// Whether a complete head asks for a WebSocket upgrade: an `Upgrade` header line (any
/// case) naming `websocket`. A scan of the line starts, without parsing: every other
/// request goes to Pingora, whose parser reads the head anyway and answers what is
/// malformed, and whose upstream policy drops other upgrades (`h2c`).
fn asks_upgrade(head: &[u8]) -> bool {
    const NAME: &[u8] = b"upgrade:";
    const WEBSOCKET: &[u8] = b"websocket";
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && line[NAME.len()..]
                .windows(WEBSOCKET.len())
                .any(|w| w.eq_ignore_ascii_case(WEBSOCKET))
    })
}

/// The parsed head of an upgrade request.
fn parse_request(head: &[u8]) -> Option<RequestHeader> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return None;
    };
    let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let mut out =
        RequestHeader::build(method, req.path?.as_bytes(), Some(req.headers.len())).ok()?;
    if req.version != Some(1) {
        out.set_version(http::Version::HTTP_10);
    }
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        out.append_header(name, value).ok()?;
    }
    Some(out)
}

/// An answer serialized for a connection that closes after it.
fn serialize(head: &ResponseHeader, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    let status = head.status;
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    push_headers(&mut out, &head.headers);
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Answers a head that could not be read, where there is anything to say.
pub async fn refuse_head(gw: &Gateway, conn: &mut Conn, why: NoHead) {
    if why == NoHead::TooLarge {
        let message = "the request head is too large";
        let answer = Answer::json(431, "bad_request", message, Outcome::BadRequest);
        gw.count(answer.outcome, false);
        let _ = write_answer(gw, conn, &answer, None).await;
    }
    tracing::debug!(?why, client = ?conn.peer_addr(), "no request head");
}

/// Why a tunnel ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed its side.
    Client,
    /// The upstream closed its side.
    Upstream,
    /// A read or write failed.
    Error,
    /// The token expired (`close_on_expiry`): closed with a 1008 close frame.
    Expired,
    /// The token expired while the upstream was mid-frame; closed without a frame.
    ExpiredMidFrame,
}

/// Carries one upgrade request whose head is in `conn`'s read-ahead bytes.
pub async fn carry(gw: &Gateway, mut conn: Box<Conn>, head: Head) {
    let _in_flight = gw.enter();
    let started = Instant::now();
    // Deciding and opening need the request; the open tunnel does not. Boxed, so that
    // the state of the first phase is freed before the tunnel settles in for hours.
    let Some(opened) = Box::pin(open(gw, &mut conn, head)).await else {
        return;
    };
    relay(gw, conn, opened, started).await;
}

/// What an open tunnel keeps of its request.
struct Opened {
    upstream: TcpStream,
    frames: Frames,
    expiry: Option<Duration>,
    client: String,
    request: String,
}

/// Decides the upgrade, connects, sends it and relays the upstream's answer; `Some`
/// once the upstream switched protocols, everything else answered and closed here.
async fn open(gw: &Gateway, conn: &mut Conn, head: Head) -> Option<Opened> {
    let peer = conn.peer_addr();
    let client_text = peer.map(|a| a.to_string()).unwrap_or_default();
    let parsed = parse_request(&conn.ahead()[..head.len]);
    conn.consume(head.len);
    let Some(mut req) = parsed else {
        let answer = Answer::json(
            400,
            "bad_request",
            "the upgrade request head is not valid",
            Outcome::BadRequest,
        );
        finish_answer(gw, conn, "(unparsable upgrade)", &client_text, answer, None).await;
        return None;
    };
    let decision = match gw.authenticate(&mut req, peer.map(|a| a.ip())) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("deciding an upgrade failed: {e}");
            return None;
        }
    };
    let request = gw.summary(&req);
    let forward = match decision {
        Decision::Answer(answer) => {
            finish_answer(gw, conn, &request, &client_text, answer, Some(&req)).await;
            return None;
        }
        Decision::Forward(f) => f,
    };
    let Some((addr, _)) = gw.pick_upstream(req.raw_path(), forward.sticky, None) else {
        gw.count(forward.outcome, true);
        let answer = Gateway::upstream_unavailable(false);
        let _ = write_answer(gw, conn, &answer, Some(&req)).await;
        return None;
    };
    let mut upstream = match connect(gw, addr).await {
        Ok(s) => s,
        Err(timed_out) => {
            gw.count(forward.outcome, true);
            tracing::warn!(upstream = %addr, client = %client_text, request, timed_out, "upstream unreachable for an upgrade");
            let answer = Gateway::upstream_unavailable(timed_out);
            let _ = write_answer(gw, conn, &answer, Some(&req)).await;
            return None;
        }
    };
    // What goes upstream: hop-by-hop headers dropped (RFC 9110 7.6.1), the upgrade
    // kept, and the identity headers set last.
    strip_hop_by_hop(&mut req);
    for (name, value) in &forward.identity {
        if req.insert_header(name.clone(), value.clone()).is_err() {
            return None;
        }
    }
    let mut out = request_bytes(&req);
    out.extend_from_slice(conn.ahead());
    let early = conn.ahead().len();
    conn.consume(early);
    if upstream.write_all(&out).await.is_err() {
        gw.count(forward.outcome, true);
        let _ = write_answer(gw, conn, &Gateway::upstream_unavailable(false), Some(&req)).await;
        return None;
    }
    drop(out);
    let (status, answer_bytes) = match read_response_head(&mut upstream).await {
        Ok(r) => r,
        Err(timed_out) => {
            gw.count(forward.outcome, true);
            let _ = write_answer(
                gw,
                conn,
                &Gateway::upstream_unavailable(timed_out),
                Some(&req),
            )
            .await;
            return None;
        }
    };
    gw.count(forward.outcome, false);
    if conn.write_all(&answer_bytes.bytes).await.is_err() || conn.flush().await.is_err() {
        return None;
    }
    if status != 101 {
        // Not switching: relay the rest of the answer (by its Content-Length, else
        // until the upstream closes), then close.
        let rest = answer_bytes
            .content_length
            .map(|n| n.saturating_sub((answer_bytes.bytes.len() - answer_bytes.head_len) as u64));
        let relay = async {
            match rest {
                Some(n) => tokio::io::copy(&mut (&mut upstream).take(n), conn).await,
                None => tokio::io::copy(&mut upstream, conn).await,
            }
        };
        let _ = tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, relay).await;
        let _ = conn.shutdown().await;
        tracing::debug!(client = %client_text, request, status, "upgrade not accepted upstream");
        return None;
    }
    let _ = upstream.set_nodelay(true);
    let mut frames = Frames::default();
    frames.feed(&answer_bytes.bytes[answer_bytes.head_len..]);
    drop(answer_bytes);
    let expiry = forward.close_at.map(|at| {
        let now = crate::gateway::now_secs();
        Duration::from_secs_f64((at - now).max(0.0))
    });
    Some(Opened {
        upstream,
        frames,
        expiry,
        client: client_text,
        request,
    })
}

/// Relays an open tunnel until it ends; counts and logs its end.
async fn relay(gw: &Gateway, mut conn: Box<Conn>, opened: Opened, started: Instant) {
    let Opened {
        mut upstream,
        frames,
        expiry,
        client,
        request,
    } = opened;
    let metrics = gw.metrics();
    metrics.websockets_open.inc();
    let mut relay = Relay::new(&mut conn, &mut upstream, frames, expiry);
    let end = std::future::poll_fn(|cx| relay.poll(cx)).await;
    let (up_bytes, down_bytes) = (relay.c2u.bytes, relay.u2c.bytes);
    metrics.websockets_open.dec();
    if matches!(end, End::Expired | End::ExpiredMidFrame) {
        metrics.expiry_closes.inc();
    }
    tracing::info!(
        client = %client,
        request,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_from_client = up_bytes,
        bytes_to_client = down_bytes,
        reason = ?end,
        "websocket closed"
    );
}

/// Counts, logs and writes a decided answer on the tunnel path.
async fn finish_answer(
    gw: &Gateway,
    conn: &mut Conn,
    request: &str,
    client: &str,
    answer: Answer,
    req: Option<&RequestHeader>,
) {
    gw.count(answer.outcome, false);
    gw.log_refusal(answer.outcome, &client, request);
    let written = match (&answer.socketio, req) {
        (Some((EngineRequest::WebSocketHandshake, err)), Some(req)) => {
            refuse_websocket(conn, req, err).await
        }
        _ => write_answer(gw, conn, &answer, req).await,
    };
    if let Err(e) = written.and(conn.flush().await) {
        tracing::debug!(client, "could not write the answer: {e}");
    }
    let _ = conn.shutdown().await;
}

/// Writes an answer (head built by [`Gateway::answer_head`], CORS by the request's
/// `Origin`) for a connection that closes after it.
async fn write_answer(
    gw: &Gateway,
    conn: &mut Conn,
    answer: &Answer,
    req: Option<&RequestHeader>,
) -> io::Result<()> {
    let origin = req.and_then(|r| r.headers.get(header::ORIGIN));
    let head = gw
        .answer_head(answer, origin)
        .map_err(|e| io::Error::other(e.to_string()))?;
    conn.write_all(&serialize(&head, &answer.body)).await?;
    conn.flush().await
}

/// Completes a refused WebSocket-only Engine.IO handshake itself (README "Refusals the
/// socket.io client understands"): the `101`, the open packet, `CONNECT_ERROR` for
/// the namespace the client asks for, then the close.
async fn refuse_websocket(conn: &mut Conn, req: &RequestHeader, err: &AuthError) -> io::Result<()> {
    let key = req
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
    );
    let (mut refusal, open) = WsRefusal::start(err);
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&open).await?;
    conn.flush().await?;
    let deadline = tokio::time::Instant::now() + socketio::REFUSED_SESSION_TTL;
    let mut buf = vec![0u8; 4096];
    loop {
        let n =
            match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(conn, &mut buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => n,
                _ => return Ok(()),
            };
        let (out, done) = refusal.feed(&buf[..n]);
        if !out.is_empty() {
            conn.write_all(&out).await?;
            conn.flush().await?;
        }
        if done {
            return Ok(());
        }
    }
}

/// Connects to the upstream within `upstream.connect_timeout`; `Err(true)` on timeout.
async fn connect(gw: &Gateway, addr: SocketAddr) -> Result<TcpStream, bool> {
    match tokio::time::timeout(gw.settings().connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Drops hop-by-hop headers (RFC 9110 7.6.1): those `Connection` names (other than
/// `upgrade`) and the standard ones; the upgrade itself is kept.
fn strip_hop_by_hop(req: &mut RequestHeader) {
    let named: Vec<http::HeaderName> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade"))
        .filter_map(|t| http::HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        req.remove_header(&name);
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer"] {
        req.remove_header(name);
    }
    req.remove_header(&header::PROXY_AUTHORIZATION);
    req.remove_header(&header::TRANSFER_ENCODING);
    let _ = req.insert_header(header::CONNECTION, "Upgrade");
}

/// The request head as written upstream (HTTP/1.1, headers in order).
fn request_bytes(req: &RequestHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_headers(&mut out, &req.headers);
    out.extend_from_slice(b"\r\n");
    out
}

/// Header lines, `name: value\r\n` each.
fn push_headers(out: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The upstream's answer head and the bytes that came with it.
struct Received {
    bytes: Vec<u8>,
    head_len: usize,
    /// The answer's `Content-Length`, if it has one.
    content_length: Option<u64>,
}

/// Reads the upstream's answer head; `Err(true)` on timeout, `Err(false)` when the
/// upstream closed, failed or sent no HTTP/1.x answer.
async fn read_response_head(upstream: &mut TcpStream) -> Result<(u16, Received), bool> {
    let read = async {
        let mut bytes = Vec::with_capacity(1024);
        let mut scanned = 0;
        loop {
            if let Some(head_len) = head_end(&bytes, scanned) {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut resp = httparse::Response::new(&mut headers);
                return match resp.parse(&bytes[..head_len]) {
                    Ok(httparse::Status::Complete(_)) => {
                        let content_length = resp
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                        let code = resp.code.unwrap_or(502);
                        Ok((
                            code,
                            Received {
                                bytes,
                                head_len,
                                content_length,
                            },
                        ))
                    }
                    _ => Err(false),
                };
            }
            if bytes.len() > MAX_HEAD {
                return Err(false);
            }
            scanned = bytes.len();
            bytes.reserve(1024);
            match tokio::io::AsyncReadExt::read_buf(upstream, &mut bytes).await {
                Ok(0) | Err(_) => return Err(false),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, read)
        .await
        .unwrap_or(Err(true))
}

/// WebSocket frame boundaries of one direction (RFC 6455 5.2), so that the gateway's
/// own close frame never lands inside a frame the upstream is sending.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (data.len() as u64).min(self.remaining);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(payload) = self.header_complete() {
                self.remaining = payload;
                self.have = 0;
            }
        }
    }

    /// The payload length once the header is complete.
    fn header_complete(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        let len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
        };
        Some(len)
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }
}

/// A WebSocket close frame from the server: code 1008 (policy violation), "token expired".
fn expiry_close_frame() -> Vec<u8> {
    const REASON: &[u8] = b"token expired";
    let mut f = vec![0x88, (2 + REASON.len()) as u8];
    f.extend_from_slice(&1008u16.to_be_bytes());
    f.extend_from_slice(REASON);
    f
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
struct Pump {
    /// What a blocked write left over; empty (no allocation) otherwise.
    pending: Vec<u8>,
    at: usize,
    flush: bool,
    /// The source ended (or the gateway ends this direction): shut the sink down.
    eof: bool,
    done: bool,
    bytes: u64,
}

impl Pump {
    /// Moves bytes until the source would block; `Ready` once this direction is done.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        mut frames: Option<&mut Frames>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.flush = true;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.flush = false;
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
                let data = buf.filled();
                if data.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                self.bytes += data.len() as u64;
                if let Some(f) = frames.as_deref_mut() {
                    f.feed(data);
                }
                let mut off = 0;
                while off < data.len() {
                    match Pin::new(&mut *to).poll_write(cx, &data[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pending = data[off..].to_vec();
                            break;
                        }
                    }
                }
                self.flush = true;
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
    }
}

/// Both directions of a tunnel, the expiry timer and the linger after one side ended.
struct Relay<'a> {
    client: &'a mut Conn,
    upstream: &'a mut TcpStream,
    c2u: Pump,
    u2c: Pump,
    /// Frame boundaries of what the upstream sends the client.
    frames: Frames,
    /// `exp + leeway`, then [`EXPIRY_GRACE`] for a frame in flight.
    expiry: Option<Pin<Box<Sleep>>>,
    expired: bool,
    closing: bool,
    /// Started when one direction ended.
    linger: Option<Pin<Box<Sleep>>>,
}

impl<'a> Relay<'a> {
    fn new(
        client: &'a mut Conn,
        upstream: &'a mut TcpStream,
        frames: Frames,
        expiry: Option<Duration>,
    ) -> Self {
        Relay {
            client,
            upstream,
            c2u: Pump::default(),
            u2c: Pump::default(),
            frames,
            expiry: expiry.map(|d| Box::pin(tokio::time::sleep(d))),
            expired: false,
            closing: false,
            linger: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Some(timer) = self.expiry.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                if self.expired {
                    return Poll::Ready(End::ExpiredMidFrame);
                }
                self.expired = true;
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + EXPIRY_GRACE);
                let _ = timer.as_mut().poll(cx);
            }
        }
        if self.expired && !self.closing && self.u2c.pending.is_empty() && self.frames.at_boundary()
        {
            // Close frame to the client, then close both sides.
            self.closing = true;
            self.u2c.pending = expiry_close_frame();
            self.u2c.at = 0;
            self.u2c.eof = true;
            self.c2u.eof = true;
        }
        if !self.c2u.done {
            match self.c2u.poll(cx, self.client, self.upstream, None) {
                Poll::Ready(Err(_)) => return Poll::Ready(End::Error),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {}
            }
        }
        if !self.u2c.done {
            let frames = (!self.closing).then_some(&mut self.frames);
            match self.u2c.poll(cx, self.upstream, self.client, frames) {
                Poll::Ready(Err(_)) => return Poll::Ready(End::Error),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {}
            }
        }
        if self.closing {
            return if self.u2c.done {
                Poll::Ready(End::Expired)
            } else {
                Poll::Pending
            };
        }
        match (self.c2u.done, self.u2c.done) {
            (true, true) => Poll::Ready(if self.u2c.bytes > 0 {
                End::Upstream
            } else {
                End::Client
            }),
            (false, false) => Poll::Pending,
            (c_done, _) => {
                let linger = self
                    .linger
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
                match linger.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(if c_done { End::Client } else { End::Upstream })
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_once_whatever_the_cut() {
        let head = b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nEXTRA";
        let end = head.len() - "EXTRA".len();
        assert_eq!(head_end(head, 0), Some(end));
        for cut in 0..head.len() {
            let first = head_end(&head[..cut], 0);
            if cut < end {
                assert_eq!(first, None, "cut {cut}");
                assert_eq!(head_end(head, cut), Some(end), "cut {cut}");
            }
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert!(asks_upgrade(&head[..end]));
        assert!(!asks_upgrade(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        let h2c = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nUpgrade-Insecure-Requests: 1\r\n\r\n";
        assert!(!asks_upgrade(h2c));
        let upper = b"GET / HTTP/1.1\r\nUPGRADE:WebSocket\r\n\r\n";
        assert!(asks_upgrade(upper));
    }

    #[test]
    fn frame_boundaries_are_tracked_across_any_split() {
        // A 3-byte text frame, a 300-byte binary frame (16-bit length), a masked ping.
        let mut bytes = vec![0x81, 3, b'a', b'b', b'c', 0x82, 126, 1, 44];
        bytes.extend(std::iter::repeat_n(7u8, 300));
        bytes.extend_from_slice(&[0x89, 0x80 | 1, 1, 2, 3, 4, b'p']);
        let boundaries = [0, 5, 5 + 4 + 300, bytes.len()];
        for cut in 0..bytes.len() {
            let mut f = Frames::default();
            f.feed(&bytes[..cut]);
            assert_eq!(f.at_boundary(), boundaries.contains(&cut), "cut {cut}");
            f.feed(&bytes[cut..]);
            assert!(f.at_boundary(), "cut {cut}");
        }
    }

    #[test]
    fn the_expiry_close_frame_is_a_valid_1008() {
        let f = expiry_close_frame();
        assert_eq!(f[0], 0x88);
        assert_eq!(usize::from(f[1]), f.len() - 2);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1008);
        assert_eq!(&f[4..], b"token expired");
    }
}
