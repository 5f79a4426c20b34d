//! The upstream timeouts and connect retries (docs/configuration.md, `[upstream]`),
//! through the real gateway binary: a server that never answers is `504` after
//! `read_timeout`, one that answers a long poll within it is waited for, and a connect
//! whose SYN is dropped by a full accept queue (a reconnect storm's overflow) is tried
//! again instead of failing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::http1;
use tests::procs::{Gateway, GatewayConfig, local_listener};
use tests::tokens::valid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

/// Answers every request head on `stream` with `200 ok` after `delay`.
async fn answer_after(mut stream: TcpStream, delay: Duration) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    tokio::time::sleep(delay).await;
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await;
    // Held open: the gateway may keep it for its pool.
    let _ = stream.read(&mut chunk).await;
}

/// A server on a free port that answers each request after `delay`.
async fn slow_server(delay: Duration) -> SocketAddr {
    let (listener, addr) = local_listener().await;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(answer_after(s, delay));
        }
    });
    addr
}

fn config(upstream: SocketAddr, lines: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream);
    cfg.upstream_lines = lines.to_string();
    cfg.auth.push_str("reject_with = \"http\"\n");
    cfg
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_within_read_timeout_is_504_and_a_long_poll_within_it_is_waited_for()
 {
    let target = format!("{POLL}&token={}", valid("alice"));
    // Never answers (within the test).
    let silent = slow_server(Duration::from_secs(3600)).await;
    let gw = Gateway::start(&config(silent, "read_timeout = \"1s\"\n")).await;
    let started = Instant::now();
    let r = http1::get(gw.addr, &target, &[]).await;
    let waited = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );

    // Answers after 2 s, as a long poll does: waited for with the default 60 s.
    let slow = slow_server(Duration::from_secs(2)).await;
    let gw = Gateway::start(&config(slow, "")).await;
    let r = http1::get(gw.addr, &target, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"ok");
}

/// A listener whose accept queue is full: further SYNs are dropped, as when a reconnect
/// storm overflows a server. Returns it with the connections that fill it.
async fn full_listener() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
    socket
        .bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let listener = socket.listen(1).unwrap_or_else(|e| panic!("listen: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect: {e}"),
            Err(_) => break, // the queue is full: this SYN was dropped
        }
        assert!(fillers.len() < 16, "the accept queue never filled");
    }
    (listener, fillers, addr)
}

#[tokio::test]
async fn a_connect_dropped_by_a_full_accept_queue_is_tried_again() {
    let token = valid("alice");
    let polling = format!("GET {POLL}&token={token} HTTP/1.1\r\nHost: gw\r\n\r\n");
    // The tunnel connects by itself: the same rule (the server answers the upgrade 200,
    // which the gateway relays).
    let upgrade = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={token} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    for request in [&polling, &upgrade] {
        for (retries, want) in [(0, 504), (3, 200)] {
            let (listener, fillers, addr) = full_listener().await;
            let mut cfg = config(addr, &format!("retries = {retries}\n"));
            cfg.upstream_connect_timeout = "2s".into();
            let gw = Gateway::start(&cfg).await;
            // The fault being simulated, not synchronisation: the server drains its queue
            // 1.5 s into the gateway's first connect (after its SYN and the retransmission
            // at 1 s were dropped, before its 2 s timeout), as an overloaded server does.
            let server = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                drop(fillers);
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(answer_after(s, Duration::ZERO));
                }
            });
            let started = Instant::now();
            let r = http1::one(gw.addr, request.as_bytes()).await;
            let waited = started.elapsed();
            let line = request.lines().next().unwrap_or_default();
            assert_eq!(
                r.status,
                want,
                "{line}, retries = {retries}: {} after {waited:?}",
                r.text()
            );
            assert!(
                waited >= Duration::from_millis(1900),
                "{line}, retries = {retries}: answered after {waited:?}, before the first connect timed out"
            );
            server.abort();
        }
    }
}
