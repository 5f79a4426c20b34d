//! Upgrades carried by the gateway itself (docs/websockets.md): the request head is
//! read here, decided by the same [`Gateway::authenticate`] as every HTTP request,
//! sent to the chosen upstream, and after its `101` the bytes are relayed both ways.
//!
//! Why not Pingora's upgrade path: Pingora 0.9.1 can take the upgrade request's queued
//! end-of-body for the end of the tunnel when the `101` is read first, and resets the
//! connection (cloudflare/pingora#946, fixed in unreleased PRs #947 and #1016); it also
//! keeps a 64 KiB buffer per direction of every upgraded connection. Here an idle
//! tunnel holds no copy buffer: bytes are read into one buffer per worker thread and
//! written straight through; only a write that would block keeps its remainder.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use pingora::http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{self, Encode, Source};
use crate::conn::Conn;
use crate::decision::{Answer, Decision, Forward, Outcome};
use crate::engineio::{EngineRequest, Fed, Handshake, rewrite_open_packet};
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::head::{NoHead, request_bytes, strip_hop_by_hop};
use crate::live_sockets::{Registration, SessionKey};
use crate::open_frame::{self, First};
use crate::relay::{End, Frames, Relay};
use crate::response_head::{self, Framed, NoAnswer, Received, ResponseBody};
use crate::socketio::{self, WsRefusal};
use crate::upstream_tls::UpstreamStream;
use crate::verify::AuthError;

/// Answers a head that could not be read, where there is anything to say: `431` for
/// one too large, `400` for one that is not HTTP/1.1 or is framed ambiguously.
pub async fn refuse_head(gw: &Gateway, conn: &mut Conn, why: NoHead) {
    let answer = match &why {
        NoHead::TooLarge => Some(Answer::head_too_large()),
        NoHead::Malformed(reason) => Some(Answer::bad_request(reason)),
        NoHead::Closed | NoHead::TooSlow => None,
    };
    if let Some(answer) = answer {
        gw.count(answer.outcome, false);
        let _ = write_answer(gw, conn, &answer, None).await;
        let _ = conn.shutdown().await;
    }
    tracing::debug!(?why, client = ?conn.peer_addr(), "no request head");
}

/// Carries one upgrade request whose head (`len` bytes, parsed as `req`) is in `conn`'s
/// read-ahead bytes, in a task of its own: this returns at once, and the connection's
/// task ends.
///
/// Why a task of its own: the task Pingora spawns for each accepted connection holds
/// the future of its listener's TLS handshake inline (`UninitializedStream::handshake`
/// in pingora-core 0.9.1, with rustls's server state in it once the `rustls` feature is
/// built), about 9 KiB for every connection, TLS or not, for as long as the task runs.
/// A tunnel that went on in that task kept those 9 KiB for hours; its own task holds
/// only the tunnel's state (docs/performance.md, "What a held WebSocket keeps").
pub async fn carry(
    gw: &Arc<Gateway>,
    mut conn: Box<Conn>,
    len: usize,
    framing: Framing,
    req: RequestHeader,
) {
    let in_flight = gw.enter();
    conn.consume(len);
    // Boxed: the task's future keeps a pointer, not the request, for the tunnel's life.
    let req = Box::new(req);
    let gw = gw.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let started = Instant::now();
        // Deciding and opening need the request; the open tunnel does not. Boxed, so
        // that the state of the first phase is freed before the tunnel settles in for
        // hours.
        let Some(opened) = Box::pin(open(&gw, &mut conn, framing, *req)).await else {
            return;
        };
        relay(&gw, conn, opened, started).await;
    });
}

/// What an open tunnel keeps of its request.
struct Opened {
    upstream: UpstreamStream,
    frames: Frames,
    expiry: Option<Duration>,
    /// Its entry among the open WebSockets (refresh, revocation).
    registration: Option<Registration>,
    client: String,
    request: String,
}

