//! Identity the upstream can trust, through the real gateway binary with a recording
//! upstream: every identity header (`user_header`, `forward_claims` headers, the
//! assertion header) is set last and cannot be dropped by `Connection`, client copies
//! are removed under every spelling, no credential reaches the log in any form, CORS
//! credentials only for listed origins, list-valued `Content-Length`, and token lifetime.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig, fixture};
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256, now, valid};

const PROTECTED: &str = "/socket.io/?EIO=4&transport=polling";

/// One GET on its own connection with exactly the extra header lines given.
async fn send(gw: &Gateway, target: &str, extra: &str) -> Response {
    let req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
    http1::one(gw.addr, req.as_bytes()).await
}

fn with_assertion(up: &Recorder) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(up.addr);
    cfg.extra = format!(
        "[assertion]\nkey_file = \"{}\"\naudience = \"upstream\"\n",
        fixture("ed25519.key.pem").display()
    );
    cfg
}

#[tokio::test]
async fn connection_cannot_drop_an_identity_header_or_framing() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&with_assertion(&up)).await;
    let target = format!("{PROTECTED}&token={}", valid("alice"));
    // Every header the gateway sets, and the ones that frame or route the request.
    for named in [
        "x-auth-user",
        "X-Auth-Role",
        "x-auth-org",
        "x-auth-assertion",
        "x_auth_user",
        "keep-alive, x-auth-user",
        "Host",
        "Content-Length",
        "transfer-encoding",
    ] {
        up.clear();
        let resp = send(
            &gw,
            &target,
            &format!("Connection: {named}\r\nx_auth_user: admin\r\n"),
        )
        .await;
        assert_eq!(resp.status, 400, "Connection: {named}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request", "{named}");
        assert!(
            up.seen().is_empty(),
            "{named}: the upstream saw {:?}",
            up.seen()
        );
    }
    // Harmless nominations still pass, and every identity header arrives once.
    let resp = send(
        &gw,
        &target,
        "Connection: keep-alive, x-other\r\nx-other: 1\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].one("x-auth-user"), Some("alice"));
    assert_eq!(seen[0].one("x-auth-role"), Some("admin"));
    assert_eq!(seen[0].one("x-auth-org"), Some("42"));
    assert!(seen[0].one("x-auth-assertion").is_some());
    assert_eq!(
        seen[0].one("x-other"),
        None,
        "Connection-nominated header forwarded"
    );
}

#[tokio::test]
async fn client_copies_are_removed_under_every_spelling_on_every_path() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&with_assertion(&up)).await;
    let target = format!("{PROTECTED}&token={}", valid("alice"));
    let names = [
        "x-auth-user",
        "x-auth-role",
        "x-auth-org",
        "x-auth-assertion",
    ];
    for spelling in [
        "x_auth_user",
        "X_AUTH_USER",
        "X_Auth-User",
        "X-AUTH-USER",
        "x_auth_role",
        "X_Auth_Assertion",
    ] {
        for (path, user) in [
            (target.as_str(), Some("alice")),
            ("/elsewhere", None),
            ("/socket.io/socket.io.js", None),
        ] {
            up.clear();
            let resp = http1::get(gw.addr, path, &[(spelling, "forged")]).await;
            assert_eq!(resp.status, 200, "{spelling} {path}: {}", resp.text());
            let seen = up.seen();
            assert_eq!(seen.len(), 1, "{spelling} {path}");
            for (name, value) in &seen[0].headers {
                let folded = name.to_ascii_lowercase().replace('_', "-");
                if names.contains(&folded.as_str()) {
                    assert_ne!(
                        value, "forged",
                        "{spelling} {path}: client copy {name} forwarded"
                    );
                    assert_eq!(
                        name, &folded,
                        "{spelling} {path}: client spelling {name} forwarded"
                    );
                }
            }
            assert_eq!(seen[0].one("x-auth-user"), user, "{spelling} {path}");
        }
    }
}

/// Sends each request (expecting its status), then a marker request, and returns the
/// gateway's log once the marker's line is in it.
async fn log_after(gw: &Gateway, requests: &[(String, u16)]) -> String {
    for (target, status) in requests {
        let resp = http1::get(gw.addr, target, &[]).await;
        assert_eq!(resp.status, *status, "{target}: {}", resp.text());
    }
    let marker = "/socket.io/nothing-after-this?EIO=4&transport=polling";
    let _ = http1::get(gw.addr, marker, &[]).await;
    gw.proc_.wait_for_line("nothing-after-this").await;
    gw.logs()
}

