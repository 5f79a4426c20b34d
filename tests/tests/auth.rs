//! Token verification through the real gateway binary: every rejection code with its
//! exact response, every token source, identity-header stripping, token stripping,
//! every key type, JWKS `kid` selection and live reload, and algorithm confusion.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig, fixture};
use tests::recorder::Recorder;
use tests::tokens::{self, claims, hs256, now, private_key, raw, sign, valid};

const PROTECTED: &str = "/socket.io/?EIO=4&transport=polling";

fn assert_rejected(resp: &Response, code: &str) {
    assert_eq!(resp.status, 401, "{code}: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.json();
    assert_eq!(body["error"], code, "{body}");
    let reason = body["message"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty() && !reason.contains('"'),
        "reason {reason:?}"
    );
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    if code == "missing_token" {
        assert_eq!(challenge, "Bearer realm=\"socket.io\"");
    } else {
        assert_eq!(
            challenge,
            format!(
                "Bearer realm=\"socket.io\", error=\"invalid_token\", error_description=\"{reason}\""
            )
        );
    }
}

async fn get_with_token(gw: &Gateway, token: &str) -> Response {
    http1::get(gw.addr, &format!("{PROTECTED}&token={token}"), &[]).await
}

#[tokio::test]
async fn every_rejection_code_has_the_exact_response_and_never_reaches_upstream() {
    let up = Recorder::start().await;
    // The page's origin is listed, so refusals carry credentialed CORS for it (others
    // get none: `identity::cors_credentials_only_for_listed_origins`).
    let cfg = GatewayConfig::hs256(up.addr);
    let auth = format!("{}cors_origins = [\"http://app.example\"]\n", cfg.auth);
    let gw = Gateway::start(&cfg.auth(&auth)).await;
    let secret =
        EncodingKey::from_secret(tests::SECRET.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let wrong = EncodingKey::from_secret(b"another-secret-that-is-long-enough-0123456789")
        .unwrap_or_else(|e| panic!("{e}"));
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("alice");
        f(&mut c);
        hs256(&c)
    };
    let now = now();
    let cases: Vec<(&str, String)> = vec![
        ("malformed_token", "not-a-jwt".into()),
        (
            "malformed_token",
            tokens::hs256_raw(r#"{"alg":"HS256"}"#, "[1,2]"),
        ),
        (
            "malformed_token",
            tokens::hs256_raw(
                r#"{"alg":"HS256","crit":["exp"]}"#,
                &claims("a").to_string(),
            ),
        ),
        (
            "invalid_signature",
            raw(r#"{"alg":"HS256"}"#, &claims("a").to_string(), "c2ln"),
        ),
        ("malformed_token", with(&|c| c["exp"] = json!("tomorrow"))),
        (
            "token_too_large",
            hs256(&json!({"sub": "a", "pad": "x".repeat(5000)})),
        ),
        (
            "invalid_signature",
            sign(Algorithm::HS256, &wrong, None, &claims("alice")),
        ),
        (
            "algorithm_not_allowed",
            sign(Algorithm::HS512, &secret, None, &claims("alice")),
        ),
        (
            "algorithm_not_allowed",
            raw(r#"{"alg":"none"}"#, &claims("alice").to_string(), ""),
        ),
        ("token_expired", with(&|c| c["exp"] = json!(now - 10))),
        (
            "token_not_yet_valid",
            with(&|c| c["nbf"] = json!(now + 600)),
        ),
        ("invalid_issuer", with(&|c| c["iss"] = json!("mallory"))),
        ("invalid_audience", with(&|c| c["aud"] = json!(["other"]))),
        (
            "missing_claim",
            with(&|c| drop(c.as_object_mut().map(|o| o.remove("exp")))),
        ),
        (
            "missing_claim",
            with(&|c| drop(c.as_object_mut().map(|o| o.remove("aud")))),
        ),
        (
            "missing_claim",
            with(&|c| drop(c.as_object_mut().map(|o| o.remove("sub")))),
        ),
    ];
    for (code, token) in &cases {
        let resp = get_with_token(&gw, token).await;
        assert_rejected(&resp, code);
    }
    let resp = http1::get(gw.addr, PROTECTED, &[("Origin", "http://app.example")]).await;
    assert_rejected(&resp, "missing_token");
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(up.seen().is_empty(), "upstream saw {:?}", up.seen());

    // unknown_key needs a JWKS with kids.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("jwks.json"),
        tokens::jwks(&[("rsa", Algorithm::RS256, "k1")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg =
        GatewayConfig::hs256(up.addr).auth("algorithms = [\"RS256\"]\njwks_file = \"jwks.json\"\n");
    let gw = Gateway::start_in(&cfg, dir).await;
    let token = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        Some("k9"),
        &claims("alice"),
    );
    assert_rejected(&get_with_token(&gw, &token).await, "unknown_key");
    assert!(up.seen().is_empty(), "upstream saw {:?}", up.seen());
}

#[tokio::test]
async fn every_token_source_works_and_only_the_first_present_one_counts() {
    let up = Recorder::start().await;
    let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "{}\ntoken_sources = [\"query:access_token\", \"header:authorization\", \"cookie:io_token\", \"header:x-io-token\"]\n",
        GatewayConfig::hs256(up.addr).auth
    ));
    let gw = Gateway::start(&cfg).await;
    let good = valid("alice");
    let bad = "bad.token.value";

    let bearer = format!("Bearer {good}");
    let cookie = format!("theme=dark; io_token={good}; lang=en");
    let allowed: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("{PROTECTED}&access_token={good}"), vec![]),
        (PROTECTED.into(), vec![("Authorization", bearer.as_str())]),
        (PROTECTED.into(), vec![("Cookie", cookie.as_str())]),
        (PROTECTED.into(), vec![("X-IO-Token", good.as_str())]),
        // An empty query value counts as absent; another scheme counts as absent.
        (
            format!("{PROTECTED}&access_token="),
            vec![
                ("Authorization", "Basic Zm9vOmJhcg=="),
                ("Cookie", cookie.as_str()),
            ],
        ),
    ];
    for (target, headers) in &allowed {
        up.clear();
        let resp = http1::get(gw.addr, target, headers).await;
        assert_eq!(resp.status, 200, "{target} {headers:?}: {}", resp.text());
        let seen = up.last();
        assert_eq!(seen.one("x-auth-user"), Some("alice"));
        assert!(
            !seen.target.contains(&good),
            "token forwarded in {}",
            seen.target
        );
        for (_, v) in &seen.headers {
            assert!(!v.contains(&good), "token forwarded in a header: {v}");
        }
    }
    let seen = up.last();
    assert_eq!(
        seen.one("authorization"),
        Some("Basic Zm9vOmJhcg=="),
        "other schemes are forwarded"
    );
    assert_eq!(seen.one("cookie"), Some("theme=dark; lang=en"));

    // The first present source is used even when a later one holds a valid token.
    up.clear();
    let resp = http1::get(
        gw.addr,
        &format!("{PROTECTED}&access_token={bad}"),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_rejected(&resp, "malformed_token");
    let resp = http1::get(
        gw.addr,
        &format!("{PROTECTED}&access_token={good}&access_token={good}"),
        &[],
    )
    .await;
    assert_rejected(&resp, "malformed_token");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn client_identity_headers_are_removed_on_every_path() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let spoof = [
        ("X-Auth-User", "root"),
        ("x-auth-user", "root2"),
        ("X-AUTH-ROLE", "superuser"),
        ("x-Auth-Org", "1"),
    ];
    // Unprotected path: passed through, minus the spoofed headers.
    let resp = http1::get(gw.addr, "/login", &spoof).await;
    assert_eq!(resp.status, 200);
    let seen = up.last();
    for h in ["x-auth-user", "x-auth-role", "x-auth-org"] {
        assert!(seen.all(h).is_empty(), "{h} forwarded: {:?}", seen.headers);
    }
    // Protected path with a valid token: only the gateway's values.
    let mut c = claims("alice");
    c.as_object_mut().map(|o| o.remove("org"));
    let resp = http1::get(gw.addr, &format!("{PROTECTED}&token={}", hs256(&c)), &spoof).await;
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["alice"]);
    assert_eq!(seen.all("x-auth-role"), vec!["admin"]);
    assert!(
        seen.all("x-auth-org").is_empty(),
        "absent claim, no header: {:?}",
        seen.headers
    );
    // A claim that is not a string is forwarded as compact JSON.
    let resp = get_with_token(&gw, &valid("bob")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().one("x-auth-org"), Some("42"));
}

#[tokio::test]
async fn strip_token_removes_exactly_the_token_and_keeps_every_other_byte() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let t = valid("alice");
    let cases = [
        (
            format!("/socket.io/?EIO=4&token={t}&transport=polling&t=N%2Fx+y&b=%7e&&z"),
            "/socket.io/?EIO=4&transport=polling&t=N%2Fx+y&b=%7e&&z",
        ),
        (format!("/socket.io/?token={t}&EIO=4"), "/socket.io/?EIO=4"),
        (format!("/socket.io/?EIO=4&token={t}"), "/socket.io/?EIO=4"),
        (format!("/socket.io/?token={t}"), "/socket.io/"),
        (
            format!("/socket.io/?a=%41&tok%65n={t}&c"),
            "/socket.io/?a=%41&c",
        ),
    ];
    for (sent, expected) in &cases {
        let resp = http1::get(gw.addr, sent, &[]).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        assert_eq!(up.last().target, *expected);
    }

    let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "{}\nstrip_token = false\n",
        GatewayConfig::hs256(up.addr).auth
    ));
    let gw = Gateway::start(&cfg).await;
    let sent = format!("/socket.io/?EIO=4&token={t}&transport=polling");
    assert_eq!(http1::get(gw.addr, &sent, &[]).await.status, 200);
    assert_eq!(up.last().target, sent);
}

