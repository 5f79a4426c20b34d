//! Every answer the gateway gives itself (docs/request-handling.md "What the gateway
//! does to a request"): built here, by one constructor each, and written here, as bytes
//! on an HTTP/1 connection ([`Answer::write`]) or as a Pingora head on HTTP/2
//! ([`Answer::head`]).
//!
//! What does not depend on the request is rendered once, at start-up ([`prepare`]), as
//! sozu's `answers.rs` does: for every refusal the gateway makes ([`refusals::ALL`])
//! and every other fixed answer, the status line, `Content-Type`, `Content-Length`,
//! `Cache-Control`, the answer's own field (`WWW-Authenticate` with the reason, RFC
//! 6750 3; `Retry-After`) and the JSON body. A request only adds what varies:
//! credentialed CORS for its `Origin` (`auth.cors_origins`), `Vary`, and `Connection`.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use pingora::http::ResponseHeader;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::decision::Outcome;
use crate::engineio::EngineRequest;
use crate::failures::RETRY_AFTER;
use crate::refusal::{AuthError, ErrorCode, refusals};

/// `WWW-Authenticate` for a missing token; invalid tokens add `error` and the reason
/// (RFC 6750 3).
const CHALLENGE: &str = "Bearer realm=\"socket.io\"";

/// A response the gateway writes itself. Its fields are set by its constructor and
/// not changed after: the head of a fixed answer was rendered from them at start-up.
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
    /// The status line and fields up to the answer's own one, rendered at start-up
    /// from the fields above; `None` for an answer made for its request.
    fixed_head: Option<&'static [u8]>,
}

/// A fixed answer, rendered at start-up.
#[derive(Debug)]
struct Fixed {
    status: u16,
    content_type: &'static str,
    header: Option<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    /// Status line to the answer's own field ([`render_head`]).
    head: Vec<u8>,
}

impl Fixed {
    fn new(status: u16, header: Option<(HeaderName, HeaderValue)>, body: String) -> Self {
        let content_type = "application/json";
        let head = render_head(status, content_type, body.len(), header.as_ref());
        Fixed {
            status,
            content_type,
            header,
            body: body.into_bytes(),
            head,
        }
    }

    /// `{"error": code, "message": message}` with `status`.
    fn json(status: u16, code: &str, message: &str) -> Self {
        Fixed::new(status, None, json_body(code, message))
    }

    /// The answer, sharing the rendered bytes.
    fn answer(&'static self, outcome: Outcome) -> Answer {
        Answer {
            status: self.status,
            content_type: self.content_type,
            header: self.header.clone(),
            body: Bytes::from_static(&self.body),
            outcome,
            socketio: None,
            fixed_head: Some(&self.head),
        }
    }
}