/// Fails when any of `secrets` is in `logs`.
fn assert_not_logged(logs: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }
}

#[tokio::test]
async fn no_credential_or_sid_reaches_the_info_log() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    let expired = hs256(&expired);
    // The dots written as %2E, so that the token does not even look like a JWT.
    let disguised = expired.replace('.', "%2E");
    let sid = "SIDzz9SECRETqq7";
    let logs = log_after(
        &gw,
        &[
            (format!("{PROTECTED}&%74oken={expired}"), 401),
            (format!("{PROTECTED}&%74oken={disguised}"), 401),
            (format!("{PROTECTED}&TOKEN={expired}&sid={sid}"), 401),
            (format!("{PROTECTED}&sid={sid}&token=not-a-jwt-{sid}"), 401),
            // An Engine.IO parameter spelled otherwise is refused before any token is read.
            (format!("{PROTECTED}&%73id={sid}"), 400),
        ],
    )
    .await;
    let signature = expired.rsplit('.').next().unwrap_or_default();
    assert_not_logged(&logs, &[&expired, &disguised, signature, sid]);
    assert!(logs.contains("token_expired"), "{logs}");
}

#[tokio::test]
async fn cookie_and_authorization_values_are_hidden_at_trace_and_in_head_dumps() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr).rust_log("trace")).await;
    let target = format!("{PROTECTED}&token={}", valid("alice"));
    let quoted = send(
        &gw,
        &target,
        "Cookie: a=\"x\"; sid=QUOTEDSECRET1\r\nConnection: close\r\n",
    )
    .await;
    assert_eq!(quoted.status, 200, "{}", quoted.text());
    // A head no parser can read: refused by the gateway's own reader, never dumped.
    let broken = b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: gw\r\nCookie:sid=DUMPSECRET2\r\nAuthorization:Basic QmFzaWNTRUNSRVQzOnB3\r\nBad Header\x01: x\r\n\r\n";
    let answer = http1::exchange(gw.addr, broken).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let marker = "/socket.io/nothing-after-this?EIO=4&transport=polling";
    let _ = http1::get(gw.addr, marker, &[]).await;
    gw.proc_.wait_for_line("nothing-after-this").await;
    let logs = gw.logs();
    for secret in ["QUOTEDSECRET1", "DUMPSECRET2", "QmFzaWNTRUNSRVQzOnB3"] {
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }
    // Not vacuous: the trace log has both requests (the first one logged as forwarded,
    // its token already stripped; the second one refused).
    assert!(logs.contains("done outcome=Allowed"), "{logs}");
    assert!(logs.contains("Malformed"), "{logs}");
}

/// A name written with random percent-escapes and letter case, as a client may.
fn spelled(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<bool>(), any::<bool>()), name.len()).prop_map(move |choices| {
        name.bytes()
            .zip(choices)
            .map(|(c, (escape, upper))| match (escape, upper) {
                (true, true) => format!("%{c:02X}"),
                (true, false) => format!("%{c:02x}"),
                (false, true) => char::from(c.to_ascii_uppercase()).to_string(),
                (false, false) => char::from(c).to_string(),
            })
            .collect()
    })
}

/// One random request built from the pieces that carry secrets, and those secrets.
#[derive(Debug, Clone)]
struct Secretive {
    bytes: Vec<u8>,
    secrets: Vec<String>,
}