#[tokio::test]
async fn every_key_type_verifies_with_its_algorithm_only() {
    let up = Recorder::start().await;
    let cases = [
        ("rsa", "RS256", Algorithm::RS256),
        ("rsa", "PS384", Algorithm::PS384),
        ("ec256", "ES256", Algorithm::ES256),
        ("ec384", "ES384", Algorithm::ES384),
        ("ed25519", "EdDSA", Algorithm::EdDSA),
    ];
    for (key, alg_name, alg) in cases {
        let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
            "algorithms = [\"{alg_name}\"]\npublic_key_file = \"{}\"\nissuer = \"upstream-demo\"\n",
            fixture(&format!("{key}.pub.pem")).display()
        ));
        let gw = Gateway::start(&cfg).await;
        let good = sign(alg, &private_key(key), None, &claims("alice"));
        let resp = get_with_token(&gw, &good).await;
        assert_eq!(resp.status, 200, "{alg_name}: {}", resp.text());
        assert_eq!(up.last().one("x-auth-user"), Some("alice"));
        let other = if key == "rsa" { "rsa2" } else { "rsa" };
        let other_alg = if key == "rsa" { alg } else { Algorithm::RS256 };
        let forged = sign(other_alg, &private_key(other), None, &claims("mallory"));
        let code = if key == "rsa" {
            "invalid_signature"
        } else {
            "algorithm_not_allowed"
        };
        assert_rejected(&get_with_token(&gw, &forged).await, code);
    }
    // The HS secret from a file (a trailing newline is ignored).
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("secret.key"),
        format!("{}\n", tests::SECRET),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = GatewayConfig::hs256(up.addr).auth("secret_file = \"secret.key\"\n");
    let gw = Gateway::start_in(&cfg, dir).await;
    assert_eq!(get_with_token(&gw, &valid("carol")).await.status, 200);
    assert_eq!(up.last().one("x-auth-user"), Some("carol"));
}

