//! `proxy --config <FILE> [--check]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxy::config::{Config, load_settings};
use proxy::logging::{self, Redactor};
use proxy::token::TokenSource;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// socket.io JWT gateway (Pingora).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Validate the configuration and everything it refers to, print `ok`, and exit.
    #[arg(long)]
    check: bool,
    /// Take over the listening sockets of the running gateway (same `proxy.listen`):
    /// start this process, then send the old one SIGQUIT; it hands over and drains.
    #[arg(long)]
    upgrade: bool,
    /// Run in the background, writing the PID to `/tmp/socketio-jwt-gateway-<port>.pid`
    /// (for systemd `Type=forking` units that reload by upgrading).
    #[arg(long)]
    daemon: bool,
}

/// What the log redacts, from the configured token sources (read before validation, so
/// that even validation warnings are redacted).
fn redactor_for(file: &std::path::Path) -> Redactor {
    let sources: Vec<TokenSource> = Config::load(file)
        .map(|(cfg, _, _)| {
            cfg.auth
                .token_sources
                .iter()
                .filter_map(|s| TokenSource::parse(s).ok())
                .collect()
        })
        .unwrap_or_default();
    Redactor::for_sources(&sources)
}

fn main() -> ExitCode {
    proxy::memory::tune_allocator();
    let cli = Cli::parse();
    logging::init(redactor_for(&cli.config));
    let settings = match load_settings(&cli.config) {
        Ok(s) => s,
        Err(errors) => {
            logging::flush();
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        logging::flush();
        println!("ok");
        return ExitCode::SUCCESS;
    }
    let result = proxy::server::run(settings, redactor_for(&cli.config), cli.upgrade, cli.daemon);
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
