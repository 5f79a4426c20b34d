//! WebSocket soak: opens N authenticated socket.io WebSocket connections through the
//! gateway to upstream-demo, checks each `welcome`, holds them, sends `echo` on a
//! sample, and reports connect p50/p99, echo p99, connections lost while held, and the
//! gateway's memory per connection (VmRSS from /proc/PID/status).
//!
//! `target/release/soak [N ...]` (default: 1000 and the most the descriptor limit
//! allows). Environment: `SOAK_HOLD` seconds to hold (default 10); `SOAK_IN_FLIGHT`
//! connects in flight at once (default 64; 2000 makes each size a burst);
//! `SOAK_SYSTEMS` the systems to soak one after the other, a comma-separated list of
//! `gateway` (two threads), `haproxy` (HAProxy 2.6 with `jwt_verify`, two threads)
//! and `direct` (the clients straight to upstream-demo, whose memory is then measured),
//! or `gateway:LABEL` for a build named in `GATEWAY_VARIANTS="LABEL=/path/to/proxy"`;
//! default `gateway,haproxy`. `SOAK_LOG` is the gateway's `RUST_LOG` (default `warn`,
//! every build), `SOAK_LOG_FILE` a file to write its log to. `SOAK_UPSTREAM=node` puts
//! the Node socket.io server `tests/js/soak-server.mjs` (`npm ci` in `tests/js` first)
//! behind the systems instead of upstream-demo; `SOAK_AFTER` is how many seconds after
//! the last close the memory is read again (default 6).
//!
//! `SOAK_STORM=1` (`bench/run storm`) is the storm row: 9,950 WebSocket-only connects
//! with 2,000 in flight through the gateway and HAProxy to the Node server, each with
//! its production timeouts (the gateway's documented defaults, `connect_timeout` 5 s
//! and `retries` 3; HAProxy's shipped `timeout connect 5s`, `client`/`server` 50 s,
//! `retries` 3), the memory read again a minute after the last close. Every row shows
//! the peak RSS over the connects and the hold (sampled every 100 ms) and how far the
//! RSS after close is from the idle one.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::json;
use tests::bench::{gateway_variants, haproxy_conf, write};
use tests::eio::{Recv, Ws};
use tests::procs::{
    Demo, Gateway, GatewayConfig, Proc, bin_dir, free_addr, rss_kib, wait_listening,
};
use tests::tokens::{claims, hs256};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, Notify, Semaphore};

const SOURCES: u8 = 8;
const ECHO_SAMPLE: usize = 200;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Outcome {
    n: usize,
    welcomed: usize,
    connect: Vec<Duration>,
    echo: Vec<Duration>,
    lost: usize,
    rss_base: u64,
    rss_loaded: u64,
    /// The most RSS sampled while connecting and holding.
    rss_peak: u64,
    rss_after: u64,
    failures: Vec<String>,
}

/// Whether this is the storm row (`SOAK_STORM=1`).
fn storm() -> bool {
    std::env::var("SOAK_STORM").is_ok_and(|v| v == "1")
}

/// The socket.io server behind the systems.
enum Upstream {
    Demo(Demo),
    /// `tests/js/soak-server.mjs` under Node.
    Node {
        proc_: Proc,
        addr: SocketAddr,
    },
}

impl Upstream {
    async fn start() -> Upstream {
        let node = storm() || std::env::var("SOAK_UPSTREAM").is_ok_and(|v| v == "node");
        if !node {
            return Upstream::Demo(Demo::start("25s").await);
        }
        // target/release -> the repository's tests/js.
        let script = bin_dir().join("../../tests/js/soak-server.mjs");
        let addr = free_addr();
        let mut cmd = std::process::Command::new("node");
        cmd.arg(&script).arg(addr.port().to_string());
        let proc_ = Proc::spawn("node", cmd);
        wait_listening(addr, &proc_).await;
        Upstream::Node { proc_, addr }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Upstream::Demo(d) => d.addr,
            Upstream::Node { addr, .. } => *addr,
        }
    }

    fn proc_(&self) -> &Proc {
        match self {
            Upstream::Demo(d) => &d.proc_,
            Upstream::Node { proc_, .. } => proc_,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Upstream::Demo(_) => "upstream-demo",
            Upstream::Node { .. } => "node",
        }
    }
}

/// The gateway's config for a run: the storm row keeps the documented upstream
/// timeouts (docs/configuration.md), the harness's 1 s connect timeout otherwise.
fn gateway_config(upstream: SocketAddr) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream)
        .proxy("shutdown_grace = \"1s\"")
        .rust_log(&std::env::var("SOAK_LOG").unwrap_or_else(|_| "warn".into()));
    if storm() {
        cfg.upstream_connect_timeout = "5s".into();
    }
    cfg
}

async fn open(addr: SocketAddr, i: usize, token: &str, direct: bool) -> Result<Ws, String> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(SOURCES)) as u8);
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| e.to_string())?;
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    // Straight to upstream-demo, the client brings the header the gateway would set.
    let headers: &[(&str, &str)] = if direct {
        &[("x-auth-user", "soak")]
    } else {
        &[]
    };
    Ws::over(stream, addr, &format!("token={token}"), headers)
        .await
        .map_err(|e| e.to_string())
}

