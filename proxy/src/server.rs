//! Building and running the Pingora server from [`Settings`]: the proxy service, its
//! background services (key sources, health checks, metrics, memory trim, the shutdown
//! drain). No YAML file and no Pingora command line: everything comes from our own
//! config. Errors are returned; `main` decides the exit code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::Consistent;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::app::App;
use crate::certs::{CertResolver, CertWatcher};
use crate::config::Settings;
use crate::gateway::{Gateway, InFlight};
use crate::health::Probes;
use crate::keys::{JwksFetcher, KeyWatcher};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::upstream_tls::TlsHealthCheck;
use crate::upstreams::Upstreams;

/// Read buffer of each client connection: none. The gateway reads request heads into
/// its own buffer ([`crate::conn`]), Pingora's HTTP/1 reader keeps its own, and a
/// tunnel reads into one buffer per worker thread; a buffer here would only be a
/// second copy held by every idle WebSocket (Pingora's default is 64 KiB).
const DOWNSTREAM_READ_BUFFER: usize = 0;

/// Write buffer of each client connection: none. [`crate::conn::Conn`] gathers the
/// HTTP path's writes only while a response is written, so a held WebSocket or an idle
/// keep-alive connection keeps no buffer (Pingora's default is one MSS per connection).
const DOWNSTREAM_WRITE_BUFFER: usize = 0;

/// After SIGTERM, exits as soon as no request or WebSocket is left, or lets Pingora's
/// grace period (the same `shutdown_grace`) end and close what remains.
#[derive(Debug)]
struct Drain {
    in_flight: InFlight,
    grace: Duration,
    /// Read by `/readyz` ([`Probes`]).
    draining: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.draining.store(true, Ordering::Release);
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

/// The listener's TLS (docs/tls.md): TLS 1.2 and 1.3 (Pingora's rustls acceptor
/// allows no other), ALPN `h2` then `http/1.1`, the certificate from the resolver the
/// watcher swaps.
fn tls_settings(resolver: Arc<CertResolver>) -> Result<TlsSettings, ServerError> {
    // The paths are never read: with a resolver, Pingora takes the certificate from it.
    let mut tls = TlsSettings::intermediate("", "").map_err(|e| ServerError::Tls(e.to_string()))?;
    tls.set_cert_resolver(resolver);
    tls.enable_h2();
    Ok(tls)
}

/// Pingora's server configuration, built in code.
pub fn server_conf(settings: &Settings) -> ServerConf {
    let port = settings.proxy.listen.port();
    ServerConf {
        threads: settings.proxy.threads,
        grace_period_seconds: Some(settings.proxy.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/socketio-jwt-gateway-{port}.pid"),
        upgrade_sock: format!("/tmp/socketio-jwt-gateway-{port}.sock"),
        // The roots Pingora's connector verifies TLS upstreams with (docs/tls.md);
        // unset, the system's.
        ca_file: settings
            .upstream
            .tls
            .as_ref()
            .and_then(|t| t.ca_file.as_ref())
            .map(|f| f.display().to_string()),
        ..ServerConf::default()
    }
}

/// The gateway's proxy service, without a listener: [`App`].
pub fn proxy_service(gateway: Arc<Gateway>) -> Service<App> {
    Service::new("gateway".to_string(), App::new(gateway))
}

/// The client listener on `addr` before its TLS: connections without Pingora's buffers
/// (`DOWNSTREAM_READ_BUFFER`, `DOWNSTREAM_WRITE_BUFFER`: none).
pub fn plain_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::new(
        DOWNSTREAM_READ_BUFFER,
        DOWNSTREAM_WRITE_BUFFER,
    ))
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The upstream servers could not be set up.
    #[error("upstream.servers: {0}")]
    Upstreams(std::io::Error),
    /// The TLS listener could not be set up.
    #[error("proxy.tls: {0}")]
    Tls(String),
    /// The runtime of the first key fetch could not be started.
    #[error("cannot start the first auth.jwks_url fetch: {0}")]
    Runtime(std::io::Error),
}

