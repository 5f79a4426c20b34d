//! The Pingora proxy: one struct implementing [`ProxyHttp`], per-request state in
//! [`RequestCtx`]. Each phase's doc comment says what it decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::error_resp;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use std::hash::{Hash, Hasher};

use pingora::lb::LoadBalancer;
use pingora::lb::selection::Consistent;

use crate::config::{RejectWith, Settings, Sticky};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::path::{Access, normalize};
use crate::sessions::{Handshake, Scan, Sessions, sid_of};
use crate::socketio::{self, EngineRequest, Refusals, WsRefusal};
use crate::token::{self, Location};
use crate::verify::{AuthError, ErrorCode, Rules, Verifier};

/// Query parameters that make a request part of an Engine.IO session: a public path
/// requested with any of them is protected like any other.
const ENGINE_IO_PARAMS: [&str; 3] = ["eio", "transport", "sid"];

/// Counts requests in flight (including upgraded WebSockets), so that shutdown can
/// finish as soon as the last one is done instead of always waiting the full grace.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Requests currently in flight.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }
}

/// Decrements the in-flight count when the request context is dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What happened to a request, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet (the request failed before `request_filter` finished).
    Undecided,
    /// Outside the protected paths, or a public path: passed through.
    Public,
    /// Valid token: forwarded with the identity headers.
    Allowed,
    /// Refused with `401`.
    Rejected(ErrorCode),
    /// Refused with `400` (a path that cannot be normalized safely).
    BadRequest,
    /// Answered `503`: no `jwks_url` key set was ever fetched.
    KeysUnavailable,
    /// Answered `429`: too many failed authentications from this address.
    RateLimited,
    /// Answered by the gateway itself (the assertion JWK Set).
    Served,
}

/// Where requests go: the one server, or several by consistent hashing (Ketama) over the
/// servers that pass their health check.
#[derive(Clone)]
pub enum Upstreams {
    /// A single server.
    One(SocketAddr),
    /// Several servers; health-checked in a background service.
    Many(Arc<LoadBalancer<Consistent>>),
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstreams::One(a) => write!(f, "One({a})"),
            Upstreams::Many(lb) => {
                write!(f, "Many({} servers)", lb.backends().get_backend().len())
            }
        }
    }
}

/// The sticky key, hashed with a fixed-key hasher so that every gateway process (also
/// after a graceful upgrade) maps a key to the same server.
fn sticky_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    /// Decision taken in `request_filter`.
    pub outcome: Outcome,
    /// When an upgraded connection must be closed (`exp + leeway`), seconds since the epoch.
    pub close_at: Option<f64>,
    /// Whether the upstream could not be reached.
    pub upstream_failed: bool,
    /// Whether this request became an open WebSocket (counted in the gauge).
    pub websocket: bool,
    /// Hash of the sticky key (`upstream.sticky`): every request of one Engine.IO
    /// session carries the same token, user and address, so it reaches the same server.
    pub sticky: u64,
    /// An authenticated polling handshake: its answer names the new session, which is
    /// then bound to the user (and the server it went to).
    pub handshake: Option<Handshake>,
    /// The identity headers to send upstream, set in the last phase before the request
    /// is written (`upstream_request_filter`), after Pingora's hop-by-hop sanitizing.
    pub identity: Vec<(http::HeaderName, http::HeaderValue)>,
    _in_flight: InFlightGuard,
}

/// The gateway.
#[derive(Debug)]
pub struct Gateway {
    settings: Arc<Settings>,
    verifier: Verifier,
    redactor: Arc<Redactor>,
    in_flight: InFlight,
    metrics: Metrics,
    upstreams: Upstreams,
    /// Failed authentications per client address (`auth.failure_limit`), `None` when
    /// the limit is off.
    failures: Option<FailureRate>,
    /// Engine.IO sessions refused in socket.io's terms (`reject_with = "socketio"`).
    refusals: Refusals,
    /// Engine.IO sessions seen opened: their user and server.
    sessions: Sessions,
    /// The identity headers' names, lower-case with `-`, to catch client copies under
    /// any spelling a server may fold into them (case, `_` for `-`).
    identity_names: Vec<Vec<u8>>,
}

