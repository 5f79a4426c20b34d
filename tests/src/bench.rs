//! Shared by the benchmark tools (`loadbench`, `wsbench`): the systems under test,
//! HAProxy 2.6 with `jwt_verify`, nginx and the gateway, pinned with taskset, the
//! system under test alone on CPU 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SECRET;
use crate::procs::{GatewayConfig, Proc, bin, free_addr, wait_listening};

pub const SUT_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// One `oha` run on the load CPU with `args` (duration, connections, TLS options):
/// (requests/s, p99 ms, status code counts).
pub fn oha(args: &[&str], url: &str) -> (f64, f64, serde_json::Value) {
    let out = pinned(LOAD_CPU, "oha")
        .args(args)
        .args(["--no-tui", "--output-format", "json", url])
        .output()
        .unwrap_or_else(|e| panic!("oha: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oha output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0);
    let p99 = v["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0;
    (rps, p99, v["statusCodeDistribution"].clone())
}

/// The median of the rounds' figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `program` pinned to `cpu` with taskset.
pub fn pinned(cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu).arg(program);
    c
}

/// Writes a file into `dir`; returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.display().to_string()
}

/// A system under test.
#[derive(Debug)]
pub struct System {
    /// Its row name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process (stopped on drop).
    pub proc_: Proc,
}

/// nginx with `body` as its `http` block contents (`LISTEN` replaced), on `cpu`.
pub async fn nginx(dir: &Path, name: &str, body: &str, cpu: &str) -> (SocketAddr, Proc) {
    let addr = free_addr();
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 10000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/pt;\n  fastcgi_temp_path {d}/ft;\n  uwsgi_temp_path {d}/ut;\n  scgi_temp_path {d}/st;\n\
         {body}\n}}\n",
        d = d.display()
    )
    .replace("LISTEN", &addr.to_string());
    let file = write(&d, "nginx.conf", &conf);
    let mut cmd = pinned(cpu, "nginx");
    cmd.arg("-c").arg(&file).arg("-p").arg(&d);
    let p = Proc::spawn(name, cmd);
    wait_listening(addr, &p).await;
    (addr, p)
}

/// nginx answering every request `200 ok` on the load CPU: the upstream of the
/// scenarios that measure the proxy, not the server behind it.
pub async fn trivial_upstream(dir: &Path) -> (SocketAddr, Proc) {
    nginx(
        dir,
        "trivial",
        "  server { listen LISTEN; location / { return 200 \"ok\"; } }",
        LOAD_CPU,
    )
    .await
}

/// upstream-demo on the load CPU (a real Engine.IO server to hold sockets on).
pub async fn upstream_demo(dir: &Path) -> (SocketAddr, Proc) {
    let addr = free_addr();
    let cfg = write(dir, "demo.toml", &format!("[demo]\nlisten = \"{addr}\"\n"));
    let mut cmd = pinned(LOAD_CPU, &bin("upstream-demo").display().to_string());
    cmd.arg("--config")
        .arg(&cfg)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    let p = Proc::spawn("upstream-demo", cmd);
    wait_listening(addr, &p).await;
    (addr, p)
}

/// HAProxy 2.6 verifying the token with `jwt_verify`, as the gateway does.
pub fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr, alg: &str, key: &str) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind {listen}
    http-request del-header x-auth-user
    http-request set-var(txn.token) url_param(token)
    http-request deny deny_status 401 unless {{ var(txn.token) -m found }}
    http-request set-var(txn.alg) var(txn.token),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str {alg} }}
    http-request deny deny_status 401 unless {{ var(txn.token),jwt_verify(txn.alg,"{key}") -m int 1 }}
    http-request set-var(txn.exp) var(txn.token),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.token),jwt_payload_query('$.iss') -m str upstream-demo }}
    http-request deny deny_status 401 unless {{ var(txn.token),jwt_payload_query('$.aud') -m str socket.io }}
    http-request set-header x-auth-user %[var(txn.token),jwt_payload_query('$.sub')]
    default_backend be
backend be
    http-reuse always
    server s1 {upstream}
"#
    )
}

impl System {
    /// Spawns `cmd` and waits until it listens on `addr`.
    pub async fn start(name: &str, cmd: Command, addr: SocketAddr) -> System {
        let p = Proc::spawn(name, cmd);
        wait_listening(addr, &p).await;
        System {
            name: name.into(),
            addr,
            proc_: p,
        }
    }
}

/// HAProxy on the SUT CPU.
pub async fn haproxy(dir: &Path, name: &str, upstream: SocketAddr, alg: &str, key: &str) -> System {
    let addr = free_addr();
    let file = write(
        dir,
        &format!("{name}.cfg"),
        &haproxy_conf(addr, upstream, alg, key),
    );
    let mut cmd = pinned(SUT_CPU, "haproxy");
    cmd.arg("-db").arg("-f").arg(&file);
    System::start(name, cmd, addr).await
}

/// Other builds of the gateway to measure beside the default one (e.g. with another
/// global allocator): `GATEWAY_VARIANTS="jemalloc=/path/to/proxy,mimalloc=/path"`.
pub fn gateway_variants() -> Vec<(String, PathBuf)> {
    std::env::var("GATEWAY_VARIANTS")
        .unwrap_or_default()
        .split(',')
        .filter(|v| !v.trim().is_empty())
        .map(|v| match v.split_once('=') {
            Some((label, path)) => (label.trim().to_string(), PathBuf::from(path.trim())),
            None => panic!("GATEWAY_VARIANTS: {v:?} is not label=path"),
        })
        .collect()
}

/// The gateway (`threads = 1`) on the SUT CPU.
pub async fn gateway(dir: &Path, name: &str, upstream: SocketAddr, auth: &str) -> System {
    gateway_build(dir, name, upstream, auth, &bin("proxy")).await
}

/// [`gateway`] from another build of the `proxy` binary.
pub async fn gateway_build(
    dir: &Path,
    name: &str,
    upstream: SocketAddr,
    auth: &str,
    program: &Path,
) -> System {
    let addr = free_addr();
    let mut cfg = GatewayConfig::hs256(upstream).auth(auth);
    // HAProxy has no failure limit: measure the rejection path itself, not 429s.
    cfg.failure_limit = 0;
    let text = cfg.render(addr).replace("threads = 2", "threads = 1");
    let file = write(
        dir,
        &format!("{}.toml", name.replace(['/', ' '], "_")),
        &text,
    );
    let mut cmd = pinned(SUT_CPU, &program.display().to_string());
    cmd.arg("--config")
        .arg(&file)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    System::start(name, cmd, addr).await
}

/// CPU time of every thread of `pid`, in nanoseconds (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
