//! Token verification (RFC 7519, RFC 8725): header, algorithm pinning, key selection,
//! signature, then the registered claims, each failure mapped to one [`ErrorCode`].
//!
//! `jsonwebtoken` does the cryptography; the claim checks are done here so that every
//! outcome has an exact code (a string `exp` is `malformed_token`, an absent `aud` is
//! `missing_claim`, ...), fractional NumericDates are honoured, and the leeway keeps
//! sub-second precision.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{KeySet, SelectError};
use crate::refusal::refusals::*;
pub use crate::refusal::{AuthError, ErrorCode};

/// What a valid token tells the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `nbf` in seconds since the epoch (re-checked when served from the cache).
    pub nbf: Option<f64>,
    /// Value for `user_header`.
    pub user: HeaderValue,
    /// Values for `forward_claims` headers whose claim exists.
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
    /// `exp` in seconds since the epoch, for `close_on_expiry`.
    pub exp: Option<f64>,
    /// `iat` in seconds since the epoch: an `issued_before` revocation matches it.
    pub iat: Option<f64>,
    /// `jti` (a string claim; another type is not an id): a revocation by id matches
    /// it. Shared, since a cached verification is cloned for every request.
    pub jti: Option<std::sync::Arc<str>>,
}

/// The claim rules, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` member.
    pub audience: Option<String>,
    /// Skew allowed on `exp`/`nbf`, seconds.
    pub leeway: f64,
    /// `exp` must be present.
    pub require_exp: bool,
    /// Size limit.
    pub max_token_bytes: usize,
    /// Path of the user claim.
    pub user_claim: Vec<String>,
    /// Claim path -> header.
    pub forward_claims: Vec<(Vec<String>, HeaderName)>,
    /// Required header `typ`, lower-cased without an `application/` prefix.
    pub required_typ: Option<String>,
    /// Longest a token may still live (`exp - now`), seconds (`auth.max_lifetime`).
    pub max_lifetime: Option<f64>,
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): an `exp` after it is a
/// token that never expires, refused even without `auth.max_lifetime`.
pub const LAST_EXP: f64 = 253_402_300_799.0;

/// A `typ` value as RFC 7515 4.1.9 compares them: case-insensitive, `application/`
/// optional.
pub fn media_type(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    not_number: AuthError,
) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(not_number),
    }
}

/// Verifies `token` with `keys` at time `now` (seconds since the epoch).
pub fn verify(rules: &Rules, keys: &KeySet, token: &str, now: f64) -> Result<Verified, AuthError> {
    let verified = verify_but_time(rules, keys, token, now)?;
    check_time(rules, verified.exp, verified.nbf, now)?;
    Ok(verified)
}

/// [`verify`] but for `exp` and `nbf`, which the caller checks on every use of the
/// result (`check_time`): a token that verified this way may be remembered
/// (`auth.verify_cache`) even once expired, so that a client retrying with its stale
/// token costs no signature check. `now` only orders the refusals: a token refused
/// for a claim while its time is also wrong is refused for its time, as [`verify`]
/// always did.
pub fn verify_but_time(
    rules: &Rules,
    keys: &KeySet,
    token: &str,
    now: f64,
) -> Result<Verified, AuthError> {
    if token.len() > rules.max_token_bytes {
        return Err(TOO_LARGE);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let header_json = URL_SAFE_NO_PAD.decode(h64).map_err(|_| MALFORMED)?;
    let header: RawHeader = serde_json::from_slice(&header_json).map_err(|_| MALFORMED)?;
    if header.crit.is_some() {
        return Err(CRIT);
    }
    if let Some(required) = &rules.required_typ {
        if header.typ.as_deref().map(media_type).as_ref() != Some(required) {
            return Err(TYP);
        }
    }
    let alg = header.alg.as_deref().ok_or(NO_ALG)?;
    let alg = Algorithm::from_str(alg).map_err(|_| ALG)?;
    let candidates = keys
        .select(header.kid.as_deref(), alg)
        .map_err(|e| match e {
            SelectError::UnknownKey(_) => NO_KEY,
            SelectError::WrongFamily(_) => ALG,
        })?;

    let message_len = h64.len() + 1 + p64.len();
    let message = &token.as_bytes()[..message_len];
    let mut valid = false;
    for key in candidates {
        match jsonwebtoken::crypto::verify(sig, message, &key.key, alg) {
            Ok(true) => {
                valid = true;
                break;
            }
            Ok(false) => {}
            Err(e) => {
                if let jsonwebtoken::errors::ErrorKind::Base64(_) = e.kind() {
                    return Err(MALFORMED);
                }
            }
        }
    }
    if !valid {
        return Err(SIGNATURE);
    }

    let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| MALFORMED)?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).map_err(|_| CLAIMS)?;
    check_claims(rules, &claims, now)
}