/// Failed authentications per client address over the last second or two.
struct FailureRate(pingora_limits::rate::Rate);

impl std::fmt::Debug for FailureRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureRate")
    }
}

/// The window of the failed-authentication rate, in seconds.
const FAILURE_WINDOW_SECS: u64 = 1;
const FAILURE_WINDOW: Duration = Duration::from_secs(FAILURE_WINDOW_SECS);

/// `Retry-After` of a `429`: two windows, after which an address that stopped failing
/// has a zero estimate again.
const RETRY_AFTER: &str = "2";
const _: () = assert!(2 * FAILURE_WINDOW_SECS == 2, "RETRY_AFTER is two windows");

/// Reads a request body of at most `limit` bytes (the rest is dropped).
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

/// `WWW-Authenticate` for a missing token; invalid tokens add `error` and the reason.
const CHALLENGE: &str = "Bearer realm=\"socket.io\"";

/// A header-name byte as servers that fold names compare it: lower case, `_` as `-`.
fn fold_header_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// The failed-authentication key of a client address: IPv4 as is (also when written
/// IPv4-mapped), IPv6 by its /64.
fn rate_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

fn join_target(path: &[u8], query: Option<&[u8]>) -> Vec<u8> {
    let mut t = Vec::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    t.extend_from_slice(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        t.push(b'?');
        t.extend_from_slice(q);
    }
    t
}

impl Gateway {
    /// A gateway for these settings.
    pub fn new(
        settings: Arc<Settings>,
        redactor: Arc<Redactor>,
        in_flight: InFlight,
        metrics: Metrics,
        upstreams: Upstreams,
    ) -> Self {
        Gateway {
            upstreams,
            metrics,
            verifier: Verifier::new(Rules::new(&settings), settings.verify_cache),
            refusals: Refusals::default(),
            sessions: Sessions::default(),
            identity_names: settings
                .identity_headers()
                .map(|h| h.as_str().as_bytes().to_vec())
                .collect(),
            failures: (settings.failure_limit > 0)
                .then(|| FailureRate(pingora_limits::rate::Rate::new(FAILURE_WINDOW))),
            settings,
            redactor,
            in_flight,
        }
    }

