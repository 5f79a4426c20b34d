//! Spawning the real binaries and waiting until they serve.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{READY_TIMEOUT, SECRET};

/// The directory holding the workspace binaries of the profile the tests were built with.
pub fn bin_dir() -> PathBuf {
    // target/<profile>/deps/<test-binary>, or target/<profile>/<tool> for the bench tools
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected binary location {}", exe.display()));
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; fails loudly when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --release --workspace)",
        p.display()
    );
    p
}

/// The repository root (for `config.toml` and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A fixture file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A listener on a free port of 127.0.0.1, with its address.
pub async fn local_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    (listener, addr)
}

/// A free ephemeral port on 127.0.0.1 (bound, read, released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// A child process whose output is captured; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    logs: Arc<Mutex<String>>,
    name: String,
}

fn capture(stream: impl Read + Send + 'static, logs: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut l = logs.lock().unwrap_or_else(|p| p.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        // Its own process group, so that stopping it stops what it started too (nginx's
        // workers outlive a killed master).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            capture(out, logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            capture(err, logs.clone());
        }
        Proc {
            child,
            logs,
            name: name.to_string(),
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("kill {}: {e}", self.name));
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until a line containing `needle` was printed; returns that line.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "{} never printed {needle:?}; logs:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts TCP connections (the process has bound its listener).
pub async fn wait_listening(addr: SocketAddr, proc_: &Proc) {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{addr} never accepted connections; logs:\n{}",
            proc_.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running gateway and the config directory it reads.
#[derive(Debug)]
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc_: Proc,
    /// Holds the config file (and any key files written beside it).
    pub dir: tempfile::TempDir,
}

/// What to put in a gateway's config file.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The upstream server.
    pub upstream: SocketAddr,
    /// Extra `[proxy]` lines.
    pub proxy: String,
    /// The `[auth]` table body.
    pub auth: String,
    /// `RUST_LOG` for the process.
    pub rust_log: String,
    /// `[upstream].connect_timeout`.
    pub upstream_connect_timeout: String,
    /// More `[upstream].servers` after `upstream`.
    pub more_upstreams: Vec<SocketAddr>,
    /// Extra `[upstream]` lines (`sticky`, `health_check`).
    pub upstream_lines: String,
    /// `[auth].failure_limit`: high by default, because many tests send bursts of bad
    /// tokens on purpose; the hardening tests set their own.
    pub failure_limit: u32,
    /// Extra top-level tables (`[assertion]`).
    pub extra: String,
}

impl GatewayConfig {
    /// HS256 with [`SECRET`] from `JWT_SECRET`, `iss`/`aud` checked, `forward_claims`
    /// set: the configuration most tests use.
    pub fn hs256(upstream: SocketAddr) -> Self {
        GatewayConfig {
            upstream,
            proxy: "shutdown_grace = \"2s\"".into(),
            auth: r#"algorithms = ["HS256"]
secret_env = "JWT_SECRET"
issuer = "upstream-demo"
audience = "socket.io"
leeway = "0s"
max_token_bytes = 4096
forward_claims = { role = "x-auth-role", "org.id" = "x-auth-org" }
"#
            .into(),
            rust_log: "info".into(),
            upstream_connect_timeout: "1s".into(),
            more_upstreams: Vec::new(),
            upstream_lines: String::new(),
            failure_limit: 1000,
            extra: String::new(),
        }
    }

    /// Replaces the `[auth]` body.
    pub fn auth(mut self, auth: &str) -> Self {
        self.auth = auth.to_string();
        self
    }

    /// Appends lines to `[proxy]`.
    pub fn proxy(mut self, lines: &str) -> Self {
        self.proxy = lines.to_string();
        self
    }

    /// Sets `RUST_LOG`.
    pub fn rust_log(mut self, level: &str) -> Self {
        self.rust_log = level.to_string();
        self
    }

    /// The file text for a gateway listening on `listen`.
    pub fn render(&self, listen: SocketAddr) -> String {
        let servers: Vec<String> = std::iter::once(&self.upstream)
            .chain(&self.more_upstreams)
            .map(|a| format!("\"{a}\""))
            .collect();
        // The tests of HTTP refusals predate `reject_with = "socketio"` becoming the
        // default: they keep `"http"` unless their `[auth]` body chooses.
        let reject_with = if self.auth.contains("reject_with") {
            ""
        } else {
            "reject_with = \"http\"\n"
        };
        format!(
            "[proxy]\nlisten = \"{listen}\"\nthreads = 2\n{}\n\n[upstream]\nservers = [{}]\nconnect_timeout = \"{}\"\n{}\n\n[auth]\nfailure_limit = {}\n{reject_with}{}\n{}\n",
            self.proxy,
            servers.join(", "),
            self.upstream_connect_timeout,
            self.upstream_lines,
            self.failure_limit,
            self.auth,
            self.extra
        )
    }
}

impl Gateway {
    /// Writes the config into a fresh directory, starts `proxy`, waits until it listens.
    pub async fn start(cfg: &GatewayConfig) -> Gateway {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::start_in(cfg, dir).await
    }

    /// Like [`Gateway::start`] with a prepared directory (key files already inside).
    pub async fn start_in(cfg: &GatewayConfig, dir: tempfile::TempDir) -> Gateway {
        Self::start_build(cfg, dir, &bin("proxy")).await
    }

    /// Like [`Gateway::start`] from another build of the `proxy` binary (benchmarks).
    pub async fn start_program(cfg: &GatewayConfig, program: &Path) -> Gateway {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::start_build(cfg, dir, program).await
    }

    async fn start_build(cfg: &GatewayConfig, dir: tempfile::TempDir, program: &Path) -> Gateway {
        let addr = free_addr();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, cfg.render(addr)).unwrap_or_else(|e| panic!("write config: {e}"));
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(&file)
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", &cfg.rust_log);
        let proc_ = Proc::spawn("proxy", cmd);
        wait_listening(addr, &proc_).await;
        Gateway { addr, proc_, dir }
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        self.proc_.logs()
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` from `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// A running upstream-demo.
#[derive(Debug)]
pub struct Demo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc_: Proc,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts upstream-demo on a free port with the given socket.io ping interval.
    pub async fn start(ping_interval: &str) -> Demo {
        Self::start_on("127.0.0.1:0", ping_interval).await
    }

    /// Starts upstream-demo on `listen`.
    pub async fn start_on(listen: &str, ping_interval: &str) -> Demo {
        Self::start_with(listen, ping_interval, "").await
    }

    /// Starts upstream-demo on `listen` with more lines after `[demo]`'s (more `[demo]`
    /// keys first, then other tables such as `[assertion]`).
    pub async fn start_with(listen: &str, ping_interval: &str, extra: &str) -> Demo {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let file = dir.path().join("demo.toml");
        std::fs::write(
            &file,
            format!(
                "[demo]\nlisten = \"{listen}\"\nping_interval = \"{ping_interval}\"\ntoken_ttl = \"60s\"\n{extra}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("write config: {e}"));
        let mut cmd = Command::new(bin("upstream-demo"));
        cmd.arg("--config").arg(&file).env("JWT_SECRET", SECRET);
        let proc_ = Proc::spawn("upstream-demo", cmd);
        let line = proc_.wait_for_line("listening on").await;
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot read the address from {line:?}"));
        Demo {
            addr,
            proc_,
            _dir: dir,
        }
    }
}
