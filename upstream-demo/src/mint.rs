//! Minting socket.io tokens the gateway accepts: signed with the `[auth]` secret, with
//! the `[auth]` issuer and audience, living `[demo].token_ttl`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proxy::keys::{self, KeySource};
use serde::Serialize;

use crate::DemoSettings;

/// Signs tokens.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Minter")
            .field("alg", &self.header.alg)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct UserClaim<'a> {
    username: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    user: UserClaim<'a>,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    jti: String,
}

impl Minter {
    /// Reads the secret the gateway verifies with; the demo mints HS* tokens only.
    pub fn new(settings: &DemoSettings) -> Result<Self, String> {
        let auth = &settings.auth;
        let (algs, _) = keys::parse_algorithms(&auth.algorithms);
        let alg = algs
            .into_iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .ok_or("auth.algorithms: upstream-demo mints HS256/HS384/HS512 tokens; list one")?;
        let mut sources = auth.key_sources(&settings.base_dir);
        let source =
            match (sources.pop(), sources.is_empty()) {
                (Some((_, s @ (KeySource::SecretEnv(_) | KeySource::SecretFile(_)))), true) => s,
                _ => return Err(
                    "auth: upstream-demo needs exactly one of auth.secret_env or auth.secret_file"
                        .into(),
                ),
            };
        let secret =
            keys::read_secret(&source).map_err(|e| format!("{}: {e}", source.config_key()))?;
        let key = EncodingKey::from_secret(&secret)
            .map_err(|e| format!("{}: {e}", source.config_key()))?;
        Ok(Minter {
            key,
            header: Header::new(alg),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            ttl: settings.token_ttl,
        })
    }

    /// A fresh token for `user`.
    pub fn mint(&self, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: user,
            user: UserClaim { username: user },
            iat: now,
            exp: now + self.ttl.as_secs().max(1),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }
}
