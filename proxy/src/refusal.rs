//! Why a request is refused (docs/request-handling.md): the refusal
//! codes that answers, logs and metrics name, and the error that carries one with its
//! reason.

use std::borrow::Cow;

/// The refusal codes (docs/request-handling.md). Discriminants are
/// the declaration order, `0..COUNT`: metrics index their counters by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumCount)]
pub enum ErrorCode {
    /// No token in the first present source.
    MissingToken,
    /// Not a decodable JWT, or a claim of the wrong type.
    MalformedToken,
    /// Over `max_token_bytes`.
    TokenTooLarge,
    /// The signature does not verify.
    InvalidSignature,
    /// `alg` not allowed, or not fitting the selected key.
    AlgorithmNotAllowed,
    /// No key matches `kid` (or `alg`).
    UnknownKey,
    /// `exp` + leeway has passed.
    TokenExpired,
    /// `nbf` - leeway is still ahead.
    TokenNotYetValid,
    /// `iss` differs from `auth.issuer`.
    InvalidIssuer,
    /// `aud` does not contain `auth.audience`.
    InvalidAudience,
    /// A required claim is absent.
    MissingClaim,
    /// `exp` lies further ahead than `auth.max_lifetime` (or past the year 9999).
    TokenLifetime,
    /// A valid token of another user than the one whose handshake opened the
    /// Engine.IO session it names (`403`).
    SessionMismatch,
    /// An Engine.IO `sid` no gateway with this session key handed out (`400`): the
    /// client opens a new session.
    UnknownSession,
    /// The token matches a revocation entry (docs/websockets.md, "Refresh and
    /// revocation").
    TokenRevoked,
}

impl ErrorCode {
    /// Every code, in declaration order (checked at compile time below), for metrics
    /// and tests; its length is the number of variants, so a new code must be added.
    pub const ALL: [ErrorCode; <ErrorCode as strum::EnumCount>::COUNT] = [
        ErrorCode::MissingToken,
        ErrorCode::MalformedToken,
        ErrorCode::TokenTooLarge,
        ErrorCode::InvalidSignature,
        ErrorCode::AlgorithmNotAllowed,
        ErrorCode::UnknownKey,
        ErrorCode::TokenExpired,
        ErrorCode::TokenNotYetValid,
        ErrorCode::InvalidIssuer,
        ErrorCode::InvalidAudience,
        ErrorCode::MissingClaim,
        ErrorCode::TokenLifetime,
        ErrorCode::SessionMismatch,
        ErrorCode::UnknownSession,
        ErrorCode::TokenRevoked,
    ];

    /// Position in [`ErrorCode::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::MalformedToken => "malformed_token",
            ErrorCode::TokenTooLarge => "token_too_large",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::AlgorithmNotAllowed => "algorithm_not_allowed",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::InvalidIssuer => "invalid_issuer",
            ErrorCode::InvalidAudience => "invalid_audience",
            ErrorCode::MissingClaim => "missing_claim",
            ErrorCode::TokenLifetime => "token_lifetime",
            ErrorCode::SessionMismatch => "session_mismatch",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::TokenRevoked => "token_revoked",
        }
    }
}

// `ALL[i]` is the code with discriminant `i`, so `ALL[code.index()] == code`.
const _: () = {
    let mut i = 0;
    while i < ErrorCode::ALL.len() {
        assert!(
            ErrorCode::ALL[i] as usize == i,
            "ErrorCode::ALL out of order"
        );
        i += 1;
    }
};

/// A refused token: the code and a short sentence without quotes. The sentence never
/// contains text from the token, so it is safe in a header and in a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", code.as_str())]
pub struct AuthError {
    /// The refusal code.
    pub code: ErrorCode,
    /// Human reason.
    pub reason: Cow<'static, str>,
}

impl AuthError {
    /// Builds an error from a static sentence.
    pub fn new(code: ErrorCode, reason: &'static str) -> Self {
        AuthError {
            code,
            reason: Cow::Borrowed(reason),
        }
    }
}
