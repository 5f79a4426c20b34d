//! Building and running the Pingora server from [`Settings`]: the proxy service, the
//! `jwks_file` watcher, and the shutdown drain. No YAML file and no Pingora command
//! line: everything comes from our own config.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::Consistent;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::app::App;
use crate::config::Settings;
use crate::gateway::{Gateway, HttpPath, InFlight, Upstreams};
use crate::logging::Redactor;
use crate::metrics::Metrics;

/// Read buffer of each client connection: none. The gateway reads request heads into
/// its own buffer ([`crate::conn`]), Pingora's HTTP/1 reader keeps its own, and a
/// tunnel reads into one buffer per worker thread; a buffer here would only be a
/// second copy held by every idle WebSocket (Pingora's default is 64 KiB).
const DOWNSTREAM_READ_BUFFER: usize = 0;

/// Write buffer of each client connection (Pingora's default: one MSS).
const DOWNSTREAM_WRITE_BUFFER: usize = 1460;

/// Re-reads a `jwks_file` when it changes (polls its metadata).
#[derive(Debug)]
struct KeyWatcher {
    settings: Arc<Settings>,
    every: Duration,
}

#[async_trait]
impl BackgroundService for KeyWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let file = self
                .settings
                .keys
                .watched_file()
                .map(|p| p.display().to_string());
            match self.settings.keys.reload_if_changed() {
                None => {}
                Some(Ok(n)) => tracing::info!(file = file.as_deref(), keys = n, "key set reloaded"),
                Some(Err(e)) => tracing::error!(
                    file = file.as_deref(),
                    "key set not reloaded, keeping the last good keys: {e}"
                ),
            }
        }
    }
}

/// Fetches a `jwks_url` at start, refreshes it at the server's `Cache-Control` max-age
/// (bounded), and re-fetches when a token names an unknown `kid`, at most once per
/// [`MIN_REFETCH`]. A failed fetch keeps the last good keys. `jku`/`x5u` headers of
/// tokens are never followed: only this configured URL is fetched.
#[derive(Debug)]
struct JwksFetcher {
    settings: Arc<Settings>,
}

/// Shortest time between two fetches triggered by unknown `kid`s.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Refresh bounds: the server's max-age is clamped into them; without one, the upper.
const REFRESH_MIN: Duration = Duration::from_secs(30);
const REFRESH_MAX: Duration = Duration::from_secs(300);
/// Retry delay after a failed fetch.
const RETRY: Duration = Duration::from_secs(2);
/// A JWK Set larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    settings: &Settings,
) -> Result<(crate::keys::KeySet, Duration), String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("the server answered {}", resp.status()));
    }
    let refresh = max_age(resp.headers())
        .unwrap_or(REFRESH_MAX)
        .clamp(REFRESH_MIN, REFRESH_MAX);
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWK Set is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set = crate::keys::parse_jwks(&body, settings.keys.allowed())?;
    Ok((set, refresh))
}

#[async_trait]
impl BackgroundService for JwksFetcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let keys = &self.settings.keys;
        let Some(url) = keys.url() else { return };
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("auth.jwks_url: cannot build an HTTP client: {e}");
                return;
            }
        };
        let mut last: Option<Instant> = None;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = keys.refetch_requested() => {
                    let since = last.map_or(MIN_REFETCH, |t| t.elapsed());
                    if since < MIN_REFETCH {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(MIN_REFETCH - since) => {}
                        }
                    }
                }
            }
            last = Some(Instant::now());
            match fetch(&client, url, &self.settings).await {
                Ok((set, refresh)) => {
                    tracing::info!(url, keys = set.len(), refresh = ?refresh, "JWK Set fetched");
                    keys.install(set);
                    wait = refresh;
                }
                Err(e) => {
                    tracing::error!(url, "JWK Set not fetched, keeping the last good keys: {e}");
                    wait = RETRY;
                }
            }
        }
    }
}

