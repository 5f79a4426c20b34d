//! The gateway's HTTP/1 path served in-process on a listener the caller bound, until a
//! shutdown future completes (as mini-redis's `server::run`): tests start it on port 0
//! without a process or a Pingora server. Each connection is carried exactly as the
//! binary carries it ([`App`]: every request head read by the gateway, upgrades to the
//! tunnel, every other request to the exchange), and accepted as Pingora's listener
//! accepts it (its peer address recorded, no buffers). Not served here: TLS, HTTP/2,
//! the metrics listener and the background services of [`crate::server::run`]
//! (key reloads, health checks).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::l4::listener::Listener;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use pingora::lb::LoadBalancer;

use crate::app::App;
use crate::config::Settings;
use crate::gateway::{Gateway, InFlight};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::server::ServerError;
use crate::upstreams::Upstreams;

/// Pause after a failed accept (too many open files): the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often the drain looks at the requests still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Serves `gateway` on `listener` until `shutdown` completes, then drains as the binary
/// does after SIGTERM: no new connection is accepted (the listener is closed), a
/// request in flight finishes and its connection closes after it, and this returns
/// once none is left or `proxy.shutdown_grace` passed; idle keep-alive connections are
/// closed then. A tunnel still open after the grace is left to the runtime.
///
/// A `std::net::TcpListener` is served through `TcpListener::from_std` (after
/// `set_nonblocking(true)`).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let app = Arc::new(App::new(gateway.clone()));
    let listener = Listener::from(listener);
    let (draining, watch) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let (app, watch) = (app.clone(), watch.clone());
                    connections.spawn(async move { app.serve_http1(Box::new(stream), watch).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Finished connections are reaped as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = draining.send(true);
    let deadline = tokio::time::Instant::now() + gateway.settings().proxy.shutdown_grace;
    while gateway.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// A gateway for [`serve`]: its metrics in a registry of its own (so that several can
/// live in one process), its log redactor for the configured token sources, and its
/// upstream servers without health checks (every server counts as healthy).
pub fn in_process_gateway(settings: Arc<Settings>) -> Result<Arc<Gateway>, ServerError> {
    let metrics = Metrics::register(&prometheus::Registry::new())?;
    let upstreams = match settings.upstream.servers.as_slice() {
        [one] => Upstreams::One(*one),
        many => Upstreams::Many(Arc::new(
            LoadBalancer::try_from_iter(many.iter().map(ToString::to_string))
                .map_err(ServerError::Upstreams)?,
        )),
    };
    let redactor = Arc::new(Redactor::for_sources(&settings.auth.token_sources));
    Ok(Arc::new(Gateway::new(
        settings,
        redactor,
        InFlight::default(),
        metrics,
        upstreams,
    )))
}
