//! Pingora's HTTP phases (docs/request-handling.md "What the gateway does to a request")
//! for HTTP/2 requests, whose framing Pingora's HTTP/2 server reads (HTTP/1 requests
//! are carried by [`crate::exchange`], upgrades by [`crate::tunnel`]). One struct
//! implements [`ProxyHttp`] around the shared [`Gateway`], per-request state lives in
//! [`RequestCtx`], and each phase's doc comment says what it decides.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::error_resp;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::decision::{Answer, Decision, Forward, Outcome};
use crate::engineio::{EngineRequest, Fed, MIN_OPEN_PACKET};
use crate::framing::{Framing, map_framing};
use crate::gateway::{Gateway, InFlightGuard};
use crate::sealed_sid::SidSeal;
use crate::socketio::{self, REFUSED_POST_BYTES};
use crate::verify::AuthError;

/// Per-request state on Pingora's HTTP path.
#[derive(Debug)]
pub struct RequestCtx {
    /// Decision taken in `request_filter`.
    pub outcome: Outcome,
    /// Whether the upstream could not be reached.
    pub upstream_failed: bool,
    /// Connects tried again so far (`upstream.retries`).
    pub connect_retries: u32,
    /// How to forward the request (server choice, identity headers set last, the
    /// handshake whose answer binds a new session); `None` when it was answered.
    pub forward: Option<Forward>,
    _in_flight: InFlightGuard,
}

/// Reads a request body of at most `limit` bytes (the rest is dropped).
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

/// Pingora's HTTP phases, for every request that is not an upgrade (the tunnel,
/// [`crate::tunnel`], carries those), around the shared [`Gateway`].
#[derive(Debug, Clone)]
pub struct HttpPath(pub Arc<Gateway>);

