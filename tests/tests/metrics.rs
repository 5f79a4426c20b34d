//! Prometheus metrics at `metrics_listen` `/metrics` (docs/operations.md, "Metrics"): each series moves
//! with the traffic that should move it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::eio::{Polling, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig, free_addr};
use tests::tokens::{claims, hs256, valid};

async fn scrape(addr: SocketAddr) -> String {
    let resp = http1::get(addr, "/metrics", &[]).await;
    assert_eq!(resp.status, 200);
    resp.text()
}

/// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_value(addr: SocketAddr, series: &str, want: f64) {
    let start = Instant::now();
    loop {
        let text = scrape(addr).await;
        if value(&text, series) == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{series} != {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_metric_moves_with_its_traffic() {
    let mut demo = Demo::start("25s").await;
    let metrics = free_addr();
    let cfg = GatewayConfig::hs256(demo.addr).proxy(&format!("metrics_listen = \"{metrics}\""));
    let gw = Gateway::start(&cfg).await;

    let before = scrape(metrics).await;
    for series in [
        "gateway_requests_total{outcome=\"allowed\"}",
        "gateway_requests_total{outcome=\"rejected\"}",
        "gateway_requests_total{outcome=\"public\"}",
        "gateway_auth_failures_total{reason=\"missing_token\"}",
        "gateway_auth_failures_total{reason=\"token_expired\"}",
        "gateway_upstream_errors_total",
        "gateway_websockets_open",
        "gateway_verify_seconds_count",
    ] {
        assert_eq!(value(&before, series), 0.0, "{series} before any traffic");
        assert!(
            before.contains(series.split('{').next().unwrap_or(series)),
            "{series} not exposed"
        );
    }
    assert!(
        before.contains("process_resident_memory_bytes"),
        "process metrics"
    );

    assert_eq!(http1::get(gw.addr, "/", &[]).await.status, 200);
    Polling::handshake(gw.addr, &format!("token={}", valid("ann")), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status));
    assert_eq!(
        http1::get(gw.addr, "/socket.io/?EIO=4&transport=polling", &[])
            .await
            .status,
        401
    );
    let mut old = claims("ann");
    old["exp"] = json!(1000);
    let expired = format!("/socket.io/?EIO=4&transport=polling&token={}", hs256(&old));
    assert_eq!(http1::get(gw.addr, &expired, &[]).await.status, 401);

    let mut ws = Ws::connect(gw.addr, &format!("token={}", valid("bob")), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.open_and_join().await;
    wait_value(metrics, "gateway_websockets_open", 1.0).await;
    drop(ws);
    wait_value(metrics, "gateway_websockets_open", 0.0).await;

    demo.proc_.signal(nix::sys::signal::Signal::SIGKILL);
    demo.proc_.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(http1::get(gw.addr, "/", &[]).await.status, 502);

    wait_value(metrics, "gateway_upstream_errors_total", 1.0).await;
    let after = scrape(metrics).await;
    assert_eq!(
        value(&after, "gateway_requests_total{outcome=\"allowed\"}"),
        2.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "gateway_requests_total{outcome=\"rejected\"}"),
        2.0
    );
    assert_eq!(
        value(&after, "gateway_requests_total{outcome=\"public\"}"),
        2.0,
        "the page and the 502"
    );
    assert_eq!(
        value(
            &after,
            "gateway_auth_failures_total{reason=\"missing_token\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "gateway_auth_failures_total{reason=\"token_expired\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "gateway_auth_failures_total{reason=\"invalid_signature\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&after, "gateway_verify_seconds_count"),
        3.0,
        "three tokens verified"
    );
    assert!(value(&after, "gateway_verify_seconds_sum") > 0.0);
}
