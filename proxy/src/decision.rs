//! What the gateway decides about a request, the same whichever way the request
//! arrived (docs/request-handling.md "What the gateway does to a request"): through Pingora's HTTP
//! phases, or as an upgrade the gateway carries itself ([`crate::tunnel`]). The
//! decision is made by one function, [`crate::gateway::Gateway::authenticate`]; the
//! two paths only differ in how they write an [`Answer`] and how they forward.
//!
//! Every answer the gateway gives itself is built here, by one constructor each, and
//! its head by [`Answer::head`].

use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use pingora::http::ResponseHeader;

use crate::engineio::{EngineRequest, Handshake};
use crate::failures::RETRY_AFTER;
use crate::verify::{AuthError, ErrorCode};

/// `WWW-Authenticate` for a missing token; invalid tokens add `error` and the reason
/// (RFC 6750 3).
const CHALLENGE: &str = "Bearer realm=\"socket.io\"";

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

    /// `400`: a request the gateway will not read one way while a server reads it
    /// another (framing, `Connection`, paths).
    pub fn bad_request(problem: &str) -> Self {
        Answer::json(400, "bad_request", problem, Outcome::BadRequest)
    }

    /// `431`: a request head over the gateway's 64 KiB limit.
    pub fn head_too_large() -> Self {
        let message = "the request head is too large";
        Answer::json(431, "bad_request", message, Outcome::BadRequest)
    }

    /// `429` with `Retry-After`: too many failed authentications from the address.
    pub fn rate_limited() -> Self {
        let message = "too many failed authentications from this address; retry later";
        Answer::json(429, "rate_limited", message, Outcome::RateLimited)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER))
    }

    /// `503`: no `jwks_url` key set was fetched yet.
    pub fn keys_unavailable() -> Self {
        let message = "the verification keys could not be fetched yet";
        Answer::json(503, "keys_unavailable", message, Outcome::KeysUnavailable)
    }

    /// `502`/`504`: the upstream could not be reached.
    pub fn upstream_unavailable(timed_out: bool) -> Self {
        let (status, message) = if timed_out {
            (504, "the upstream server did not answer in time")
        } else {
            (502, "the upstream server is not reachable")
        };
        Answer::json(status, "upstream_unavailable", message, Outcome::Undecided)
    }

    /// The assertion JWK Set, served by the gateway itself.
    pub fn jwks(body: Bytes) -> Self {
        Answer {
            status: 200,
            content_type: "application/jwk-set+json",
            header: Some((
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            )),
            body,
            outcome: Outcome::Served,
            socketio: None,
        }
    }

    /// A refused token (docs/request-handling.md "What the gateway does to a request", 6 and 7): in
    /// socket.io's terms for a classified Engine.IO request (`reject_with =
    /// "socketio"`), else `403` for a session of another user and `401` with a
    /// challenge for everything else.
    pub fn refusal(err: AuthError, socketio: Option<EngineRequest>) -> Self {
        let outcome = Outcome::Rejected(err.code);
        let mut answer = Answer::json(401, err.code.as_str(), &err.reason, outcome);
        if let Some(kind) = socketio {
            answer.socketio = Some((kind, err));
            return answer;
        }
        match err.code {
            // The token is fine; the session is not this user's.
            ErrorCode::SessionMismatch => {
                answer.status = 403;
                return answer;
            }
            // The token is fine; the session is no one's the gateway knows.
            ErrorCode::UnknownSession => {
                answer.status = 400;
                return answer;
            }
            _ => {}
        }
        let challenge = if err.code == ErrorCode::MissingToken {
            HeaderValue::from_static(CHALLENGE)
        } else {
            // The reason is one of the gateway's own sentences: always a valid value.
            HeaderValue::try_from(format!(
                "{CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
                err.reason
            ))
            .unwrap_or_else(|_| HeaderValue::from_static(CHALLENGE))
        };
        answer.with_header(header::WWW_AUTHENTICATE, challenge)
    }

    /// The answer as bytes on an HTTP/1 connection: its head ([`Answer::head`]) and
    /// body, with `Connection: <connection>` when given.
    pub fn render(
        &self,
        origin: Option<&HeaderValue>,
        cors_origins: &[HeaderValue],
        connection: Option<&str>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Ok(head) = self.head(origin, cors_origins) {
            crate::head::push_headers(&mut out, &head.headers);
        }
        if let Some(c) = connection {
            out.extend_from_slice(b"Connection: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The response head, for both paths: `Content-Type`, `Content-Length`,
    /// `Cache-Control: no-store` (which the answer's own header may replace) and
    /// credentialed CORS for an `Origin` in `cors_origins` (`auth.cors_origins`).
    pub fn head(
        &self,
        origin: Option<&HeaderValue>,
        cors_origins: &[HeaderValue],
    ) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(8))?;
        resp.insert_header(header::CONTENT_TYPE, self.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, self.body.len().to_string())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if let Some((name, value)) = self.header.clone() {
            resp.insert_header(name, value)?;
        }
        if let Some(origin) = origin.filter(|o| cors_origins.contains(o)) {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
        }
        if !cors_origins.is_empty() {
            resp.insert_header(header::VARY, "Origin")?;
        }
        Ok(resp)
    }
}
