//! The signed identity assertion (`[assertion]`): the gateway adds a short-lived EdDSA
//! JWT naming the verified user and serves its public JWK Set; upstream-demo, configured
//! with `assertion_jwks_url`, refuses socket.io requests without a valid one: missing,
//! forged, for another audience, for another user, or replayed after it expired.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tests::eio::Polling;
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig, fixture, free_addr};
use tests::recorder::Recorder;
use tests::tokens::{now, valid};

const JWKS_PATH: &str = "/.well-known/gateway-jwks.json";

fn assertion_table(audience: &str, ttl: &str) -> String {
    format!(
        "[assertion]\nkey_file = \"{}\"\naudience = \"{audience}\"\nttl = \"{ttl}\"\n",
        fixture("ed25519.key.pem").display()
    )
}

fn gateway_config(upstream: SocketAddr, audience: &str, ttl: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream);
    cfg.extra = assertion_table(audience, ttl);
    cfg
}

async fn jwks(gw: &Gateway) -> JwkSet {
    let resp = http1::get(gw.addr, JWKS_PATH, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/jwk-set+json")
    );
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()))
}

/// A genuine assertion, captured by a recorder behind a gateway.
async fn capture(audience: &str, ttl: &str, user: &str) -> String {
    let up = Recorder::start().await;
    let gw = Gateway::start(&gateway_config(up.addr, audience, ttl)).await;
    let resp = http1::get(
        gw.addr,
        &format!("/socket.io/?EIO=4&transport=polling&token={}", valid(user)),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    up.last()
        .one("x-auth-assertion")
        .unwrap_or_else(|| panic!("no assertion upstream"))
        .to_string()
}

#[tokio::test]
async fn the_gateway_signs_an_assertion_verifiable_with_its_served_jwks() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&gateway_config(up.addr, "upstream-demo", "5s")).await;
    let set = jwks(&gw).await;
    assert!(
        up.seen().is_empty(),
        "the JWK Set is answered by the gateway"
    );
    assert_eq!(set.keys.len(), 1);
    let public =
        std::fs::read_to_string(fixture("ed25519.pub.pem")).unwrap_or_else(|e| panic!("{e}"));
    let der = STANDARD
        .decode(
            public
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let served = serde_json::to_value(&set.keys[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(served["kty"], "OKP");
    assert_eq!(served["crv"], "Ed25519");
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(served["x"].as_str().unwrap_or_default())
            .unwrap_or_default(),
        der[der.len() - 32..],
        "the JWK is the fixture's public key"
    );

    let before = now();
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}",
        valid("alice")
    );
    // A client can not bring its own assertion: it is replaced on protected paths and
    // removed everywhere else.
    let resp = http1::get(gw.addr, &target, &[("x-auth-assertion", "forged")]).await;
    assert_eq!(resp.status, 200);
    let seen = up.last();
    let token = seen
        .one("x-auth-assertion")
        .unwrap_or_else(|| panic!("no assertion"));
    assert_eq!(seen.all("x-auth-assertion").len(), 1);
    let header = jsonwebtoken::decode_header(token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = set
        .find(header.kid.as_deref().unwrap_or_default())
        .unwrap_or_else(|| panic!("kid not served"));
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["upstream-demo"]);
    v.set_issuer(&["socketio-jwt-gateway"]);
    v.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwk).unwrap_or_else(|e| panic!("{e}")),
        &v,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .claims;
    assert_eq!(claims["sub"], "alice");
    let iat = claims["iat"].as_u64().unwrap_or_default();
    assert!(iat >= before && iat <= now());
    assert_eq!(claims["exp"].as_u64(), Some(iat + 5));

    up.clear();
    let resp = http1::get(gw.addr, "/login", &[("x-auth-assertion", "forged")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().one("x-auth-assertion"), None);
}

/// A PKCS#8 Ed25519 key that is not the gateway's.
fn forger_key() -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[7u8; 32]);
    EncodingKey::from_ed_der(&der)
}

async fn handshake_direct(demo: &Demo, user: &str, assertion: Option<&str>) -> u16 {
    let mut headers = vec![("x-auth-user", user)];
    if let Some(a) = assertion {
        headers.push(("x-auth-assertion", a));
    }
    match Polling::handshake(demo.addr, "", &headers).await {
        Ok(_) => 200,
        Err(resp) => {
            assert_eq!(resp.json()["error"], "invalid_assertion", "{}", resp.text());
            resp.status
        }
    }
}

#[tokio::test]
async fn upstream_demo_accepts_only_valid_assertions() {
    let demo_addr = free_addr();
    let gw = Gateway::start(&gateway_config(demo_addr, "upstream-demo", "2s")).await;
    let demo = Demo::start_with(
        &demo_addr.to_string(),
        "25s",
        &format!(
            "assertion_jwks_url = \"http://{}{JWKS_PATH}\"\n{}",
            gw.addr,
            assertion_table("upstream-demo", "2s")
        ),
    )
    .await;

    // Through the gateway: welcomed as before.
    let session = Polling::handshake(gw.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    assert_eq!(session.join().await, json!({ "user": "alice" }));

    // Around the gateway: a bare identity header is no longer enough.
    assert_eq!(handshake_direct(&demo, "alice", None).await, 401);
    // Forged: the gateway's kid, another key.
    let kid = jwks(&gw).await.keys[0].common.key_id.clone();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid;
    let t = now();
    let claims = json!({ "sub": "alice", "iss": "socketio-jwt-gateway", "aud": "upstream-demo", "iat": t, "exp": t + 60 });
    let forged =
        jsonwebtoken::encode(&header, &claims, &forger_key()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(handshake_direct(&demo, "alice", Some(&forged)).await, 401);
    // Genuine, but addressed to another upstream.
    let elsewhere = capture("another-upstream", "60s", "alice").await;
    assert_eq!(
        handshake_direct(&demo, "alice", Some(&elsewhere)).await,
        401
    );
    // Genuine, for this upstream: it names alice, not mallory.
    let captured = capture("upstream-demo", "2s", "alice").await;
    assert_eq!(
        handshake_direct(&demo, "mallory", Some(&captured)).await,
        401
    );
    // Replayed: within its two seconds it is a bearer credential; after them, refused.
    assert_eq!(handshake_direct(&demo, "alice", Some(&captured)).await, 200);
    let payload = captured.split('.').nth(1).unwrap_or_default();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let exp = claims["exp"].as_u64().unwrap_or_default();
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(handshake_direct(&demo, "alice", Some(&captured)).await, 401);
}
