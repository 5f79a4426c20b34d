//! `upstream-demo --config <FILE>`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use upstream_demo::DemoSettings;

/// The demo app behind the gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (reads `[demo]` and `[auth]`).
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Override `[demo].listen` (`127.0.0.1:0` picks a free port).
    #[arg(long)]
    listen: Option<String>,
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
    let listener = match TcpListener::bind(&settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo.listen: cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        // The test harness reads this line to learn the port.
        Ok(addr) => println!("upstream-demo listening on {addr}"),
        Err(e) => eprintln!("cannot read the listening address: {e}"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match upstream_demo::serve(listener, &settings, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}
