//! The answers the gateway writes itself (`proxy::answers`): byte for byte those Pingora's
//! response head gave before they were rendered at start-up, for every refusal, origin
//! and `Connection`.

use bytes::Bytes;
use http::{HeaderValue, header};
use proxy::answers::Answer;
use proxy::decision::Outcome;
use proxy::refusal::refusals;
use proxy::verify::{AuthError, ErrorCode};

/// `WWW-Authenticate` for a missing token (RFC 6750 3).
const CHALLENGE: &str = "Bearer realm=\"socket.io\"";

/// The answer as the gateway rendered it before answers were rendered at start-up:
/// Pingora's head, then `Connection`, the blank line and the body.
fn through_pingora_head(
    answer: &Answer,
    origin: Option<&HeaderValue>,
    cors_origins: &[HeaderValue],
    connection: Option<&str>,
) -> Vec<u8> {
    let head = answer
        .head(origin, cors_origins)
        .unwrap_or_else(|e| panic!("{e}"));
    let reason = head.status.canonical_reason().unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", head.status.as_u16()).into_bytes();
    proxy::head::push_headers(&mut out, &head.headers);
    if let Some(c) = connection {
        out.extend_from_slice(format!("Connection: {c}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&answer.body);
    out
}

fn every_answer() -> Vec<Answer> {
    let mut all: Vec<Answer> = refusals::ALL
        .into_iter()
        .map(|err| Answer::refusal(err, None))
        .collect();
    all.extend([
        Answer::rate_limited(),
        Answer::keys_unavailable(),
        Answer::head_too_large(),
        Answer::upstream_unavailable(true),
        Answer::upstream_unavailable(false),
        Answer::bad_request("the path is not safe"),
        Answer::json(500, "internal_error", "internal error", Outcome::Undecided),
        Answer::jwks(Bytes::from_static(b"{\"keys\":[]}")),
        Answer::refusal(
            AuthError::new(
                ErrorCode::InvalidIssuer,
                "a sentence rendered for its request",
            ),
            None,
        ),
    ]);
    all
}

#[test]
fn the_bytes_are_those_of_pingoras_head_for_every_answer_origin_and_connection() {
    let listed = HeaderValue::from_static("https://app.example");
    let other = HeaderValue::from_static("https://evil.example");
    let cors_sets: [&[HeaderValue]; 2] = [&[], std::slice::from_ref(&listed)];
    for answer in every_answer() {
        for cors in cors_sets {
            for origin in [None, Some(&listed), Some(&other)] {
                for connection in [None, Some("close"), Some("keep-alive")] {
                    let ours = answer.render(origin, cors, connection);
                    let before = through_pingora_head(&answer, origin, cors, connection);
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&before),
                        "{answer:?} {origin:?} {cors:?} {connection:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn written_as_rendered() {
    let listed = HeaderValue::from_static("https://app.example");
    for answer in every_answer() {
        let mut out = Vec::new();
        let cors = std::slice::from_ref(&listed);
        let written = answer.write(&mut out, Some(&listed), cors, Some("close"));
        written.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, answer.render(Some(&listed), cors, Some("close")));
    }
}

#[test]
fn every_refusal_and_fixed_answer_was_rendered_at_start_up() {
    for err in refusals::ALL {
        let answer = Answer::refusal(err.clone(), None);
        assert!(answer.is_fixed(), "{err}");
        let expected = match err.code {
            ErrorCode::SessionMismatch => 403,
            ErrorCode::UnknownSession => 400,
            _ => 401,
        };
        assert_eq!(answer.status, expected, "{err}");
        let body: serde_json::Value =
            serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["error"], err.code.as_str());
        assert_eq!(body["message"], err.reason.as_ref());
    }
    for answer in [
        Answer::rate_limited(),
        Answer::keys_unavailable(),
        Answer::head_too_large(),
        Answer::upstream_unavailable(true),
        Answer::upstream_unavailable(false),
    ] {
        assert!(answer.is_fixed(), "{answer:?}");
    }
    let mut seen = std::collections::HashSet::new();
    for err in refusals::ALL {
        assert!(seen.insert(err.reason.clone()), "{err} twice");
    }
}

#[test]
fn the_challenge_names_the_reason_except_for_a_missing_token() {
    let challenge = |err: AuthError| {
        Answer::refusal(err, None)
            .header
            .map(|(name, value)| (name, value.to_str().unwrap_or_default().to_string()))
    };
    assert_eq!(
        challenge(refusals::NO_TOKEN),
        Some((header::WWW_AUTHENTICATE, CHALLENGE.to_string()))
    );
    assert_eq!(
        challenge(refusals::EXPIRED),
        Some((
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"socket.io\", error=\"invalid_token\", error_description=\"the token has expired\"".to_string()
        ))
    );
    assert_eq!(challenge(refusals::SESSION_MISMATCH), None);
}