/// The steps of an upgrade, each answering and closing the connection itself when it
/// ends the request: decide, connect, send the head, read the answer, then switch.
/// `Some` once the upstream switched protocols.
async fn open(
    gw: &Gateway,
    conn: &mut Conn,
    framing: Framing,
    mut req: RequestHeader,
) -> Option<Opened> {
    let peer = conn.peer_addr();
    let client = peer.map(|a| a.to_string()).unwrap_or_default();
    let mut forward = decide(gw, conn, &client, framing, &mut req).await?;
    let request = gw.summary(&req);
    let outcome = forward.outcome;
    let Some(addr) = gw.pick_upstream(Some(&mut forward)) else {
        return upstream_failed(gw, conn, outcome, false, &req).await;
    };
    // At most `upstream.max_connecting` at once, retried (`upstream.retries`,
    // docs/configuration.md).
    let mut upstream = match gw.dialer().dial(addr).await {
        Ok(s) => s,
        Err(e) => {
            let (timed_out, retries, error) = (e.timed_out, e.retries, e.error);
            tracing::warn!(upstream = %addr, client, request, timed_out, retries, %error, "upstream unreachable for an upgrade");
            return upstream_failed(gw, conn, outcome, timed_out, &req).await;
        }
    };
    if send_head(&mut upstream, &mut req, &forward).await.is_err() {
        return upstream_failed(gw, conn, outcome, false, &req).await;
    }
    // The upstream's answer within `upstream.read_timeout`, as for any request: in a
    // reconnect storm a connect can complete while the server's accept queue is full,
    // and the server takes its request only seconds later (docs/websockets.md).
    let read_timeout = gw.settings().upstream.read_timeout;
    let answer = match response_head::read(&mut upstream, read_timeout, Vec::new()).await {
        Ok(r) => r,
        Err(e) => {
            let timed_out = e == NoAnswer::TimedOut;
            return upstream_failed(gw, conn, outcome, timed_out, &req).await;
        }
    };
    let status = answer.status;
    gw.count(outcome, false);
    if status != 101 {
        not_switching(gw, conn, &mut upstream, answer, &req).await;
        tracing::debug!(client, request, status, "upgrade not accepted upstream");
        return None;
    }
    let mut frames = Frames::default();
    let mut session = None;
    let first = match forward.handshake.as_ref() {
        Some(handshake) => {
            match open_packet_frame(gw, &mut upstream, answer, handshake, &mut session).await {
                Some(bytes) => bytes,
                None => {
                    tracing::warn!(
                        client,
                        request,
                        "a WebSocket handshake's open packet could not be read or sealed; closed"
                    );
                    return None;
                }
            }
        }
        None => answer.bytes,
    };
    // The head, then whatever frames followed it (the first one perhaps rewritten).
    if conn.write_all(&first).await.is_err() || conn.flush().await.is_err() {
        return None;
    }
    frames.feed(&first[switching_head_len(&first)..]);
    drop(first);
    // Only now may the client's bytes behind its head be read: they are frames.
    conn.open_through();
    let expiry = forward.close_at.map(|at| {
        let now = crate::gateway::now_secs();
        Duration::from_secs_f64((at - now).max(0.0))
    });
    let (registration, revoked_now) = gw.live().register(
        forward.live.take(),
        session,
        forward.close_at,
        gw.revocations(),
    );
    if revoked_now {
        crate::revocation_file::count_closes(gw.metrics(), 1);
    }
    Some(Opened {
        upstream,
        frames,
        expiry,
        registration,
        client,
        request,
    })
}

/// The decision ([`Gateway::authenticate`]): an upgrade carries no body, and only
/// `GET` asks for one (RFC 6455 4.1); a refusal is answered here.
async fn decide(
    gw: &Gateway,
    conn: &mut Conn,
    client: &str,
    framing: Framing,
    req: &mut RequestHeader,
) -> Option<Forward> {
    let peer = conn.peer_addr().map(|a| a.ip());
    let decision = if framing.has_body() {
        Decision::Answer(Answer::bad_request("an upgrade request carries no body"))
    } else if req.method != http::Method::GET {
        Decision::Answer(Answer::bad_request("only GET asks for a WebSocket upgrade"))
    } else {
        match gw.authenticate(req, peer) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("deciding an upgrade failed: {e}");
                return None;
            }
        }
    };
    match decision {
        Decision::Forward(f) => Some(f),
        Decision::Answer(answer) => {
            let request = gw.summary(req);
            finish_answer(gw, conn, &request, client, answer, Some(req)).await;
            None
        }
    }
}

