//! JWT header and claims handling. The input is split into a header and a claims part
//! that are signed correctly with the HS256 key, so that the fuzzer reaches the claim
//! checks behind the signature; the raw input is also tried as a token. Never a panic,
//! and an accepted token always names a user.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use proxy::keys::{KeySet, parse_jwks};
use proxy::verify::{Rules, verify};

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";

static KEYS: OnceLock<(KeySet, Rules, EncodingKey)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (keys, rules, key) = KEYS.get_or_init(|| {
        let jwks = format!(
            r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(SECRET)
        );
        let keys = parse_jwks(jwks.as_bytes(), &[Algorithm::HS256])
            .unwrap_or_else(|e| panic!("{e}"));
        let rules = Rules {
            issuer: Some("upstream-demo".into()),
            audience: Some("socket.io".into()),
            leeway: 5.0,
            require_exp: true,
            max_token_bytes: 8192,
            user_claim: vec!["user".into(), "username".into()],
            forward_claims: vec![(vec!["role".into()], http::HeaderName::from_static("x-role"))],
            required_typ: Some("jwt".into()),
            max_lifetime: None,
        };
        let key = EncodingKey::from_secret(SECRET).unwrap_or_else(|e| panic!("{e}"));
        (keys, rules, key)
    });
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verify(rules, keys, text, 1_000_000.0);
    }
    let (header, claims) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(sig) = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::HS256) else {
        return;
    };
    let token = format!("{message}.{sig}");
    if let Ok(v) = verify(rules, keys, &token, 1_000_000.0) {
        assert!(!v.user.is_empty(), "accepted a token without a user");
    }
});
