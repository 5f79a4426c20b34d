//! The Pingora proxy: one struct implementing [`ProxyHttp`], per-request state in
//! [`RequestCtx`]. Each phase's doc comment says what it decides. The decision itself,
//! [`Gateway::authenticate`], is shared with the upgrade tunnel ([`crate::tunnel`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::error_resp;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use std::hash::{Hash, Hasher};

use pingora::lb::selection::Consistent;
use pingora::lb::{Backend, LoadBalancer};

use crate::config::{RejectWith, Settings, Sticky};
pub use crate::decision::Outcome;
use crate::decision::{Answer, Decision, Forward};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::path::{Access, normalize};
use crate::sessions::{Handshake, Scan, Sessions, sid_of};
use crate::socketio::{self, EngineRequest, Refusals};
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

    /// Counts one more in flight until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
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

/// Per-request state on Pingora's HTTP path.
#[derive(Debug)]
pub struct RequestCtx {
    /// Decision taken in `request_filter`.
    pub outcome: Outcome,
    /// Whether the upstream could not be reached.
    pub upstream_failed: bool,
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

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
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

    /// The settings the gateway runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The metrics it counts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.in_flight.enter()
    }

    /// Whether this address failed authentication more than `auth.failure_limit` times
    /// per second recently (the estimate spans the current and the previous second).
    fn over_failure_limit(&self, client: Option<IpAddr>) -> bool {
        let (Some(rate), Some(ip)) = (&self.failures, client) else {
            return false;
        };
        let per_second = rate.0.rate_with(
            &rate_key(ip),
            pingora_limits::rate::PROPORTIONAL_RATE_ESTIMATE_CALC_FN,
        );
        per_second > f64::from(self.settings.failure_limit)
    }

    /// Counts one failed authentication of this client address (IPv6: its /64).
    fn count_failure(&self, client: Option<IpAddr>) {
        if let (Some(rate), Some(ip)) = (&self.failures, client) {
            rate.0.observe(&rate_key(ip), 1);
        }
    }

    /// Refuses message framings a server behind us could read differently (request
    /// smuggling, RFC 9112 6.1 and 6.3): more than one `Content-Length` or
    /// `Transfer-Encoding`, a `Content-Length` that is not one number, and any transfer
    /// coding other than plain `chunked`. (With both `Content-Length` and
    /// `Transfer-Encoding`, Pingora's parser has already dropped the length, as RFC 9112
    /// 6.3 says, and closes the connection after the response.)
    fn framing_problem(req: &RequestHeader) -> Option<&'static str> {
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
    fn remove_client_identity(&self, req: &mut RequestHeader) {
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
    /// one that frames or routes the message: proxies strip what `Connection` names
    /// (RFC 9110 7.6.1), so honouring it would let a client delete them.
    fn connection_problem(&self, req: &RequestHeader) -> Option<&'static str> {
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
    fn is_public_fetch(&self, req: &RequestHeader, path: &[u8], query: Option<&[u8]>) -> bool {
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

    /// Decides a request, for both ways requests arrive (Pingora's HTTP phases and the
    /// gateway's own upgrade tunnel): strips client-sent identity headers (every
    /// spelling), refuses framing and `Connection` tricks, normalizes the path, and for
    /// protected paths verifies the token, checks that a session's `sid` belongs to the
    /// token's user, decides the identity headers and strips the token. The request
    /// head is rewritten in place; failed authentications are counted against
    /// `client`.
    pub fn authenticate(
        &self,
        req: &mut RequestHeader,
        client: Option<IpAddr>,
    ) -> Result<Decision> {
        self.remove_client_identity(req);
        if let Some(problem) = Self::framing_problem(req).or_else(|| self.connection_problem(req)) {
            return Ok(bad_request(problem));
        }
        let target = req.raw_path().to_vec();
        let (raw_path, query) = split_target(&target);
        let classified =
            normalize(raw_path).and_then(|path| Ok((self.settings.paths.access(&path)?, path)));
        let (access, path) = match classified {
            Ok(c) => c,
            Err(e) => return Ok(bad_request(&e.to_string())),
        };
        let path_changed = *path != *raw_path;
        let several = matches!(self.upstreams, Upstreams::Many(..));

        if let Some(assertion) = &self.settings.assertion {
            if *path == *assertion.jwks_path().as_bytes()
                && (req.method == http::Method::GET || req.method == http::Method::HEAD)
            {
                return Ok(Decision::Answer(Answer {
                    status: 200,
                    content_type: "application/jwk-set+json",
                    header: Some((
                        header::CACHE_CONTROL,
                        http::HeaderValue::from_static("max-age=300"),
                    )),
                    body: assertion.jwks_body(),
                    outcome: Outcome::Served,
                    socketio: None,
                }));
            }
        }

        if access == Access::Open || self.is_public_fetch(req, &path, query) {
            if path_changed {
                req.set_raw_path(&join_target(&path, query))?;
            }
            return Ok(Decision::Forward(Forward {
                outcome: Outcome::Public,
                identity: Vec::new(),
                close_at: None,
                sticky: if several { ip_hash(client) } else { 0 },
                handshake: None,
            }));
        }

        if self.over_failure_limit(client) {
            self.count_failure(client);
            let answer = Answer::json(
                429,
                "rate_limited",
                "too many failed authentications from this address; retry later",
                Outcome::RateLimited,
            );
            return Ok(Decision::Answer(answer.with_header(
                header::RETRY_AFTER,
                http::HeaderValue::from_static(RETRY_AFTER),
            )));
        }

        let found = match token::extract(
            &self.settings.token_sources,
            &req.headers,
            query.unwrap_or_default(),
        ) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let err = AuthError::new(ErrorCode::MissingToken, "no token was presented");
                return self.refuse(req, client, err);
            }
            Err(e) => {
                let err = AuthError::new(
                    ErrorCode::MalformedToken,
                    match e {
                        token::ExtractError::Duplicate => "the token was given more than once",
                        token::ExtractError::NotText => "the token is not valid text",
                    },
                );
                return self.refuse(req, client, err);
            }
        };
        if !self.settings.keys.available() {
            return Ok(Decision::Answer(Answer::json(
                503,
                "keys_unavailable",
                "the verification keys could not be fetched yet",
                Outcome::KeysUnavailable,
            )));
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
                return self.refuse(req, client, err);
            }
        };
        let sticky = match (several, self.settings.sticky) {
            (false, _) => 0,
            (true, Sticky::Token) => sticky_hash(found.token.as_bytes()),
            (true, Sticky::User) => sticky_hash(verified.user.as_bytes()),
            (true, Sticky::Ip) => ip_hash(client),
        };
        let location = found.location;
        let sid = query.and_then(sid_of);
        if sid.is_some_and(|sid| self.sessions.belongs_to_another(sid, &verified.user)) {
            let err = AuthError::new(
                ErrorCode::SessionMismatch,
                "this Engine.IO session belongs to another user",
            );
            return self.refuse(req, client, err);
        }
        let handshake = (sid.is_none()
            && req.method == http::Method::GET
            && !req.headers.contains_key(header::UPGRADE))
        .then(|| Handshake::new(verified.user.clone()));
        let close_at = self
            .settings
            .close_on_expiry
            .then(|| verified.exp.map(|exp| exp + self.verifier.rules().leeway))
            .flatten();
        let mut identity = Vec::with_capacity(2 + verified.forwarded.len());
        if let Some(a) = &self.settings.assertion {
            let user = String::from_utf8_lossy(verified.user.as_bytes());
            match a.assertion(&user, now_secs() as u64) {
                Ok(v) => identity.push((a.header().clone(), v)),
                Err(e) => return Error::e_explain(ErrorType::InternalError, e),
            }
        }
        identity.push((self.settings.user_header.clone(), verified.user));
        identity.extend(verified.forwarded);

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
        Ok(Decision::Forward(Forward {
            outcome: Outcome::Allowed,
            identity,
            close_at,
            sticky,
            handshake,
        }))
    }

    /// A failed authentication (README "What the gateway does to a request", 6 and 7):
    /// counted against the address, answered in socket.io's terms for Engine.IO v4
    /// requests with `reject_with = "socketio"`, else `403` for a session mismatch and
    /// `401` with a challenge for everything else.
    fn refuse(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        err: AuthError,
    ) -> Result<Decision> {
        self.count_failure(client);
        let outcome = Outcome::Rejected(err.code);
        if self.settings.reject_with == RejectWith::Socketio {
            let query = split_target(req.raw_path()).1.unwrap_or_default();
            if let Some(kind) = socketio::classify(&req.method, &req.headers, query) {
                let mut answer = Answer::json(401, err.code.as_str(), &err.reason, outcome);
                answer.socketio = Some((kind, err));
                return Ok(Decision::Answer(answer));
            }
        }
        if err.code == ErrorCode::SessionMismatch {
            // The token is fine; the session is not this user's.
            return Ok(Decision::Answer(Answer::json(
                403,
                err.code.as_str(),
                &err.reason,
                outcome,
            )));
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
        let answer = Answer::json(401, err.code.as_str(), &err.reason, outcome);
        Ok(Decision::Answer(
            answer.with_header(header::WWW_AUTHENTICATE, challenge),
        ))
    }

    /// The response head of an answer, for both paths: `Content-Type`,
    /// `Content-Length`, `Cache-Control: no-store` (which the answer's own header may
    /// replace) and credentialed CORS for a listed `Origin` (`auth.cors_origins`).
    pub fn answer_head(
        &self,
        answer: &Answer,
        origin: Option<&http::HeaderValue>,
    ) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(answer.status, Some(8))?;
        resp.insert_header(header::CONTENT_TYPE, answer.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if let Some((name, value)) = answer.header.clone() {
            resp.insert_header(name, value)?;
        }
        let origins = &self.settings.cors_origins;
        if let Some(origin) = origin.filter(|o| origins.contains(o)) {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
        }
        if !origins.is_empty() {
            resp.insert_header(header::VARY, "Origin")?;
        }
        Ok(resp)
    }

    /// Writes an answer on Pingora's HTTP path. The connection stays open for the next
    /// request when the refused request had no body (nothing left to drain), as HAProxy
    /// and nginx do; otherwise it is closed.
    async fn write_answer(&self, session: &mut Session, answer: Answer) -> Result<()> {
        if let Some((kind, err)) = &answer.socketio {
            return self.refuse_socketio(session, err, kind.clone()).await;
        }
        let req = session.req_header();
        let head = self.answer_head(&answer, req.headers.get(header::ORIGIN))?;
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

    /// A refusal in socket.io's terms on the HTTP path (README "Refusals the socket.io
    /// client understands", [`socketio`]). WebSocket handshakes are refused by the
    /// tunnel ([`crate::tunnel`]).
    async fn refuse_socketio(
        &self,
        session: &mut Session,
        err: &AuthError,
        kind: EngineRequest,
    ) -> Result<()> {
        const TEXT: &str = "text/plain; charset=UTF-8";
        let plain = |status: u16, content_type: &'static str, body: Bytes| Answer {
            status,
            content_type,
            header: None,
            body,
            outcome: Outcome::Rejected(err.code),
            socketio: None,
        };
        let answer = match kind {
            EngineRequest::PollingHandshake => {
                plain(200, TEXT, Bytes::from(self.refusals.open(err)))
            }
            EngineRequest::Session { sid, post: true } => match self.refusals.get(&sid) {
                Some(refused) => {
                    let body = read_body(session, 64 * 1024).await?;
                    refused.take_post(&body);
                    plain(200, TEXT, Bytes::from_static(b"ok"))
                }
                // Not a session refused here: the token of an established session no
                // longer passes. Engine.IO's answer to a POST it can not take; the
                // client closes the transport and reconnects.
                None => {
                    session.set_keepalive(None);
                    let body = Bytes::from_static(br#"{"code":1,"message":"Session ID unknown"}"#);
                    plain(400, "application/json", body)
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
                plain(200, TEXT, Bytes::from(body))
            }
            EngineRequest::WebSocketHandshake => {
                // Upgrades never reach Pingora's phases (the tunnel takes them).
                plain(400, TEXT, Bytes::from_static(b"upgrade expected"))
            }
        };
        Box::pin(self.write_answer(session, answer)).await
    }

    /// The upstream for a request: the only one, or with several the server a known
    /// session lives on (while healthy), else the healthy one the sticky key hashes to
    /// (remembered for a `sid`, or for the handshake's answer); `None` when no server is
    /// healthy.
    pub fn pick_upstream(
        &self,
        raw_target: &[u8],
        sticky: u64,
        handshake: Option<&mut Handshake>,
    ) -> Option<(SocketAddr, Option<Backend>)> {
        match &self.upstreams {
            Upstreams::One(addr) => Some((*addr, None)),
            Upstreams::Many(lb) => {
                let sid = split_target(raw_target).1.and_then(sid_of);
                let known = sid
                    .and_then(|sid| self.sessions.get(sid)?.server)
                    .filter(|b| lb.backends().ready(b));
                let chosen = known.or_else(|| {
                    let b = lb.select(&sticky.to_le_bytes(), 256)?;
                    match (sid, handshake) {
                        (Some(sid), _) => self.sessions.moved(sid, b.clone()),
                        (None, Some(h)) => h.server = Some(b.clone()),
                        (None, None) => {}
                    }
                    Some(b)
                })?;
                tracing::debug!(sticky, backend = %chosen.addr, "upstream chosen");
                let addr = *chosen.addr.as_inet()?;
                Some((addr, Some(chosen)))
            }
        }
    }

    /// Remembers the session a handshake's answer opened, bound to its user.
    pub fn session_opened(&self, sid: &str, handshake: Handshake) {
        self.sessions.opened(sid, handshake.user, handshake.server);
    }

    /// A request line with tokens redacted, for logs.
    pub fn summary(&self, req: &RequestHeader) -> String {
        let target = String::from_utf8_lossy(req.raw_path());
        format!("{} {}", req.method, self.redactor.redact(&target))
    }
}

/// A `400` for a request the gateway will not read one way while a server reads it
/// another.
fn bad_request(problem: &str) -> Decision {
    Decision::Answer(Answer::json(
        400,
        "bad_request",
        problem,
        Outcome::BadRequest,
    ))
}

/// Hash of the client address (the sticky key without a token).
fn ip_hash(client: Option<IpAddr>) -> u64 {
    match client {
        Some(IpAddr::V4(ip)) => sticky_hash(&ip.octets()),
        Some(IpAddr::V6(ip)) => sticky_hash(&ip.octets()),
        None => 0,
    }
}

impl Gateway {
    /// Counts a finished request in the metrics (both paths).
    pub fn count(&self, outcome: Outcome, upstream_failed: bool) {
        let m = &self.metrics;
        match outcome {
            Outcome::Allowed => m.allowed.inc(),
            Outcome::Public | Outcome::Served => m.public.inc(),
            Outcome::Rejected(code) => {
                m.rejected.inc();
                m.failure(code).inc();
            }
            Outcome::BadRequest | Outcome::KeysUnavailable => m.rejected.inc(),
            Outcome::RateLimited => m.rate_limited.inc(),
            Outcome::Undecided => {}
        }
        if upstream_failed {
            m.upstream_errors.inc();
        }
    }

    /// The log line of a refused request (both paths): rejections and bad requests at
    /// `info` with the reason, the client and the redacted request line. Returns
    /// whether it logged.
    pub fn log_refusal(
        &self,
        outcome: Outcome,
        client: &dyn std::fmt::Display,
        request: &str,
    ) -> bool {
        match outcome {
            Outcome::Rejected(code) => {
                tracing::info!(reason = code.as_str(), client = %client, request, "rejected");
            }
            Outcome::BadRequest => tracing::info!(client = %client, request, "bad request"),
            _ => return false,
        }
        true
    }

    /// The `502`/`504` answer for an upstream that could not be reached.
    pub fn upstream_unavailable(timed_out: bool) -> Answer {
        let (status, message) = if timed_out {
            (504, "the upstream server did not answer in time")
        } else {
            (502, "the upstream server is not reachable")
        };
        Answer::json(status, "upstream_unavailable", message, Outcome::Undecided)
    }
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
            sticky: 0,
            handshake: None,
            identity: Vec::new(),
            _in_flight: self.0.in_flight.enter(),
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
                ctx.identity = f.identity;
                ctx.sticky = f.sticky;
                ctx.handshake = f.handshake;
                Ok(false)
            }
            Decision::Answer(answer) => {
                ctx.outcome = answer.outcome;
                self.0.write_answer(session, answer).await?;
                Ok(true)
            }
        }
    }

    /// The upstream server ([`Gateway::pick_upstream`]); none healthy: `502`.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let target = session.req_header().raw_path();
        let Some((addr, _)) = self
            .0
            .pick_upstream(target, ctx.sticky, ctx.handshake.as_mut())
        else {
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("no healthy upstream server".into()),
                None,
            ));
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.0.settings.connect_timeout);
        peer.options.total_connection_timeout = Some(self.0.settings.connect_timeout);
        Ok(Box::new(peer))
    }

    /// The request as it is written upstream, after Pingora's hop-by-hop sanitizing:
    /// the identity headers are set here, last, so that nothing can remove them.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        for (name, value) in &ctx.identity {
            upstream_request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// The answer to a handshake binds the session it opens to the handshake's user
    /// (and server), before the client can send a request of that session.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let (Some(handshake), Some(chunk)) = (ctx.handshake.as_mut(), body.as_ref()) {
            match handshake.feed(chunk) {
                Scan::More => {}
                Scan::Sid(sid) => {
                    if let Some(h) = ctx.handshake.take() {
                        self.0.session_opened(&sid, h);
                    }
                }
                Scan::None => ctx.handshake = None,
            }
        }
        Ok(None)
    }

    /// Upstream unreachable or timing out: `502`/`504` with a JSON body (README "What
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
            let answer = Gateway::upstream_unavailable(code == 504);
            if let Err(err) = self.0.write_answer(session, answer).await {
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