/// The registered claims but time, then the identity: a refusal for a claim gives way
/// to the refusal for the token's time, checked first as the claims are read.
fn check_claims(
    rules: &Rules,
    claims: &Map<String, Value>,
    now: f64,
) -> Result<Verified, AuthError> {
    let exp = numeric_date(claims, "exp", EXP_TYPE)?;
    let nbf = numeric_date(claims, "nbf", NBF_TYPE)?;
    let iat = numeric_date(claims, "iat", IAT_TYPE)?;
    if exp.is_none() && rules.require_exp {
        return Err(NO_EXP);
    }
    identity(rules, claims, [exp, nbf, iat]).map_err(|refused| {
        match check_time(rules, exp, nbf, now) {
            Err(time) => time,
            Ok(()) => refused,
        }
    })
}

/// `iss`, `aud`, the user and the forwarded claims of a token (`times`: its `exp`,
/// `nbf` and `iat`, read before).
fn identity(
    rules: &Rules,
    claims: &Map<String, Value>,
    times: [Option<f64>; 3],
) -> Result<Verified, AuthError> {
    let [exp, nbf, iat] = times;
    if let Some(want) = &rules.issuer {
        match claims.get("iss") {
            None => return Err(NO_ISS),
            Some(Value::String(iss)) if iss == want => {}
            Some(_) => return Err(ISSUER),
        }
    }
    if let Some(want) = &rules.audience {
        let ok = match claims.get("aud") {
            None => return Err(NO_AUD),
            Some(Value::String(aud)) => aud == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            Some(_) => false,
        };
        if !ok {
            return Err(AUDIENCE);
        }
    }
    let user = match claim_at(claims, &rules.user_claim) {
        None => return Err(NO_USER),
        // An empty user would reach the upstream as an empty identity header.
        Some(Value::String(s)) if s.trim().is_empty() => return Err(EMPTY_USER),
        // Header parsers trim values: "alice " would arrive as "alice".
        Some(Value::String(s)) if s.trim() != s => Err(()),
        Some(Value::String(s)) => HeaderValue::from_str(s).map_err(|_| ()),
        Some(Value::Number(n)) => HeaderValue::from_str(&n.to_string()).map_err(|_| ()),
        Some(_) => return Err(USER_TYPE),
    }
    .map_err(|()| USER_HEADER)?;
    let mut forwarded = Vec::with_capacity(rules.forward_claims.len());
    for (path, header) in &rules.forward_claims {
        if let Some(v) = claim_at(claims, path) {
            let text = match v {
                Value::String(s) => HeaderValue::from_str(s),
                other => HeaderValue::from_str(&other.to_string()),
            }
            .map_err(|_| FORWARDED_HEADER)?;
            forwarded.push((header.clone(), text));
        }
    }
    let jti = match claims.get("jti") {
        Some(Value::String(s)) => Some(std::sync::Arc::from(s.as_str())),
        _ => None,
    };
    Ok(Verified {
        nbf,
        user,
        forwarded,
        exp,
        iat,
        jti,
    })
}

