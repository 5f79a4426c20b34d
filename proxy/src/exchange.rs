//! One HTTP/1 request that is not a WebSocket upgrade, from its head to its end
//! (docs/request-handling.md "What the gateway does to a request"), carried by the
//! gateway's own code: the head was read and parsed once ([`crate::head`]); the
//! request is **decided** once ([`Gateway::authenticate`]); a refusal is **answered**
//! with bytes rendered at start-up ([`Answer::write`]); anything else is **forwarded**: the
//! rewritten head written once (hop-by-hop fields dropped, identity set last), the
//! body relayed by its framing ([`crate::body`]), the upstream's answer head read
//! strictly ([`crate::response_head`]) and its body relayed by its own framing, the
//! upstream connection kept ([`crate::pool`]) only when both sides ended cleanly
//! ([`crate::forward`]). Each request has one `Ctx`, counted and logged once, by
//! `finish`.
use http::header;
use pingora::http::RequestHeader;
use tokio::io::AsyncWriteExt;

use crate::body::{self, Source};
use crate::conn::Conn;
use crate::connection_options;
use crate::decision::{Answer, Decision, Outcome};
use crate::engineio::EngineRequest;
use crate::forward::forward;
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::head::Head;
use crate::pool::Kept;
use crate::socketio::{self, REFUSED_POST_BYTES};

/// What the client connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next request head.
    Again,
    /// Close.
    Close,
}

/// One request's state, counted and logged once at its end.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// What was decided.
    pub(crate) outcome: Outcome,
    /// The status the client got (`0`: none, the connection just closed).
    pub(crate) status: u16,
    /// Whether the upstream failed (connect, answer, or mid-body).
    pub(crate) upstream_failed: bool,
    /// Whether the client's connection stays open after this request.
    pub(crate) keep_alive: bool,
    /// HTTP/1.0 client (keep-alive only when asked, no chunked answers).
    pub(crate) http10: bool,
}
/// Carries one request whose head is at the start of `conn`'s read-ahead bytes.
/// `draining`: the gateway is shutting down, so the connection closes after it.
pub async fn serve(
    gw: &Gateway,
    kept: &mut Kept<'_>,
    conn: &mut Conn,
    head: Head,
    draining: bool,
) -> Next {
    let _in_flight = gw.enter();
    let Head {
        len,
        framing,
        request: mut req,
        ..
    } = head;
    conn.consume(len);
    // From here a reader of `conn` reads this request's body, and nothing after it.
    conn.deliver(0, framing);
    let http10 = req.version == http::Version::HTTP_10;
    let mut ctx = Ctx {
        outcome: Outcome::Undecided,
        status: 0,
        upstream_failed: false,
        keep_alive: client_keeps_alive(&req) && !draining,
        http10,
    };
    // Not an upgrade (docs/websockets.md): an `Upgrade` field
    // without the `upgrade` connection option, or an HTTP/1.0 one, means nothing (RFC
    // 9110 7.8), so the request is decided and forwarded as if it had none.
    req.remove_header(&header::UPGRADE);
    let client = conn.peer_addr().map(|a| a.ip());
    // A refresh for a session held at another gateway of the cluster asks Redis.
    let decided = match crate::refresh::clustered(gw, &req, client).await {
        Some(answer) => Ok(Decision::Answer(answer)),
        None => gw.authenticate(&mut req, client),
    };
    match decided {
        Ok(Decision::Answer(answer)) => answer_it(gw, conn, &req, framing, answer, &mut ctx).await,
        Ok(Decision::Forward(f)) => forward(gw, kept, conn, &mut req, framing, f, &mut ctx).await,
        Err(e) => {
            tracing::error!("deciding a request failed: {e}");
            let answer = Answer::json(500, "internal_error", "internal error", Outcome::Undecided);
            ctx.keep_alive = false;
            answer_it(gw, conn, &req, framing, answer, &mut ctx).await;
        }
    }
    finish(gw, conn.peer_addr(), &req, &ctx);
    if ctx.keep_alive {
        Next::Again
    } else {
        Next::Close
    }
}

