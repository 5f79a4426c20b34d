//! Broadcast load through the cluster (docs/performance.md): N socket.io WebSockets
//! spread over the gateways, one sender emitting `broadcast` at a fixed rate, every
//! socket timing each delivery. Two setups side by side in one run: one gateway in front
//! of one upstream-demo without Redis, and two gateways in front of three upstream-demo
//! instances sharing a `redis-server` (socket.io's Redis adapter). Prints broadcasts
//! delivered per second end to end and the delivery latency percentiles.
//!
//! `target/release/clusterbench` (`bench/run cluster`); `CLUSTERBENCH_SOCKETS` (default
//! 60), `CLUSTERBENCH_RATE` broadcasts per second (default 100), `CLUSTERBENCH_SECONDS`
//! (default 5). Needs Debian's `redis-server`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::eio::{Recv, Ws, event};
use tests::procs::{Demo, Gateway, GatewayConfig, Proc, free_addr, wait_listening};
use tests::tokens::{claims, hs256};
use tokio::sync::Mutex;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The processes of one setup (stopped on drop) and its gateways' addresses.
struct Setup {
    gateways: Vec<Gateway>,
    _demos: Vec<Demo>,
    _redis: Option<Proc>,
}

async fn single() -> Setup {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    Setup {
        gateways: vec![gw],
        _demos: vec![demo],
        _redis: None,
    }
}

async fn cluster() -> Setup {
    let addr = free_addr();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    let redis = Proc::spawn("redis-server", cmd);
    wait_listening(addr, &redis).await;
    let extra = format!("redis_url = \"redis://{addr}\"");
    let mut demos = Vec::new();
    for _ in 0..3 {
        demos.push(Demo::start_with("127.0.0.1:0", "25s", &extra).await);
    }
    let mut cfg = GatewayConfig::hs256(demos[0].addr);
    cfg.more_upstreams = demos[1..].iter().map(|d| d.addr).collect();
    cfg.upstream_lines = "sticky = \"token\"".into();
    let gateways = vec![Gateway::start(&cfg).await, Gateway::start(&cfg).await];
    Setup {
        gateways,
        _demos: demos,
        _redis: Some(redis),
    }
}

/// Delivered broadcasts per second and latency percentiles (ms): p50, p99, max.
async fn run(setup: &Setup, sockets: usize, rate: u64, secs: u64) -> (f64, [f64; 3], usize) {
    let addrs: Vec<SocketAddr> = setup.gateways.iter().map(|g| g.addr).collect();
    let epoch = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for i in 0..sockets {
        let mut c = claims(&format!("listener-{i}"));
        c["exp"] = json!(tests::tokens::now() + 3600);
        let token = hs256(&c);
        let mut ws = Ws::connect(addrs[i % addrs.len()], &format!("token={token}"), &[])
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        ws.open_and_join().await;
        let (latencies, stop) = (latencies.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(next) = tokio::time::timeout(Duration::from_millis(200), ws.recv()).await
                else {
                    continue;
                };
                let Recv::Text(packet) = next else { break };
                let sent = event(&packet, "broadcast")
                    .and_then(|m| m["text"].as_str()?.parse::<u64>().ok());
                if let Some(sent) = sent {
                    let now = epoch.elapsed().as_nanos() as u64;
                    mine.push(now.saturating_sub(sent));
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    let mut c = claims("sender");
    c["exp"] = json!(tests::tokens::now() + 3600);
    let mut sender = Ws::connect(addrs[0], &format!("token={}", hs256(&c)), &[])
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    sender.open_and_join().await;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let at = epoch.elapsed().as_nanos() as u64;
        sender
            .send(&format!("42[\"broadcast\",{{\"text\":\"{at}\"}}]"))
            .await;
        sent += 1;
    }
    // Deliveries still in flight get a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.await;
    }
    let mut all = latencies.lock().await.clone();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .map_or(0.0, |ns| *ns as f64 / 1e6)
    };
    let expected = sent * sockets;
    if all.len() != expected {
        eprintln!(
            "clusterbench: {} of {expected} deliveries arrived",
            all.len()
        );
    }
    (
        all.len() as f64 / secs as f64,
        [pct(0.5), pct(0.99), pct(1.0)],
        expected,
    )
}

#[tokio::main]
async fn main() {
    let sockets = env("CLUSTERBENCH_SOCKETS", 60) as usize;
    let rate = env("CLUSTERBENCH_RATE", 100);
    let secs = env("CLUSTERBENCH_SECONDS", 5);
    println!(
        "{sockets} sockets receiving, 1 sender at {rate} broadcasts/s for {secs} s ({} deliveries/s offered)\n",
        rate * sockets as u64
    );
    println!("| setup | delivered/s | delivered of offered | latency p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (name, setup) in [
        ("1 gateway, 1 upstream-demo, no Redis", single().await),
        ("2 gateways, 3 upstream-demo + Redis", cluster().await),
    ] {
        let (per_sec, [p50, p99, max], expected) = run(&setup, sockets, rate, secs).await;
        let delivered = (per_sec * secs as f64).round() as usize;
        println!(
            "| {name} | {per_sec:.0} | {delivered} of {expected} | {p50:.2} | {p99:.2} | {max:.2} |"
        );
    }
}
