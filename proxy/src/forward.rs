//! The forwarding step of an HTTP/1 request ([`crate::exchange`]): the head the
//! gateway writes upstream, the body relayed by its framing, the answer head read
//! strictly (interim answers passed on), the answer relayed by its own framing or, for
//! a handshake, read whole and written again with its `sid` sealed; the upstream
//! connection kept only when both sides ended cleanly (docs/request-handling.md
//! "Upstream connections").

use std::net::SocketAddr;
use std::time::Duration;

use http::header;
use pingora::http::RequestHeader;
use tokio::io::AsyncWriteExt;

use crate::body::{self, Encode, RelayError, Source};
use crate::conn::Conn;
use crate::decision::{Answer, Forward};
use crate::dial::DialError;
use crate::engineio::{Fed, rewrite_open_packet};
use crate::exchange::{Ctx, answer_it, connection_field, source_of};
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::head::{request_bytes, strip_hop_by_hop};
use crate::pool::Kept;
use crate::response_head::{self, Framed, NoAnswer, Received, ResponseBody};
use crate::upstream_tls::UpstreamStream;

/// Largest handshake answer read whole to seal its `sid` (an Engine.IO open packet is
/// a few hundred bytes).
const MAX_HANDSHAKE_ANSWER: usize = 64 * 1024;
/// Why a forwarded request got no complete answer from its upstream.
#[derive(Debug, thiserror::Error)]
enum UpstreamFailure {
    /// No server is healthy.
    #[error("no healthy upstream server")]
    NoServer,
    /// The connect failed or timed out (`upstream.retries`, `upstream.max_connecting`).
    #[error("connect failed: {0}")]
    Connect(DialError),
    /// The request could not be written.
    #[error("the request could not be written: {0}")]
    Send(std::io::Error),
    /// No usable answer head.
    #[error("{0}")]
    Answer(NoAnswer),
    /// A handshake's answer whose `sid` could not be sealed, or too large to read.
    #[error("a handshake answer could not be sealed")]
    Handshake,
}

/// Why a request was not sent, or got no answer head.
#[derive(Debug)]
enum Unsent {
    /// The client closed before its body's end: nothing to answer.
    ClientLeft,
    /// The client's chunked body is malformed: `400`.
    Malformed,
    /// The client's body made no progress within `proxy.body_read_timeout`: `408`.
    ClientTooSlow,
    /// The upstream failed: `502`/`504`.
    Upstream(UpstreamFailure),
}

