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

use std::io;
use std::time::{Duration, Instant};

use http::header;
use pingora::http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::Conn;
use crate::decision::{Answer, Decision};
use crate::engineio::EngineRequest;
use crate::gateway::Gateway;
use crate::head::{
    Head, NoHead, UPSTREAM_HEAD_TIMEOUT, parse_request, read_response_head, request_bytes,
    serialize, strip_hop_by_hop,
};
use crate::relay::{End, Frames, Relay};
use crate::socketio::{self, WsRefusal};
use crate::upstream_tls::UpstreamStream;
use crate::verify::AuthError;

/// Answers a head that could not be read, where there is anything to say.
pub async fn refuse_head(gw: &Gateway, conn: &mut Conn, why: NoHead) {
    if why == NoHead::TooLarge {
        let answer = Answer::head_too_large();
        gw.count(answer.outcome, false);
        let _ = write_answer(gw, conn, &answer, None).await;
    }
    tracing::debug!(?why, client = ?conn.peer_addr(), "no request head");
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
    upstream: UpstreamStream,
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
        let answer = Answer::bad_request("the upgrade request head is not valid");
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
    let Some((addr, _)) = gw.pick_upstream(forward.sid.as_deref(), forward.sticky, None) else {
        gw.count(forward.outcome, true);
        let answer = Answer::upstream_unavailable(false);
        let _ = write_answer(gw, conn, &answer, Some(&req)).await;
        return None;
    };
    let upstream_settings = &gw.settings().upstream;
    let connected = UpstreamStream::connect(
        addr,
        upstream_settings.tls.as_ref(),
        upstream_settings.connect_timeout,
    )
    .await;
    let mut upstream = match connected {
        Ok(s) => s,
        Err((timed_out, error)) => {
            gw.count(forward.outcome, true);
            tracing::warn!(upstream = %addr, client = %client_text, request, timed_out, %error, "upstream unreachable for an upgrade");
            let answer = Answer::upstream_unavailable(timed_out);
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
        let _ = write_answer(gw, conn, &Answer::upstream_unavailable(false), Some(&req)).await;
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
                &Answer::upstream_unavailable(timed_out),
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
    // The `101` is flushed: from here on writes go straight to the socket, and the held
    // connection keeps no write buffer.
    conn.write_through();
    let metrics = gw.metrics();
    metrics.websockets_open.inc();
    let mut relay = Relay::new(&mut conn, &mut upstream, frames, expiry);
    let end = std::future::poll_fn(|cx| relay.poll(cx)).await;
    let (up_bytes, down_bytes) = relay.bytes();
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
    let head = answer
        .head(origin, &gw.settings().auth.cors_origins)
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
