//! `reject_with = "socketio"` at the protocol level, through the real gateway binary:
//! the exact packets of a refused polling session, and the bounds on what refused
//! sessions cost (a fixed number remembered, each for a few seconds).

use std::time::{Duration, Instant};

use tests::http1;
use tests::procs::{Gateway, GatewayConfig, rss_kib};
use tests::recorder::Recorder;

const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling";

async fn handshake(gw: &Gateway) -> String {
    let resp = http1::get(gw.addr, HANDSHAKE, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    let open: serde_json::Value = serde_json::from_str(
        text.strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {text}")),
    )
    .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        open["upgrades"],
        serde_json::json!([]),
        "no upgrades offered"
    );
    open["sid"].as_str().unwrap_or_default().to_string()
}

async fn post(gw: &Gateway, sid: &str, body: &str) -> http1::Response {
    http1::request(
        gw.addr,
        "POST",
        &format!("{HANDSHAKE}&sid={sid}"),
        &[("content-type", "text/plain;charset=UTF-8")],
        body.as_bytes(),
    )
    .await
}

async fn poll(gw: &Gateway, sid: &str) -> String {
    let resp = http1::get(gw.addr, &format!("{HANDSHAKE}&sid={sid}"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

#[tokio::test]
async fn refused_sessions_speak_socket_io_and_are_bounded_in_number_and_age() {
    let up = Recorder::start().await;
    let mut cfg = GatewayConfig::hs256(up.addr).auth(
        "algorithms = [\"HS256\"]\nsecret_env = \"JWT_SECRET\"\nreject_with = \"socketio\"\n",
    );
    // This test floods refusals from one address on purpose.
    cfg.failure_limit = 0;
    let gw = Gateway::start(&cfg).await;

    // The poll waits for the CONNECT, then answers it with CONNECT_ERROR per namespace.
    let sid = handshake(&gw).await;
    let waiting = {
        let (addr, sid) = (gw.addr, sid.clone());
        tokio::spawn(async move {
            http1::get(addr, &format!("{HANDSHAKE}&sid={sid}"), &[])
                .await
                .text()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the poll waits for the client's CONNECT"
    );
    let resp = post(&gw, &sid, "40\u{1e}40/admin,{\"token\":\"x\"}").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    let error = r#"{"message":"no token was presented","data":{"error":"missing_token"}}"#;
    assert_eq!(
        waiting.await.unwrap_or_else(|e| panic!("{e}")),
        format!("44{error}\u{1e}44/admin,{error}")
    );
    // Delivered: the session is gone, and a further poll gets an Engine.IO close.
    assert_eq!(poll(&gw, &sid).await, "1");
    let resp = post(&gw, &sid, "40").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["message"], "Session ID unknown");

    // A flood of refused handshakes costs a bounded amount of memory.
    let pid = gw.proc_.pid();
    let before = rss_kib(pid);
    let started = Instant::now();
    let flood = 60_000;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            for _ in 0..flood / 8 {
                let r = http1::get(addr, HANDSHAKE, &[]).await;
                assert_eq!(r.status, 200, "worker {worker}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let after = rss_kib(pid);
    eprintln!(
        "{flood} refused handshakes in {:?}: gateway RSS {before} KiB -> {after} KiB",
        started.elapsed()
    );
    // 10,000 remembered sessions of well under 1 KiB each.
    assert!(
        after < before + 12 * 1024,
        "refused sessions grew memory from {before} KiB to {after} KiB"
    );
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());

    // A refused session is forgotten after its 10 seconds: a late CONNECT is not taken.
    let late = handshake(&gw).await;
    tokio::time::sleep(Duration::from_millis(10_300)).await;
    let resp = post(&gw, &late, "40").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(poll(&gw, &late).await, "1");
}
