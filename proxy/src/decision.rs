//! What the gateway decides about a request, the same whichever way the request
//! arrived (README "What the gateway does to a request"): through Pingora's HTTP
//! phases, or as an upgrade the gateway carries itself ([`crate::tunnel`]). The
//! decision is made by one function, [`crate::gateway::Gateway::authenticate`]; the
//! two paths only differ in how they write an [`Answer`] and how they forward.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::sessions::Handshake;
use crate::socketio::EngineRequest;
use crate::verify::{AuthError, ErrorCode};

/// What happened to a request, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet (the request failed before it was decided).
    Undecided,
    /// Outside the protected paths, or a public path: passed through.
    Public,
    /// Valid token: forwarded with the identity headers.
    Allowed,
    /// Refused for its token or session (`401`, `403`, or socket.io's refusal).
    Rejected(ErrorCode),
    /// Refused with `400` (a path that cannot be normalized safely, framing tricks).
    BadRequest,
    /// Answered `503`: no `jwks_url` key set was ever fetched.
    KeysUnavailable,
    /// Answered `429`: too many failed authentications from this address.
    RateLimited,
    /// Answered by the gateway itself (the assertion JWK Set).
    Served,
}

/// The decision about one request.
#[derive(Debug)]
pub enum Decision {
    /// Send it upstream (the request head has been rewritten in place).
    Forward(Forward),
    /// Answer it from the gateway; the upstream never sees it.
    Answer(Answer),
}

/// How to forward a request.
#[derive(Debug)]
pub struct Forward {
    /// `Public` or `Allowed`.
    pub outcome: Outcome,
    /// Headers to set last, just before the request is written upstream.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// When an upgraded connection must be closed (`exp + leeway`), seconds since the
    /// epoch (`close_on_expiry`).
    pub close_at: Option<f64>,
    /// Hash of the sticky key, with several servers.
    pub sticky: u64,
    /// An authenticated polling handshake, whose answer binds the new session.
    pub handshake: Option<Handshake>,
}

/// A response the gateway writes itself.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of `body`.
    pub content_type: &'static str,
    /// One more header (`WWW-Authenticate`, `Retry-After`, `Cache-Control`).
    pub header: Option<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
    /// For metrics and logs.
    pub outcome: Outcome,
    /// With `reject_with = "socketio"`, a refused Engine.IO v4 request, answered in
    /// socket.io's protocol instead of `status` and `body`.
    pub socketio: Option<(EngineRequest, AuthError)>,
}

impl Answer {
    /// `{"error": code, "message": message}` with `status`.
    pub fn json(status: u16, code: &str, message: &str, outcome: Outcome) -> Self {
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        Answer {
            status,
            content_type: "application/json",
            header: None,
            body: Bytes::from(body),
            outcome,
            socketio: None,
        }
    }

    /// The same with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.header = Some((name, value));
        self
    }
}
