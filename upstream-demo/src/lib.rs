//! upstream-demo: the web app that replaces the original article's PHP app, and a
//! socket.io server that trusts the gateway.
//!
//! Module map:
//!
//! - [`config`]: `[demo]` (and the `[auth]` keys it shares with the gateway).
//! - [`socket`]: the socket.io namespace `/`: refuses connections without the
//!   identity header, greets with `welcome`, answers `echo` with an ack.
//!
//! [`app`] builds the router so that tests can drive it; [`serve`] runs it on a listener
//! until a shutdown future resolves.

pub mod config;
pub mod socket;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use config::DemoSettings;

/// The application router: the socket.io layer.
pub fn app(settings: &DemoSettings) -> Router {
    let layer = socket::layer(settings);
    Router::new().layer(layer)
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    settings: &DemoSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(settings))
        .with_graceful_shutdown(shutdown)
        .await
}
