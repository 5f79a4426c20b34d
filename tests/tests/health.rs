//! `metrics_listen` (docs/operations.md, "Health and readiness"): `/healthz`,
//! `/readyz` with each reason it can be `503` for (keys not fetched yet, no healthy
//! upstream, draining after SIGTERM), `/metrics`, and `404` for every other path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use jsonwebtoken::Algorithm;
use nix::sys::signal::Signal;
use tests::eio::Ws;
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig, free_addr};
use tests::recorder::Recorder;
use tests::tokens::{self, valid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with `metrics_listen`; returns it and the metrics address.
async fn gateway(cfg: GatewayConfig) -> (Gateway, SocketAddr) {
    let metrics = free_addr();
    let lines = format!("{}\nmetrics_listen = \"{metrics}\"", cfg.proxy);
    let gw = Gateway::start(&cfg.proxy(&lines)).await;
    tests::procs::wait_listening(metrics, &gw.proc_).await;
    (gw, metrics)
}

/// `(status, body)` of `GET path` on `addr`.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http1::get(addr, path, &[]).await;
    (r.status, r.text())
}

/// Polls `/readyz` until it answers `want`; returns the last body.
async fn readyz_until(gw: &Gateway, metrics: SocketAddr, want: u16, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = get(metrics, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < limit,
            "/readyz still {status} {body} after {limit:?}; logs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn probes_and_metrics_are_served_and_nothing_else() {
    let up = Recorder::start().await;
    let (gw, metrics) = gateway(GatewayConfig::hs256(up.addr)).await;

    assert_eq!(
        get(metrics, "/healthz").await,
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(
        get(metrics, "/readyz").await,
        (200, r#"{"ready":true}"#.into())
    );
    let r = http1::get(
        gw.addr,
        &format!("/socket.io/?EIO=4&transport=polling&token={}", valid("ann")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let (status, text) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("gateway_requests_total{outcome=\"allowed\"} 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    for path in [
        "/",
        "/health",
        "/ready",
        "/metrics/x",
        "/healthz/",
        "/socket.io/",
    ] {
        assert_eq!(get(metrics, path).await.0, 404, "{path}");
    }
    // The gateway's own port has no probes: every path there is the upstream's.
    up.clear();
    assert_eq!(get(gw.addr, "/healthz").await.0, 200);
    assert_eq!(up.last().target, "/healthz");
}

#[tokio::test]
async fn not_ready_until_the_jwks_url_was_fetched() {
    let served = Arc::new(Mutex::new(StatusCode::SERVICE_UNAVAILABLE));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let jwks = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = {
        let served = served.clone();
        Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let status = *served.lock().unwrap_or_else(|p| p.into_inner());
                async move { (status, tokens::jwks(&[("rsa", Algorithm::RS256, "k1")])) }
            }),
        )
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let up = Recorder::start().await;
    let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "algorithms = [\"RS256\"]\njwks_url = \"http://{jwks}/jwks.json\"\n"
    ));
    let (gw, metrics) = gateway(cfg).await;
    assert_eq!(
        get(metrics, "/readyz").await,
        (503, r#"{"ready":false,"reason":"keys_unavailable"}"#.into())
    );
    assert_eq!(get(metrics, "/healthz").await.0, 200, "alive all the same");
    *served.lock().unwrap_or_else(|p| p.into_inner()) = StatusCode::OK;
    readyz_until(&gw, metrics, 200, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn not_ready_while_no_upstream_server_is_healthy() {
    let (a, b) = (free_addr(), free_addr());
    let mut cfg = GatewayConfig::hs256(a);
    cfg.more_upstreams = vec![b];
    cfg.upstream_lines = "health_check = \"1s\"".into();
    let (gw, metrics) = gateway(cfg).await;
    let body = readyz_until(&gw, metrics, 503, Duration::from_secs(10)).await;
    assert_eq!(body, r#"{"ready":false,"reason":"no_healthy_upstream"}"#);
    // One of the two comes up: ready again.
    let _up = Recorder::start_on(b).await;
    readyz_until(&gw, metrics, 200, Duration::from_secs(10)).await;
}

/// One request on a kept-alive connection; the status and body of its answer.
async fn keep_alive_get(conn: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n");
    conn.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn
            .read(&mut chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length in {head}"));
            if body.len() >= length {
                let r = http1::parse(&buf);
                return (r.status, r.text());
            }
        }
    }
}

#[tokio::test]
async fn not_ready_while_draining() {
    let demo = Demo::start("25s").await;
    let cfg = GatewayConfig::hs256(demo.addr).proxy("shutdown_grace = \"5s\"");
    let (gw, metrics) = gateway(cfg).await;
    let mut ws = Ws::connect(gw.addr, &format!("token={}", valid("dora")), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.open_and_join().await;
    let mut probe = tokio::net::TcpStream::connect(metrics)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keep_alive_get(&mut probe, "/readyz").await.0, 200);

    // SIGTERM: the open WebSocket keeps the process draining; a probe on the kept-alive
    // connection is told why it should get no more traffic.
    gw.proc_.signal(Signal::SIGTERM);
    gw.proc_.wait_for_line("draining").await;
    assert_eq!(
        keep_alive_get(&mut probe, "/readyz").await,
        (503, r#"{"ready":false,"reason":"draining"}"#.into())
    );
}