/// A system in front of upstream-demo (or none, for `direct`).
enum Front {
    Gateway(Gateway),
    Haproxy {
        proc_: Proc,
        addr: SocketAddr,
        /// Holds its configuration file until it stops.
        _dir: tempfile::TempDir,
    },
    Direct,
}

impl Front {
    async fn start(system: &str, demo: &Upstream) -> Front {
        match system {
            "gateway" => Front::Gateway(Gateway::start(&gateway_config(demo.addr())).await),
            "haproxy" => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
                let addr = free_addr();
                let mut conf = haproxy_conf(addr, demo.addr(), "HS256", tests::SECRET)
                    .replace("nbthread 1", "nbthread 2")
                    .replace("maxconn 9000", "maxconn 9950");
                if storm() {
                    // The timeouts of HAProxy's shipped haproxy.cfg; `retries` 3 is its
                    // default.
                    conf = conf
                        .replace("timeout connect 2s", "timeout connect 5s")
                        .replace("timeout client 30s", "timeout client 50s")
                        .replace("timeout server 30s", "timeout server 50s");
                }
                let file = write(dir.path(), "soak.cfg", &conf);
                let mut cmd = std::process::Command::new("haproxy");
                cmd.arg("-db").arg("-f").arg(&file);
                let p = Proc::spawn("haproxy", cmd);
                wait_listening(addr, &p).await;
                Front::Haproxy {
                    proc_: p,
                    addr,
                    _dir: dir,
                }
            }
            "direct" => Front::Direct,
            variant if variant.starts_with("gateway:") => {
                let label = &variant["gateway:".len()..];
                let program = gateway_variants()
                    .into_iter()
                    .find(|(l, _)| l == label)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| panic!("soak: {label:?} is not in GATEWAY_VARIANTS"));
                Front::Gateway(Gateway::start_program(&gateway_config(demo.addr()), &program).await)
            }
            other => panic!("soak: unknown system {other:?} (gateway, haproxy, direct)"),
        }
    }

    /// Where clients connect and whose memory is measured.
    fn target(&self, demo: &Upstream) -> (SocketAddr, u32) {
        match self {
            Front::Gateway(gw) => (gw.addr, gw.proc_.pid()),
            Front::Haproxy { proc_, addr, .. } => (*addr, proc_.pid()),
            Front::Direct => (demo.addr(), demo.proc_().pid()),
        }
    }

    fn logs(&self) -> String {
        match self {
            Front::Gateway(gw) => gw.logs(),
            Front::Haproxy { proc_, .. } => proc_.logs(),
            Front::Direct => String::new(),
        }
    }
}