#[async_trait]
impl ProxyHttp for HttpPath {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            outcome: Outcome::Undecided,
            upstream_failed: false,
            connect_retries: 0,
            forward: None,
            _in_flight: self.0.enter(),
        }
    }

    /// Decides the request with [`Gateway::authenticate`] (the same decision the
    /// upgrade tunnel makes): answers it here (`Ok(true)`), or keeps what forwarding
    /// needs in the context.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match self.0.authenticate(session.req_header_mut(), client)? {
            Decision::Forward(f) => {
                ctx.outcome = f.outcome;
                ctx.forward = Some(f);
                Ok(false)
            }
            Decision::Answer(answer) => {
                ctx.outcome = answer.outcome;
                self.write_answer(session, answer).await?;
                Ok(true)
            }
        }
    }

    /// The upstream server ([`Gateway::pick_upstream`]); none healthy: `502`.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(addr) = self.0.pick_upstream(ctx.forward.as_mut()) else {
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("no healthy upstream server".into()),
                None,
            ));
        };
        let upstream = &self.0.settings().upstream;
        let mut peer = match &upstream.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => HttpPeer::new(addr, true, tls.sni_text(addr)),
        };
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        peer.options.total_connection_timeout = Some(upstream.connect_timeout);
        peer.options.read_timeout = Some(upstream.read_timeout);
        peer.options.idle_timeout = Some(upstream.pool_idle);
        Ok(Box::new(peer))
    }

    /// A connect that timed out or was refused is tried again, `upstream.retries` times
    /// (docs/configuration.md); the server is chosen again, so a failed one is left
    /// once its health check says so.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retryable = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ConnectRefused
        );
        if retryable && ctx.connect_retries < self.0.settings().upstream.retries {
            ctx.connect_retries += 1;
            e.set_retry(true);
        }
        e
    }

    /// The request as it is written upstream, after Pingora's hop-by-hop sanitizing:
    /// the identity headers are set here, last, so that nothing can remove them. This
    /// path never switches protocols (the tunnel carries WebSockets), so an `Upgrade`
    /// the client asked for (`h2c`) is not passed on.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_request.remove_header(&header::UPGRADE);
        if ctx.forward.as_ref().is_some_and(|f| f.handshake.is_some()) {
            // The open packet must reach the gateway readable, to be sealed.
            upstream_request.remove_header(&header::ACCEPT_ENCODING);
        }
        for (name, value) in ctx.forward.iter().flat_map(|f| &f.identity) {
            upstream_request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// A handshake's answer gets the sealed `sid` (docs/request-handling.md "Engine.IO sessions"), so its
    /// length changes: by a length known now for Engine.IO v4's own answer, else found
    /// in the body (chunked; HTTP/2 frames it anyway).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(f) = ctx.forward.as_mut() else {
            return Ok(());
        };
        let Some(h) = f.handshake.as_mut() else {
            return Ok(());
        };
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        if upstream_response.status != 200 {
            // No session opened: nothing to rewrite.
            f.handshake = None;
            return Ok(());
        }
        let headers = &upstream_response.headers;
        // Read by the gateway's one framing rule: a length only when it is one plain number.
        let length = match map_framing(headers) {
            Ok(Framing::Length(n)) => Some(n),
            _ => None,
        };
        let text = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"))
            && !headers.contains_key(header::CONTENT_ENCODING);
        match length {
            Some(n) if n < MIN_OPEN_PACKET => {
                // Too short to hold an open packet: it passes as it is.
                f.handshake = None;
            }
            Some(n) if h.v4 && text => {
                // Engine.IO's own answer (v4, text/plain): the sealed sid grows it by a
                // length known now, so it keeps a Content-Length and leaves in one write.
                let grown = n + SidSeal::growth(h.user.as_bytes(), h.server) as u64;
                upstream_response.insert_header(header::CONTENT_LENGTH, grown)?;
                h.promised = true;
            }
            _ => {
                // Any other length change is found only in the body: chunked (HTTP/1.1)
                // or ended by the stream (HTTP/2).
                upstream_response.remove_header(&header::CONTENT_LENGTH);
                if session.req_header().version == http::Version::HTTP_11 {
                    upstream_response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
                }
            }
        }
        Ok(())
    }

    /// The answer to a handshake: its open packet's `sid` is replaced by the sealed one
    /// before the client sees it; bytes are held only while the packet is incomplete.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let Some(slot) = ctx.forward.as_mut().map(|f| &mut f.handshake) else {
            return Ok(None);
        };
        let Some(handshake) = slot.as_mut() else {
            return Ok(None);
        };
        let chunk = body.take().unwrap_or_default();
        let (user, server) = (handshake.user.clone(), handshake.server);
        let fed = handshake.feed(&chunk, |sid| self.0.seal_sid(&user, server, sid));
        let promised = handshake.promised;
        let out = match fed {
            Fed::Rewritten(bytes) => {
                *slot = None;
                Some(bytes)
            }
            Fed::Hold if !end_of_stream => None,
            Fed::Pass | Fed::Unchanged(_) | Fed::Hold if promised => {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "the upstream's answer to an Engine.IO handshake held no open packet",
                );
            }
            Fed::Pass => {
                *slot = None;
                *body = Some(chunk);
                return Ok(None);
            }
            Fed::Hold => Some(handshake.finish()),
            Fed::Unchanged(bytes) => {
                *slot = None;
                Some(bytes)
            }
            Fed::Refused => {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "the open packet's sid could not be sealed",
                );
            }
        };
        *body = out.map(Bytes::from);
        Ok(None)
    }

    /// Upstream unreachable or timing out: `502`/`504` with a JSON body (docs/request-handling.md "What
    /// the gateway does to a request", 10).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let upstream = e.esource() == &ErrorSource::Upstream;
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if upstream =>
            {
                504
            }
            _ if upstream => 502,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
            _ if e.esource() == &ErrorSource::Downstream => 400,
            _ => 500,
        };
        if code == 502 || code == 504 {
            ctx.upstream_failed = true;
            session.set_keepalive(None);
            let answer = Answer::upstream_unavailable(code == 504);
            if let Err(err) = self.write_answer(session, answer).await {
                tracing::debug!("could not send the {code} response: {err}");
            }
        } else if code > 0 {
            let resp = error_resp::gen_error_response(code);
            let _ = session.write_error_response(resp, Bytes::new()).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request in the metrics, then one log line per request: rejections at
    /// `info` (reason, client, redacted path), everything else at `debug`.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        self.0.count(ctx.outcome, ctx.upstream_failed);
        // The line is built only when its level is on: redacting and formatting cost
        // more than the rest of a refusal.
        let on = match ctx.outcome {
            Outcome::Rejected(_) | Outcome::BadRequest => tracing::enabled!(tracing::Level::INFO),
            _ => tracing::enabled!(tracing::Level::DEBUG),
        };
        if !on {
            return;
        }
        let client = session
            .client_addr()
            .map(ToString::to_string)
            .unwrap_or_default();
        let request = self.0.summary(session.req_header());
        if !self.0.log_refusal(ctx.outcome, &client, &request) {
            tracing::debug!(
                outcome = ?ctx.outcome,
                client,
                request,
                status = session.response_written().map_or(0, |r| r.status.as_u16()),
                error = e.map(|e| e.etype().as_str()),
                upstream_failed = ctx.upstream_failed,
                "done"
            );
        }
    }

    /// Pingora's error log line names the request: with tokens redacted.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        self.0.summary(session.req_header())
    }
}

impl HttpPath {
    /// Writes an answer on Pingora's HTTP path. The connection stays open for the next
    /// request when the refused request had no body (nothing left to drain), as HAProxy
    /// and nginx do; otherwise it is closed.
    async fn write_answer(&self, session: &mut Session, answer: Answer) -> Result<()> {
        if let Some((kind, err)) = &answer.socketio {
            return self.refuse_socketio(session, err, kind.clone()).await;
        }
        let req = session.req_header();
        let origin = req.headers.get(header::ORIGIN);
        let head = answer.head(origin, &self.0.settings().auth.cors_origins)?;
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(answer.body), true).await
    }

    /// A refusal in socket.io's terms on HTTP/2 (docs/request-handling.md "Refusals
    /// the socket.io client understands", [`socketio::polling_answer`]).
    async fn refuse_socketio(
        &self,
        session: &mut Session,
        err: &AuthError,
        kind: EngineRequest,
    ) -> Result<()> {
        let reader = &mut *session;
        let post_body = move || async move { read_body(reader, REFUSED_POST_BYTES).await.ok() };
        let (answer, close) =
            socketio::polling_answer(self.0.refusals(), err, kind, post_body).await;
        if close {
            session.set_keepalive(None);
        }
        Box::pin(self.write_answer(session, answer)).await
    }
}
