//! Path matching through the real gateway: encodings, case and dot segments cannot
//! reach a protected path without a token, and public paths are exempt only for plain
//! asset fetches.

use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tokens::valid;

#[tokio::test]
async fn bypass_paths_without_a_token_never_reach_the_upstream() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let attempts = [
        "/Socket.IO/?EIO=4&transport=polling",
        "/SOCKET.IO/",
        "//socket.io/?EIO=4&transport=polling",
        "/./socket.io/?EIO=4&transport=polling",
        "/x/../socket.io/?EIO=4&transport=polling",
        "/%73ocket.io/?EIO=4&transport=polling",
        "/%73%6F%63%6b%65%74%2e%69%6f/",
        "/socket.io%2F?EIO=4&transport=polling",
        "/socket.io",
        "/socket.io?EIO=4",
        "/socket.iox",
        "/socket.io.js",
        "/%2Fsocket.io/",
        "/x%2F..%2Fsocket.io/",
        "/%5Csocket.io/",
        "/x/..%2Fsocket.io/",
        "/socket.io/%2e%2e/socket.io/",
        "/.%2E/socket.io/",
        "/%%37%33ocket.io/?EIO=4&transport=polling",
        "/%2%37%33ocket.io/",
    ];
    for path in attempts {
        let resp = http1::get(gw.addr, path, &[]).await;
        assert!(
            resp.status == 401 || resp.status == 400,
            "{path} got {}: {}",
            resp.status,
            resp.text()
        );
        assert!(
            up.seen().is_empty(),
            "{path} reached the upstream: {:?}",
            up.seen()
        );
    }
    // Same paths with a valid token: forwarded, with the normalized path.
    let t = valid("alice");
    let resp = http1::get(
        gw.addr,
        &format!("/x/../%73ocket.io//?EIO=4&token={t}"),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.last().target, "/socket.io/?EIO=4");
    // Unprotected paths pass through untouched (but normalized).
    up.clear();
    let resp = http1::get(gw.addr, "/static/./app.js?v=1", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().target, "/static/app.js?v=1");
    let resp = http1::get(gw.addr, "/files/a%2Fb", &[]).await;
    assert_eq!(
        resp.status, 200,
        "an encoded slash outside protected paths is fine"
    );
    assert_eq!(up.last().target, "/files/a%2Fb");
}

#[tokio::test]
async fn public_paths_are_exempt_only_for_plain_fetches() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    for path in [
        "/socket.io/socket.io.js",
        "/socket.io/socket.io.min.js",
        "/socket.io/socket.io.js?v=4.8",
    ] {
        up.clear();
        let resp = http1::get(gw.addr, path, &[]).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(up.last().target, path);
        assert!(up.last().all("x-auth-user").is_empty());
        let resp = http1::request(gw.addr, "HEAD", path, &[], b"").await;
        assert_eq!(resp.status, 200, "HEAD {path}");
    }
    up.clear();
    type Attempt<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let refused: [Attempt; 6] = [
        (
            "GET",
            "/socket.io/socket.io.js?EIO=4&transport=polling",
            vec![],
        ),
        ("GET", "/socket.io/socket.io.js?transport=websocket", vec![]),
        ("GET", "/socket.io/socket.io.js?sid=abc", vec![]),
        ("GET", "/socket.io/socket.io.js?E%49O=4", vec![]),
        ("POST", "/socket.io/socket.io.js", vec![]),
        (
            "GET",
            "/socket.io/socket.io.js",
            vec![("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ),
    ];
    for (method, path, headers) in &refused {
        let resp = http1::request(gw.addr, method, path, headers, b"").await;
        // An Engine.IO parameter spelled otherwise (`E%49O`) is refused before its token
        // is looked for: `400` rather than `401`, never forwarded either way.
        let want = if path.contains('%') { 400 } else { 401 };
        assert_eq!(
            resp.status,
            want,
            "{method} {path} {headers:?}: {}",
            resp.text()
        );
    }
    let resp = http1::get(gw.addr, "/SOCKET.IO/socket.io.js", &[]).await;
    assert_eq!(resp.status, 401, "public paths are exact");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn an_encoded_nul_anywhere_in_the_path_is_refused_even_with_a_valid_token() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let t = valid("alice");
    for path in [
        "/socket.io/%00",
        "/socket.io/x%00y/",
        "/%00/socket.io/",
        "/public/%00.js",
    ] {
        let resp = http1::get(
            gw.addr,
            &format!("{path}?EIO=4&transport=polling&token={t}"),
            &[],
        )
        .await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert!(resp.text().contains("NUL"), "{path}: {}", resp.text());
        assert!(
            up.seen().is_empty(),
            "{path} reached the upstream: {:?}",
            up.seen()
        );
    }
}
