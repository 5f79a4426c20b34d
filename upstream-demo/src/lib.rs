//! upstream-demo: the web app that replaces the original article's PHP app, and a
//! socket.io server that trusts the gateway.
//!
//! Module map:
//!
//! - [`config`]: `[demo]` (and the `[auth]` keys it shares with the gateway).
//! - [`accounts`]: argon2 password checks that take the same time for unknown users.
//! - [`mint`]: signing short-lived socket.io tokens the gateway accepts.
//! - [`pages`]: the HTML templates.
//! - [`web`]: the HTTP handlers (login, token endpoint, pages, assets).
//! - [`socket`]: the socket.io namespace `/`: refuses connections without the
//!   identity header, greets with `welcome`, answers `echo` with an ack, relays
//!   `broadcast` and `whisper`, lists `presence`.
//! - [`cluster`]: with `redis_url`, the Redis link of socket.io's adapter, which
//!   reconnects and resubscribes after Redis comes back.
//! - [`store`]: where web sessions live: SQLite, or Redis in a cluster.
//! - [`revoke`]: signing a user out everywhere, through the gateways' Redis stream or
//!   their revocation file.
//! - [`signouts`]: when each user last signed out everywhere, which ends the user's
//!   web sessions in other browsers.
//! - [`assertion`]: optional check of the gateway's signed identity assertion on every
//!   socket.io request.
//!
//! [`app`] builds the router from an [`AppState`] so tests can drive it without sockets;
//! [`serve`] runs it on a listener until a shutdown future resolves.

pub mod accounts;
pub mod assertion;
pub mod cluster;
pub mod config;
pub mod mint;
pub mod pages;
pub mod revoke;
pub mod signouts;
pub mod socket;
pub mod store;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tower_sessions::cookie::SameSite;
use tower_sessions::cookie::time::Duration as CookieDuration;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_sqlx_store::SqliteStore;
use tower_sessions_sqlx_store::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

pub use config::DemoSettings;

/// Why the demo cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A configuration problem (the message names the key).
    #[error("{0}")]
    Config(String),
    /// The session database cannot be opened.
    #[error("demo.session_db: {0}")]
    Sessions(#[from] tower_sessions_sqlx_store::sqlx::Error),
    /// The session database file cannot be created or opened.
    #[error("demo.session_db ({}): {error}", path.display())]
    SessionDb {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        error: String,
    },
    /// The templates do not compile.
    #[error("templates: {0}")]
    Templates(#[from] minijinja::Error),
    /// The socket.io service (its Redis adapter) could not start.
    #[error(transparent)]
    Socket(#[from] socket::SocketSetupError),
}

#[derive(Debug)]
struct Inner {
    accounts: Arc<accounts::Accounts>,
    minter: mint::Minter,
    pages: pages::Pages,
    settings: DemoSettings,
    sessions: store::Sessions,
    revoker: revoke::Revoker,
    signouts: signouts::SignOuts,
    /// The socket.io service at `/socket.io/`, set up once (with `demo.redis_url`, its
    /// adapter subscribed to the cluster).
    socket: Router<AppState>,
}

/// Shared, cheaply cloned application state.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// The SQLite session store of a single instance (`demo.session_db`, or in memory).
async fn sqlite_sessions(settings: &DemoSettings) -> Result<SqliteStore, DemoError> {
    let pool = match &settings.session_db {
        Some(file) => {
            // The default file lies under target/, which only a build creates: make the
            // directory, and name the file whatever fails.
            let at = |error: String| DemoError::SessionDb {
                path: file.clone(),
                error,
            };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| at(format!("cannot create {}: {e}", dir.display())))?;
            }
            let opts = SqliteConnectOptions::new()
                .filename(file)
                .create_if_missing(true);
            SqlitePoolOptions::new()
                .connect_with(opts)
                .await
                .map_err(|e| at(e.to_string()))?
        }
        // One connection: every connection to ":memory:" is a database of its own.
        None => {
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:")
                .await?
        }
    };
    let sessions = SqliteStore::new(pool);
    sessions.migrate().await?;
    Ok(sessions)
}

