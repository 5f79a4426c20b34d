//! `upstream-demo --config <FILE>` (or `--hash-password` to make a `[demo].users` hash)

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use upstream_demo::{AppState, DemoSettings};

/// The demo app behind the gateway: login, tokens, the signed-in page, socket.io.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (reads `[demo]` and `[auth]`).
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Override `[demo].listen` (`127.0.0.1:0` picks a free port and prints it).
    #[arg(long)]
    listen: Option<String>,
    /// Read a password from standard input, print its argon2 hash, and exit.
    #[arg(long)]
    hash_password: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    if cli.hash_password {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("cannot read the password: {e}");
            return ExitCode::FAILURE;
        }
        return match upstream_demo::accounts::hash_password(line.trim_end_matches(['\r', '\n'])) {
            Ok(h) => {
                println!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut settings = match DemoSettings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(l) = cli.listen {
        settings.listen = l;
    }
    let listen = settings.listen.clone();
    let state = match AppState::new(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    let listener = match listen_on(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo.listen: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        // The test harnesses read this line to learn the port.
        Ok(addr) => println!("upstream-demo listening on {addr}"),
        Err(e) => eprintln!("cannot read the listening address: {e}"),
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match upstream_demo::serve(listener, state, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Listens with a backlog of 4096 (tokio's `bind` uses 1024): a burst of thousands of
/// socket.io clients reconnecting at once must not see SYNs dropped, which costs each
/// of them a one-second retransmit.
async fn listen_on(listen: &str) -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::other(format!("{listen} resolves to no address"));
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}
