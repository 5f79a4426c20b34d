//! The decision about every request, whichever way it arrived (docs/request-handling.md "What the
//! gateway does to a request"): [`Gateway::authenticate`] is called for every HTTP/1
//! request ([`crate::exchange`]), every HTTP/2 stream ([`crate::h2_stream`]) and by the
//! gateway's own upgrade tunnel ([`crate::tunnel`]). It reads as the steps in order; each step is a named function
//! here or in the module that owns its subject.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header;
use pingora::ErrorType;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::config::{RejectWith, Settings};
use crate::decision::{Answer, Decision, Forward, Outcome};
use crate::dial::Dialer;
use crate::engineio::{EngineQuery, Handshake};
use crate::failures::FailureLimit;
use crate::live_sockets::{LiveSockets, LiveToken, SessionKey};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::path::{Access, normalize};
use crate::refusal::refusals;
use crate::request::{self, IdentityNames, join_target, split_target};
use crate::revocation::{Revocations, TokenFacts};
use crate::sealed_sid::Session;
use crate::socketio::Refusals;
use crate::token::{self, Found, TokenSource};
use crate::upstreams::Upstreams;
use crate::verifier::Verifier;
use crate::verify::{AuthError, ErrorCode, Verified};

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

/// Decrements the in-flight count when the request is done.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gateway: its settings and the state every request shares.
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
    failures: Option<FailureLimit>,
    /// Engine.IO sessions refused in socket.io's terms (`reject_with = "socketio"`).
    refusals: Refusals,
    /// The identity headers, whose client copies are removed under any spelling.
    identity_names: IdentityNames,
    /// Connects to the upstream servers (`upstream.max_connecting`, `upstream.retries`).
    dialer: Dialer,
    /// The WebSockets open here, which refreshes extend and revocations close.
    live: Arc<LiveSockets>,
    /// The revocation entries in force.
    revocations: Arc<Revocations>,
    /// `[cluster]`, when configured.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why no verified token.
pub(crate) enum NotVerified {
    /// Refused: counted as a failed authentication.
    Refused(AuthError),
    /// No `jwks_url` key set was fetched yet: `503`, not the client's failure.
    KeysUnavailable,
}

/// What the request line of a log shows for a query parameter it does not name.
const REDACTED_PARAM: &str = "[redacted]";

impl Gateway {
    /// A gateway for these settings.
    pub fn new(
        settings: Arc<Settings>,
        redactor: Arc<Redactor>,
        in_flight: InFlight,
        metrics: Metrics,
        upstreams: Upstreams,
    ) -> Self {
        crate::answers::prepare();
        Gateway {
            upstreams,
            metrics,
            verifier: Verifier::new(settings.auth.rules.clone(), settings.auth.verify_cache),
            refusals: Refusals::default(),
            identity_names: IdentityNames::new(settings.identity_headers()),
            failures: FailureLimit::new(settings.auth.failure_limit),
            dialer: Dialer::new(&settings.upstream),
            live: Arc::default(),
            cluster: settings
                .cluster
                .as_ref()
                .map(|c| Arc::new(crate::cluster::Cluster::new(c))),
            revocations: Arc::new(crate::revocation_file::initial(&settings.auth)),
            settings,
            redactor,
            in_flight,
        }
    }

    /// The settings the gateway runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Connects to the upstream servers, every request path through the same cap
    /// per server (docs/configuration.md, `upstream.max_connecting`).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The metrics it counts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The WebSockets open here.
    pub fn live(&self) -> &Arc<LiveSockets> {
        &self.live
    }

    /// The revocation entries in force.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// `[cluster]`, when configured.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// When a WebSocket whose token expires at `exp` is closed (`exp + leeway`, with
    /// `close_on_expiry`).
    pub fn close_at(&self, exp: Option<f64>) -> Option<f64> {
        let leeway = self.verifier.rules().leeway;
        self.settings
            .auth
            .close_on_expiry
            .then(|| exp.map(|exp| exp + leeway))
            .flatten()
    }

    /// Whether `client` is over `auth.failure_limit` (then counted once more).
    pub(crate) fn failure_limited(&self, client: Option<IpAddr>) -> bool {
        let over = self.failures.as_ref().is_some_and(|f| f.exceeded(client));
        if over {
            self.count_failure(client);
        }
        over
    }