async fn run(system: &str, n: usize, hold: Duration) -> Outcome {
    let demo = Upstream::start().await;
    let front = Front::start(system, &demo).await;
    // Straight to upstream-demo (memory is then upstream-demo's), to tell a front's
    // share of any failure from the rest.
    let direct = matches!(front, Front::Direct);
    let (target, pid) = front.target(&demo);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_base = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(rss_base));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let mut c = claims("soak");
    c["exp"] = json!(tests::tokens::now() + 3600);
    let token = Arc::new(hs256(&c));
    let in_flight = std::env::var("SOAK_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if storm() { 2000 } else { 64 });
    let gate = Arc::new(Semaphore::new(in_flight));
    let welcomed = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(Notify::new());
    let released = Arc::new(Notify::new());
    let echoes = Arc::new(Mutex::new(Vec::new()));
    let connects = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = FuturesUnordered::new();
    for i in 0..n {
        let (token, gate, welcomed, closed) = (
            token.clone(),
            gate.clone(),
            welcomed.clone(),
            closed.clone(),
        );
        let (all_open, released, echoes, connects) = (
            all_open.clone(),
            released.clone(),
            echoes.clone(),
            connects.clone(),
        );
        let addr = target;
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t0 = Instant::now();
            let mut ws = match tokio::time::timeout(Duration::from_secs(30), open(addr, i, &token, direct)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("connect timed out".into()),
            };
            let welcome = tokio::time::timeout(Duration::from_secs(30), ws.try_open_and_join()).await;
            match welcome {
                Ok(Some(w)) if w == json!({ "user": "soak" }) => {}
                Ok(Some(w)) => return Err(format!("wrong welcome {w}")),
                Ok(None) => return Err(format!("closed before welcome: {:?}", ws.ended)),
                Err(_) => return Err("no welcome within 30 s".into()),
            }
            connects.lock().await.push(t0.elapsed());
            drop(permit);
            welcomed.fetch_add(1, Ordering::SeqCst);
            // Hold: answer pings until told to echo (a sample) and then to let go.
            let notified = all_open.notified();
            tokio::pin!(notified);
            loop {
                tokio::select! {
                    _ = &mut notified => break,
                    r = ws.recv() => if r == Recv::Closed { closed.fetch_add(1, Ordering::SeqCst); return Ok(()); },
                }
            }
            if i < ECHO_SAMPLE {
                let t = Instant::now();
                ws.echo(1, &json!({ "i": i })).await;
                echoes.lock().await.push(t.elapsed());
            }
            let let_go = released.notified();
            tokio::pin!(let_go);
            loop {
                tokio::select! {
                    _ = &mut let_go => return Ok(()),
                    r = ws.recv() => if r == Recv::Closed { closed.fetch_add(1, Ordering::SeqCst); return Ok(()); },
                }
            }
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    // Wait until every connection is welcomed or failed.
    let start = Instant::now();
    while welcomed.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(hold).await;
    let rss_loaded = rss_kib(pid);
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    let rss_peak = peak.load(Ordering::SeqCst).max(rss_loaded);
    all_open.notify_waiters();
    tokio::time::sleep(Duration::from_secs(3)).await;
    released.notify_waiters();
    let mut failures = Vec::new();
    while let Some(r) = tasks.next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Memory once every connection is closed (freed memory is trimmed every 5 s).
    let after = std::env::var("SOAK_AFTER")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if storm() { 60 } else { 6 });
    tokio::time::sleep(Duration::from_secs(after)).await;
    let rss_after = rss_kib(pid);
    if !failures.is_empty() {
        eprintln!(
            "soak: {} connections failed, e.g. {:?}; last log lines:",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        for (name, logs) in [(system, front.logs()), (demo.name(), demo.proc_().logs())] {
            let lines: Vec<&str> = logs.lines().collect();
            for l in &lines[lines.len().saturating_sub(8)..] {
                eprintln!("  {name}: {l}");
            }
        }
    }
    if let Ok(file) = std::env::var("SOAK_LOG_FILE") {
        if let Err(e) = std::fs::write(&file, front.logs()) {
            eprintln!("soak: cannot write {file}: {e}");
        }
    }
    let mut connect = connects.lock().await.clone();
    connect.sort();
    let mut echo = echoes.lock().await.clone();
    echo.sort();
    drop(front);
    drop(demo);
    Outcome {
        n,
        welcomed: welcomed.load(Ordering::SeqCst),
        connect,
        echo,
        lost: closed.load(Ordering::SeqCst),
        rss_base,
        rss_loaded,
        rss_peak,
        rss_after,
        failures,
    }
}

#[tokio::main]
async fn main() {
    // The gateway holds two descriptors per proxied WebSocket: raise the soft limit to
    // the hard one (children inherit it) and size "max" from it.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        eprintln!("soak: cannot raise the descriptor limit from {soft}: {e}");
    }
    let max = usize::try_from(hard.saturating_sub(200) / 2).unwrap_or(1000);
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() && storm() {
            vec![9950]
        } else if args.is_empty() {
            vec![1000, max]
        } else {
            args
        }
    };
    let hold = Duration::from_secs(
        std::env::var("SOAK_HOLD")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let systems = std::env::var("SOAK_SYSTEMS").unwrap_or_else(|_| "gateway,haproxy".into());
    let after =
        std::env::var("SOAK_AFTER").unwrap_or_else(|_| (if storm() { "60" } else { "6" }).into());
    println!(
        "descriptor limit {hard}; hold {hold:?}; echo sample {ECHO_SAMPLE}; connects in flight {in_flight}; upstream {upstream}; memory after close read {after} s after the last\n",
        in_flight = std::env::var("SOAK_IN_FLIGHT").unwrap_or_else(|_| (if storm() {
            "2000"
        } else {
            "64"
        })
        .into()),
        upstream = if storm() || std::env::var("SOAK_UPSTREAM").is_ok_and(|v| v == "node") {
            "Node socket.io"
        } else {
            "upstream-demo"
        },
    );
    println!(
        "| system | connections | welcomed | failed | connect p50 ms | connect p99 ms | echo p99 ms | lost while held | RSS idle -> loaded -> after close (MiB) | KiB per connection | peak KiB per connection | after close vs idle |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        for system in systems.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let o = run(system, n, hold).await;
            let per = (o.rss_loaded.saturating_sub(o.rss_base)) as f64 / o.n as f64;
            let peak_per = (o.rss_peak.saturating_sub(o.rss_base)) as f64 / o.n as f64;
            let after_vs_idle = (o.rss_after as f64 / o.rss_base.max(1) as f64 - 1.0) * 100.0;
            println!(
                "| {system} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} -> {:.1} -> {:.1} | {:.2} | {:.2} | {:+.0} % |",
                o.n,
                o.welcomed,
                o.failures.len(),
                pct(&o.connect, 0.5).as_secs_f64() * 1000.0,
                pct(&o.connect, 0.99).as_secs_f64() * 1000.0,
                pct(&o.echo, 0.99).as_secs_f64() * 1000.0,
                o.lost,
                o.rss_base as f64 / 1024.0,
                o.rss_loaded as f64 / 1024.0,
                o.rss_after as f64 / 1024.0,
                per,
                peak_per,
                after_vs_idle
            );
        }
    }
}