impl AppState {
    /// Builds everything the app needs: accounts, the token minter, the templates, the
    /// session store (created and migrated).
    pub async fn new(settings: DemoSettings) -> Result<Self, DemoError> {
        let accounts = accounts::Accounts::new(&settings.users).map_err(DemoError::Config)?;
        let minter = mint::Minter::new(&settings).map_err(DemoError::Config)?;
        let assertion = match &settings.assertion {
            Some(check) => Some(Arc::new(
                assertion::AssertionVerifier::new(check.clone(), &settings.user_header)
                    .map_err(DemoError::Config)?,
            )),
            None => None,
        };
        let sessions = match &settings.redis_url {
            Some(url) => store::Sessions::redis(url)
                .await
                .map_err(DemoError::Config)?,
            None => store::Sessions::Sqlite(sqlite_sessions(&settings).await?),
        };
        let socket = socket::router(&settings, assertion).await?;
        // One connection (reconnecting by itself) for sign-outs: the gateways' stream and
        // the record that ends the user's other web sessions.
        let redis = match &settings.redis_url {
            Some(url) => Some(
                redis::Client::open(url.as_str())
                    .map_err(|e| DemoError::Config(format!("demo.redis_url: {e}")))?
                    .get_connection_manager()
                    .await
                    .map_err(|e| DemoError::Config(format!("demo.redis_url: sign-outs: {e}")))?,
            ),
            None => None,
        };
        let revoker = revoke::Revoker::new(&settings, redis.clone());
        let signouts = match redis {
            Some(conn) => signouts::SignOuts::Redis(conn),
            None => signouts::SignOuts::Local(std::sync::Mutex::default()),
        };
        Ok(AppState(Arc::new(Inner {
            socket,
            revoker,
            signouts,
            accounts: Arc::new(accounts),
            minter,
            pages: pages::Pages::new()?,
            settings,
            sessions,
        })))
    }

    pub(crate) fn accounts(&self) -> Arc<accounts::Accounts> {
        self.0.accounts.clone()
    }

    pub(crate) fn minter(&self) -> &mint::Minter {
        &self.0.minter
    }

    pub(crate) fn revoker(&self) -> &revoke::Revoker {
        &self.0.revoker
    }

    pub(crate) fn signouts(&self) -> &signouts::SignOuts {
        &self.0.signouts
    }

    pub(crate) fn pages(&self) -> &pages::Pages {
        &self.0.pages
    }

    /// The settings the app runs with.
    pub fn settings(&self) -> &DemoSettings {
        &self.0.settings
    }
}

/// The application: web routes behind the session layer, and the socket.io service at
/// `/socket.io/` (the client bundle beside it is a plain route).
pub fn app(state: AppState) -> Router {
    let sessions = SessionManagerLayer::new(state.0.sessions.clone())
        .with_name("demo_session")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(state.settings().secure_cookies)
        .with_expiry(Expiry::OnInactivity(CookieDuration::seconds(
            i64::try_from(signouts::SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX),
        )));
    Router::new()
        .route("/", get(web::home))
        .route("/login", get(web::login_get).post(web::login_post))
        .route("/getIoConnectionToken", get(web::io_token))
        .route("/private", get(web::private))
        .route("/logout", get(web::logout).post(web::logout))
        .layer(sessions)
        .route("/socket.io/socket.io.min.js", get(web::client_bundle))
        .route("/assets/private.js", get(web::private_js))
        .merge(state.0.socket.clone())
        .with_state(state)
}

/// How long open connections (WebSockets never end by themselves) may drain after the
/// shutdown signal.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves [`app`] on `listener` until `shutdown` resolves, then stops accepting and lets
/// open connections drain for at most [`SHUTDOWN_DRAIN`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    });
    tokio::select! {
        result = server => result,
        _ = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => Ok(()),
    }
}
