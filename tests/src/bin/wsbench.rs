//! WebSocket throughput: N socket.io WebSockets each sending `echo` with a 64-byte or
//! 16 KiB payload and waiting for its acknowledgement, for `WSBENCH_SECONDS` (default
//! 10), through the gateway, HAProxy 2.6 with `jwt_verify`, nginx (no authentication)
//! and straight to upstream-demo. Reports messages per second (echo round trips) and
//! the system under test's CPU time per message (all its threads, from
//! `/proc/PID/task/*/schedstat`). The system under test runs alone on CPU 0, the
//! clients and upstream-demo on CPU 1, as in `loadbench`.
//!
//! A second table is the real socket.io connect rate: 50 clients in a loop, each
//! connecting as the official client does (the polling handshake, the WebSocket upgrade
//! with its probe, joining `/` and waiting for `welcome`) and closing, through each
//! system: connects per second and the system's CPU µs per connect.
//!
//! Run it with `bench/run ws` (builds first, checks the tools). Prints the tables.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::bench::{LOAD_CPU, cpu_ns, gateway, haproxy, nginx, pinned, write};
use tests::eio::{Polling, Ws};
use tests::procs::{Proc, bin, free_addr, wait_listening};
use tests::tokens::{claims, hs256};

const SOCKETS: usize = 100;

/// Messages per second and CPU µs per message of `pid` (0 when not measured).
async fn run(
    addr: SocketAddr,
    pid: Option<u32>,
    token: &str,
    payload: &str,
    secs: u64,
) -> (f64, f64) {
    let headers: &[(&str, &str)] = if pid.is_none() {
        &[("x-auth-user", "bench")]
    } else {
        &[]
    };
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let mut ws = Ws::connect(addr, &format!("token={token}"), headers)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        ws.open_and_join().await;
        sockets.push(ws);
    }
    let payload = json!(payload);
    let load = Load::start(pid, secs);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let (stop, count, payload) = (load.stop.clone(), load.count.clone(), payload.clone());
            tokio::spawn(async move {
                let mut id = 0;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    ws.echo(id, &payload).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    load.finish(tasks).await
}

/// A measurement: the clients' stop flag and count, and what it started from.
struct Load {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    pid: Option<u32>,
    cpu0: u64,
    t0: Instant,
    secs: u64,
}

impl Load {
    /// Starts measuring `pid`'s CPU time, for `secs`.
    fn start(pid: Option<u32>, secs: u64) -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            count: Arc::new(AtomicU64::new(0)),
            pid,
            cpu0: pid.map_or(0, cpu_ns),
            t0: Instant::now(),
            secs,
        }
    }

    /// Lets the clients run for `secs`, stops them (a client that failed fails the
    /// benchmark), and returns operations per second and the system's CPU µs per
    /// operation (0 when not measured).
    async fn finish(self, tasks: Vec<tokio::task::JoinHandle<()>>) -> (f64, f64) {
        let load = self;
        tokio::time::sleep(Duration::from_secs(load.secs)).await;
        load.stop.store(true, Ordering::Relaxed);
        let n = load.count.load(Ordering::Relaxed);
        let elapsed = load.t0.elapsed().as_secs_f64();
        let cpu = load.pid.map_or(0, cpu_ns).saturating_sub(load.cpu0);
        for t in tasks {
            if let Err(e) = t.await {
                panic!("a client failed: {e}");
            }
        }
        let per = if n > 0 {
            cpu as f64 / 1000.0 / n as f64
        } else {
            0.0
        };
        (n as f64 / elapsed, per)
    }
}

/// Clients connecting in a loop for the connect-rate table.
const CONNECTING: usize = 50;