fn secretive() -> impl Strategy<Value = Secretive> {
    let secret = || "[A-Za-z0-9]{18,24}".prop_map(|s| format!("Q{s}"));
    (
        (0..4usize, spelled("token"), any::<bool>()),
        (0..4usize, secret()),
        (proptest::option::of(spelled("sid")), secret()),
        (0..4usize, secret()),
        (0..3usize, secret()),
        any::<bool>(),
    )
        .prop_map(
            |(
                (kind, qname, disguise),
                (place, garbage),
                (sid, sid_value),
                (cookie, cookie_secret),
                (basic, user),
                malformed,
            )| {
                let mut secrets = vec![sid_value.clone(), cookie_secret.clone()];
                let mut c = claims("alice");
                if kind == 1 {
                    c["exp"] = json!(now() - 60);
                }
                let token = match kind {
                    0 | 1 => hs256(&c),
                    2 => format!("{}x", hs256(&c)), // a signature that does not verify
                    _ => garbage.clone(),
                };
                if let Some(sig) = token.rsplit('.').next() {
                    secrets.push(sig.to_string());
                }
                secrets.push(token.clone());
                let written = if disguise {
                    token.replace('.', "%2E")
                } else {
                    token.clone()
                };
                let mut target = String::from("/socket.io/?EIO=4&transport=polling");
                let mut headers = String::new();
                match place {
                    0 => target.push_str(&format!("&{qname}={written}")),
                    1 => headers.push_str(&format!("Authorization: Bearer {token}\r\n")),
                    2 => headers.push_str(&format!("Cookie: io_token={token}\r\n")),
                    _ => headers.push_str(&format!("Cookie:io_token=\"{token}\"\r\n")),
                }
                if let Some(name) = sid {
                    target.push_str(&format!("&{name}={sid_value}"));
                }
                match cookie {
                    0 => headers.push_str(&format!("Cookie: a=\"x\"; sid={cookie_secret}\r\n")),
                    1 => headers.push_str(&format!("Cookie:sid={cookie_secret}\r\n")),
                    2 => headers.push_str(&format!("cookie: sid=\"{cookie_secret}\"\r\n")),
                    _ => headers.push_str(&format!("COOKIE:  x=1;sid={cookie_secret}\r\n")),
                }
                let basic_value = URL_SAFE.encode(format!("{user}:pw-{user}"));
                secrets.push(basic_value.clone());
                match basic {
                    0 => headers.push_str(&format!("Authorization: Basic {basic_value}\r\n")),
                    1 => headers.push_str(&format!("Proxy-Authorization:Basic {basic_value}\r\n")),
                    _ => headers.push_str(&format!("proxy-authorization: basic {basic_value}\r\n")),
                }
                if malformed {
                    headers.push_str("Bad Header\x01: x\r\n");
                }
                let bytes = format!(
                    "GET {target} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n"
                )
                .into_bytes();
                Secretive { bytes, secrets }
            },
        )
}

#[tokio::test]
async fn no_secret_byte_string_reaches_the_trace_log() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr).rust_log("trace")).await;
    let mut runner = TestRunner::new(ProptestConfig::with_cases(64));
    let strategy = secretive();
    let mut secrets = Vec::new();
    // Requests whose request line carries a secret and that the gateway reads (no
    // control byte in a header): each is logged, its secrets hidden.
    let mut logged_with_secrets = 0;
    for _ in 0..64 {
        let case = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{e}"))
            .current();
        let _ = http1::exchange(gw.addr, &case.bytes).await;
        let text = String::from_utf8_lossy(&case.bytes);
        let line = text.lines().next().unwrap_or_default();
        if !case.bytes.contains(&1) && case.secrets.iter().any(|s| line.contains(s.as_str())) {
            logged_with_secrets += 1;
        }
        secrets.extend(case.secrets);
    }
    let marker = "/socket.io/nothing-after-this?EIO=4&transport=polling";
    let _ = http1::get(gw.addr, marker, &[]).await;
    gw.proc_.wait_for_line("nothing-after-this").await;
    let logs = gw.logs();
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} is in the log:\n{logs}"
        );
    }
    // Not vacuous: the requests were logged, with their secrets hidden.
    assert!(logged_with_secrets > 0);
    assert!(
        logs.matches("[redacted]").count() >= logged_with_secrets,
        "{logged_with_secrets} requests with secrets in their line: {logs}"
    );
}