/// Writes the upgrade head upstream: hop-by-hop headers dropped (RFC 9110 7.6.1), the
/// upgrade kept, the identity headers set last. A handshake's answer must be read by
/// the gateway, so it offers no WebSocket extension (no compressed open packet). Only
/// the head: the client's bytes behind it stay at the gateway until the `101`.
async fn send_head(
    upstream: &mut UpstreamStream,
    req: &mut RequestHeader,
    forward: &Forward,
) -> io::Result<()> {
    strip_hop_by_hop(req, true);
    if forward.handshake.is_some() {
        req.remove_header(&header::SEC_WEBSOCKET_EXTENSIONS);
    }
    for (name, value) in &forward.identity {
        req.insert_header(name.clone(), value.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    upstream.write_all(&request_bytes(req)).await?;
    upstream.flush().await
}

/// The upstream did not switch protocols: its answer is relayed by the same relay as
/// any answer ([`body::relay`], each read within `upstream.read_timeout`), by its own
/// framing (none for `HEAD`, 1xx, 204 and 304), under a head the gateway wrote
/// ([`Received::render`]), and the connection closed. Nothing the client sent behind
/// its head ever went upstream.
async fn not_switching(
    gw: &Gateway,
    conn: &mut Conn,
    upstream: &mut UpstreamStream,
    answer: Received,
    req: &RequestHeader,
) {
    let body = if req.method == http::Method::HEAD {
        ResponseBody::None
    } else {
        answer.body
    };
    // The connection closes after the answer: a body is written as it came, framed by
    // its length or the close, or chunked again.
    let (framed, source, encode) = match body {
        ResponseBody::None => (Framed::Bodiless, None, Encode::Plain),
        ResponseBody::Length(n) => (Framed::Length(n), Some(Source::Length(n)), Encode::Plain),
        ResponseBody::Chunked => (Framed::Chunked, Some(Source::Chunked), Encode::Chunked),
        ResponseBody::Close => (Framed::Close, Some(Source::UntilClose), Encode::Plain),
    };
    let mut out = Vec::with_capacity(answer.head_len + 256);
    answer.render(&mut out, framed, Some("close"));
    let timeout = Some(gw.settings().upstream.read_timeout);
    match source {
        Some(source) => {
            let after = answer.after();
            if let Err(e) = body::relay(upstream, after, conn, out, source, encode, timeout).await {
                tracing::debug!(error = %e, "the answer to an upgrade ended early");
            }
        }
        None => {
            let _ = conn.write_all(&out).await;
            let _ = conn.flush().await;
        }
    }
    let _ = conn.shutdown().await;
}

/// Counts a failed upstream and answers it (`502`, or `504` when it timed out).
async fn upstream_failed(
    gw: &Gateway,
    conn: &mut Conn,
    outcome: Outcome,
    timed_out: bool,
    req: &RequestHeader,
) -> Option<Opened> {
    gw.count(outcome, true);
    let answer = Answer::upstream_unavailable(timed_out);
    let _ = write_answer(gw, conn, &answer, Some(req)).await;
    let _ = conn.shutdown().await;
    None
}

/// Length of the `101` head at the start of `bytes`.
fn switching_head_len(bytes: &[u8]) -> usize {
    crate::head::head_end(bytes, 0).unwrap_or(0)
}

/// The `101` head and the frames after it, with the first frame (the open packet of
/// a WebSocket-only handshake) carrying the sealed `sid` (docs/request-handling.md "Engine.IO sessions").
/// `None` when no open packet could be read and sealed in time.
async fn open_packet_frame(
    gw: &Gateway,
    upstream: &mut UpstreamStream,
    answer: Received,
    handshake: &Handshake,
    session: &mut Option<SessionKey>,
) -> Option<Vec<u8>> {
    let Received {
        mut bytes,
        head_len,
        ..
    } = answer;
    let read = async {
        loop {
            let (header, payload) = match open_frame::first_text(&bytes[head_len..]) {
                First::More if bytes.len() - head_len < open_frame::MAX_OPEN_FRAME => {
                    let mut more = [0u8; 1024];
                    let n = upstream.read(&mut more).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    bytes.extend_from_slice(&more[..n]);
                    continue;
                }
                First::More | First::Unreadable => return None,
                First::Other => return Some(bytes),
                First::Text { header, payload } => (header, payload),
            };
            let start = head_len + header;
            let end = start + payload;
            let seal = |sid: &[u8]| {
                *session = Some(SessionKey::of(sid, handshake.server));
                gw.seal_sid(&handshake.user, handshake.server, sid)
            };
            let new_payload = match rewrite_open_packet(&bytes[start..end], seal) {
                Fed::Rewritten(p) => p,
                Fed::Unchanged(_) | Fed::Pass => return Some(bytes),
                Fed::Hold | Fed::Refused => return None,
            };
            let mut out = Vec::with_capacity(bytes.len() + new_payload.len());
            out.extend_from_slice(&bytes[..head_len]);
            open_frame::push_text_header(&mut out, new_payload.len());
            out.extend_from_slice(&new_payload);
            out.extend_from_slice(&bytes[end..]);
            return Some(out);
        }
    };
    // As the `101` itself: within `upstream.read_timeout`.
    tokio::time::timeout(gw.settings().upstream.read_timeout, read)
        .await
        .ok()
        .flatten()
}

/// Relays an open tunnel until it ends; counts and logs its end.
async fn relay(gw: &Gateway, mut conn: Box<Conn>, opened: Opened, started: Instant) {
    let Opened {
        mut upstream,
        frames,
        expiry,
        registration,
        client,
        request,
    } = opened;
    // The `101` is flushed: from here on writes go straight to the socket, and the held
    // connection keeps no write buffer.
    conn.write_through();
    let metrics = gw.metrics();
    metrics.websockets_open.inc();
    let mut relay = Relay::new(&mut conn, &mut upstream, frames, expiry);
    let control = registration.as_ref().map(|r| &*r.control);
    let end = crate::relay::run(&mut relay, control).await;
    let (up_bytes, down_bytes) = relay.bytes();
    let revoked = relay.was_revoked();
    drop(registration);
    metrics.websockets_open.dec();
    if matches!(end, End::Expired | End::ExpiredMidFrame) && !revoked {
        metrics.expiry_closes.inc();
    }
    tracing::info!(
        client = %client,
        request,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_from_client = up_bytes,
        bytes_to_client = down_bytes,
        reason = ?end,
        revoked,
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
    let cors = &gw.settings().auth.cors_origins;
    answer.write(conn, origin, cors, Some("close")).await?;
    conn.flush().await
}

/// Completes a refused WebSocket-only Engine.IO handshake itself (docs/request-handling.md "Refusals the
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
    // The gateway itself speaks WebSocket from here: the client's frames are its to read.
    conn.open_through();
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