/// Runs the gateway until SIGTERM (drain, then return), SIGQUIT (hand the listening
/// sockets to a process started with `upgrade`, then drain) or SIGINT (at once). When
/// everything drained before the grace ended, the drain service exits the process with
/// status 0 itself (Pingora waits out its whole grace period otherwise).
pub fn run(
    settings: Settings,
    redactor: Redactor,
    upgrade: bool,
    daemon: bool,
) -> Result<(), ServerError> {
    crate::certs::install_crypto_provider();
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
    // With `jwks_url`, the keys come before the listener: the first requests (also
    // those a graceful upgrade hands over) are judged with keys, not refused `503`.
    let keys = &settings.auth.keys;
    let first_wait = match keys.url() {
        Some(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?
            .block_on(crate::keys::first_fetch(
                keys,
                settings.upstream.connect_timeout,
            )),
        None => Duration::ZERO,
    };
    if !settings.auth.sid_key_configured {
        tracing::info!(
            "no auth.session_key_env or auth.session_key_file: Engine.IO sessions are sealed with a random key, so they end with this process and no other gateway can read them"
        );
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let in_flight = InFlight::default();
    let metrics = Metrics::register(prometheus::default_registry())?;
    let upstreams = match settings.upstream.servers.as_slice() {
        [one] => Upstreams::One(*one),
        many => {
            let mut lb =
                LoadBalancer::<Consistent>::try_from_iter(many.iter().map(ToString::to_string))
                    .map_err(ServerError::Upstreams)?;
            match &settings.upstream.tls {
                None => {
                    let mut hc = TcpHealthCheck::new();
                    hc.peer_template.options.connection_timeout =
                        Some(settings.upstream.connect_timeout);
                    lb.set_health_check(hc);
                }
                Some(tls) => lb.set_health_check(Box::new(TlsHealthCheck {
                    tls: tls.clone(),
                    timeout: settings.upstream.connect_timeout,
                })),
            }
            lb.health_check_frequency = (!settings.upstream.health_check.is_zero())
                .then_some(settings.upstream.health_check);
            let service = background_service("upstream health check", lb);
            let lb = service.task();
            server.add_service(service);
            Upstreams::Many(lb)
        }
    };
    let draining = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        keys: settings.auth.keys.clone(),
        upstreams: upstreams.clone(),
        draining: draining.clone(),
    };
    let gateway = Gateway::new(
        settings.clone(),
        Arc::new(redactor),
        in_flight.clone(),
        metrics,
        upstreams,
    );
    let gateway = Arc::new(gateway);
    crate::revocation_file::add_watcher(&mut server, &gateway);
    crate::cluster::add_service(&mut server, &gateway);
    let mut proxy = proxy_service(gateway);
    let mut listener = plain_listener(&settings.proxy.listen.to_string());
    if let Some(tls) = &settings.proxy.tls {
        let resolver = Arc::new(CertResolver::new(&tls.pair));
        listener = listener.tls(tls_settings(resolver.clone())?);
        server.add_service(background_service(
            "certificate watcher",
            CertWatcher {
                resolver,
                files: tls.files.clone(),
            },
        ));
        tracing::info!(
            serial = tls.pair.serial,
            subject = tls.pair.subject,
            "serving HTTPS and WSS"
        );
    }
    proxy.add_listener(listener);
    server.add_service(proxy);

    if let Some(addr) = settings.proxy.metrics_listen {
        // /metrics, /healthz and /readyz (docs/operations.md).
        let mut probes = Service::new("metrics and probes".to_string(), probes.server());
        probes.add_tcp(&addr.to_string());
        server.add_service(probes);
    }
    if keys.url().is_some() {
        let fetcher = JwksFetcher {
            keys: keys.clone(),
            connect_timeout: settings.upstream.connect_timeout,
            first_wait,
        };
        server.add_service(background_service("jwks_url fetcher", fetcher));
    }
    if keys.watched_file().is_some() {
        let watcher = KeyWatcher {
            keys: keys.clone(),
            every: Duration::from_millis(500),
        };
        server.add_service(background_service("jwks_file watcher", watcher));
    }
    server.add_service(background_service("memory trim", crate::memory::Trimmer));
    server.add_service(background_service(
        "shutdown drain",
        Drain {
            in_flight,
            grace: settings.proxy.shutdown_grace,
            draining,
        },
    ));
    tracing::info!(listen = %settings.proxy.listen, upstream = ?settings.upstream.servers, "gateway starting");
    server.run(pingora::server::RunArgs::default());
    Ok(())
}
