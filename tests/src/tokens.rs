//! Minting test tokens with the shared secret or the fixture key pairs.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::SECRET;
use crate::procs::fixture;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims the default test gateway accepts, for `user`, valid for five minutes.
pub fn claims(user: &str) -> Value {
    let now = now();
    json!({
        "sub": user,
        "user": { "username": user },
        "iss": "upstream-demo",
        "aud": "socket.io",
        "iat": now,
        "exp": now + 300,
        "role": "admin",
        "org": { "id": 42 },
    })
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap_or_else(|e| panic!("secret: {e}"));
    sign(Algorithm::HS256, &key, None, claims)
}

/// A token for the default gateway, for `user`.
pub fn valid(user: &str) -> String {
    hs256(&claims(user))
}

/// Signs `claims` with `key` as `alg`, with an optional `kid`.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap_or_else(|e| panic!("encode: {e}"))
}

/// The private key of fixture `name` (`rsa`, `rsa2`, `ec256`, `ec384`, `ed25519`).
pub fn private_key(name: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(&format!("{name}.key.pem")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    let key = match name {
        "rsa" | "rsa2" => EncodingKey::from_rsa_pem(&pem),
        "ec256" | "ec384" => EncodingKey::from_ec_pem(&pem),
        "ed25519" => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture {other}"),
    };
    key.unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A token from raw header and claims JSON and a raw signature segment.
pub fn raw(header: &str, claims: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// A JWK Set of the public halves of fixture keys: `(fixture, alg, kid)`.
pub fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(name, alg, kid)| {
            let mut jwk = Jwk::from_encoding_key(&private_key(name), *alg)
                .unwrap_or_else(|e| panic!("jwk {name}: {e}"));
            jwk.common.key_id = Some((*kid).to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap_or_else(|e| panic!("jwks: {e}"))
}

/// A token with raw header and claims JSON, correctly HS256-signed with [`SECRET`]:
/// for claims that are malformed after a valid signature.
pub fn hs256_raw(header: &str, claims: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap_or_else(|e| panic!("secret: {e}"));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .unwrap_or_else(|e| panic!("sign: {e}"));
    format!("{message}.{sig}")
}
