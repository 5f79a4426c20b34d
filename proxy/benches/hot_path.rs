//! The per-request hot path without the network: extract the token, verify it, and
//! rewrite the request target, for HS256, RS256 and ES256 tokens.
//!
//! `cargo bench -p proxy --bench hot_path`

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proxy::keys::{KeySource, KeyStore};
use proxy::path::normalize;
use proxy::request;
use proxy::token::{self, Location, TokenSource};
use proxy::verify::{self, Rules};

const SECRET: &str = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn rules() -> Rules {
    Rules {
        issuer: Some("upstream-demo".into()),
        audience: Some("socket.io".into()),
        leeway: 5.0,
        require_exp: true,
        max_token_bytes: 8192,
        user_claim: vec!["sub".into()],
        forward_claims: vec![],
        required_typ: None,
        max_lifetime: None,
    }
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": "gonzalo", "user": {"username": "gonzalo"}, "iss": "upstream-demo",
        "aud": "socket.io", "iat": now, "exp": now + 3600, "jti": "6f1c1b3e-bench",
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap_or_else(|e| panic!("{e}"))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap_or_else(|e| panic!("{e}"));
    let read = |n: &str| std::fs::read(fixture(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let cases = [
        (
            "HS256",
            KeySource::SecretFile(secret_file),
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            "RS256",
            KeySource::PublicKeyFile(fixture("rsa.pub.pem")),
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&read("rsa.key.pem")).unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            "ES256",
            KeySource::PublicKeyFile(fixture("ec256.pub.pem")),
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec256.key.pem")).unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
    ];
    let sources: Vec<TokenSource> = ["query:token", "header:authorization", "cookie:io_token"]
        .iter()
        .filter_map(|s| TokenSource::parse(s).ok())
        .collect();
    let rules = rules();
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("extract_verify_rewrite");
    for (name, source, tok) in cases {
        let alg: Algorithm = name.parse().unwrap_or_else(|e| panic!("{e}"));
        let store = KeyStore::load(source, &[alg]).unwrap_or_else(|e| panic!("{e:?}"));
        let target = format!("/socket.io/?EIO=4&transport=polling&token={tok}&t=PbXyZ1");
        group.bench_function(name, |b| {
            b.iter(|| {
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let path = normalize(path.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
                let found = token::extract(&sources, &headers, query.as_bytes())
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panic!("no token"));
                let keys = store.current();
                let verified = verify::verify(&rules, &keys, &found.token, 1.0e9)
                    .unwrap_or_else(|e| panic!("{e}"));
                let Location::Query(range) = found.location else {
                    panic!("not in the query")
                };
                let stripped = request::rewrite_query(query.as_bytes(), &[range], None);
                (path.len(), stripped, verified)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
