//! Hostile input through the real gateway binary: request smuggling and malformed
//! framing, oversized and garbage requests, the failed-authentication rate limit, and
//! RFC 8725 header rules (`typ`, `jku`/`x5u`/`jwk` never trusted).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use serde_json::json;
use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig, fixture, free_addr};
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256_raw, private_key, raw, sign, valid};

const PROTECTED: &str = "/socket.io/?EIO=4&transport=polling";

fn status_of(bytes: &[u8]) -> u16 {
    if bytes.is_empty() {
        return 0;
    }
    http1::parse(bytes).status
}

#[tokio::test]
async fn smuggling_oversized_and_garbage_requests_are_refused_before_the_upstream() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let target = format!("{PROTECTED}&token={}", valid("alice"));
    let head =
        |extra: &str| format!("POST {target} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n").into_bytes();
    let with_body = |extra: &str, body: &str| {
        let mut b = head(extra);
        b.extend_from_slice(body.as_bytes());
        b
    };
    // Content-Length with Transfer-Encoding (CL.TE, TE.CL): refused by the gateway's own
    // head reader (RFC 9112 6.1 lets a server refuse them), so no reader behind it ever
    // chooses between them, and the bytes smuggled after the body are never sent
    // anywhere.
    for extra in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
    ] {
        let smuggled = "0\r\n\r\nGET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: gw\r\nx-auth-user: admin\r\n\r\n";
        let resp = http1::raw(gw.addr, &with_body(extra, smuggled)).await;
        assert_eq!(resp.status, 400, "{extra:?}: {}", resp.text());
        assert_eq!(
            resp.json()["message"],
            "Content-Length and Transfer-Encoding must not be combined"
        );
        assert_eq!(resp.header("connection"), Some("close"), "{extra:?}");
        assert!(up.seen().is_empty(), "{extra:?}: {:?}", up.seen());
    }

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two equal Content-Length",
            with_body("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            "Content-Length is given more than once",
        ),
        (
            "TE gzip, chunked",
            with_body("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            "only the chunked transfer coding is accepted",
        ),
        (
            "TE twice",
            with_body(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            "Transfer-Encoding is given more than once",
        ),
    ];
    for (name, bytes, message) in cases {
        let resp = http1::raw(gw.addr, &bytes).await;
        assert_eq!(resp.status, 400, "{name}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request", "{name}");
        assert_eq!(resp.json()["message"], message, "{name}");
        assert_eq!(resp.header("connection"), Some("close"), "{name}");
    }

    // Refused by Pingora's parser: a 400 and a closed connection, whatever was sent.
    let huge_header = head(&format!("X-Pad: {}\r\n", "a".repeat(2 << 20)));
    let many_headers = head(
        &(0..300)
            .map(|i| format!("X-{i}: a\r\n"))
            .collect::<String>(),
    );
    let long_line = format!(
        "GET {target}&pad={} HTTP/1.1\r\nHost: gw\r\n\r\n",
        "a".repeat(100_000)
    )
    .into_bytes();
    let differing_lengths = with_body("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!");
    let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let tls_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".repeat(20);
    for (name, bytes) in [
        ("2 MiB header", huge_header),
        ("300 headers", many_headers),
        ("100 kB request line", long_line),
        ("differing Content-Length", differing_lengths),
        ("garbage bytes", garbage),
        ("TLS on the plain port", tls_hello),
    ] {
        let answer = http1::exchange(gw.addr, &bytes).await;
        let status = status_of(&answer);
        assert!(
            status == 400 || status == 431,
            "{name}: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());

    let ok = http1::get(gw.addr, &target, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.seen().len(), 1);
}

async fn scrape(addr: SocketAddr, series: &str) -> f64 {
    let text = http1::get(addr, "/metrics", &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn get_from(src: [u8; 4], gw: &Gateway, token: &str) -> Response {
    let req =
        format!("GET {PROTECTED}&token={token} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    http1::raw_from(IpAddr::V4(Ipv4Addr::from(src)), gw.addr, req.as_bytes()).await
}

#[tokio::test]
async fn failed_authentications_over_the_limit_get_429_before_any_verification() {
    let up = Recorder::start().await;
    let metrics = free_addr();
    let mut cfg = GatewayConfig::hs256(up.addr)
        .proxy(&format!("metrics_listen = \"{metrics}\""))
        .auth(&format!(
            "algorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
            fixture("rsa.pub.pem").display()
        ));
    cfg.failure_limit = 5;
    let gw = Gateway::start(&cfg).await;
    let good = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        None,
        &claims("alice"),
    );
    let forged = sign(
        Algorithm::RS256,
        &private_key("rsa2"),
        None,
        &claims("alice"),
    );

    let mut unauthorized = 0;
    let mut limited = Vec::new();
    for _ in 0..40 {
        let resp = get_from([127, 0, 0, 1], &gw, &forged).await;
        match resp.status {
            401 => unauthorized += 1,
            429 => limited.push(resp),
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert!(
        (5..=12).contains(&unauthorized),
        "{unauthorized} forged tokens were verified before the limit"
    );
    let resp = limited
        .first()
        .unwrap_or_else(|| panic!("no 429 after 40 failures"));
    assert_eq!(resp.header("retry-after"), Some("2"));
    assert_eq!(resp.json()["error"], "rate_limited");
    // Only the requests answered 401 reached signature verification.
    let verified = scrape(metrics, "gateway_verify_seconds_count").await;
    assert_eq!(verified, f64::from(unauthorized));
    assert_eq!(
        scrape(metrics, "gateway_requests_total{outcome=\"rate_limited\"}").await,
        limited.len() as f64
    );

    // The address is limited whatever it sends; another address is not.
    assert_eq!(get_from([127, 0, 0, 1], &gw, &good).await.status, 429);
    assert_eq!(get_from([127, 0, 0, 2], &gw, &good).await.status, 200);
    // A client that waits Retry-After gets in again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get_from([127, 0, 0, 1], &gw, &good).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert!(
        up.seen()
            .iter()
            .all(|s| s.one("x-auth-user") == Some("alice")),
        "only valid tokens reached the upstream"
    );
}

#[tokio::test]
async fn required_typ_is_enforced_when_configured() {
    let up = Recorder::start().await;
    let cfg = GatewayConfig::hs256(up.addr)
        .auth("algorithms = [\"HS256\"]\nsecret_env = \"JWT_SECRET\"\nrequired_typ = \"JWT\"\n");
    let gw = Gateway::start(&cfg).await;
    let body = claims("alice").to_string();
    for (typ, want) in [
        (Some("JWT"), 200),
        (Some("jwt"), 200),
        (Some("application/jwt"), 200),
        (Some("at+jwt"), 401),
        (Some("JOSE"), 401),
        (None, 401),
    ] {
        let header = match typ {
            Some(t) => json!({ "alg": "HS256", "typ": t }),
            None => json!({ "alg": "HS256" }),
        };
        let token = hs256_raw(&header.to_string(), &body);
        let resp = http1::get(gw.addr, &format!("{PROTECTED}&token={token}"), &[]).await;
        assert_eq!(resp.status, want, "typ {typ:?}: {}", resp.text());
        if want == 401 {
            assert_eq!(resp.json()["error"], "malformed_token");
            assert_eq!(
                resp.json()["message"],
                "the token type (typ) is not the one required"
            );
        }
    }
}

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_never_fetched_or_trusted() {
    // Where an attacker would point the gateway for keys: must never be asked.
    let attacker = Recorder::start().await;
    let up = Recorder::start().await;
    let attacker_jwk = Jwk::from_encoding_key(&private_key("rsa2"), Algorithm::RS256)
        .unwrap_or_else(|e| panic!("{e}"));
    let header = json!({
        "alg": "RS256",
        "kid": "attacker",
        "jku": format!("http://{}/jwks.json", attacker.addr),
        "x5u": format!("http://{}/cert.pem", attacker.addr),
        "jwk": attacker_jwk,
    });
    let body = claims("mallory").to_string();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(&body)
    );
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &private_key("rsa2"), Algorithm::RS256)
            .unwrap_or_else(|e| panic!("{e}"));
    let forged = format!("{message}.{sig}");
    assert_eq!(forged, raw(&header.to_string(), &body, &sig));

    // A single key ignores kid: the signature does not match it.
    let single = GatewayConfig::hs256(up.addr).auth(&format!(
        "algorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        fixture("rsa.pub.pem").display()
    ));
    // A JWK Set: the attacker's kid is unknown, and nothing is fetched for it.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("keys.json"),
        tests::tokens::jwks(&[("rsa", Algorithm::RS256, "k1")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let set =
        GatewayConfig::hs256(up.addr).auth("algorithms = [\"RS256\"]\njwks_file = \"keys.json\"\n");
    for (gw, code) in [
        (Gateway::start(&single).await, "invalid_signature"),
        (Gateway::start_in(&set, dir).await, "unknown_key"),
    ] {
        let resp = http1::get(gw.addr, &format!("{PROTECTED}&token={forged}"), &[]).await;
        assert_eq!(resp.status, 401, "{}", resp.text());
        assert_eq!(resp.json()["error"], code);
    }
    assert!(attacker.seen().is_empty(), "fetched {:?}", attacker.seen());
    assert!(up.seen().is_empty());
}