/// Whether the client asked to keep its connection: HTTP/1.1 unless `Connection:
/// close`, HTTP/1.0 only with `Connection: keep-alive` (RFC 9112 9.3).
fn client_keeps_alive(req: &RequestHeader) -> bool {
    let has =
        |token: &[u8]| connection_options::has(connection_options::of_map(&req.headers), token);
    match req.version {
        http::Version::HTTP_11 => !has(b"close"),
        http::Version::HTTP_10 => has(b"keep-alive"),
        _ => false,
    }
}

/// The `Connection` field of an answer: `close` when the connection ends after it,
/// `keep-alive` for an HTTP/1.0 client that keeps it, none otherwise.
pub(crate) fn connection_field(ctx: &Ctx) -> Option<&'static str> {
    match (ctx.keep_alive, ctx.http10) {
        (false, _) => Some("close"),
        (true, true) => Some("keep-alive"),
        (true, false) => None,
    }
}

/// Step: answer from the gateway. A refused request with a body closes the
/// connection after the answer (its body is not read), unless socket.io's refusal
/// read it.
pub(crate) async fn answer_it(
    gw: &Gateway,
    conn: &mut Conn,
    req: &RequestHeader,
    framing: Framing,
    mut answer: Answer,
    ctx: &mut Ctx,
) {
    ctx.outcome = answer.outcome;
    let mut close = framing.has_body();
    if let Some((kind, err)) = answer.socketio.take() {
        // A `POST` to a refused session is read (its `CONNECT`); any other body is not.
        let posted = matches!(kind, EngineRequest::Session { post: true, .. });
        let source = source_of(framing);
        let reader = &mut *conn;
        let timeout = Some(gw.settings().proxy.body_read_timeout);
        let post_body = || async move {
            let read = body::read_all(reader, &[], source, REFUSED_POST_BYTES, timeout).await;
            read.map(|(bytes, _)| bytes)
        };
        let (polling, unread) =
            socketio::polling_answer(gw.refusals(), &err, kind, post_body).await;
        answer = polling;
        close = unread || (close && !posted);
    }
    if close {
        ctx.keep_alive = false;
    }
    ctx.status = answer.status;
    let origin = req.headers.get(header::ORIGIN);
    let cors = &gw.settings().auth.cors_origins;
    let written = answer
        .write(conn, origin, cors, connection_field(ctx))
        .await;
    if written.is_err() || conn.flush().await.is_err() {
        ctx.keep_alive = false;
    }
}

/// How a request body arrives, by its framing.
pub(crate) fn source_of(framing: Framing) -> Source {
    match framing {
        Framing::None => Source::Length(0),
        Framing::Length(n) => Source::Length(n),
        Framing::Chunked => Source::Chunked,
    }
}
/// Step: counts the request in the metrics, then one log line: refusals at `info`
/// (reason, client, redacted request line), everything else at `debug`.
pub(crate) fn finish(
    gw: &Gateway,
    client: Option<std::net::SocketAddr>,
    req: &RequestHeader,
    ctx: &Ctx,
) {
    gw.count(ctx.outcome, ctx.upstream_failed);
    // The line is built only when its level is on: redacting and formatting cost more
    // than the rest of a refusal.
    let on = match ctx.outcome {
        Outcome::Rejected(_) | Outcome::BadRequest => tracing::enabled!(tracing::Level::INFO),
        _ => tracing::enabled!(tracing::Level::DEBUG),
    };
    if !on {
        return;
    }
    let client = client.map(|a| a.to_string()).unwrap_or_default();
    let request = gw.summary(req);
    if !gw.log_refusal(ctx.outcome, &client, &request) {
        tracing::debug!(
            outcome = ?ctx.outcome,
            client,
            request,
            status = ctx.status,
            upstream_failed = ctx.upstream_failed,
            keep_alive = ctx.keep_alive,
            "done"
        );
    }
}
