//! WebSockets carried by the gateway's own tunnel (docs/websockets.md), through the
//! real binary: a burst of WebSocket-only socket.io connects loses none, an idle socket
//! is closed at `exp + leeway` with a 1008 close frame, a keep-alive connection that
//! upgrades after an earlier request works, a non-`101` answer is relayed and closed,
//! and heads too large or too slow are refused before the upstream.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::json;
use tests::eio::{Polling, Recv, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256, now, valid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects at once in the burst test: well inside CI's descriptor limit (the gateway
/// holds two descriptors per socket, upstream-demo one, this test one).
const BURST: usize = 1000;

#[tokio::test]
async fn a_burst_of_websocket_only_connects_loses_none() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    // Children inherit the raised limit.
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap_or_else(|e| panic!("rlimit: {e}"));
    assert!(
        hard >= 4 * BURST as u64,
        "descriptor limit {hard} is too low for the burst"
    );
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    let token = valid("burst");
    let started = Instant::now();
    let results = join_all((0..BURST).map(|_| {
        let query = format!("token={token}");
        async move {
            let mut ws = Ws::connect(gw.addr, &query, &[])
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(30), ws.try_open_and_join()).await {
                Ok(Some(w)) if w == json!({ "user": "burst" }) => Ok(ws),
                Ok(other) => Err(format!("no welcome: {other:?} ({:?})", ws.ended)),
                Err(_) => Err("no welcome within 30 s".to_string()),
            }
        }
    }))
    .await;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {BURST} connects failed in {:?}: {:?}",
        failed.len(),
        started.elapsed(),
        &failed[..failed.len().min(5)]
    );
    eprintln!(
        "{BURST} WebSocket-only connects welcomed in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_websocket_is_closed_at_expiry_with_a_1008_close_frame() {
    // Pings every 25 s: nothing passes on the socket before the token expires.
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    let mut c = claims("ivy");
    let exp = now() + 3;
    c["exp"] = json!(exp);
    let mut ws = Ws::connect(gw.addr, &format!("token={}", hs256(&c)), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ws.open_and_join().await, json!({ "user": "ivy" }));
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    assert_eq!(closed.ok(), Some(Recv::Closed), "still open 10 s later");
    let how = ws.ended.clone().unwrap_or_default();
    assert!(
        how.contains("Policy") && how.contains("token expired"),
        "closed without the 1008 frame: {how}"
    );
    // Never before exp; within a second of exp + leeway (0 s here), whole seconds of
    // `exp` allowing one more.
    assert!(
        at >= exp as f64,
        "closed {:.2} s before exp",
        exp as f64 - at
    );
    assert!(
        at < exp as f64 + 2.0,
        "closed {:.2} s after exp",
        at - exp as f64
    );
    let line = gw.proc_.wait_for_line("websocket closed").await;
    assert!(line.contains("Expired"), "{line}");
}

#[tokio::test]
async fn a_keep_alive_connection_upgrades_after_an_earlier_request() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    let token = valid("kim");
    // A polling handshake on a kept-alive connection...
    let mut stream = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let req = format!(
        "GET /socket.io/?EIO=4&transport=polling&token={token} HTTP/1.1\r\nHost: gw\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = http1::read_response(&mut stream).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_ne!(resp.header("connection"), Some("close"));
    let sid = serde_json::from_str::<serde_json::Value>(&resp.text()[1..])
        .unwrap_or_else(|e| panic!("{e}"))["sid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let polling = Polling::handshake(gw.addr, &format!("token={token}"), &[]).await;
    assert!(polling.is_ok());
    // ...then the upgrade of that session on the same connection.
    let query = format!("sid={sid}&token={token}");
    let mut ws = Ws::over(stream, gw.addr, &query, &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade on the kept-alive connection: {e}"));
    ws.send("2probe").await;
    assert_eq!(ws.recv().await, Recv::Text("3probe".into()));
    ws.send("5").await;
    ws.send("40").await;
    let mut welcome = None;
    while welcome.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await {
            Ok(Recv::Text(t)) => welcome = tests::eio::event(&t, "welcome"),
            other => panic!("no welcome: {other:?} ({:?})", ws.ended),
        }
    }
    assert_eq!(welcome, Some(json!({ "user": "kim" })));
}

#[tokio::test]
async fn a_non_101_answer_is_relayed_and_the_connection_closed() {
    // The recorder answers `200 ok` to everything, upgrades included.
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx_auth_user: admin\r\n\r\n",
        valid("noa")
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        http1::exchange(gw.addr, req.as_bytes()),
    )
    .await
    .unwrap_or_else(|_| panic!("the connection was not closed after a non-101 answer"));
    let resp = http1::parse(&answer);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].one("x-auth-user"), Some("noa"));
    assert!(!seen[0].target.contains("token="), "{}", seen[0].target);
    assert_eq!(seen[0].one("x_auth_user"), None);
}

#[tokio::test]
async fn heads_too_large_or_too_slow_never_reach_the_upstream() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let token = valid("sly");
    // Too large: 431, closed.
    let big = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={token} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        http1::exchange(gw.addr, big.as_bytes()),
    )
    .await
    .unwrap_or_else(|_| panic!("not closed"));
    assert_eq!(http1::parse(&answer).status, 431);

    // Too slow: a header line a second never finishes the head; closed within the
    // head deadline (10 s) however it is trickled.
    let mut slow = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    slow.write_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let closed_after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if slow.write_all(b"X-Slow: a\r\n").await.is_err() {
            break t0.elapsed();
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break t0.elapsed(),
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "a trickled head was never cut off"
        );
    };
    assert!(
        closed_after >= Duration::from_secs(9),
        "closed after {closed_after:?}, before the head deadline"
    );
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}
