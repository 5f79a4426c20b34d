//! TLS benchmark (docs/performance.md): the gateway terminating TLS against HAProxy 2.6
//! terminating TLS with the same ECDSA P-256 certificate, both verifying the token
//! (`jwt_verify` for HAProxy) in front of the same nginx upstream, all on 127.0.0.1.
//!
//! - TLS handshakes per second: `oha --disable-keepalive`, a new connection (and a full
//!   handshake) per request.
//! - Keep-alive HTTPS requests per second, HTTP/1.1 and HTTP/2.
//! - Memory per held WSS connection: `TLS_HOLD` (default 2000) socket.io WebSockets
//!   opened through each system to upstream-demo over WSS, and the same over plain WS
//!   through the gateway, VmRSS of the system before and after.
//!
//! The system under test runs alone on CPU 0 (`threads = 1`, `nbthread 1`); `oha` and
//! the upstreams share CPU 1. Rounds are interleaved, `BENCH_ROUNDS` (default 3) of
//! `BENCH_DURATION` (default 4s), ratios taken round by round and their median printed.
//! Run it with `bench/run tls`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tests::SECRET;
use tests::bench::{
    LOAD_CPU, SUT_CPU, System, haproxy_conf, median, pinned, trivial_upstream, upstream_demo, write,
};
use tests::eio::Ws;
use tests::procs::{GatewayConfig, bin, free_addr, rss_kib};
use tests::tls::{self, Leaf, TestCa};
use tests::tokens::{claims, hs256};

const HS_AUTH: &str = "algorithms = [\"HS256\"]\nsecret_env = \"JWT_SECRET\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\n";

/// One `oha` run over HTTPS, 50 connections: (requests/s, p99 ms, status counts).
fn oha(url: &str, ca: &str, extra: &[&str], duration: &str) -> (f64, f64, Value) {
    let mut args = vec!["-z", duration, "-c", "50", "--cacert", ca];
    args.extend_from_slice(extra);
    tests::bench::oha(&args, url)
}

/// The gateway (`threads = 1`) serving TLS with `leaf`, on the SUT CPU.
async fn gateway(dir: &Path, name: &str, upstream: SocketAddr, leaf: Option<&Leaf>) -> System {
    let addr = free_addr();
    let mut cfg = GatewayConfig::hs256(upstream).auth(HS_AUTH);
    cfg.failure_limit = 0;
    if let Some(leaf) = leaf {
        let files = leaf.write(dir, &name.replace(' ', "_"));
        cfg.extra = format!(
            "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            files.cert.display(),
            files.key.display()
        );
    }
    let text = cfg.render(addr).replace("threads = 2", "threads = 1");
    let file = write(dir, &format!("{}.toml", name.replace(' ', "_")), &text);
    let mut cmd = pinned(SUT_CPU, &bin("proxy").display().to_string());
    cmd.arg("--config")
        .arg(&file)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    System::start(name, cmd, addr).await
}

/// HAProxy 2.6 terminating TLS with the same certificate (`crt` holds chain and key),
/// ALPN `h2,http/1.1`, TLS 1.2 and 1.3 as the gateway.
async fn haproxy_tls(dir: &Path, name: &str, upstream: SocketAddr, leaf: &Leaf) -> System {
    let addr = free_addr();
    let crt = leaf.write_combined(dir, &format!("{}.pem", name.replace(' ', "_")));
    let conf = haproxy_conf(addr, upstream, "HS256", SECRET).replace(
        &format!("bind {addr}"),
        &format!(
            "bind {addr} ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.2",
            crt.display()
        ),
    );
    let file = write(dir, &format!("{}.cfg", name.replace(' ', "_")), &conf);
    let mut cmd = pinned(SUT_CPU, "haproxy");
    cmd.arg("-db").arg("-f").arg(&file);
    System::start(name, cmd, addr).await
}

