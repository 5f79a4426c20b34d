//! Verifying the gateway's signed identity assertion (`[demo].assertion_jwks_url`).
//!
//! With it, the demo no longer trusts the network between gateway and upstream: every
//! socket.io request must carry an EdDSA JWT signed with a key from the gateway's JWK
//! Set, addressed to this upstream (`aud`), not expired, whose `sub` is the user in the
//! identity header. A request without one is refused with `401` before socket.io sees it.
//! An assertion is a bearer credential for its few seconds of life: within them it can
//! be replayed by whoever captured it, after them never.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AssertionCheck;

/// The JWK Set is fetched again for an unknown `kid` at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(5);

/// Why an assertion was refused (the `401` body names it).
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// No assertion header.
    #[error("no gateway assertion: connect through the gateway")]
    Missing,
    /// Not a JWT, or no `kid`.
    #[error("the gateway assertion is malformed")]
    Malformed,
    /// The `kid` is not in the gateway's JWK Set (or the set cannot be fetched).
    #[error("the gateway assertion is signed with an unknown key")]
    UnknownKey,
    /// Bad signature, wrong audience or issuer, or expired.
    #[error("the gateway assertion is invalid: {0}")]
    Invalid(String),
    /// `sub` is not the user in the identity header.
    #[error("the gateway assertion names another user")]
    OtherUser,
}

impl IntoResponse for AssertionError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": "invalid_assertion", "message": self.to_string() });
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Checks assertions against the gateway's JWK Set, fetched on first use and again when
/// an unknown `kid` shows up (the gateway's key changed).
#[derive(Debug)]
pub struct AssertionVerifier {
    check: AssertionCheck,
    header: HeaderName,
    user_header: HeaderName,
    validation: Validation,
    client: reqwest::Client,
    /// The last fetched set and when it was fetched; never held across an await.
    keys: RwLock<Option<(JwkSet, Instant)>>,
}

impl AssertionVerifier {
    /// A verifier for `check`; the identity header is `user_header`.
    pub fn new(check: AssertionCheck, user_header: &str) -> Result<Self, String> {
        let header = HeaderName::from_bytes(check.header.as_bytes())
            .map_err(|_| format!("assertion.header: {:?} is not a header name", check.header))?;
        let user_header = HeaderName::from_bytes(user_header.as_bytes())
            .map_err(|_| format!("auth.user_header: {user_header:?} is not a header name"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[check.audience.as_str()]);
        validation.set_issuer(&[check.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(AssertionVerifier {
            check,
            header,
            user_header,
            validation,
            client,
            keys: RwLock::new(None),
        })
    }

    fn key_for(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().ok()?;
        let (set, _) = keys.as_ref()?;
        set.find(kid)
            .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
    }

    fn may_refetch(&self) -> bool {
        match self.keys.read() {
            Ok(k) => k
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= REFETCH_AFTER),
            Err(_) => true,
        }
    }

    async fn refetch(&self) {
        let fetched = async {
            let resp = self.client.get(&self.check.jwks_url).send().await?;
            resp.error_for_status()?.json::<JwkSet>().await
        }
        .await;
        match fetched {
            Ok(set) => {
                if let Ok(mut k) = self.keys.write() {
                    *k = Some((set, Instant::now()));
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.check.jwks_url, "cannot fetch the gateway's JWK Set: {e}")
            }
        }
    }

    /// The user the assertion in `headers` vouches for.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<String, AssertionError> {
        let token = headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .ok_or(AssertionError::Missing)?;
        let kid = jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .ok_or(AssertionError::Malformed)?;
        let key = match self.key_for(&kid) {
            Some(k) => k,
            None if self.may_refetch() => {
                self.refetch().await;
                self.key_for(&kid).ok_or(AssertionError::UnknownKey)?
            }
            None => return Err(AssertionError::UnknownKey),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| AssertionError::Invalid(e.to_string()))?;
        let user = headers.get(&self.user_header).and_then(|v| v.to_str().ok());
        if user != Some(data.claims.sub.as_str()) {
            return Err(AssertionError::OtherUser);
        }
        Ok(data.claims.sub)
    }
}

/// Middleware for the socket.io route: no valid assertion, no socket.io.
pub async fn require_assertion(
    State(verifier): State<std::sync::Arc<AssertionVerifier>>,
    request: Request,
    next: Next,
) -> Response {
    match verifier.verify(request.headers()).await {
        Ok(_) => next.run(request).await,
        Err(e) => {
            tracing::info!("refused: {e}");
            e.into_response()
        }
    }
}
