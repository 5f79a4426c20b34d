//! `proxy --config <FILE> [--check]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxy::config::{Config, load_settings};
use proxy::logging::{self, Redactor};
use proxy::token::TokenSource;

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

/// Names whose values the log redacts: the configured query parameters and cookies
/// (read before validation, so that even validation warnings are redacted).
fn redactor_for(file: &std::path::Path) -> Redactor {
    let mut names = vec!["token".to_string()];
    if let Ok((cfg, _)) = Config::load(file) {
        for s in &cfg.auth.token_sources {
            match TokenSource::parse(s) {
                Ok(TokenSource::Query(n)) | Ok(TokenSource::Cookie(n)) => names.push(n),
                _ => {}
            }
        }
    }
    Redactor::new(names)
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
    proxy::server::run(settings, redactor_for(&cli.config), cli.upgrade, cli.daemon)
}