/// `exp` and `nbf` against `now`, with the leeway.
pub(crate) fn check_time(
    rules: &Rules,
    exp: Option<f64>,
    nbf: Option<f64>,
    now: f64,
) -> Result<(), AuthError> {
    if exp.is_some_and(|exp| now >= exp + rules.leeway) {
        return Err(EXPIRED);
    }
    if nbf.is_some_and(|nbf| now + rules.leeway < nbf) {
        return Err(NOT_YET);
    }
    let too_long = |exp: f64| {
        !exp.is_finite() || exp > LAST_EXP || rules.max_lifetime.is_some_and(|m| exp - now > m)
    };
    if exp.is_some_and(too_long) {
        return Err(LIFETIME);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            issuer: Some("me".into()),
            audience: Some("you".into()),
            leeway: 5.0,
            require_exp: true,
            max_token_bytes: 8192,
            user_claim: vec!["user".into(), "name".into()],
            forward_claims: vec![(vec!["role".into()], HeaderName::from_static("x-role"))],
            required_typ: None,
            max_lifetime: Some(3600.0),
        }
    }

    /// The claims, then time, as [`verify`] checks them after the signature.
    fn checked(
        rules: &Rules,
        claims: &Map<String, Value>,
        now: f64,
    ) -> Result<Verified, AuthError> {
        let verified = check_claims(rules, claims, now)?;
        check_time(rules, verified.exp, verified.nbf, now)?;
        Ok(verified)
    }

    fn check(v: Value) -> Result<Verified, ErrorCode> {
        let map = v.as_object().cloned().unwrap_or_default();
        checked(&rules(), &map, 1000.0).map_err(|e| e.code)
    }

    #[test]
    fn a_token_wrong_in_time_and_in_a_claim_is_refused_for_its_time() {
        let cases = [
            (
                json!({"exp": 995, "iss": "other", "aud": "you", "user": {"name": "a"}}),
                ErrorCode::TokenExpired,
            ),
            (
                json!({"exp": 995, "iss": "me", "aud": "x", "user": {"name": "a"}}),
                ErrorCode::TokenExpired,
            ),
            (
                json!({"exp": 2000, "nbf": 1006, "iss": "me", "aud": "you"}),
                ErrorCode::TokenNotYetValid,
            ),
            (
                json!({"exp": 9000, "iss": "me", "aud": "you", "user": {"name": ""}}),
                ErrorCode::TokenLifetime,
            ),
        ];
        for (claims, code) in cases {
            assert_eq!(check(claims.clone()).err(), Some(code), "{claims}");
        }
    }

    #[test]
    fn claim_rules_map_to_codes() {
        let ok = json!({"exp": 1001, "iss": "me", "aud": ["x", "you"], "user": {"name": "ann"}, "role": ["a"]});
        let v = check(ok).unwrap_or_else(|c| panic!("{c:?}"));
        assert_eq!(v.user, "ann");
        assert_eq!(v.forwarded[0].1, "[\"a\"]");
        use ErrorCode::*;
        let cases = [
            (
                json!({"iss": "me", "aud": "you", "user": {"name": "a"}}),
                MissingClaim,
            ),
            (
                json!({"exp": "1001", "iss": "me", "aud": "you", "user": {"name": "a"}}),
                MalformedToken,
            ),
            (
                json!({"exp": 995, "iss": "me", "aud": "you", "user": {"name": "a"}}),
                TokenExpired,
            ),
            (
                json!({"exp": 2000, "nbf": 1006, "iss": "me", "aud": "you", "user": {"name": "a"}}),
                TokenNotYetValid,
            ),
            (
                json!({"exp": 2000, "iss": "other", "aud": "you", "user": {"name": "a"}}),
                InvalidIssuer,
            ),
            (
                json!({"exp": 2000, "aud": "you", "user": {"name": "a"}}),
                MissingClaim,
            ),
            (
                json!({"exp": 2000, "iss": "me", "aud": ["x"], "user": {"name": "a"}}),
                InvalidAudience,
            ),
            (
                json!({"exp": 2000, "iss": "me", "user": {"name": "a"}}),
                MissingClaim,
            ),
            (
                json!({"exp": 2000, "iss": "me", "aud": "you"}),
                MissingClaim,
            ),
            (
                json!({"exp": 2000, "iss": "me", "aud": "you", "user": {"name": true}}),
                MalformedToken,
            ),
            // Found by the `jwt` fuzz target: an empty user was forwarded as `x-auth-user: `.
            (
                json!({"exp": 2000, "iss": "me", "aud": "you", "user": {"name": ""}}),
                MissingClaim,
            ),
            (
                json!({"exp": 2000, "iss": "me", "aud": "you", "user": {"name": " "}}),
                MissingClaim,
            ),
            (
                json!({"exp": 2000, "iss": "me", "aud": "you", "user": {"name": "ann "}}),
                MalformedToken,
            ),
        ];
        for (claims, code) in cases {
            assert_eq!(check(claims.clone()).err(), Some(code), "{claims}");
        }
    }

    #[test]
    fn leeway_is_inclusive_of_exp_never_before() {
        // now = 1000, leeway 5: exp 996 still valid, exp 995 expired.
        let base = json!({"iss": "me", "aud": "you", "user": {"name": 7}});
        let mut a = base.clone();
        a["exp"] = json!(996);
        assert_eq!(check(a).map(|v| v.user), Ok(HeaderValue::from_static("7")));
        let mut b = base;
        b["exp"] = json!(995);
        assert_eq!(check(b).err(), Some(ErrorCode::TokenExpired));
    }

    #[test]
    fn tokens_living_too_long_are_refused() {
        // now = 1000, max_lifetime 3600: exp 4600 is the last accepted.
        let base = json!({"iss": "me", "aud": "you", "user": {"name": "ann"}});
        for (exp, ok) in [
            (json!(4600), true),
            (json!(4601), false),
            (json!(1e300), false),
        ] {
            let mut c = base.clone();
            c["exp"] = exp.clone();
            let got = check(c).err();
            let want = (!ok).then_some(ErrorCode::TokenLifetime);
            assert_eq!(got, want, "exp {exp}");
        }
        let unlimited = Rules {
            max_lifetime: None,
            ..rules()
        };
        let mut far = base.as_object().cloned().unwrap_or_default();
        far.insert("exp".into(), json!(LAST_EXP));
        assert!(checked(&unlimited, &far, 1000.0).is_ok());
        far.insert("exp".into(), json!(LAST_EXP + 1.0));
        assert_eq!(
            checked(&unlimited, &far, 1000.0).err().map(|e| e.code),
            Some(ErrorCode::TokenLifetime)
        );
    }
}
