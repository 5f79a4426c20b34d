//! The forwarding step of a request, the same for an HTTP/1 client
//! ([`crate::exchange`]) and an HTTP/2 stream ([`crate::h2_stream`]): the HTTP/1.1
//! head the gateway writes upstream, the body relayed by its framing, the answer head
//! read strictly (interim answers passed on), the answer relayed by its own framing or,
//! for a handshake, read whole and written again with its `sid` sealed; the upstream
//! connection kept ([`crate::pool`]) only when both sides ended cleanly
//! (docs/request-handling.md "Upstream connections"). What differs between the two
//! clients, how the request body is read and how an answer is written, is a
//! `Downstream`.

use std::net::SocketAddr;
use std::time::Duration;

use http::header;
use pingora::http::RequestHeader;
use tokio::io::AsyncWriteExt;

use crate::body::{self, Source};
use crate::decision::{Answer, Forward};
use crate::dial::DialError;
use crate::engineio::{Fed, rewrite_open_packet};
use crate::exchange::Ctx;
use crate::framing::Framing;
use crate::gateway::Gateway;
use crate::head::{request_bytes, strip_hop_by_hop};
use crate::pool::Kept;
use crate::response_head::{self, NoAnswer, Received, ResponseBody};
use crate::upstream_tls::UpstreamStream;

/// Largest handshake answer read whole to seal its `sid` (an Engine.IO open packet is
/// a few hundred bytes).
const MAX_HANDSHAKE_ANSWER: usize = 64 * 1024;
/// Why a forwarded request got no complete answer from its upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamFailure {
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
pub(crate) enum Unsent {
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

/// The client side of a forwarded request: how its body is read and how answers reach
/// it, for an HTTP/1 connection ([`crate::h1_client`]) or an HTTP/2 stream
/// ([`crate::h2_client`]). The steps and the upstream side are the same for both.
pub(crate) trait Downstream {
    /// The client's address, for the log.
    fn client(&self) -> Option<SocketAddr>;

    /// Writes `head`, then the request body (framed by `framing`), on `up`;
    /// `expect_continue`: the client waits for `100 Continue` before sending it; each
    /// read of the body must make progress within `timeout` (`proxy.body_read_timeout`).
    async fn send_body(
        &mut self,
        up: &mut UpstreamStream,
        head: Vec<u8>,
        framing: Framing,
        expect_continue: bool,
        timeout: Duration,
    ) -> Result<(), Unsent>;

    /// Passes an interim answer (1xx other than `101`) on, where the client's protocol
    /// carries it.
    async fn interim(&mut self, received: &Received, ctx: &Ctx);

    /// Relays the final answer, its body by its framing; `true` when both sides ended
    /// cleanly (the upstream connection may be kept).
    async fn relay(
        &mut self,
        gw: &Gateway,
        up: &mut UpstreamStream,
        received: &Received,
        body: ResponseBody,
        ctx: &mut Ctx,
    ) -> bool;

    /// Writes the final answer with `body` whole, by its length (a handshake's answer,
    /// its `sid` sealed); `true` when it was written.
    async fn whole(&mut self, received: &Received, body: Vec<u8>, ctx: &mut Ctx) -> bool;

    /// Answers a request refused after all (its body is malformed).
    async fn refuse(&mut self, gw: &Gateway, req: &RequestHeader, answer: Answer, ctx: &mut Ctx);

