//! The refresh endpoint (README "Refresh and revocation", docs/websockets.md):
//! `POST <auth.refresh_path>?sid=<sid>` with a fresh token in any `token_sources`
//! entry. Answered by the gateway itself; the upstream never sees it or its token.
//!
//! - a bad token: the usual `401` (docs/request-handling.md), `token_revoked` included;
//! - a valid token of another user than the session's: `403` `session_mismatch`;
//! - no WebSocket of the session open (here, or with `[cluster]` at any gateway):
//!   `404` `{"error":"unknown_session"}`;
//! - otherwise `200` `{"exp": <the token's exp>}`: every open WebSocket of the session
//!   closes at the later of its deadline and the new `exp + leeway`, and is revoked
//!   by the new token's `jti`/`iat` from then on.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, header};
use pingora::http::RequestHeader;

use crate::decision::{Answer, Outcome};
use crate::engineio::EngineQuery;
use crate::gateway::{Gateway, NotVerified};
use crate::live_sockets::{LiveToken, Refreshed, SessionKey};
use crate::revocation::TokenFacts;
use crate::verify::{AuthError, ErrorCode};

/// What the gateway decided about a refresh before looking beyond itself.
#[derive(Debug)]
pub enum Step {
    /// Answered.
    Done(Answer),
    /// Valid, for a session with no WebSocket open here: another gateway of the
    /// cluster may hold it.
    Elsewhere(Elsewhere),
}

/// A valid refresh of a session not open here.
#[derive(Debug)]
pub struct Elsewhere {
    /// The session.
    pub session: SessionKey,
    /// The new token's facts.
    pub token: LiveToken,
    /// Its `exp`.
    pub exp: Option<f64>,
    /// The new close (`exp + leeway`), with `close_on_expiry`.
    pub deadline: Option<f64>,
}

/// Decides a refresh (`query`: the request's query, without `?`), and applies it to
/// the WebSockets open here.
pub fn decide(gw: &Gateway, req: &RequestHeader, query: &[u8], client: Option<IpAddr>) -> Step {
    if req.method != http::Method::POST {
        let answer = Answer::json(
            405,
            "method_not_allowed",
            "a refresh is a POST",
            Outcome::BadRequest,
        )
        .with_header(header::ALLOW, HeaderValue::from_static("POST"));
        return Step::Done(answer);
    }
    let engine = EngineQuery::parse(query);
    if let Some(problem) = engine.problem() {
        return Step::Done(Answer::bad_request(problem));
    }
    let Some(sid) = engine.sid() else {
        return Step::Done(Answer::bad_request("a refresh names its session: ?sid="));
    };
    if gw.failure_limited(client) {
        return Step::Done(Answer::rate_limited());
    }
    let metrics = gw.metrics();
    let verified = match gw.verified_token(req, Some(query)) {
        Ok((_, v)) => v,
        Err(NotVerified::KeysUnavailable) => return Step::Done(Answer::keys_unavailable()),
        Err(NotVerified::Refused(err)) => {
            metrics.refreshes.rejected.inc();
            return Step::Done(gw.refuse_plainly(client, err));
        }
    };
    let facts = TokenFacts {
        user: verified.user.as_bytes(),
        jti: verified.jti.as_deref(),
        iat: verified.iat,
    };
    if gw.revocations().matches(&facts) {
        metrics.refreshes.rejected.inc();
        let err = AuthError::new(ErrorCode::TokenRevoked, "the token has been revoked");
        return Step::Done(gw.refuse_plainly(client, err));
    }
    let Some(session) = gw.settings().auth.sid_seal.open(sid) else {
        return Step::Done(unknown_session(gw));
    };
    if session.user != verified.user.as_bytes() {
        metrics.refreshes.rejected.inc();
        let err = AuthError::new(
            ErrorCode::SessionMismatch,
            "this Engine.IO session belongs to another user",
        );
        return Step::Done(gw.refuse_plainly(client, err));
    }
    let key = SessionKey::of(session.sid.as_bytes(), session.server);
    let deadline = gw.close_at(verified.exp);
    let token = LiveToken {
        session: Some(key),
        user: verified.user,
        jti: verified.jti,
        iat: verified.iat,
    };
    match gw.live().refresh(&key, &token, deadline, gw.revocations()) {
        Refreshed::Moved => Step::Done(extended(gw, verified.exp)),
        Refreshed::Revoked => {
            metrics.refreshes.rejected.inc();
            let err = AuthError::new(ErrorCode::TokenRevoked, "the token has been revoked");
            Step::Done(gw.refuse_plainly(client, err))
        }
        // The sealed `sid` names the user; a socket of it is that user's.
        Refreshed::OtherUser => Step::Done(unknown_session(gw)),
        Refreshed::NotHere => Step::Elsewhere(Elsewhere {
            session: key,
            token,
            exp: verified.exp,
            deadline,
        }),
    }
}

/// With `[cluster]`, a refresh (its path written plainly) on the HTTP/1 path: decided
/// here, and when its session is not open at this gateway, passed on to the one that
/// holds it (docs/clusters.md). `None` for any other request, which
/// [`Gateway::authenticate`] decides (a refresh too, without `[cluster]`).
pub async fn clustered(
    gw: &Gateway,
    req: &RequestHeader,
    client: Option<IpAddr>,
) -> Option<Answer> {
    let cluster = gw.cluster()?;
    let (path, query) = crate::request::split_target(req.raw_path());
    if path != gw.settings().auth.refresh_path.as_slice() {
        return None;
    }
    Some(match decide(gw, req, query.unwrap_or_default(), client) {
        Step::Done(answer) => answer,
        Step::Elsewhere(e) if cluster.refresh_elsewhere(&e).await => extended(gw, e.exp),
        Step::Elsewhere(_) => unknown_session(gw),
    })
}

/// `200` `{"exp": <exp>}`, counted.
pub fn extended(gw: &Gateway, exp: Option<f64>) -> Answer {
    gw.metrics().refreshes.extended.inc();
    let exp = exp.map_or(serde_json::Value::Null, |e| {
        // An integral `exp` (as issuers write it) stays an integer.
        if e.fract() == 0.0 && e.abs() < 9.0e15 {
            serde_json::Value::from(e as i64)
        } else {
            serde_json::Value::from(e)
        }
    });
    json(200, serde_json::json!({ "exp": exp }), Outcome::Served)
}

/// `404` `{"error":"unknown_session"}`, counted.
pub fn unknown_session(gw: &Gateway) -> Answer {
    gw.metrics().refreshes.unknown_session.inc();
    let body = serde_json::json!({ "error": "unknown_session" });
    json(404, body, Outcome::Served)
}

fn json(status: u16, body: serde_json::Value, outcome: Outcome) -> Answer {
    Answer::plain(
        status,
        "application/json",
        Bytes::from(body.to_string()),
        outcome,
    )
}
