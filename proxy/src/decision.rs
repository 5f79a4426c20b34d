//! What the gateway decides about a request, the same whichever way the request
//! arrived (docs/request-handling.md "What the gateway does to a request"): through Pingora's HTTP
//! phases, or as an upgrade the gateway carries itself ([`crate::tunnel`]). The
//! decision is made by one function, [`crate::gateway::Gateway::authenticate`]; the
//! two paths only differ in how they write an [`Answer`] and how they forward.
//!
//! Every answer the gateway gives itself is built and rendered by [`crate::answers`].

use http::{HeaderName, HeaderValue};

pub use crate::answers::Answer;
use crate::engineio::Handshake;
use crate::verify::ErrorCode;

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
    /// An upgrade's token, for the registry of open WebSockets (refresh, revocation).
    pub live: Option<crate::live_sockets::LiveToken>,
    /// Hash of the sticky key, with several servers.
    pub sticky: u64,
    /// An authenticated handshake (polling, or WebSocket-only), whose answer's open
    /// packet gets the sealed `sid` of the new session.
    pub handshake: Option<Handshake>,
    /// The server the request's Engine.IO session lives on, with several servers (from
    /// its sealed `sid`).
    pub server: Option<std::net::SocketAddr>,
}