impl UpstreamFailure {
    /// `504` when the upstream was too slow, else `502`.
    fn timed_out(&self) -> bool {
        match self {
            UpstreamFailure::Connect(e) => e.timed_out,
            UpstreamFailure::Answer(NoAnswer::TimedOut) => true,
            _ => false,
        }
    }
}
/// Step: forward to the upstream, relay its answer.
pub(crate) async fn forward(
    gw: &Gateway,
    kept: &mut Kept<'_>,
    conn: &mut Conn,
    req: &mut RequestHeader,
    framing: Framing,
    mut f: Forward,
    ctx: &mut Ctx,
) {
    ctx.outcome = f.outcome;
    let Some(addr) = gw.pick_upstream(Some(&mut f)) else {
        return upstream_failed(gw, conn, req, ctx, None, UpstreamFailure::NoServer).await;
    };
    let expect_continue = take_expect_continue(req) && framing.has_body();
    let safe = matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let head = upstream_head(req, &f, framing);
    let (mut up, received) = match send(
        gw,
        kept.take(addr, &f.identity),
        conn,
        addr,
        head,
        framing,
        expect_continue,
        safe,
        ctx,
    )
    .await
    {
        Ok(sent) => sent,
        Err(Unsent::ClientLeft) => {
            // The client left mid-body: nothing to answer.
            ctx.keep_alive = false;
            return;
        }
        Err(Unsent::Malformed) => {
            let answer = Answer::bad_request("the chunked body is malformed");
            ctx.keep_alive = false;
            return answer_it(gw, conn, req, Framing::None, answer, ctx).await;
        }
        Err(Unsent::ClientTooSlow) => {
            // Nothing of an answer was read or sent (the answer is read after the whole
            // body), and the upstream connection that got part of it is dropped.
            let message = "the request body stalled";
            let answer = Answer::json(408, "request_timeout", message, ctx.outcome);
            ctx.keep_alive = false;
            return answer_it(gw, conn, req, Framing::None, answer, ctx).await;
        }
        Err(Unsent::Upstream(failure)) => {
            return upstream_failed(gw, conn, req, ctx, Some(addr), failure).await;
        }
    };
    let head_only = req.method == http::Method::HEAD;
    let body = if head_only {
        ResponseBody::None
    } else {
        received.body
    };
    let sealing = f.handshake.as_ref().filter(|_| received.status == 200);
    let relayed = match sealing {
        Some(h) if body != ResponseBody::None => {
            let seal = |sid: &[u8]| gw.seal_sid(&h.user, h.server, sid);
            match seal_answer(gw, conn, &mut up, &received, body, seal, ctx).await {
                Ok(r) => r,
                Err(failure) => {
                    return upstream_failed(gw, conn, req, ctx, Some(addr), failure).await;
                }
            }
        }
        _ => relay_answer(gw, conn, &mut up, &received, body, ctx).await,
    };
    if relayed && received.keep_alive && body != ResponseBody::Close {
        kept.put(addr, f.identity, up);
    }
}

/// Removes `Expect: 100-continue`: the gateway answers it itself, once the request is
/// decided and its upstream connected (RFC 9110 10.1.1), so the upstream never waits
/// for a body it did not ask for.
fn take_expect_continue(req: &mut RequestHeader) -> bool {
    let asked = req
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if asked {
        req.remove_header(&header::EXPECT);
    }
    asked && req.version == http::Version::HTTP_11
}