/// Opens `n` socket.io WebSockets through `addr` (WSS when `tls` is given) and keeps
/// them until dropped; each counts once its open packet arrived.
async fn hold(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    n: usize,
    token: &str,
) -> Vec<Ws> {
    let query = format!("token={token}");
    let mut held = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let mut tasks = Vec::new();
        for _ in 0..100.min(n - chunk * 100) {
            let (tls, query) = (tls.clone(), query.clone());
            tasks.push(tokio::spawn(async move {
                let opened = match tls {
                    Some(config) => {
                        let stream = tls::connect(addr, config)
                            .await
                            .unwrap_or_else(|e| panic!("TLS: {e}"));
                        Ws::over_tls(stream, addr, &query, &[]).await
                    }
                    None => Ws::connect(addr, &query, &[]).await,
                };
                let mut ws = opened.unwrap_or_else(|e| panic!("WebSocket: {e}"));
                assert!(ws.expect().await.starts_with('0'), "no open packet");
                ws
            }));
        }
        for t in tasks {
            held.push(t.await.unwrap_or_else(|e| panic!("{e}")));
        }
    }
    held
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let duration = std::env::var("BENCH_DURATION").unwrap_or_else(|_| "4s".into());
    let n_hold: usize = std::env::var("TLS_HOLD")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let ca = TestCa::new("tlsbench CA").unwrap_or_else(|e| panic!("{e}"));
    let ca_file = ca.write(dir, "ca.pem").display().to_string();
    let leaf = ca
        .leaf(1, Duration::from_secs(90 * 24 * 3600))
        .unwrap_or_else(|e| panic!("{e}"));

    let (trivial, _t) = trivial_upstream(dir).await;
    let gw = gateway(dir, "gateway", trivial, Some(&leaf)).await;
    let ha = haproxy_tls(dir, "haproxy+jwt", trivial, &leaf).await;

    let mut c = claims("gonzalo");
    c["exp"] = json!(tests::tokens::now() + 24 * 3600);
    let token = hs256(&c);
    let target = format!("/socket.io/?EIO=4&transport=polling&token={token}");

    let scenarios: [(&str, &[&str]); 3] = [
        (
            "TLS handshakes/s (new connection per request)",
            &["--disable-keepalive"],
        ),
        ("keep-alive HTTPS/1.1 req/s", &[]),
        ("keep-alive HTTPS/2 req/s (h2)", &["--http2"]),
    ];
    let systems = [&gw, &ha];
    let mut table = String::from(
        "| scenario, c=50 | system | req/s median (min..max) | p99 ms median | x HAProxy (median of rounds) |\n|---|---|---|---|---|\n",
    );
    for (name, extra) in scenarios {
        for sys in systems {
            let url = format!("https://127.0.0.1:{}{target}", sys.addr.port());
            let (_, _, codes) = oha(&url, &ca_file, extra, "1s");
            let total: u64 = codes
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            assert!(
                total > 0 && codes["200"].as_u64() == Some(total),
                "{} on {name}: {codes}",
                sys.name
            );
        }
        let mut rps = vec![Vec::new(); systems.len()];
        let mut p99 = vec![Vec::new(); systems.len()];
        for _ in 0..rounds {
            for (i, sys) in systems.iter().enumerate() {
                let url = format!("https://127.0.0.1:{}{target}", sys.addr.port());
                let (r, p, _) = oha(&url, &ca_file, extra, &duration);
                rps[i].push(r);
                p99[i].push(p);
            }
        }
        for (i, sys) in systems.iter().enumerate() {
            let vs = median(
                (0..rounds)
                    .map(|k| rps[i][k] / rps[1][k].max(1e-9))
                    .collect(),
            );
            let min = rps[i].iter().copied().fold(f64::INFINITY, f64::min);
            let max = rps[i].iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                table,
                "| {name} | {} | {:.0} ({min:.0}..{max:.0}) | {:.2} | {} |",
                sys.name,
                median(rps[i].clone()),
                median(p99[i].clone()),
                if i == 1 {
                    "1.00".to_string()
                } else {
                    format!("{vs:.2}")
                }
            );
        }
        eprintln!("done: {name}");
    }
    drop((gw, ha));

    // Memory per held WebSocket, over WSS and over WS, through upstream-demo.
    let (demo_addr, _demo) = upstream_demo(dir).await;
    let client = tls::client_config(&ca.pem, &["http/1.1"]);
    let mut mem = format!(
        "\n| held socket.io WebSockets ({n_hold}) | RSS before -> held (MiB) | KiB per connection |\n|---|---|---|\n"
    );
    for (label, tls_on, haproxy) in [
        ("gateway, WSS", true, false),
        ("HAProxy 2.6, WSS", true, true),
        ("gateway, plain WS", false, false),
    ] {
        let sys = if haproxy {
            haproxy_tls(dir, "haproxy wss", demo_addr, &leaf).await
        } else {
            gateway(dir, label, demo_addr, tls_on.then_some(&leaf)).await
        };
        let pid = sys.proc_.pid();
        // Warm-up: the first connections' one-off allocations are not per connection.
        drop(hold(sys.addr, tls_on.then(|| client.clone()), 100, &token).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid);
        let held = hold(sys.addr, tls_on.then(|| client.clone()), n_hold, &token).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        let _ = writeln!(
            mem,
            "| {label} | {:.1} -> {:.1} | {:.2} |",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / n_hold as f64
        );
        drop(held);
        eprintln!("done: {label}");
    }
    println!(
        "SUT on CPU {SUT_CPU}, oha and upstreams on CPU {LOAD_CPU}; ECDSA P-256 certificate; {rounds} rounds of {duration}, interleaved\n"
    );
    print!("{table}");
    print!("{mem}");
}
