//! Hostile clients all at once against the real gateway binary, while a legitimate
//! client keeps working: 10,000 idle connections, slowloris, half-open connections,
//! garbage, oversized headers and a flood of forged tokens. Its own test binary, because
//! it raises the descriptor limit and holds thousands of sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tests::http1;
use tests::procs::{Gateway, GatewayConfig, rss_kib};
use tests::recorder::Recorder;
use tests::tokens::{claims, private_key, sign, valid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IDLE: usize = 10_000;
const SLOW: usize = 200;
const HALF_OPEN: usize = 200;
const ABUSE_FOR: Duration = Duration::from_secs(8);
/// Pingora closes a connection that sent nothing for 60 s; a little slack on top.
const IDLE_CLOSE_WITHIN: Duration = Duration::from_secs(80);

async fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
    sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(src)), 0))
        .unwrap_or_else(|e| panic!("bind: {e}"));
    sock.connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Reads until the peer closes (true) or `limit` passes (false); data is discarded.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_starve_a_legitimate_one() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or_else(|e| panic!("{e}"));
    // The gateway inherits this limit: it must hold the idle connections too.
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        hard >= (IDLE + SLOW + HALF_OPEN + 1000) as u64,
        "descriptor limit {hard} is too low for this test"
    );

    let up = Recorder::start().await;
    let mut cfg = GatewayConfig::hs256(up.addr).rust_log("warn");
    cfg.failure_limit = 50;
    let gw = Gateway::start(&cfg).await;
    let pid = gw.proc_.pid();
    let addr = gw.addr;
    let good_target = format!(
        "GET /socket.io/?EIO=4&transport=polling&token={} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        valid("alice")
    );
    for _ in 0..50 {
        let r = http1::raw_from(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            addr,
            good_target.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let rss_base = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));

    // 10,000 connections that never send a byte.
    let mut idle = Vec::with_capacity(IDLE);
    for batch in 0..IDLE / 500 {
        let src = [127, 0, 0, 3 + (batch % 4) as u8];
        let opened =
            futures_util::future::join_all((0..500).map(|_| connect_from(src, addr))).await;
        idle.extend(opened);
    }

    // Slowloris: a header line a second, never finishing the request.
    let slow_tasks: Vec<_> = (0..SLOW)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut s = connect_from([127, 0, 0, 7], addr).await;
                let _ = s
                    .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: gw\r\n")
                    .await;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(b"X-Slow: a\r\n").await.is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();

    // Half-open: part of a request, then the write side shut.
    let half_open: Vec<_> = (0..HALF_OPEN)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect_from([127, 0, 0, 8], addr).await;
                let _ = s.write_all(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHo").await;
                let _ = s.shutdown().await;
                closed_within(&mut s, Duration::from_secs(10)).await
            })
        })
        .collect();

    // Garbage, oversized headers and forged tokens in loops, each answered.
    let refused = Arc::new(AtomicUsize::new(0));
    let unanswered = Arc::new(AtomicUsize::new(0));
    let loops: Vec<_> = [0u8, 1, 2]
        .into_iter()
        .map(|kind| {
            let (stop, refused, unanswered) = (stop.clone(), refused.clone(), unanswered.clone());
            let forged = sign(Algorithm::RS256, &private_key("rsa2"), None, &claims("x"));
            tokio::spawn(async move {
                let garbage: Vec<u8> = (0..=255u8).rev().cycle().take(8192).collect();
                let oversized = format!(
                    "GET /socket.io/ HTTP/1.1\r\nHost: gw\r\nX-Pad: {}\r\n\r\n",
                    "a".repeat(2 << 20)
                )
                .into_bytes();
                let forged = format!(
                    "GET /socket.io/?EIO=4&transport=polling&token={forged} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                while !stop.load(Ordering::Relaxed) {
                    let request = match kind {
                        0 => &garbage,
                        1 => &oversized,
                        _ => &forged,
                    };
                    let answer = http1::exchange(addr, request).await;
                    let status = if answer.is_empty() { 0 } else { http1::parse(&answer).status };
                    if matches!(status, 400 | 401 | 429 | 431) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // The legitimate client, from its own address, for the whole abuse period.
    let started = Instant::now();
    let (mut ok, mut total, mut worst) = (0usize, 0usize, Duration::ZERO);
    let mut rss_loaded = 0;
    while started.elapsed() < ABUSE_FOR {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http1::raw_from(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                addr,
                good_target.as_bytes(),
            ),
        )
        .await;
        worst = worst.max(t.elapsed());
        total += 1;
        if matches!(r, Ok(ref resp) if resp.status == 200) {
            ok += 1;
        }
        rss_loaded = rss_loaded.max(rss_kib(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut half_closed = 0;
    for h in half_open {
        if h.await.unwrap_or_else(|e| panic!("{e}")) {
            half_closed += 1;
        }
    }
    let slow: Vec<TcpStream> = futures_util::future::join_all(slow_tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    drop(slow);

    // Every idle connection is closed by the gateway after Pingora's 60 s idle timeout.
    let t_idle = Instant::now();
    let closed = futures_util::future::join_all(
        idle.iter_mut()
            .map(|s| closed_within(s, IDLE_CLOSE_WITHIN.saturating_sub(t_idle.elapsed()))),
    )
    .await;
    let idle_closed = closed.iter().filter(|c| **c).count();
    let idle_close_secs = t_idle.elapsed().as_secs_f64();
    drop(idle);
    // Give the gateway a moment to free what the closed connections held.
    let settle = Instant::now();
    let mut rss_after = rss_kib(pid);
    while rss_after > rss_base + 8 * 1024 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_after = rss_kib(pid);
    }
    let after = http1::raw_from(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        addr,
        good_target.as_bytes(),
    )
    .await;

    eprintln!(
        "legit client: {ok}/{total} ok, slowest {worst:?}; abusive requests refused {} (unanswered {}); half-open closed {half_closed}/{HALF_OPEN}; idle closed {idle_closed}/{IDLE} after {idle_close_secs:.1} s; gateway RSS {rss_base} KiB -> {rss_loaded} KiB under abuse -> {rss_after} KiB after",
        refused.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed)
    );
    assert!(
        total >= 100,
        "only {total} legitimate requests in {ABUSE_FOR:?}"
    );
    assert_eq!(
        ok,
        total,
        "the legitimate client failed {} of {total}",
        total - ok
    );
    assert!(refused.load(Ordering::Relaxed) > 0);
    assert_eq!(
        unanswered.load(Ordering::Relaxed),
        0,
        "abusive requests left without an answer"
    );
    assert_eq!(half_closed, HALF_OPEN, "half-open connections left open");
    assert_eq!(idle_closed, IDLE, "idle connections left open");
    assert!(
        rss_loaded > rss_base,
        "the abuse did not show in memory: {rss_base} -> {rss_loaded} KiB"
    );
    assert!(
        rss_after <= rss_base + 8 * 1024,
        "memory did not return to baseline: {rss_base} KiB before, {rss_after} KiB after"
    );
    assert_eq!(after.status, 200);
    assert!(
        up.seen()
            .iter()
            .all(|s| s.one("x-auth-user") == Some("alice")),
        "only the legitimate client reached the upstream"
    );
}