/// The request head as written upstream: hop-by-hop fields dropped, the body's framing
/// as the gateway relays it, a handshake without `Accept-Encoding` (its open packet
/// must reach the gateway readable, to be sealed), the identity fields set last.
fn upstream_head(req: &mut RequestHeader, f: &Forward, framing: Framing) -> Vec<u8> {
    strip_hop_by_hop(req, false);
    if framing == Framing::Chunked {
        let _ = req.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    if f.handshake.is_some() {
        req.remove_header(&header::ACCEPT_ENCODING);
    }
    for (name, value) in &f.identity {
        let _ = req.insert_header(name.clone(), value.clone());
    }
    request_bytes(req)
}

/// Step: send the head and body on `kept` (a kept-alive connection of the request's
/// identity, [`crate::pool`]) or a new connection, read the answer head (interim
/// answers passed on to an HTTP/1.1 client). A kept-alive connection that the upstream had closed, found
/// when writing (the upstream read none of it), or by silence for a `safe` request
/// (`GET`, `HEAD`, `OPTIONS`), is replaced by a new one once, for a request without a
/// body (nothing of it was consumed).
#[allow(clippy::too_many_arguments)]
async fn send(
    gw: &Gateway,
    mut kept: Option<UpstreamStream>,
    conn: &mut Conn,
    addr: SocketAddr,
    mut head: Vec<u8>,
    framing: Framing,
    expect_continue: bool,
    safe: bool,
    ctx: &Ctx,
) -> Result<(UpstreamStream, Received), Unsent> {
    let read_timeout = gw.settings().upstream.read_timeout;
    let body_timeout = Some(gw.settings().proxy.body_read_timeout);
    loop {
        let reused = kept.is_some();
        let mut up = match kept.take() {
            Some(up) => up,
            None => gw
                .dialer()
                .dial(addr)
                .await
                .map_err(|e| Unsent::Upstream(UpstreamFailure::Connect(e)))?,
        };
        let sent = if framing.has_body() {
            if expect_continue {
                let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
                if conn.write_all(cont).await.is_err() || conn.flush().await.is_err() {
                    return Err(Unsent::ClientLeft);
                }
            }
            let source = source_of(framing);
            let encode = if framing == Framing::Chunked {
                Encode::Chunked
            } else {
                Encode::Plain
            };
            // Never tried again (the body is consumed): the head is needed once.
            let head = std::mem::take(&mut head);
            match body::relay(conn, &[], &mut up, head, source, encode, body_timeout).await {
                Ok(_) => Ok(()),
                Err(RelayError::Write(e)) => Err(e),
                Err(RelayError::Malformed) => return Err(Unsent::Malformed),
                Err(RelayError::TimedOut) => return Err(Unsent::ClientTooSlow),
                Err(_) => return Err(Unsent::ClientLeft),
            }
        } else {
            async { up.write_all(&head).await.and(up.flush().await) }.await
        };
        let received = match sent {
            Ok(()) => next_final_head(conn, &mut up, read_timeout, ctx)
                .await
                .map_err(Unsent::Upstream)?,
            Err(e) if reused && !framing.has_body() => {
                tracing::debug!(upstream = %addr, "a kept-alive connection failed ({e}); a new one");
                continue;
            }
            Err(e) => return Err(Unsent::Upstream(UpstreamFailure::Send(e))),
        };
        match received {
            // The upstream may have acted on it: only a safe request is sent again
            // (RFC 9110 9.2.1-9.2.2), so no POST is ever carried out twice.
            Err(NoAnswer::Closed { silent: true }) if reused && safe && !framing.has_body() => {
                tracing::debug!(upstream = %addr, "a kept-alive connection was closed; a new one");
            }
            Err(e) => return Err(Unsent::Upstream(UpstreamFailure::Answer(e))),
            Ok(r) => return Ok((up, r)),
        }
    }
}

/// Reads answer heads until a final one; an interim one (1xx other than `101`) is
/// passed on to an HTTP/1.1 client (RFC 9110 15.2). A `101` to a request that asked
/// for no upgrade is refused.
async fn next_final_head(
    conn: &mut Conn,
    up: &mut UpstreamStream,
    read_timeout: Duration,
    ctx: &Ctx,
) -> Result<Result<Received, NoAnswer>, UpstreamFailure> {
    let mut carry = Vec::new();
    loop {
        let received = match response_head::read(up, read_timeout, carry).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if received.status == 101 {
            return Ok(Err(NoAnswer::Malformed));
        }
        if !(100..200).contains(&received.status) {
            return Ok(Ok(received));
        }
        if !ctx.http10 {
            let mut out = Vec::with_capacity(received.head_len);
            received.render(&mut out, Framed::Bodiless, None);
            // A client that left is noticed when the final answer is written.
            let _ = conn.write_all(&out).await;
            let _ = conn.flush().await;
        }
        carry = received.after().to_vec();
    }
}

/// Step: relay the answer by its framing. `true` when it ended cleanly (the upstream
/// connection may be kept).
async fn relay_answer(
    gw: &Gateway,
    conn: &mut Conn,
    up: &mut UpstreamStream,
    received: &Received,
    body: ResponseBody,
    ctx: &mut Ctx,
) -> bool {
    let (framed, source, encode) = match (body, ctx.http10) {
        (ResponseBody::None, _) => (Framed::Bodiless, None, Encode::Plain),
        (ResponseBody::Length(n), _) => (Framed::Length(n), Some(Source::Length(n)), Encode::Plain),
        // An HTTP/1.0 client reads to the close.
        (ResponseBody::Chunked, true) => (Framed::Close, Some(Source::Chunked), Encode::Plain),
        (ResponseBody::Close, true) => (Framed::Close, Some(Source::UntilClose), Encode::Plain),
        // An HTTP/1.1 client gets chunks, and keeps its connection.
        (ResponseBody::Chunked, false) => (Framed::Chunked, Some(Source::Chunked), Encode::Chunked),
        (ResponseBody::Close, false) => {
            (Framed::Chunked, Some(Source::UntilClose), Encode::Chunked)
        }
    };
    if framed == Framed::Close {
        ctx.keep_alive = false;
    }
    ctx.status = received.status;
    let mut out = Vec::with_capacity(received.head_len + 256);
    received.render(&mut out, framed, connection_field(ctx));
    let Some(source) = source else {
        let written = conn.write_all(&out).await.and(conn.flush().await);
        if written.is_err() {
            ctx.keep_alive = false;
        }
        // Bytes behind a bodiless answer: the upstream is not kept.
        return written.is_ok() && received.after().is_empty();
    };
    let timeout = Some(gw.settings().upstream.read_timeout);
    match body::relay(up, received.after(), conn, out, source, encode, timeout).await {
        Ok(relayed) => !relayed.extra,
        Err(e) => {
            // The head is out: the client learns of the failure by the close.
            ctx.keep_alive = false;
            if !matches!(e, RelayError::Write(_)) {
                ctx.upstream_failed = true;
                tracing::warn!(error = %e, "the upstream's answer body ended early");
            }
            false
        }
    }
}

/// Step: a handshake's answer, read whole and written again with its open packet's
/// `sid` sealed (docs/request-handling.md "Engine.IO sessions"), with its new length.
async fn seal_answer(
    gw: &Gateway,
    conn: &mut Conn,
    up: &mut UpstreamStream,
    received: &Received,
    body: ResponseBody,
    seal: impl FnOnce(&[u8]) -> Option<String>,
    ctx: &mut Ctx,
) -> Result<bool, UpstreamFailure> {
    let source = match body {
        ResponseBody::Length(n) => Source::Length(n),
        ResponseBody::Chunked => Source::Chunked,
        ResponseBody::Close | ResponseBody::None => Source::UntilClose,
    };
    let timeout = Some(gw.settings().upstream.read_timeout);
    let read = body::read_all(up, received.after(), source, MAX_HANDSHAKE_ANSWER, timeout);
    let (bytes, relayed) = read.await.ok_or(UpstreamFailure::Handshake)?;
    let bytes = match rewrite_open_packet(&bytes, seal) {
        Fed::Rewritten(b) | Fed::Unchanged(b) => b,
        Fed::Pass | Fed::Hold => bytes,
        Fed::Refused => return Err(UpstreamFailure::Handshake),
    };
    ctx.status = received.status;
    let mut out = Vec::with_capacity(received.head_len + bytes.len() + 64);
    received.render(
        &mut out,
        Framed::Length(bytes.len() as u64),
        connection_field(ctx),
    );
    out.extend_from_slice(&bytes);
    if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
        ctx.keep_alive = false;
        return Ok(false);
    }
    Ok(!relayed.extra)
}
/// Step: the upstream could not be used: `502`, or `504` when it was too slow (docs/
/// request-handling.md "What the gateway does to a request", 10), and the connection
/// closes.
async fn upstream_failed(
    gw: &Gateway,
    conn: &mut Conn,
    req: &RequestHeader,
    ctx: &mut Ctx,
    addr: Option<SocketAddr>,
    failure: UpstreamFailure,
) {
    ctx.upstream_failed = true;
    ctx.keep_alive = false;
    tracing::warn!(
        upstream = ?addr,
        client = ?conn.peer_addr(),
        request = gw.summary(req),
        error = %failure,
        "upstream failed"
    );
    let answer = Answer::upstream_unavailable(failure.timed_out());
    ctx.status = answer.status;
    let origin = req.headers.get(header::ORIGIN);
    let bytes = answer.render(origin, &gw.settings().auth.cors_origins, Some("close"));
    let _ = conn.write_all(&bytes).await;
    let _ = conn.flush().await;
}
