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
    pub const fn new(code: ErrorCode, reason: &'static str) -> Self {
        AuthError {
            code,
            reason: Cow::Borrowed(reason),
        }
    }
}

/// Every refusal the gateway makes, by name: their answers are rendered once, at
/// start-up ([`crate::answers`]), from [`ALL`](refusals::ALL). A refusal built from
/// another sentence is still answered, rendered for its request.
pub mod refusals {
    use super::{AuthError, ErrorCode::*};

    /// No token in the first present source.
    pub const NO_TOKEN: AuthError = AuthError::new(MissingToken, "no token was presented");
    /// The token's source appears twice.
    pub const DUPLICATE: AuthError =
        AuthError::new(MalformedToken, "the token was given more than once");
    /// The token is not UTF-8 once decoded.
    pub const NOT_TEXT: AuthError = AuthError::new(MalformedToken, "the token is not valid text");
    /// Over `max_token_bytes`.
    pub const TOO_LARGE: AuthError = AuthError::new(
        TokenTooLarge,
        "the token is larger than the gateway accepts",
    );
    /// Not three base64url parts with a JSON header.
    pub const MALFORMED: AuthError =
        AuthError::new(MalformedToken, "the token is not a well-formed JWT");
    /// `crit` in the header (RFC 7515 4.1.11).
    pub const CRIT: AuthError = AuthError::new(
        MalformedToken,
        "the token header names critical extensions the gateway does not support",
    );
    /// `typ` other than `auth.required_typ`.
    pub const TYP: AuthError = AuthError::new(
        MalformedToken,
        "the token type (typ) is not the one required",
    );
    /// No `alg` in the header.
    pub const NO_ALG: AuthError = AuthError::new(MalformedToken, "the token header has no alg");
    /// `alg` not allowed, or not fitting the key.
    pub const ALG: AuthError =
        AuthError::new(AlgorithmNotAllowed, "the token algorithm is not allowed");
    /// No key matches `kid` (or `alg`).
    pub const NO_KEY: AuthError = AuthError::new(UnknownKey, "no configured key matches the token");
    /// The signature does not verify.
    pub const SIGNATURE: AuthError =
        AuthError::new(InvalidSignature, "the token signature is invalid");
    /// The payload is not a JSON object.
    pub const CLAIMS: AuthError =
        AuthError::new(MalformedToken, "the token claims are not a JSON object");
    /// `exp` is not a number.
    pub const EXP_TYPE: AuthError = AuthError::new(MalformedToken, "the exp claim is not a number");
    /// `nbf` is not a number.
    pub const NBF_TYPE: AuthError = AuthError::new(MalformedToken, "the nbf claim is not a number");
    /// `iat` is not a number.
    pub const IAT_TYPE: AuthError = AuthError::new(MalformedToken, "the iat claim is not a number");
    /// No `exp` with `require_exp`.
    pub const NO_EXP: AuthError = AuthError::new(MissingClaim, "the token has no exp claim");
    /// No `iss` with `auth.issuer`.
    pub const NO_ISS: AuthError = AuthError::new(MissingClaim, "the token has no iss claim");
    /// No `aud` with `auth.audience`.
    pub const NO_AUD: AuthError = AuthError::new(MissingClaim, "the token has no aud claim");
    /// No user claim.
    pub const NO_USER: AuthError = AuthError::new(MissingClaim, "the token has no user claim");
    /// An empty user claim.
    pub const EMPTY_USER: AuthError =
        AuthError::new(MissingClaim, "the token's user claim is empty");
    /// A user claim of another JSON type.
    pub const USER_TYPE: AuthError =
        AuthError::new(MalformedToken, "the user claim is not a string or a number");
    /// A user claim no header can carry unchanged.
    pub const USER_HEADER: AuthError =
        AuthError::new(MalformedToken, "the user claim cannot be sent in a header");
    /// A forwarded claim no header can carry.
    pub const FORWARDED_HEADER: AuthError = AuthError::new(
        MalformedToken,
        "a forwarded claim cannot be sent in a header",
    );
    /// `iss` differs from `auth.issuer`.
    pub const ISSUER: AuthError = AuthError::new(InvalidIssuer, "the token issuer is not accepted");
    /// `aud` does not contain `auth.audience`.
    pub const AUDIENCE: AuthError =
        AuthError::new(InvalidAudience, "the token audience is not accepted");
    /// `exp` + leeway has passed.
    pub const EXPIRED: AuthError = AuthError::new(TokenExpired, "the token has expired");
    /// `nbf` - leeway is still ahead.
    pub const NOT_YET: AuthError = AuthError::new(TokenNotYetValid, "the token is not valid yet");
    /// `exp` beyond `auth.max_lifetime` or the year 9999.
    pub const LIFETIME: AuthError = AuthError::new(
        TokenLifetime,
        "the token lives longer than the gateway allows",
    );
    /// A sealed `sid` of another user.
    pub const SESSION_MISMATCH: AuthError = AuthError::new(
        SessionMismatch,
        "this Engine.IO session belongs to another user",
    );
    /// A `sid` no gateway with this key sealed.
    pub const UNKNOWN_SESSION: AuthError = AuthError::new(
        UnknownSession,
        "this Engine.IO session was not opened through the gateway",
    );

    /// Every one of them, rendered at start-up.
    pub const ALL: [AuthError; 30] = [
        NO_TOKEN,
        DUPLICATE,
        NOT_TEXT,
        TOO_LARGE,
        MALFORMED,
        CRIT,
        TYP,
        NO_ALG,
        ALG,
        NO_KEY,
        SIGNATURE,
        CLAIMS,
        EXP_TYPE,
        NBF_TYPE,
        IAT_TYPE,
        NO_EXP,
        NO_ISS,
        NO_AUD,
        NO_USER,
        EMPTY_USER,
        USER_TYPE,
        USER_HEADER,
        FORWARDED_HEADER,
        ISSUER,
        AUDIENCE,
        EXPIRED,
        NOT_YET,
        LIFETIME,
        SESSION_MISMATCH,
        UNKNOWN_SESSION,
    ];
}