#[tokio::test]
async fn algorithm_confusion_and_alg_none_are_refused() {
    let up = Recorder::start().await;
    let pem = fixture("rsa.pub.pem");
    let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "algorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        pem.display()
    ));
    let gw = Gateway::start(&cfg).await;
    // The classic attack: HS256 "signed" with the RSA public key as the HMAC secret.
    let pem_bytes = std::fs::read(&pem).unwrap_or_else(|e| panic!("{e}"));
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem_bytes).unwrap_or_else(|e| panic!("{e}")),
        None,
        &claims("mallory"),
    );
    assert_rejected(
        &get_with_token(&gw, &confused).await,
        "algorithm_not_allowed",
    );
    let none = raw(
        r#"{"alg":"none","typ":"JWT"}"#,
        &claims("mallory").to_string(),
        "",
    );
    assert_rejected(&get_with_token(&gw, &none).await, "algorithm_not_allowed");
    let none_upper = raw(r#"{"alg":"NONE"}"#, &claims("mallory").to_string(), "");
    assert_rejected(
        &get_with_token(&gw, &none_upper).await,
        "algorithm_not_allowed",
    );
    assert!(up.seen().is_empty());
}

async fn wait_status(gw: &Gateway, token: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let status = get_with_token(gw, token).await.status;
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {status}, wanted {want}; logs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn jwks_file_selects_by_kid_and_reloads_live() {
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("jwks.json");
    std::fs::write(
        &file,
        tokens::jwks(&[
            ("rsa", Algorithm::RS256, "r1"),
            ("ec256", Algorithm::ES256, "e1"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = GatewayConfig::hs256(up.addr)
        .auth("algorithms = [\"RS256\", \"ES256\"]\njwks_file = \"jwks.json\"\n");
    let gw = Gateway::start_in(&cfg, dir).await;

    let r1 = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        Some("r1"),
        &claims("alice"),
    );
    let e1 = sign(
        Algorithm::ES256,
        &private_key("ec256"),
        Some("e1"),
        &claims("bob"),
    );
    let no_kid = sign(
        Algorithm::ES256,
        &private_key("ec256"),
        None,
        &claims("carol"),
    );
    let r2 = sign(
        Algorithm::RS256,
        &private_key("rsa2"),
        Some("r2"),
        &claims("dave"),
    );
    let wrong_family = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        Some("e1"),
        &claims("eve"),
    );
    assert_eq!(get_with_token(&gw, &r1).await.status, 200);
    assert_eq!(up.last().one("x-auth-user"), Some("alice"));
    assert_eq!(get_with_token(&gw, &e1).await.status, 200);
    assert_eq!(up.last().one("x-auth-user"), Some("bob"));
    assert_eq!(
        get_with_token(&gw, &no_kid).await.status,
        200,
        "no kid: every key of the alg is tried"
    );
    assert_rejected(&get_with_token(&gw, &r2).await, "unknown_key");
    assert_rejected(
        &get_with_token(&gw, &wrong_family).await,
        "algorithm_not_allowed",
    );

    // Rewrite in place: r2 appears.
    std::fs::write(
        &file,
        tokens::jwks(&[
            ("rsa", Algorithm::RS256, "r1"),
            ("rsa2", Algorithm::RS256, "r2"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let took = wait_status(&gw, &r2, 200).await;
    assert!(
        took < Duration::from_secs(5),
        "in-place reload took {took:?}"
    );
    assert_rejected(&get_with_token(&gw, &e1).await, "unknown_key");

    // A broken file keeps the last good keys, and says so in the log.
    std::fs::write(&file, "{ this is not json").unwrap_or_else(|e| panic!("{e}"));
    gw.proc_.wait_for_line("keeping the last good keys").await;
    assert_eq!(get_with_token(&gw, &r2).await.status, 200);

    // Rename over: only e1.
    let tmp = gw.dir.path().join("jwks.json.new");
    std::fs::write(&tmp, tokens::jwks(&[("ec256", Algorithm::ES256, "e1")]))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
    let took = wait_status(&gw, &e1, 200).await;
    assert!(took < Duration::from_secs(5), "rename reload took {took:?}");
    assert_rejected(&get_with_token(&gw, &r1).await, "unknown_key");
}

#[tokio::test]
async fn a_cached_token_still_expires_on_time() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let mut c = claims("alice");
    c["exp"] = json!(now() + 2);
    let token = hs256(&c);
    // Verified once, then served from the cache.
    for _ in 0..3 {
        assert_eq!(get_with_token(&gw, &token).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = get_with_token(&gw, &token).await;
        if resp.status == 401 {
            assert_rejected(&resp, "token_expired");
            break;
        }
        assert!(Instant::now() < deadline, "a cached token outlived its exp");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        now() >= c["exp"].as_u64().unwrap_or(0),
        "refused before exp"
    );
}

#[tokio::test]
async fn a_refused_request_without_a_body_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let one = format!("GET {PROTECTED} HTTP/1.1\r\nHost: x\r\n\r\n");
    let two = format!(
        "GET {PROTECTED}&token={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        valid("alice")
    );
    s.write_all(one.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    s.write_all(two.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = http1::parse(&rest);
    assert_eq!(second.status, 200, "second request on the same connection");
    assert_eq!(up.last().one("x-auth-user"), Some("alice"));
}
