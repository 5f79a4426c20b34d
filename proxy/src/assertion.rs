//! The signed identity assertion (`[assertion]`): a short-lived EdDSA JWT naming the
//! verified user, added to every authenticated request, and the JWK Set with the public
//! key that upstreams fetch to verify it.
//!
//! A bare `x-auth-user` header is only as trustworthy as the network between gateway
//! and upstream; an assertion signed with a key only the gateway holds, addressed to one
//! upstream (`aud`) and valid for a few seconds, is not.

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Assertions minted in the same second for the same user are the same token: this many
/// are remembered so that a busy user costs one signature per second, not per request.
const RECENT_ENTRIES: usize = 4096;

/// The gateway's Ed25519 key: the private half for signing, the public half as a JWK.
pub struct Signer {
    key: EncodingKey,
    /// Base64url of the 32-byte public key (the JWK's `x`).
    x: String,
    /// RFC 7638 thumbprint of the public JWK: stable across restarts with the same key.
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// Reads an Ed25519 private key (PKCS#8 PEM). The error names what is wrong without
    /// quoting the file.
    pub fn load(file: &Path) -> Result<Signer, String> {
        let text =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Self::from_pem(&text).map_err(|m| format!("{}: {m}", file.display()))
    }

    /// Parses an Ed25519 private key (PKCS#8 PEM).
    pub fn from_pem(text: &[u8]) -> Result<Signer, String> {
        let block = pem::parse(text).map_err(|_| "not a PEM file".to_string())?;
        if block.tag() != "PRIVATE KEY" {
            return Err(format!(
                "expected an Ed25519 \"PRIVATE KEY\" (PKCS#8), found {:?}",
                block.tag()
            ));
        }
        let pair = Ed25519KeyPair::from_pkcs8(block.contents())
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents()))
            .map_err(|_| "not an Ed25519 private key".to_string())?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let key = EncodingKey::from_ed_der(block.contents());
        let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumbprint_input.as_bytes())
                .as_ref(),
        );
        Ok(Signer { key, x, kid })
    }

    /// The key id put in every assertion's header and in the JWK Set.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK Set, as served at `jwks_path`.
    pub fn jwks(&self) -> String {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": self.x,
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            }]
        })
        .to_string()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// A borrowed `(user, second)` key: a cache hit costs no allocation. Hashes exactly as
/// the owned `(Box<str>, u64)` key does.
#[derive(Hash)]
struct UserSecond<'a>(&'a str, u64);

impl quick_cache::Equivalent<(Box<str>, u64)> for UserSecond<'_> {
    fn equivalent(&self, key: &(Box<str>, u64)) -> bool {
        *key.0 == *self.0 && key.1 == self.1
    }
}

/// Mints assertions; everything but the claims is prepared at start-up.
pub struct Asserter {
    signer: Signer,
    header: HeaderName,
    jwt_header: Header,
    audience: String,
    issuer: String,
    ttl: u64,
    jwks_path: String,
    jwks_body: Bytes,
    recent: quick_cache::sync::Cache<(Box<str>, u64), HeaderValue>,
}

impl std::fmt::Debug for Asserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asserter")
            .field("signer", &self.signer)
            .field("header", &self.header)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .field("jwks_path", &self.jwks_path)
            .finish()
    }
}

impl Asserter {
    /// An asserter signing with `signer` for `audience`, valid `ttl` after each request.
    pub fn new(
        signer: Signer,
        header: HeaderName,
        audience: String,
        issuer: String,
        ttl: Duration,
        jwks_path: String,
    ) -> Asserter {
        let mut jwt_header = Header::new(Algorithm::EdDSA);
        jwt_header.kid = Some(signer.kid().to_string());
        let jwks_body = Bytes::from(signer.jwks());
        Asserter {
            signer,
            header,
            jwt_header,
            audience,
            issuer,
            ttl: ttl.as_secs().max(1),
            jwks_path,
            jwks_body,
            recent: quick_cache::sync::Cache::new(RECENT_ENTRIES),
        }
    }

    /// The request header that carries the assertion.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Where the JWK Set is served.
    pub fn jwks_path(&self) -> &str {
        &self.jwks_path
    }

    /// The JWK Set document.
    pub fn jwks_body(&self) -> Bytes {
        self.jwks_body.clone()
    }

    /// The assertion for `user` at `now` (seconds since the epoch).
    pub fn assertion(&self, user: &str, now: u64) -> Result<HeaderValue, String> {
        if let Some(v) = self.recent.get(&UserSecond(user, now)) {
            return Ok(v);
        }
        let claims = Claims {
            sub: user,
            iss: &self.issuer,
            aud: &self.audience,
            iat: now,
            exp: now + self.ttl,
        };
        let token = jsonwebtoken::encode(&self.jwt_header, &claims, &self.signer.key)
            .map_err(|e| format!("cannot sign the assertion: {e}"))?;
        let value = HeaderValue::from_str(&token).map_err(|e| e.to_string())?;
        self.recent.insert((user.into(), now), value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    // A throwaway test key (RFC 8032 test vector 1 seed in PKCS#8 v1).
    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";

    #[test]
    fn assertions_verify_with_the_served_jwks_and_nothing_else() {
        let signer = Signer::from_pem(PEM.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let jwks: JwkSet = serde_json::from_str(&signer.jwks()).unwrap_or_else(|e| panic!("{e}"));
        let a = Asserter::new(
            signer,
            HeaderName::from_static("x-auth-assertion"),
            "up".into(),
            "gw".into(),
            Duration::from_secs(5),
            "/jwks".into(),
        );
        let now = jsonwebtoken::get_current_timestamp();
        let token = a.assertion("alice", now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.assertion("alice", now).ok().as_ref(), Some(&token));
        let token = token.to_str().unwrap_or_default();
        let header = jsonwebtoken::decode_header(token).unwrap_or_else(|e| panic!("{e}"));
        let jwk = jwks
            .find(header.kid.as_deref().unwrap_or_default())
            .unwrap_or_else(|| panic!("kid not in the JWK Set"));
        let key = DecodingKey::from_jwk(jwk).unwrap_or_else(|e| panic!("{e}"));
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["up"]);
        v.set_issuer(&["gw"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["exp"], now + 5);
        v.set_audience(&["another upstream"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).is_err());
        assert!(
            Signer::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