/// Every fixed answer.
#[derive(Debug)]
struct Prepared {
    /// The refusals of [`refusals::ALL`], by code (indexed by [`ErrorCode::index`]),
    /// each with its reason.
    refusals: [Vec<(&'static str, Fixed)>; ErrorCode::ALL.len()],
    rate_limited: Fixed,
    keys_unavailable: Fixed,
    head_too_large: Fixed,
    bad_gateway: Fixed,
    gateway_timeout: Fixed,
}

static PREPARED: LazyLock<Prepared> = LazyLock::new(|| {
    let mut by_code: [Vec<(&'static str, Fixed)>; ErrorCode::ALL.len()] = Default::default();
    for err in refusals::ALL {
        let Cow::Borrowed(reason) = err.reason else {
            continue;
        };
        by_code[err.code.index()].push((reason, refusal(&err)));
    }
    let retry_after = (header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    Prepared {
        refusals: by_code,
        rate_limited: Fixed::new(
            429,
            Some(retry_after),
            json_body(
                "rate_limited",
                "too many failed authentications from this address; retry later",
            ),
        ),
        keys_unavailable: Fixed::json(
            503,
            "keys_unavailable",
            "the verification keys could not be fetched yet",
        ),
        head_too_large: Fixed::json(431, "bad_request", "the request head is too large"),
        bad_gateway: Fixed::json(
            502,
            "upstream_unavailable",
            "the upstream server is not reachable",
        ),
        gateway_timeout: Fixed::json(
            504,
            "upstream_unavailable",
            "the upstream server did not answer in time",
        ),
    }
});

/// Renders every fixed answer: called once at start-up, so that no request pays for it.
pub fn prepare() {
    LazyLock::force(&PREPARED);
}

/// The HTTP answer to a refused token: `403` for a session of another user, `400` for
/// a session no gateway opened, `401` with a challenge for everything else.
fn refusal(err: &AuthError) -> Fixed {
    let body = json_body(err.code.as_str(), &err.reason);
    let challenge = match err.code {
        ErrorCode::SessionMismatch => return Fixed::new(403, None, body),
        ErrorCode::UnknownSession => return Fixed::new(400, None, body),
        ErrorCode::MissingToken => HeaderValue::from_static(CHALLENGE),
        // The reason is one of the gateway's own sentences: always a valid value.
        _ => HeaderValue::try_from(format!(
            "{CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
            err.reason
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(CHALLENGE)),
    };
    Fixed::new(401, Some((header::WWW_AUTHENTICATE, challenge)), body)
}

/// `{"error": code, "message": message}`.
fn json_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

/// The status line and the fields that do not depend on the request: `Content-Type`,
/// `Content-Length`, `Cache-Control: no-store` (which the answer's own header may
/// replace, in its place) and the answer's own header.
fn render_head(
    status: u16,
    content_type: &str,
    body_len: usize,
    own: Option<&(HeaderName, HeaderValue)>,
) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {body_len}\r\n"
    )
    .into_bytes();
    let line = |out: &mut Vec<u8>, name: &HeaderName, value: &[u8]| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    match own {
        Some((name, value)) if *name == header::CACHE_CONTROL => {
            line(&mut out, name, value.as_bytes());
        }
        Some((name, value)) => {
            line(&mut out, &header::CACHE_CONTROL, b"no-store");
            line(&mut out, name, value.as_bytes());
        }
        None => line(&mut out, &header::CACHE_CONTROL, b"no-store"),
    }
    out
}

impl Answer {
    /// Whether its head was rendered at start-up.
    pub fn is_fixed(&self) -> bool {
        self.fixed_head.is_some()
    }

    /// `{"error": code, "message": message}` with `status`, made for its request.
    pub fn json(status: u16, code: &str, message: &str, outcome: Outcome) -> Self {
        Answer::plain(
            status,
            "application/json",
            Bytes::from(json_body(code, message)),
            outcome,
        )
    }

    /// `body` of `content_type` with `status`, made for its request.
    pub fn plain(status: u16, content_type: &'static str, body: Bytes, outcome: Outcome) -> Self {
        Answer {
            status,
            content_type,
            header: None,
            body,
            outcome,
            socketio: None,
            fixed_head: None,
        }
    }

    /// The same answer with its one more header set (then rendered for its request).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.header = Some((name, value));
        self.fixed_head = None;
        self
    }

    /// `400`: a request the gateway will not read one way while a server reads it
    /// another (framing, `Connection`, paths).
    pub fn bad_request(problem: &str) -> Self {
        Answer::json(400, "bad_request", problem, Outcome::BadRequest)
    }

    /// `431`: a request head over the gateway's 64 KiB limit.
    pub fn head_too_large() -> Self {
        PREPARED.head_too_large.answer(Outcome::BadRequest)
    }

    /// `429` with `Retry-After`: too many failed authentications from the address.
    pub fn rate_limited() -> Self {
        PREPARED.rate_limited.answer(Outcome::RateLimited)
    }

    /// `503`: no `jwks_url` key set was fetched yet.
    pub fn keys_unavailable() -> Self {
        PREPARED.keys_unavailable.answer(Outcome::KeysUnavailable)
    }

    /// `502`/`504`: the upstream could not be reached.
    pub fn upstream_unavailable(timed_out: bool) -> Self {
        let fixed = if timed_out {
            &PREPARED.gateway_timeout
        } else {
            &PREPARED.bad_gateway
        };
        fixed.answer(Outcome::Undecided)
    }

    /// The assertion JWK Set, served by the gateway itself.
    pub fn jwks(body: Bytes) -> Self {
        let mut answer = Answer::plain(200, "application/jwk-set+json", body, Outcome::Served);
        answer.header = Some((
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        ));
        answer
    }

    /// A refused token (docs/request-handling.md "What the gateway does to a request",
    /// 6 and 7): in socket.io's terms for a classified Engine.IO request (`reject_with
    /// = "socketio"`), else `403` for a session of another user, `400` for a session
    /// no gateway opened, and `401` with a challenge for everything else. The answers
    /// of [`refusals::ALL`] were rendered at start-up.
    pub fn refusal(err: AuthError, socketio: Option<EngineRequest>) -> Self {
        let outcome = Outcome::Rejected(err.code);
        let mut answer = match PREPARED.refusals[err.code.index()]
            .iter()
            .find(|(reason, _)| *reason == err.reason)
        {
            Some((_, fixed)) => fixed.answer(outcome),
            None => {
                let fixed = refusal(&err);
                let body = Bytes::from(fixed.body);
                let mut answer = Answer::plain(fixed.status, fixed.content_type, body, outcome);
                answer.header = fixed.header;
                answer
            }
        };
        answer.socketio = socketio.map(|kind| (kind, err));
        answer
    }

    /// Writes the answer on an HTTP/1 connection, as [`Answer::render`]. Small writes:
    /// the connection gathers them into one `send` ([`crate::conn`]).
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        origin: Option<&HeaderValue>,
        cors_origins: &[HeaderValue],
        connection: Option<&str>,
    ) -> std::io::Result<()> {
        let head = self.head_bytes();
        for piece in self.pieces(&head, origin, cors_origins, connection) {
            w.write_all(piece).await?;
        }
        Ok(())
    }

    /// The answer as bytes on an HTTP/1 connection, as [`Answer::write`] writes it.
    pub fn render(
        &self,
        origin: Option<&HeaderValue>,
        cors_origins: &[HeaderValue],
        connection: Option<&str>,
    ) -> Vec<u8> {
        let head = self.head_bytes();
        self.pieces(&head, origin, cors_origins, connection)
            .collect::<Vec<_>>()
            .concat()
    }

    /// The status line to the answer's own field: rendered at start-up, or now.
    fn head_bytes(&self) -> Cow<'static, [u8]> {
        match self.fixed_head {
            Some(head) => Cow::Borrowed(head),
            None => Cow::Owned(render_head(
                self.status,
                self.content_type,
                self.body.len(),
                self.header.as_ref(),
            )),
        }
    }

    /// The answer's bytes in order: its `head` ([`render_head`]), credentialed CORS for
    /// an `Origin` in `cors_origins`, `Vary: Origin` whenever `cors_origins` is set,
    /// `Connection: <connection>` when given, the blank line and the body.
    fn pieces<'a>(
        &'a self,
        head: &'a [u8],
        origin: Option<&'a HeaderValue>,
        cors_origins: &[HeaderValue],
        connection: Option<&'a str>,
    ) -> impl Iterator<Item = &'a [u8]> + Send + 'a {
        let cors = origin.filter(|o| cors_origins.contains(o));
        let vary: &[u8] = if cors_origins.is_empty() {
            b""
        } else {
            b"vary: Origin\r\n"
        };
        [
            head,
            cors.map_or(b"", |_| b"access-control-allow-origin: "),
            cors.map_or(b"", HeaderValue::as_bytes),
            cors.map_or(b"", |_| b"\r\naccess-control-allow-credentials: true\r\n"),
            vary,
            connection.map_or(b"", |_| b"Connection: "),
            connection.map_or(b"", str::as_bytes),
            connection.map_or(b"", |_| b"\r\n"),
            b"\r\n",
            &self.body,
        ]
        .into_iter()
        .filter(|piece| !piece.is_empty())
    }

    /// The response head on HTTP/2 (Pingora's): the same fields as [`Answer::write`]'s.
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