    /// The rate-limit key of the client: its IPv4 address, or its IPv6 /64 (one
    /// subscriber's usual allocation, so that a client can not get 2^64 budgets by
    /// rotating addresses); `None` for Unix sockets.
    fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| rate_key(a.ip()))
    }

    /// Whether this address failed authentication more than `auth.failure_limit` times
    /// per second recently (the estimate spans the current and the previous second).
    fn over_failure_limit(&self, session: &Session) -> bool {
        let (Some(rate), Some(ip)) = (&self.failures, Self::client_ip(session)) else {
            return false;
        };
        let per_second = rate.0.rate_with(
            &ip,
            pingora_limits::rate::PROPORTIONAL_RATE_ESTIMATE_CALC_FN,
        );
        per_second > f64::from(self.settings.failure_limit)
    }

    /// Counts one failed authentication of this client address.
    fn count_failure(&self, session: &Session) {
        if let (Some(rate), Some(ip)) = (&self.failures, Self::client_ip(session)) {
            rate.0.observe(&ip, 1);
        }
    }

    /// Refuses message framings a server behind us could read differently (request
    /// smuggling, RFC 9112 6.1 and 6.3): more than one `Content-Length` or
    /// `Transfer-Encoding`, and any transfer coding other than plain `chunked`. (With both
    /// `Content-Length` and `Transfer-Encoding`, Pingora's parser has already dropped the
    /// length, as RFC 9112 6.3 says, and closes the connection after the response.)
    fn framing_problem(req: &pingora::http::RequestHeader) -> Option<&'static str> {
        let lengths = req.headers.get_all(header::CONTENT_LENGTH);
        if lengths
            .iter()
            .any(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
        {
            return Some("Content-Length must be a single number");
        }
        let te = req.headers.get_all(header::TRANSFER_ENCODING);
        let mut te_count = 0;
        for v in te.iter() {
            te_count += 1;
            if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Some("only the chunked transfer coding is accepted");
            }
        }
        let cl_count = req.headers.get_all(header::CONTENT_LENGTH).iter().count();
        if te_count > 1 {
            return Some("Transfer-Encoding is given more than once");
        }
        if cl_count > 1 {
            return Some("Content-Length is given more than once");
        }
        None
    }

    /// Whether `name` is a spelling of an identity header that some server reads as
    /// that header: any letter case, `_` for `-`.
    fn is_identity_spelling(&self, name: &[u8]) -> bool {
        self.identity_names.iter().any(|id| {
            id.len() == name.len() && id.iter().zip(name).all(|(a, b)| *a == fold_header_byte(*b))
        })
    }

    /// Removes every client copy of the identity headers, under every spelling.
    fn remove_client_identity(&self, req: &mut pingora::http::RequestHeader) {
        let copies: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| self.is_identity_spelling(n.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in copies {
            req.remove_header(&name);
        }
    }

    /// A `Connection` header naming a header the gateway sets (the identity headers) or
    /// one that frames or routes the message: Pingora strips what `Connection` names
    /// (RFC 9110 7.6.1), so honouring it would let a client delete them.
    fn connection_problem(&self, req: &pingora::http::RequestHeader) -> Option<&'static str> {
        let named = req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        for token in named {
            let framing = [&b"host"[..], b"content-length", b"transfer-encoding"]
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h));
            if framing || self.is_identity_spelling(token) {
                return Some(
                    "the Connection header names a header the gateway sets or frames with",
                );
            }
        }
        None
    }

    /// A public path is exempt only for a plain asset fetch, never for Engine.IO traffic.
    fn is_public_fetch(&self, session: &Session, path: &[u8], query: Option<&[u8]>) -> bool {
        let req = session.req_header();
        if !(req.method == http::Method::GET || req.method == http::Method::HEAD)
            || req.headers.contains_key(header::UPGRADE)
            || !self.settings.paths.is_public(path)
        {
            return false;
        }
        let engine_io = query.is_some_and(|q| {
            token::query_pairs(q).any(|(_, name, _)| {
                ENGINE_IO_PARAMS
                    .iter()
                    .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
            })
        });
        !engine_io
    }

    /// Writes a JSON error response with CORS headers. The connection stays open for the
    /// next request when the refused request had no body (nothing left to drain), as
    /// HAProxy and nginx do; otherwise it is closed.
    async fn respond_json(
        &self,
        session: &mut Session,
        status: u16,
        extra: Option<(http::HeaderName, http::HeaderValue)>,
        code: &str,
        message: &str,
    ) -> Result<()> {
        let body =
            Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string());
        self.respond(session, status, "application/json", extra, body)
            .await
    }

    /// Writes a complete response with CORS headers (see [`Self::respond_json`] for
    /// when the connection stays open).
    async fn respond(
        &self,
        session: &mut Session,
        status: u16,
        content_type: &'static str,
        extra: Option<(http::HeaderName, http::HeaderValue)>,
        body: Bytes,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(8))?;
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        // `extra` may replace any of the above (the JWK Set is cacheable).
        if let Some((name, value)) = extra {
            resp.insert_header(name, value)?;
        }
        // Credentialed CORS only for the listed origins (`auth.cors_origins`).
        let origins = &self.settings.cors_origins;
        if let Some(origin) = session
            .req_header()
            .headers
            .get(header::ORIGIN)
            .filter(|o| origins.contains(o))
            .cloned()
        {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
        }
        if !origins.is_empty() {
            resp.insert_header(header::VARY, "Origin")?;
        }
        let req = session.req_header();
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// Answers a failed authentication (SPEC item 5) without contacting the upstream.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: &AuthError,
    ) -> Result<bool> {
        ctx.outcome = Outcome::Rejected(err.code);
        self.count_failure(session);
        if self.settings.reject_with == RejectWith::Socketio {
            let req = session.req_header();
            let query = req.uri.query().unwrap_or_default().as_bytes();
            if let Some(kind) = socketio::classify(&req.method, &req.headers, query) {
                self.refuse_socketio(session, err, kind).await?;
                return Ok(true);
            }
        }
        if err.code == ErrorCode::SessionMismatch {
            // The token is fine; the session is not this user's.
            self.respond_json(session, 403, None, err.code.as_str(), &err.reason)
                .await?;
            return Ok(true);
        }
        let challenge = if err.code == ErrorCode::MissingToken {
            http::HeaderValue::from_static(CHALLENGE)
        } else {
            http::HeaderValue::try_from(format!(
                "{CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
                err.reason
            ))
            .or_err(ErrorType::InternalError, "building WWW-Authenticate")?
        };
        self.respond_json(
            session,
            401,
            Some((header::WWW_AUTHENTICATE, challenge)),
            err.code.as_str(),
            &err.reason,
        )
        .await?;
        Ok(true)
    }

    /// A refusal in socket.io's terms (SPEC item 14, [`socketio`]).
    async fn refuse_socketio(
        &self,
        session: &mut Session,
        err: &AuthError,
        kind: EngineRequest,
    ) -> Result<()> {
        const TEXT: &str = "text/plain; charset=UTF-8";
        match kind {
            EngineRequest::PollingHandshake => {
                let open = self.refusals.open(err);
                self.respond(session, 200, TEXT, None, Bytes::from(open))
                    .await
            }
            EngineRequest::WebSocketHandshake => self.refuse_websocket(session, err).await,
            EngineRequest::Session { sid, post: true } => match self.refusals.get(&sid) {
                Some(refused) => {
                    let body = read_body(session, 64 * 1024).await?;
                    refused.take_post(&body);
                    self.respond(session, 200, TEXT, None, Bytes::from_static(b"ok"))
                        .await
                }
                // Not a session refused here: the token of an established session no
                // longer passes. Engine.IO's answer to a POST it can not take; the
                // client closes the transport and reconnects.
                None => {
                    session.set_keepalive(None);
                    let body = Bytes::from_static(br#"{"code":1,"message":"Session ID unknown"}"#);
                    self.respond(session, 400, "application/json", None, body)
                        .await
                }
            },
            EngineRequest::Session { sid, post: false } => {
                let answer = match self.refusals.get(&sid) {
                    Some(refused) => {
                        let answer = refused.wait_answer().await;
                        self.refusals.remove(&sid);
                        answer
                    }
                    None => None,
                };
                let body = answer.unwrap_or_else(|| socketio::CLOSE_PACKET.to_string());
                self.respond(session, 200, TEXT, None, Bytes::from(body))
                    .await
            }
        }
    }

    /// Completes a WebSocket-only handshake itself, sends the open packet, answers the
    /// client's `CONNECT` with `CONNECT_ERROR`, and closes.
    async fn refuse_websocket(&self, session: &mut Session, err: &AuthError) -> Result<()> {
        let key = session
            .req_header()
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let mut resp = ResponseHeader::build(101, Some(3))?;
        resp.insert_header(header::UPGRADE, "websocket")?;
        resp.insert_header(header::CONNECTION, "Upgrade")?;
        resp.insert_header(header::SEC_WEBSOCKET_ACCEPT, key)?;
        session.write_response_header(Box::new(resp), false).await?;
        let (mut refusal, open) = WsRefusal::start(err);
        session
            .write_response_body(Some(Bytes::from(open)), false)
            .await?;
        let deadline = tokio::time::Instant::now() + socketio::REFUSED_SESSION_TTL;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
                Ok(Ok(Some(chunk))) => chunk,
                _ => break,
            };
            let (out, done) = refusal.feed(&chunk);
            if !out.is_empty() {
                session
                    .write_response_body(Some(Bytes::from(out)), false)
                    .await?;
            }
            if done {
                break;
            }
        }
        session.write_response_body(None, true).await
    }

    /// Answers an address over `auth.failure_limit` without looking at its token.
    async fn refuse_rate_limited(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        ctx.outcome = Outcome::RateLimited;
        self.count_failure(session);
        self.respond_json(
            session,
            429,
            Some((
                header::RETRY_AFTER,
                http::HeaderValue::from_static(RETRY_AFTER),
            )),
            "rate_limited",
            "too many failed authentications from this address; retry later",
        )
        .await?;
        Ok(true)
    }

    /// Closes an upgraded connection whose token has expired (`close_on_expiry`).
    fn check_expiry(&self, session: &Session, ctx: &RequestCtx) -> Result<()> {
        match ctx.close_at {
            Some(at) if session.was_upgraded() && now_secs() >= at => Error::e_explain(
                ErrorType::Custom("token_expired"),
                "the token of this WebSocket has expired",
            ),
            _ => Ok(()),
        }
    }

    /// Hash of the client address (the sticky key without a token).
    fn ip_hash(session: &Session) -> u64 {
        match session.client_addr().and_then(|a| a.as_inet()) {
            Some(a) => match a.ip() {
                std::net::IpAddr::V4(ip) => sticky_hash(&ip.octets()),
                std::net::IpAddr::V6(ip) => sticky_hash(&ip.octets()),
            },
            None => 0,
        }
    }

    /// The request line with tokens redacted, for logs.
    fn summary(&self, session: &Session) -> String {
        let req = session.req_header();
        let target = String::from_utf8_lossy(req.raw_path());
        format!("{} {}", req.method, self.redactor.redact(&target))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            outcome: Outcome::Undecided,
            close_at: None,
            upstream_failed: false,
            websocket: false,
            sticky: 0,
            handshake: None,
            identity: Vec::new(),
            _in_flight: self.in_flight.enter(),
        }
    }

    /// Decides whether the request may go upstream: strips client-sent identity headers
    /// (every spelling), refuses framing and `Connection` tricks, normalizes the path,
    /// and for protected paths verifies the token, checks that a session's `sid` belongs
    /// to the token's user, decides the identity headers (written in
    /// `upstream_request_filter`) and strips the token. Rejections are written here
    /// (`Ok(true)`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        self.remove_client_identity(session.req_header_mut());
        let req = session.req_header();
        if let Some(problem) = Self::framing_problem(req).or_else(|| self.connection_problem(req)) {
            ctx.outcome = Outcome::BadRequest;
            self.respond_json(session, 400, None, "bad_request", problem)
                .await?;
            return Ok(true);
        }

        let target = session.req_header().raw_path().to_vec();
        let (raw_path, query) = split_target(&target);
        let classified =
            normalize(raw_path).and_then(|path| Ok((self.settings.paths.access(&path)?, path)));
        let (access, path) = match classified {
            Ok(c) => c,
            Err(e) => {
                ctx.outcome = Outcome::BadRequest;
                self.respond_json(session, 400, None, "bad_request", &e.to_string())
                    .await?;
                return Ok(true);
            }
        };
        let path_changed = *path != *raw_path;

        if let Some(assertion) = &self.settings.assertion {
            let method = &session.req_header().method;
            if *path == *assertion.jwks_path().as_bytes()
                && (method == http::Method::GET || method == http::Method::HEAD)
            {
                ctx.outcome = Outcome::Served;
                let cache = (
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("max-age=300"),
                );
                let body = assertion.jwks_body();
                self.respond(session, 200, "application/jwk-set+json", Some(cache), body)
                    .await?;
                return Ok(true);
            }
        }

        if access == Access::Open || self.is_public_fetch(session, &path, query) {
            ctx.outcome = Outcome::Public;
            if matches!(self.upstreams, Upstreams::Many(..)) {
                ctx.sticky = Self::ip_hash(session);
            }
            if path_changed {
                session
                    .req_header_mut()
                    .set_raw_path(&join_target(&path, query))?;
            }
            return Ok(false);
        }

        if self.over_failure_limit(session) {
            return self.refuse_rate_limited(session, ctx).await;
        }

        let req = session.req_header();
        let found = match token::extract(
            &self.settings.token_sources,
            &req.headers,
            query.unwrap_or_default(),
        ) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let err = AuthError::new(ErrorCode::MissingToken, "no token was presented");
                return self.reject(session, ctx, &err).await;
            }
            Err(e) => {
                let err = AuthError::new(
                    ErrorCode::MalformedToken,
                    match e {
                        token::ExtractError::Duplicate => "the token was given more than once",
                        token::ExtractError::NotText => "the token is not valid text",
                    },
                );
                return self.reject(session, ctx, &err).await;
            }
        };
        if !self.settings.keys.available() {
            ctx.outcome = Outcome::KeysUnavailable;
            self.respond_json(
                session,
                503,
                None,
                "keys_unavailable",
                "the verification keys could not be fetched yet",
            )
            .await?;
            return Ok(true);
        }
        let keys = self.settings.keys.current();
        let started = std::time::Instant::now();
        let result = self.verifier.verify(&keys, &found.token, now_secs());
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        let verified = match result {
            Ok(v) => v,
            Err(err) => {
                if err.code == ErrorCode::UnknownKey {
                    self.settings.keys.request_refetch();
                }
                return self.reject(session, ctx, &err).await;
            }
        };
        if matches!(self.upstreams, Upstreams::Many(..)) {
            ctx.sticky = match self.settings.sticky {
                Sticky::Token => sticky_hash(found.token.as_bytes()),
                Sticky::User => sticky_hash(verified.user.as_bytes()),
                Sticky::Ip => Self::ip_hash(session),
            };
        }
        let location = found.location;
        let sid = query.and_then(sid_of);
        if sid.is_some_and(|sid| self.sessions.belongs_to_another(sid, &verified.user)) {
            let err = AuthError::new(
                ErrorCode::SessionMismatch,
                "this Engine.IO session belongs to another user",
            );
            return self.reject(session, ctx, &err).await;
        }
        let req = session.req_header();
        if sid.is_none() && req.method == http::Method::GET && !session.is_upgrade_req() {
            ctx.handshake = Some(Handshake::new(verified.user.clone()));
        }

        ctx.outcome = Outcome::Allowed;
        if self.settings.close_on_expiry {
            ctx.close_at = verified.exp.map(|exp| exp + self.verifier.rules().leeway);
        }
        let assertion = match &self.settings.assertion {
            Some(a) => match a.assertion(
                &String::from_utf8_lossy(verified.user.as_bytes()),
                now_secs() as u64,
            ) {
                Ok(v) => Some((a.header().clone(), v)),
                Err(e) => return Error::e_explain(ErrorType::InternalError, e),
            },
            None => None,
        };
        ctx.identity.extend(assertion);
        ctx.identity
            .push((self.settings.user_header.clone(), verified.user));
        ctx.identity.extend(verified.forwarded);
        let req = session.req_header_mut();
        let mut new_query = None;
        if self.settings.strip_token {
            match location {
                Location::Query(range) => {
                    new_query = Some(token::strip_query(query.unwrap_or_default(), range));
                }
                Location::Authorization => {
                    req.remove_header(&header::AUTHORIZATION);
                }
                Location::Header(name) => {
                    req.remove_header(&name);
                }
                Location::Cookie(name) => {
                    let kept = req
                        .headers
                        .get_all(header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .filter_map(|v| token::strip_cookie(v, &name))
                        .collect::<Vec<_>>()
                        .join("; ");
                    req.remove_header(&header::COOKIE);
                    if !kept.is_empty() {
                        req.insert_header(header::COOKIE, kept)?;
                    }
                }
            }
        }
        if path_changed || new_query.is_some() {
            let q = new_query.as_deref().or(query);
            req.set_raw_path(&join_target(&path, q))?;
        }
        Ok(false)
    }

    /// The upstream server: the only one, or the healthy one the sticky key hashes to
    /// (none healthy: `502`).
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = match &self.upstreams {
            Upstreams::One(addr) => HttpPeer::new(*addr, false, String::new()),
            Upstreams::Many(lb) => {
                let sid = split_target(session.req_header().raw_path())
                    .1
                    .and_then(sid_of);
                let known = sid
                    .and_then(|sid| self.sessions.get(sid)?.server)
                    .filter(|b| lb.backends().ready(b));
                let chosen = known.or_else(|| {
                    let b = lb.select(&ctx.sticky.to_le_bytes(), 256)?;
                    match (sid, ctx.handshake.as_mut()) {
                        (Some(sid), _) => self.sessions.moved(sid, b.clone()),
                        (None, Some(handshake)) => handshake.server = Some(b.clone()),
                        (None, None) => {}
                    }
                    Some(b)
                });
                match chosen {
                    Some(backend) => {
                        tracing::debug!(sticky = ctx.sticky, backend = %backend.addr, "upstream chosen");
                        HttpPeer::new(backend, false, String::new())
                    }
                    None => {
                        return Err(Error::create(
                            ErrorType::ConnectNoRoute,
                            ErrorSource::Upstream,
                            Some("no healthy upstream server".into()),
                            None,
                        ));
                    }
                }
            }
        };
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.options.total_connection_timeout = Some(self.settings.connect_timeout);
        Ok(Box::new(peer))
    }

    /// The request as it is written upstream, after Pingora's hop-by-hop sanitizing:
    /// the identity headers are set here, last, so that nothing can remove them.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        for (name, value) in &ctx.identity {
            upstream_request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// A `101` from the upstream: one more open WebSocket (until `logging`).
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS && !ctx.websocket {
            ctx.websocket = true;
            self.metrics.websockets_open.inc();
        }
        Ok(())
    }

    /// Client-to-upstream bytes (on an upgraded WebSocket: every frame the client sends):
    /// closes the connection once the token has expired.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.check_expiry(session, ctx)
    }

    /// Upstream-to-client bytes (socket.io pings arrive at least once per ping interval):
    /// closes the connection once the token has expired. The answer to a handshake
    /// binds the session it opens to the handshake's user (and server), before the
    /// client can send a request of that session.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.check_expiry(session, ctx)?;
        if let (Some(handshake), Some(chunk)) = (ctx.handshake.as_mut(), body.as_ref()) {
            match handshake.feed(chunk) {
                Scan::More => {}
                Scan::Sid(sid) => {
                    if let Some(h) = ctx.handshake.take() {
                        self.sessions.opened(&sid, h.user, h.server);
                    }
                }
                Scan::None => ctx.handshake = None,
            }
        }
        Ok(None)
    }

    /// Upstream unreachable or timing out: `502`/`504` with a JSON body (SPEC item 8).
    /// The expiry close of an upgraded connection writes nothing (the 101 is out).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let upstream = e.esource() == &ErrorSource::Upstream;
        let code = match e.etype() {
            ErrorType::Custom("token_expired") => 0,
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
            let message = if code == 504 {
                "the upstream server did not answer in time"
            } else {
                "the upstream server is not reachable"
            };
            session.set_keepalive(None);
            if let Err(err) = self
                .respond_json(session, code, None, "upstream_unavailable", message)
                .await
            {
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
        match ctx.outcome {
            Outcome::Allowed => self.metrics.allowed.inc(),
            Outcome::Public => self.metrics.public.inc(),
            Outcome::Rejected(code) => {
                self.metrics.rejected.inc();
                self.metrics.failure(code).inc();
            }
            Outcome::BadRequest | Outcome::KeysUnavailable => self.metrics.rejected.inc(),
            Outcome::RateLimited => self.metrics.rate_limited.inc(),
            Outcome::Served => self.metrics.public.inc(),
            Outcome::Undecided => {}
        }
        if ctx.upstream_failed {
            self.metrics.upstream_errors.inc();
        }
        if ctx.websocket {
            self.metrics.websockets_open.dec();
        }
        let client = || {
            session
                .client_addr()
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        match ctx.outcome {
            Outcome::Rejected(code) => tracing::info!(
                reason = code.as_str(),
                client = %client(),
                request = %self.summary(session),
                "rejected"
            ),
            Outcome::BadRequest => tracing::info!(
                client = %client(),
                request = %self.summary(session),
                "bad request"
            ),
            outcome => tracing::debug!(
                ?outcome,
                client = %client(),
                request = %self.summary(session),
                status = session.response_written().map_or(0, |r| r.status.as_u16()),
                error = e.map(|e| e.etype().as_str()),
                upstream_failed = ctx.upstream_failed,
                "done"
            ),
        }
    }

    /// Pingora's error log line names the request: with tokens redacted.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        self.summary(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_a_failure_budget_per_64() {
        let key = |s: &str| rate_key(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn identity_spellings_fold_case_and_underscore() {
        assert_eq!(fold_header_byte(b'_'), b'-');
        assert_eq!(fold_header_byte(b'X'), b'x');
        let folded: Vec<u8> = b"X_Auth-USER"
            .iter()
            .map(|b| fold_header_byte(*b))
            .collect();
        assert_eq!(folded, b"x-auth-user");
    }
}
