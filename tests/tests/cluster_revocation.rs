//! Refresh and revocation across gateways (docs/clusters.md, "Refresh and revocation
//! across gateways"): two gateways sharing a real `redis-server` started here. One
//! `XADD` closes the user's sockets at both within a second; a refresh at B extends a
//! socket held at A; a gateway started later applies the entries in force; Redis
//! stopped and started again: the gateways keep serving, say so in
//! `gateway_cluster_connected`, and apply entries added after it came back.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::eio::Ws;
use tests::http1;
use tests::live::{alive, closed_within, open, token};
use tests::procs::{Demo, Gateway, GatewayConfig, Proc, free_addr, wait_listening};
use tests::tokens::now;

fn redis(addr: SocketAddr) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    Proc::spawn("redis-server", cmd)
}

/// `XADD socketio-gateway:revocations * revoke <entry>` through `redis-cli`.
fn revoke(addr: SocketAddr, entry: &Value) {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &addr.port().to_string(),
            "XADD",
            "socketio-gateway:revocations",
            "*",
        ])
        .args(["revoke", &entry.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(demo: &Demo, redis: SocketAddr, metrics: SocketAddr) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(demo.addr).proxy(&format!(
        "shutdown_grace = \"2s\"\nmetrics_listen = \"{metrics}\""
    ));
    cfg.extra = format!("[cluster]\nredis_url = \"redis://{redis}\"\n");
    // Every gateway must open the others' sessions.
    cfg.auth = format!("{}session_key_env = \"JWT_SECRET\"\n", cfg.auth);
    cfg
}

async fn start(demo: &Demo, redis: SocketAddr) -> (Gateway, SocketAddr) {
    let metrics = free_addr();
    let gw = Gateway::start(&config(demo, redis, metrics)).await;
    gw.proc_.wait_for_line("cluster Redis connected").await;
    (gw, metrics)
}

async fn connected(metrics: SocketAddr) -> Option<String> {
    let body = http1::get(metrics, "/metrics", &[]).await.text();
    body.lines()
        .find(|l| l.starts_with("gateway_cluster_connected "))
        .map(|l| {
            l.trim_start_matches("gateway_cluster_connected ")
                .to_string()
        })
}

async fn wait_connected(metrics: SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(metrics).await.as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "gateway_cluster_connected never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn revocations_and_refreshes_reach_every_gateway_through_redis() {
    let redis_addr = free_addr();
    let mut server = redis(redis_addr);
    wait_listening(redis_addr, &server).await;
    let demo = Demo::start("25s").await;
    let (a, a_metrics) = start(&demo, redis_addr).await;
    let (b, _) = start(&demo, redis_addr).await;

    // A refresh received at B extends a socket held at A.
    let (mut held, sid) = open(a.addr, &token("una", 2, "u0")).await;
    let refreshed_at = Instant::now();
    let mut n = 1;
    while refreshed_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t = token("una", 2, &format!("u{n}"));
        let r = http1::request(
            b.addr,
            "POST",
            &format!("/socket.io/refresh?sid={sid}"),
            &[("Authorization", &format!("Bearer {t}"))],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            alive(&mut held, n).await,
            "closed after {:?}",
            refreshed_at.elapsed()
        );
        n += 1;
    }
    let unknown = http1::request(
        b.addr,
        "POST",
        "/socket.io/refresh?sid=nope.nope",
        &[(
            "Authorization",
            &format!("Bearer {}", token("una", 60, "x")),
        )],
        b"",
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // One XADD closes the user's sockets at both gateways, and only hers.
    let (mut at_a, _) = open(a.addr, &token("vic", 300, "v1")).await;
    let (mut at_b, _) = open(b.addr, &token("vic", 300, "v2")).await;
    let (mut other, _) = open(b.addr, &token("wes", 300, "w1")).await;
    let added = Instant::now();
    revoke(
        redis_addr,
        &json!({ "user": "vic", "issued_before": now() + 1 }),
    );
    for ws in [&mut at_a, &mut at_b] {
        let how = closed_within(ws, Duration::from_secs(2)).await;
        assert!(
            how.as_deref().is_some_and(|h| h.contains("token revoked")),
            "{how:?}"
        );
    }
    assert!(
        added.elapsed() < Duration::from_secs(1),
        "{:?}",
        added.elapsed()
    );
    assert!(
        alive(&mut other, 1).await,
        "wes was closed: {:?}",
        other.ended
    );

    // A gateway started later applies the entries in force.
    let (c, _) = start(&demo, redis_addr).await;
    let refused = Ws::connect(c.addr, &format!("token={}", token("vic", 300, "v3")), &[]).await;
    assert!(
        refused.is_err(),
        "a gateway started later let a revoked token in"
    );

    // Redis stopped: the gateways keep serving with what they know.
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).await;
    wait_connected(a_metrics, "0").await;
    let (mut during, _) = open(a.addr, &token("xia", 300, "x1")).await;
    assert!(alive(&mut during, 1).await);
    let refused = Ws::connect(a.addr, &format!("token={}", token("vic", 300, "v4")), &[]).await;
    assert!(
        refused.is_err(),
        "revocations were forgotten while Redis was down"
    );
    a.proc_.wait_for_line("cluster Redis unreachable").await;

    // Started again (empty): entries added after it came back are applied.
    let server = redis(redis_addr);
    wait_listening(redis_addr, &server).await;
    wait_connected(a_metrics, "1").await;
    let added = Instant::now();
    revoke(redis_addr, &json!({ "jti": "x1" }));
    let how = closed_within(&mut during, Duration::from_secs(2)).await;
    assert!(
        how.as_deref().is_some_and(|h| h.contains("token revoked")),
        "{how:?}"
    );
    assert!(
        added.elapsed() < Duration::from_secs(1),
        "{:?}",
        added.elapsed()
    );
    assert_eq!(
        a.logs().matches("cluster Redis unreachable").count(),
        1,
        "the outage is logged once"
    );
    drop((b, c, server));
}