    /// A failed authentication answered in HTTP's terms whatever `reject_with` says
    /// (a refresh is no Engine.IO request).
    pub(crate) fn refuse_plainly(&self, client: Option<IpAddr>, err: AuthError) -> Answer {
        self.count_failure(client);
        Answer::refusal(err, None)
    }

    /// The Engine.IO sessions refused in socket.io's terms.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.in_flight.enter()
    }

    /// Requests (and WebSockets) in flight, for a drain.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Decides a request, for both ways requests arrive: strips client-sent identity
    /// headers (every spelling), refuses framing and `Connection` tricks, normalizes
    /// the path, and for protected paths reads the Engine.IO parameters (once, in one
    /// spelling), verifies the token, opens the sealed `sid` and checks that its session
    /// belongs to the token's user, decides the identity headers, strips the token and
    /// puts the upstream's own `sid` in the query. The request head is rewritten in
    /// place; failed authentications are counted against `client`.
    pub fn authenticate(
        &self,
        req: &mut RequestHeader,
        client: Option<IpAddr>,
    ) -> Result<Decision> {
        self.identity_names.remove_copies(req);
        let problem =
            request::framing_problem(req).or_else(|| self.identity_names.connection_problem(req));
        if let Some(problem) = problem {
            return Ok(Decision::Answer(Answer::bad_request(problem)));
        }
        let target = req.raw_path().to_vec();
        let (raw_path, query) = split_target(&target);
        let engine = EngineQuery::parse(query.unwrap_or_default());
        let classified = normalize(raw_path)
            .and_then(|path| Ok((self.settings.auth.paths.access(&path)?, path)));
        let (access, path) = match classified {
            Ok(c) => c,
            Err(e) => return Ok(Decision::Answer(Answer::bad_request(&e.to_string()))),
        };
        if let Some(answer) = self.own_answer(req, &path) {
            return Ok(Decision::Answer(answer));
        }
        if *path == *self.settings.auth.refresh_path {
            let step = crate::refresh::decide(self, req, query.unwrap_or_default(), client);
            return Ok(Decision::Answer(match step {
                crate::refresh::Step::Done(answer) => answer,
                crate::refresh::Step::Elsewhere(_) => crate::refresh::unknown_session(self),
            }));
        }
        let path_changed = *path != *raw_path;
        if access == Access::Open || self.is_public_fetch(req, &path, &engine) {
            if path_changed {
                request::set_target(req, &join_target(&path, query))?;
            }
            return Ok(Decision::Forward(Forward {
                outcome: Outcome::Public,
                identity: Vec::new(),
                close_at: None,
                live: None,
                sticky: self.upstreams.client_key(client),
                handshake: None,
                server: None,
            }));
        }
        if let Some(problem) = engine.problem() {
            return Ok(Decision::Answer(Answer::bad_request(problem)));
        }
        if self.failures.as_ref().is_some_and(|f| f.exceeded(client)) {
            self.count_failure(client);
            return Ok(Decision::Answer(Answer::rate_limited()));
        }
        let (found, verified) = match self.verified_token(req, query) {
            Ok(v) => v,
            Err(NotVerified::Refused(err)) => return Ok(self.refuse(req, &engine, client, err)),
            Err(NotVerified::KeysUnavailable) => {
                return Ok(Decision::Answer(Answer::keys_unavailable()));
            }
        };
        let facts = TokenFacts {
            user: verified.user.as_bytes(),
            jti: verified.jti.as_deref(),
            iat: verified.iat,
        };
        if self.revocations.matches(&facts) {
            let err = AuthError::new(ErrorCode::TokenRevoked, "the token has been revoked");
            return Ok(self.refuse(req, &engine, client, err));
        }
        let session = match self.session_of(&engine, &verified) {
            Ok(session) => session,
            Err(err) => return Ok(self.refuse(req, &engine, client, err)),
        };
        let sticky = self.upstreams.sticky_key(
            self.settings.upstream.sticky,
            &found.token,
            &verified.user,
            client,
        );
        let handshake = engine
            .is_handshake(&req.method)
            .then(|| Handshake::new(verified.user.clone(), engine.is_v4()));
        let close_at = self.close_at(verified.exp);
        // An upgrade's token, for the registry of open WebSockets: refreshed and
        // revoked by it (docs/websockets.md, "Refresh and revocation").
        let live = req
            .headers
            .contains_key(header::UPGRADE)
            .then(|| LiveToken {
                session: session
                    .as_ref()
                    .map(|s| SessionKey::of(s.sid.as_bytes(), s.server)),
                user: verified.user.clone(),
                jti: verified.jti.clone(),
                iat: verified.iat,
            });
        let identity = self.identity(verified)?;
        let strip = self.settings.auth.strip_token;
        let tokens: Vec<std::ops::Range<usize>> = if strip {
            request::strip_token_carriers(req, &self.settings.auth.token_sources)?;
            token::query_pairs(query.unwrap_or_default())
                .filter(|(_, name, _)| {
                    self.settings
                        .auth
                        .token_sources
                        .iter()
                        .any(|s| matches!(s, TokenSource::Query(q) if **name == *q.as_bytes()))
                })
                .map(|(range, _, _)| range)
                .collect()
        } else {
            Vec::new()
        };
        let sid = session.as_ref().zip(engine.sid_range());
        let new_query = (!tokens.is_empty() || sid.is_some()).then(|| {
            let sid = sid.map(|(s, range)| (range, s.sid.as_bytes()));
            request::rewrite_query(query.unwrap_or_default(), &tokens, sid)
        });
        if path_changed || new_query.is_some() {
            let q = new_query.as_deref().or(query);
            request::set_target(req, &join_target(&path, q))?;
        }
        Ok(Decision::Forward(Forward {
            outcome: Outcome::Allowed,
            identity,
            close_at,
            live,
            sticky,
            handshake,
            server: session.and_then(|s| s.server),
        }))
    }

    /// The session a request's sealed `sid` names (docs/request-handling.md "Engine.IO sessions"), when
    /// it names one: refused when no gateway with this key handed it out, or when it
    /// belongs to another user than the token's.
    fn session_of(
        &self,
        engine: &EngineQuery<'_>,
        verified: &Verified,
    ) -> std::result::Result<Option<Session>, AuthError> {
        let Some(sid) = engine.sid() else {
            return Ok(None);
        };
        let Some(session) = self.settings.auth.sid_seal.open(sid) else {
            return Err(refusals::UNKNOWN_SESSION);
        };
        if session.user != verified.user.as_bytes() {
            return Err(refusals::SESSION_MISMATCH);
        }
        Ok(Some(session))
    }

    /// What the gateway serves itself: the assertion JWK Set.
    fn own_answer(&self, req: &RequestHeader, path: &[u8]) -> Option<Answer> {
        let assertion = self.settings.assertion.as_ref()?;
        let fetch = req.method == http::Method::GET || req.method == http::Method::HEAD;
        (fetch && path == assertion.jwks_path().as_bytes())
            .then(|| Answer::jwks(assertion.jwks_body()))
    }

    /// A public path is exempt only for a plain asset fetch, never for Engine.IO traffic.
    fn is_public_fetch(&self, req: &RequestHeader, path: &[u8], engine: &EngineQuery<'_>) -> bool {
        (req.method == http::Method::GET || req.method == http::Method::HEAD)
            && !req.headers.contains_key(header::UPGRADE)
            && self.settings.auth.paths.is_public(path)
            && !engine.is_engine_io()
    }

    /// The token of a protected request, found and verified.
    pub(crate) fn verified_token<'r>(
        &self,
        req: &'r RequestHeader,
        query: Option<&'r [u8]>,
    ) -> std::result::Result<(Found<'r>, Verified), NotVerified> {
        let sources = &self.settings.auth.token_sources;
        let found = match token::extract(sources, &req.headers, query.unwrap_or_default()) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(NotVerified::Refused(refusals::NO_TOKEN)),
            Err(e) => {
                let err = match e {
                    token::ExtractError::Duplicate => refusals::DUPLICATE,
                    token::ExtractError::NotText => refusals::NOT_TEXT,
                };
                return Err(NotVerified::Refused(err));
            }
        };
        if !self.settings.auth.keys.available() {
            return Err(NotVerified::KeysUnavailable);
        }
        let keys = self.settings.auth.keys.current();
        let started = std::time::Instant::now();
        let result = self.verifier.verify(&keys, &found.token, now_secs());
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(verified) => Ok((found, verified)),
            Err(err) => {
                if err.code == ErrorCode::UnknownKey {
                    self.settings.auth.keys.request_refetch();
                }
                Err(NotVerified::Refused(err))
            }
        }
    }

    /// The identity headers of a verified token: the assertion (when configured), the
    /// user, and the forwarded claims.
    fn identity(&self, verified: Verified) -> Result<Vec<(http::HeaderName, http::HeaderValue)>> {
        let mut identity = Vec::with_capacity(2 + verified.forwarded.len());
        if let Some(a) = &self.settings.assertion {
            let user = String::from_utf8_lossy(verified.user.as_bytes());
            match a.assertion(&user, now_secs() as u64) {
                Ok(v) => identity.push((a.header().clone(), v)),
                Err(e) => return Error::e_explain(ErrorType::InternalError, e),
            }
        }
        identity.push((self.settings.auth.user_header.clone(), verified.user));
        identity.extend(verified.forwarded);
        Ok(identity)
    }

    /// A failed authentication: counted against the address, and answered by
    /// [`Answer::refusal`] (in socket.io's terms for Engine.IO v4 requests with
    /// `reject_with = "socketio"`).
    fn refuse(
        &self,
        req: &RequestHeader,
        engine: &EngineQuery<'_>,
        client: Option<IpAddr>,
        err: AuthError,
    ) -> Decision {
        self.count_failure(client);
        let socketio = (self.settings.auth.reject_with == RejectWith::Socketio)
            .then(|| engine.classify(&req.method, &req.headers))
            .flatten();
        Decision::Answer(Answer::refusal(err, socketio))
    }

    /// Counts one failed authentication of this address, when the limit is on.
    fn count_failure(&self, client: Option<IpAddr>) {
        if let Some(f) = &self.failures {
            f.count(client);
        }
    }

    /// The upstream for a request ([`Upstreams::pick`]): the server its session lives
    /// on, else by its sticky key; `None` when no server is healthy. A handshake
    /// remembers the server, to seal it into the new session's `sid`.
    pub fn pick_upstream(&self, forward: Option<&mut Forward>) -> Option<SocketAddr> {
        let Some(forward) = forward else {
            return self.upstreams.pick(None, 0);
        };
        let addr = self.upstreams.pick(forward.server, forward.sticky)?;
        if let Some(h) = forward.handshake.as_mut() {
            h.server = self.upstreams.several().then_some(addr);
        }
        Some(addr)
    }

    /// The sealed `sid` the client gets for the session a handshake opened
    /// (docs/request-handling.md "Engine.IO sessions").
    pub fn seal_sid(
        &self,
        user: &http::HeaderValue,
        server: Option<SocketAddr>,
        sid: &[u8],
    ) -> Option<String> {
        let sealed = self
            .settings
            .auth
            .sid_seal
            .seal(sid, user.as_bytes(), server);
        if sealed.is_none() {
            tracing::warn!(
                "an Engine.IO session id or user is too long to seal; handshake refused"
            );
        }
        sealed
    }

    /// A request line with tokens redacted, for logs.
    pub fn summary(&self, req: &RequestHeader) -> String {
        let (path, query) = split_target(req.raw_path());
        let mut line = format!(
            "{} {}",
            req.method,
            self.redactor.redact(&String::from_utf8_lossy(path))
        );
        // Of the query, only Engine.IO's EIO and transport are written: any other
        // parameter, under any name or spelling, may carry a token or a session id.
        if let Some(query) = query {
            for (i, pair) in query.split(|b| *b == b'&').enumerate() {
                line.push(if i == 0 { '?' } else { '&' });
                let shown = [&b"EIO="[..], b"transport="].iter().any(|name| {
                    pair.starts_with(name)
                        && pair.len() <= name.len() + 9
                        && pair[name.len()..].iter().all(u8::is_ascii_alphanumeric)
                });
                match std::str::from_utf8(pair) {
                    Ok(pair) if shown => line.push_str(pair),
                    _ => line.push_str(REDACTED_PARAM),
                }
            }
        }
        line
    }

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
}