/// Connects per second and CPU µs per connect of `pid` (0 when not measured); panics
/// on any failed connect.
async fn connect_rate(addr: SocketAddr, pid: Option<u32>, token: &str, secs: u64) -> (f64, f64) {
    let headers: Vec<(&str, &str)> = if pid.is_none() {
        vec![("x-auth-user", "bench")]
    } else {
        Vec::new()
    };
    let query = format!("token={token}");
    let load = Load::start(pid, secs);
    let tasks: Vec<_> = (0..CONNECTING)
        .map(|_| {
            let (stop, count, query) = (load.stop.clone(), load.count.clone(), query.clone());
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            tokio::spawn(async move {
                let refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let polling = Polling::handshake(addr, &query, &refs)
                        .await
                        .unwrap_or_else(|r| panic!("handshake via {addr}: {}", r.status));
                    let mut ws = Ws::upgrade(addr, &polling).await;
                    let welcome = ws.try_join().await;
                    assert_eq!(
                        welcome,
                        Some(json!({ "user": "bench" })),
                        "no welcome via {addr}: {:?}",
                        ws.ended
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    load.finish(tasks).await
}

#[tokio::main]
async fn main() {
    let secs = std::env::var("WSBENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let demo_addr = free_addr();
    let demo_conf = format!(
        "[demo]\nlisten = \"{demo_addr}\"\nping_interval = \"25s\"\n\n[auth]\nsecret_env = \"JWT_SECRET\"\n"
    );
    let demo_file = write(dir.path(), "demo.toml", &demo_conf);
    let mut demo_cmd = pinned(LOAD_CPU, &bin("upstream-demo").display().to_string());
    demo_cmd
        .arg("--config")
        .arg(&demo_file)
        .env("JWT_SECRET", tests::SECRET);
    let demo = Proc::spawn("upstream-demo", demo_cmd);
    wait_listening(demo_addr, &demo).await;

    let gw = gateway(
        dir.path(),
        "gateway",
        demo_addr,
        &tests::procs::GatewayConfig::hs256(demo_addr).auth,
    )
    .await;
    let ha = haproxy(dir.path(), "haproxy", demo_addr, "HS256", tests::SECRET).await;
    let (ngx_addr, ngx) = nginx(
        dir.path(),
        "nginx",
        &format!(
            "server {{ listen LISTEN; location / {{ proxy_pass http://{demo_addr}; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; proxy_set_header x-auth-user bench; proxy_read_timeout 60s; }} }}"
        ),
        tests::bench::SUT_CPU,
    )
    .await;
    let mut c = claims("bench");
    c["exp"] = json!(tests::tokens::now() + 3600);
    let token = hs256(&c);
    let systems: [(&str, SocketAddr, Option<u32>); 4] = [
        ("gateway", gw.addr, Some(gw.proc_.pid())),
        ("HAProxy 2.6 + jwt_verify", ha.addr, Some(ha.proc_.pid())),
        ("nginx (no auth)", ngx_addr, Some(ngx.pid())),
        ("direct", demo_addr, None),
    ];
    // nginx's worker is a child of the master: measure the worker.
    let systems = systems.map(|(name, addr, pid)| match (name, pid) {
        ("nginx (no auth)", Some(p)) => (name, addr, nginx_worker(p).or(Some(p))),
        _ => (name, addr, pid),
    });
    println!("{SOCKETS} sockets, {secs} s each; system under test alone on CPU 0\n");
    println!("| payload | system | messages/s | vs HAProxy | SUT CPU µs per message |");
    println!("|---|---|---|---|---|");
    for (label, payload) in [("64 B", "x".repeat(64)), ("16 KiB", "x".repeat(16 * 1024))] {
        let mut rows = Vec::new();
        for (name, addr, pid) in systems {
            let (rate, per) = run(addr, pid, &token, &payload, secs).await;
            rows.push((name, rate, per));
        }
        print_rows(&format!("{label} | "), rows);
    }

    println!(
        "\nsocket.io connects (polling handshake, upgrade, welcome), {CONNECTING} clients in a loop, {secs} s each\n"
    );
    println!("| system | connects/s | vs HAProxy | SUT CPU µs per connect |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, addr, pid) in systems {
        let (rate, per) = connect_rate(addr, pid, &token, secs).await;
        rows.push((name, rate, per));
    }
    print_rows("", rows);
}

/// Table rows `| <prefix>system | rate | vs HAProxy | CPU µs |`.
fn print_rows(prefix: &str, rows: Vec<(&str, f64, f64)>) {
    let ha_rate = rows
        .iter()
        .find(|r| r.0.starts_with("HAProxy"))
        .map_or(1.0, |r| r.1);
    for (name, rate, per) in rows {
        let cpu = if per > 0.0 {
            format!("{per:.1}")
        } else {
            "-".into()
        };
        println!(
            "| {prefix}{name} | {rate:.0} | {:.2}x | {cpu} |",
            rate / ha_rate
        );
    }
}

/// The pid of nginx's worker process (a child of `master`).
fn nginx_worker(master: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