    /// Writes the answer to an upstream failure (on HTTP/1, the connection closes).
    async fn unavailable(&mut self, gw: &Gateway, req: &RequestHeader, answer: &Answer);
}

/// Step: forward to the upstream, relay its answer.
pub(crate) async fn forward<D: Downstream>(
    gw: &Gateway,
    reuse: &mut Kept<'_>,
    down: &mut D,
    req: &mut RequestHeader,
    framing: Framing,
    mut f: Forward,
    ctx: &mut Ctx,
) {
    ctx.outcome = f.outcome;
    let Some(addr) = gw.pick_upstream(Some(&mut f)) else {
        return upstream_failed(gw, down, req, ctx, None, UpstreamFailure::NoServer).await;
    };
    let expect_continue = take_expect_continue(req) && framing.has_body();
    let safe = matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let head = upstream_head(req, &f, framing);
    let kept = reuse.take(addr, &f.identity);
    let sending = Sending {
        addr,
        framing,
        expect_continue,
        safe,
    };
    let (mut up, received) = match send(gw, kept, down, head, &sending, ctx).await {
        Ok(sent) => sent,
        Err(Unsent::ClientLeft) => {
            // The client left mid-body: nothing to answer.
            ctx.keep_alive = false;
            return;
        }
        Err(Unsent::Malformed) => {
            let answer = Answer::bad_request("the chunked body is malformed");
            ctx.keep_alive = false;
            return down.refuse(gw, req, answer, ctx).await;
        }
        Err(Unsent::ClientTooSlow) => {
            // Nothing of an answer was read or sent (the answer is read after the whole
            // body), and the upstream connection that got part of it is dropped.
            let message = "the request body stalled";
            let answer = Answer::json(408, "request_timeout", message, ctx.outcome);
            ctx.keep_alive = false;
            return down.refuse(gw, req, answer, ctx).await;
        }
        Err(Unsent::Upstream(failure)) => {
            return upstream_failed(gw, down, req, ctx, Some(addr), failure).await;
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
            match sealed_body(gw, &mut up, &received, body, seal).await {
                Ok((bytes, extra)) => down.whole(&received, bytes, ctx).await && !extra,
                Err(failure) => {
                    return upstream_failed(gw, down, req, ctx, Some(addr), failure).await;
                }
            }
        }
        _ => down.relay(gw, &mut up, &received, body, ctx).await,
    };
    if relayed && received.keep_alive && body != ResponseBody::Close {
        reuse.put(addr, f.identity, up);
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

/// How a request is sent: to which server, its body's framing, and what may be done
/// again.
#[derive(Debug)]
struct Sending {
    /// The server.
    addr: SocketAddr,
    /// The request body's framing.
    framing: Framing,
    /// The client waits for `100 Continue` before sending its body.
    expect_continue: bool,
    /// `GET`, `HEAD`, `OPTIONS`: may be sent again on a new connection when a kept one
    /// stayed silent (RFC 9110 9.2.2).
    safe: bool,
}

/// Step: send the head and body on `kept` (a kept-alive connection of the request's
/// identity, [`crate::pool`]) or a new connection, read the answer head (interim
/// answers passed on). A kept-alive connection that the upstream had closed, found
/// when writing (the upstream read none of it), or by silence for a `safe` request
/// (`GET`, `HEAD`, `OPTIONS`), is replaced by a new one once, for a request without a
/// body (nothing of it was consumed).
async fn send<D: Downstream>(
    gw: &Gateway,
    mut kept: Option<UpstreamStream>,
    down: &mut D,
    mut head: Vec<u8>,
    how: &Sending,
    ctx: &Ctx,
) -> Result<(UpstreamStream, Received), Unsent> {
    let (addr, framing) = (how.addr, how.framing);
    let read_timeout = gw.settings().upstream.read_timeout;
    let body_timeout = gw.settings().proxy.body_read_timeout;
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
            // Never tried again (the body is consumed): the head is needed once.
            let head = std::mem::take(&mut head);
            down.send_body(&mut up, head, framing, how.expect_continue, body_timeout)
                .await?;
            Ok(())
        } else {
            async { up.write_all(&head).await.and(up.flush().await) }.await
        };
        let received = match sent {
            Ok(()) => next_final_head(down, &mut up, read_timeout, ctx).await,
            Err(e) if reused => {
                tracing::debug!(upstream = %addr, "a kept-alive connection failed ({e}); a new one");
                continue;
            }
            Err(e) => return Err(Unsent::Upstream(UpstreamFailure::Send(e))),
        };
        match received {
            // The upstream may have acted on it: only a safe request is sent again
            // (RFC 9110 9.2.1-9.2.2), so no POST is ever carried out twice.
            Err(NoAnswer::Closed { silent: true }) if reused && how.safe && !framing.has_body() => {
                tracing::debug!(upstream = %addr, "a kept-alive connection was closed; a new one");
            }
            Err(e) => return Err(Unsent::Upstream(UpstreamFailure::Answer(e))),
            Ok(r) => return Ok((up, r)),
        }
    }
}

/// Reads answer heads until a final one; an interim one (1xx other than `101`) is
/// passed on ([`Downstream::interim`], RFC 9110 15.2). A `101` to a request that asked
/// for no upgrade is refused.
async fn next_final_head<D: Downstream>(
    down: &mut D,
    up: &mut UpstreamStream,
    read_timeout: Duration,
    ctx: &Ctx,
) -> Result<Received, NoAnswer> {
    let mut carry = Vec::new();
    loop {
        let received = response_head::read(up, read_timeout, carry).await?;
        if received.status == 101 {
            return Err(NoAnswer::Malformed);
        }
        if !(100..200).contains(&received.status) {
            return Ok(received);
        }
        down.interim(&received, ctx).await;
        carry = received.after().to_vec();
    }
}

/// Step: a handshake's answer body, read whole, its open packet's `sid` sealed
/// (docs/request-handling.md "Engine.IO sessions"); with whether the upstream sent
/// bytes after it.
async fn sealed_body(
    gw: &Gateway,
    up: &mut UpstreamStream,
    received: &Received,
    body: ResponseBody,
    seal: impl FnOnce(&[u8]) -> Option<String>,
) -> Result<(Vec<u8>, bool), UpstreamFailure> {
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
    Ok((bytes, relayed.extra))
}

/// Step: the upstream could not be used: `502`, or `504` when it was too slow (docs/
/// request-handling.md "What the gateway does to a request", 10), and an HTTP/1
/// connection closes.
async fn upstream_failed<D: Downstream>(
    gw: &Gateway,
    down: &mut D,
    req: &RequestHeader,
    ctx: &mut Ctx,
    addr: Option<SocketAddr>,
    failure: UpstreamFailure,
) {
    ctx.upstream_failed = true;
    ctx.keep_alive = false;
    tracing::warn!(
        upstream = ?addr,
        client = ?down.client(),
        request = gw.summary(req),
        error = %failure,
        "upstream failed"
    );
    let answer = Answer::upstream_unavailable(failure.timed_out());
    ctx.status = answer.status;
    down.unavailable(gw, req, &answer).await;
}