/// After SIGTERM, exits as soon as no request or WebSocket is left, or lets Pingora's
/// grace period (the same `shutdown_grace`) end and close what remains.
#[derive(Debug)]
struct Drain {
    in_flight: InFlight,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.grace;
        tracing::info!(open = self.in_flight.count(), grace = ?self.grace, "draining");
        while Instant::now() < deadline {
            if self.in_flight.count() == 0 {
                tracing::info!("drained, exiting");
                crate::logging::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            open = self.in_flight.count(),
            "grace period over, closing what is left"
        );
    }
}

/// Pingora's server configuration, built in code.
pub fn server_conf(settings: &Settings) -> ServerConf {
    let port = settings.listen.port();
    ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/socketio-jwt-gateway-{port}.pid"),
        upgrade_sock: format!("/tmp/socketio-jwt-gateway-{port}.sock"),
        ..ServerConf::default()
    }
}

/// Runs the gateway until SIGTERM (drain, exit 0), SIGQUIT (hand the listening sockets
/// to a process started with `upgrade`, then drain) or SIGINT (exit at once).
pub fn run(settings: Settings, redactor: Redactor, upgrade: bool, daemon: bool) -> ! {
    let settings = Arc::new(settings);
    let opt = Opt {
        upgrade,
        daemon,
        ..Opt::default()
    };
    let conf = server_conf(&settings);
    if upgrade {
        tracing::info!(socket = %conf.upgrade_sock, "waiting for the running gateway's listening sockets (send it SIGQUIT)");
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let in_flight = InFlight::default();
    let metrics = match Metrics::register(prometheus::default_registry()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("cannot register metrics: {e}");
            crate::logging::exit(1);
        }
    };
    let upstreams = match settings.upstream.as_slice() {
        [one] => Upstreams::One(*one),
        many => {
            let mut lb = match LoadBalancer::<Consistent>::try_from_iter(
                many.iter().map(ToString::to_string),
            ) {
                Ok(lb) => lb,
                Err(e) => {
                    tracing::error!("upstream.servers: {e}");
                    crate::logging::exit(1);
                }
            };
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = Some(settings.connect_timeout);
            lb.set_health_check(hc);
            lb.health_check_frequency =
                (!settings.health_check.is_zero()).then_some(settings.health_check);
            let service = background_service("upstream health check", lb);
            let lb = service.task();
            server.add_service(service);
            Upstreams::Many(lb)
        }
    };
    let gateway = Gateway::new(
        settings.clone(),
        Arc::new(redactor),
        in_flight.clone(),
        metrics,
        upstreams,
    );
    let gateway = Arc::new(gateway);
    let http = pingora::proxy::http_proxy(&server.configuration, HttpPath(gateway.clone()));
    let mut proxy = Service::new("gateway".to_string(), App::new(gateway, http));
    proxy.add_listener(ListenerConfig::tcp(settings.listen.to_string()).l4_buffer(
        L4BufferSettings::new(DOWNSTREAM_READ_BUFFER, DOWNSTREAM_WRITE_BUFFER),
    ));
    server.add_service(proxy);

    if let Some(addr) = settings.metrics_listen {
        // Prometheus text at /metrics (the default registry, with process_* series).
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(&addr.to_string());
        server.add_service(metrics);
    }
    if settings.keys.url().is_some() {
        server.add_service(background_service(
            "jwks_url fetcher",
            JwksFetcher {
                settings: settings.clone(),
            },
        ));
    }
    if settings.keys.watched_file().is_some() {
        server.add_service(background_service(
            "jwks_file watcher",
            KeyWatcher {
                settings: settings.clone(),
                every: Duration::from_millis(500),
            },
        ));
    }
    server.add_service(background_service("memory trim", crate::memory::Trimmer));
    server.add_service(background_service(
        "shutdown drain",
        Drain {
            in_flight,
            grace: settings.shutdown_grace,
        },
    ));
    tracing::info!(listen = %settings.listen, upstream = ?settings.upstream, "gateway starting");
    server.run(pingora::server::RunArgs::default());
    crate::logging::exit(0)
}