#[tokio::test]
async fn cors_credentials_only_for_listed_origins() {
    let up = Recorder::start().await;
    let plain = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let resp = http1::get(plain.addr, PROTECTED, &[("Origin", "https://evil.example")]).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("access-control-allow-credentials"), None);

    let cfg = GatewayConfig::hs256(up.addr);
    let auth = format!("{}cors_origins = [\"https://app.example\"]\n", cfg.auth);
    let listed = Gateway::start(&cfg.auth(&auth)).await;
    let evil = http1::get(
        listed.addr,
        PROTECTED,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(evil.status, 401);
    assert_eq!(evil.header("access-control-allow-origin"), None);
    assert_eq!(evil.header("access-control-allow-credentials"), None);
    assert_eq!(evil.header("vary"), Some("Origin"));
    let app = http1::get(listed.addr, PROTECTED, &[("Origin", "https://app.example")]).await;
    assert_eq!(app.status, 401);
    assert_eq!(
        app.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(app.header("access-control-allow-credentials"), Some("true"));
}

#[tokio::test]
async fn a_list_valued_content_length_is_refused() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let target = format!("{PROTECTED}&token={}", valid("alice"));
    // Equal values in list form pass Pingora's parser and are refused by the gateway;
    // differing ones Pingora refuses itself (400 without a body).
    for (cl, ours) in [("5, 5", true), ("5,5", true), ("5 ,6", false)] {
        let req =
            format!("POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: {cl}\r\n\r\nhello");
        let resp = http1::one(gw.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 400, "Content-Length: {cl}: {}", resp.text());
        if ours {
            // The gateway's own answer, not an upstream parser's.
            assert_eq!(resp.json()["error"], "bad_request", "Content-Length: {cl}");
        }
    }
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

/// A polling handshake with a token for `claims`: the status and the error code.
async fn handshake_with(gw: &Gateway, claims: &serde_json::Value) -> (u16, String) {
    let target = format!("{PROTECTED}&token={}", hs256(claims));
    let resp = http1::get(gw.addr, &target, &[]).await;
    let code = match resp.status {
        200 => String::new(),
        _ => resp.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    (resp.status, code)
}

#[tokio::test]
async fn tokens_that_live_too_long_are_refused() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let mut forever = claims("alice");
    forever["exp"] = json!(1e300);
    assert_eq!(
        handshake_with(&gw, &forever).await,
        (401, "token_lifetime".into())
    );

    let cfg = GatewayConfig::hs256(up.addr);
    let auth = format!("{}max_lifetime = \"1h\"\n", cfg.auth);
    let capped = Gateway::start(&cfg.auth(&auth)).await;
    let mut long = claims("alice");
    long["exp"] = json!(now() + 2 * 3600);
    assert_eq!(
        handshake_with(&capped, &long).await,
        (401, "token_lifetime".into())
    );
    assert_eq!(
        handshake_with(&capped, &claims("alice")).await,
        (200, String::new())
    );
}

/// Every token source the config names is emptied on the way up, not only the one that
/// was verified: an upstream that falls back to the `Authorization` header or the token
/// cookie never finds a token the gateway did not verify (here an `alg: none` token
/// for `admin` beside Alice's valid one). A `Basic` credential is no token: it stays.
#[tokio::test]
async fn no_unverified_token_rides_beside_the_verified_one() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let forged = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let alice = valid("alice");
    for (target, extra, kept_cookie, kept_authorization) in [
        (
            format!("{PROTECTED}&token={alice}"),
            format!("Authorization: Bearer {forged}\r\nCookie: a=1; io_token={forged}\r\n"),
            Some("a=1"),
            None,
        ),
        (
            PROTECTED.to_string(),
            format!("Authorization: Bearer {alice}\r\nCookie: io_token={forged}\r\n"),
            None,
            None,
        ),
        (
            format!("{PROTECTED}&x=1"),
            // A credential that is no token (Basic) is the upstream's own business.
            format!("Cookie: b=2; io_token={alice}\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"),
            Some("b=2"),
            Some("Basic dXNlcjpwYXNz"),
        ),
    ] {
        up.clear();
        let resp = send(&gw, &target, &extra).await;
        assert_eq!(resp.status, 200, "{target} {extra}: {}", resp.text());
        let seen = up.last();
        let header = |name: &str| {
            seen.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("x-auth-user"), ["alice"], "{extra}");
        assert_eq!(
            header("authorization"),
            kept_authorization.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(
            header("cookie"),
            kept_cookie.into_iter().collect::<Vec<_>>()
        );
        assert!(!seen.target.contains("token"), "{}", seen.target);
        for token in [forged, alice.as_str()] {
            assert!(
                !format!("{:?} {}", seen.headers, seen.target).contains(token),
                "{token} reached the upstream: {:?}",
                seen.headers
            );
        }
    }
}

/// The request line of a log shows the path and Engine.IO's `EIO` and `transport`, no
/// other query parameter: a token or another user's `sid` under a name the gateway
/// does not read (`token%3d…`, `id=…`, `sid%5b%5d=…`) is not written, at any level.
#[tokio::test]
async fn no_query_value_but_eio_and_transport_reaches_the_debug_log() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr).rust_log("debug")).await;
    let alice = valid("alice");
    let sid = "someoneElsesSid.AmF7EgYSECRETsealpart";
    let logs = log_after(
        &gw,
        &[
            (format!("{PROTECTED}&token%3d{alice}"), 401),
            (format!("{PROTECTED}&token={alice}&id={sid}"), 200),
            (format!("{PROTECTED}&token={alice}&sid%5b%5d={sid}"), 200),
            (format!("{PROTECTED}&token={alice}&+sid={sid}"), 200),
        ],
    )
    .await;
    let signature = alice.rsplit('.').next().unwrap_or_default();
    assert_not_logged(&logs, &[&alice, signature, sid, "SECRETsealpart"]);
    assert!(
        logs.contains("/socket.io/?EIO=4&transport=polling&[redacted]"),
        "{logs}"
    );
}
