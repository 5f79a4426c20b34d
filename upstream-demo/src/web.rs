//! The web app that replaces the original PHP app: home, login (HTTP Basic and a form),
//! the token endpoint, the signed-in page, logout, and the static assets.
//!
//! Handlers return `Result<_, AppError>`; every error becomes a response in one place
//! ([`AppError::into_response`]).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::TypedHeader;
use axum_extra::headers::Authorization;
use axum_extra::headers::authorization::Basic;
use minijinja::context;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use crate::AppState;

const USER_KEY: &str = "user";
const CSRF_KEY: &str = "csrf";
/// When the session signed in (unix milliseconds): a sign-out everywhere after it ends it.
const SIGNED_IN_AT_KEY: &str = "signed_in_at";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Everything that can go wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No session: the token endpoint answers `403` JSON, as the original did.
    #[error("sign in first")]
    NotSignedIn,
    /// Wrong user or password: `401`, with a Basic challenge when Basic was used.
    #[error("wrong user or password")]
    BadCredentials {
        /// The login page to show again.
        page: String,
        /// Whether to send `WWW-Authenticate: Basic`.
        challenge: bool,
    },
    /// The login form's CSRF token is missing or wrong.
    #[error("the form has expired; reload the sign-in page")]
    Csrf,
    /// The session store failed.
    #[error("session store: {0}")]
    Session(#[from] tower_sessions::session::Error),
    /// A page failed to render.
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    /// A token could not be signed.
    #[error("token: {0}")]
    Mint(#[from] jsonwebtoken::errors::Error),
    /// The password check could not run.
    #[error("password check: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The record of sign-outs (Redis) failed.
    #[error("{0}")]
    SignOuts(#[from] crate::signouts::SignOutsError),
    /// Signed out here, but the gateways were not told: the user's sockets stay open
    /// until their tokens expire.
    #[error("signed out here, but not everywhere: {0}")]
    Revoke(#[from] crate::revoke::RevokeError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotSignedIn => (
                StatusCode::FORBIDDEN,
                axum::Json(json!({ "error": "forbidden", "message": self.to_string() })),
            )
                .into_response(),
            AppError::BadCredentials { page, challenge } => {
                let mut resp = (StatusCode::UNAUTHORIZED, Html(page)).into_response();
                if challenge {
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"site_login\""),
                    );
                }
                resp
            }
            AppError::Csrf => (StatusCode::FORBIDDEN, self.to_string()).into_response(),
            AppError::Revoke(_) => {
                tracing::error!("{self}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "signed out here, but your other sessions could not be signed out",
                )
                    .into_response()
            }
            AppError::Session(_)
            | AppError::Template(_)
            | AppError::Mint(_)
            | AppError::Join(_)
            | AppError::SignOuts(_) => {
                tracing::error!("{self}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// The session's user, unless the user has signed out everywhere since this session
/// signed in (then the session ends here).
async fn signed_in(st: &AppState, session: &Session) -> Result<Option<String>, AppError> {
    let Some(user) = session.get::<String>(USER_KEY).await? else {
        return Ok(None);
    };
    let since = session.get::<u64>(SIGNED_IN_AT_KEY).await?.unwrap_or(0);
    if st
        .signouts()
        .last(&user)
        .await?
        .is_some_and(|at| at >= since)
    {
        session.flush().await?;
        return Ok(None);
    }
    Ok(Some(user))
}

/// `GET /`
pub async fn home(State(st): State<AppState>, session: Session) -> Result<Html<String>, AppError> {
    let user = signed_in(&st, &session).await?;
    Ok(Html(st.pages().render("home.html", context! { user })?))
}

/// The CSRF token of this session's login form (created on first use).
async fn csrf_token(session: &Session) -> Result<String, AppError> {
    if let Some(t) = session.get::<String>(CSRF_KEY).await? {
        return Ok(t);
    }
    let t = uuid::Uuid::new_v4().simple().to_string();
    session.insert(CSRF_KEY, &t).await?;
    Ok(t)
}

async fn login_page(
    st: &AppState,
    session: &Session,
    error: Option<&str>,
) -> Result<String, AppError> {
    let csrf = csrf_token(session).await?;
    Ok(st.pages().render("login.html", context! { csrf, error })?)
}

/// Runs argon2 off the async threads.
async fn check_password(st: &AppState, user: String, password: String) -> Result<bool, AppError> {
    let accounts = st.accounts();
    Ok(tokio::task::spawn_blocking(move || accounts.verify(&user, &password)).await?)
}

/// Starts a session for `user`: a new session id (no fixation), then the user.
async fn sign_in(session: &Session, user: &str) -> Result<Response, AppError> {
    session.cycle_id().await?;
    session.remove::<String>(CSRF_KEY).await?;
    session.insert(USER_KEY, user).await?;
    session.insert(SIGNED_IN_AT_KEY, unix_ms()).await?;
    tracing::info!(user, "signed in");
    Ok(Redirect::to("/private").into_response())
}

/// `?basic=1` asks for the Basic challenge.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    basic: Option<String>,
}

/// `GET /login`: HTTP Basic credentials (as the original app), or the form.
pub async fn login_get(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<LoginQuery>,
    basic: Option<TypedHeader<Authorization<Basic>>>,
) -> Result<Response, AppError> {
    match basic {
        Some(TypedHeader(Authorization(creds))) => {
            let (user, password) = (creds.username().to_string(), creds.password().to_string());
            if check_password(&st, user.clone(), password).await? {
                return sign_in(&session, &user).await;
            }
            let page = login_page(&st, &session, Some("Wrong user or password.")).await?;
            Err(AppError::BadCredentials {
                page,
                challenge: true,
            })
        }
        None if q.basic.is_some() => {
            let page = login_page(&st, &session, None).await?;
            Err(AppError::BadCredentials {
                page,
                challenge: true,
            })
        }
        None => Ok(Html(login_page(&st, &session, None).await?).into_response()),
    }
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("LoginForm")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `POST /login`: the form, protected by a per-session CSRF token.
pub async fn login_post(
    State(st): State<AppState>,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let expected = session.get::<String>(CSRF_KEY).await?.unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Err(AppError::Csrf);
    }
    if check_password(&st, form.username.clone(), form.password).await? {
        return sign_in(&session, &form.username).await;
    }
    let page = login_page(&st, &session, Some("Wrong user or password.")).await?;
    Err(AppError::BadCredentials {
        page,
        challenge: false,
    })
}

/// `GET /getIoConnectionToken`: a fresh token as a JSON string (the original's route).
pub async fn io_token(State(st): State<AppState>, session: Session) -> Result<Response, AppError> {
    let user = signed_in(&st, &session)
        .await?
        .ok_or(AppError::NotSignedIn)?;
    let token = st.minter().mint(&user)?;
    let mut resp = axum::Json(token).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET /private`: the signed-in page (signed-out visitors go to the login page).
pub async fn private(State(st): State<AppState>, session: Session) -> Result<Response, AppError> {
    match signed_in(&st, &session).await? {
        Some(user) => {
            Ok(Html(st.pages().render("private.html", context! { user })?).into_response())
        }
        None => Ok(Redirect::to("/login").into_response()),
    }
}

/// `GET /logout` (the header's link) and `POST /logout` (the signed-in page's "Sign out
/// everywhere" button): ends the user's web sessions (this one, and those of other
/// browsers at their next request) and revokes every token of the user issued before
/// now, so that the gateways close the user's sockets on every page and instance
/// (docs/demo.md).
pub async fn logout(State(st): State<AppState>, session: Session) -> Result<Redirect, AppError> {
    let user = signed_in(&st, &session).await?;
    session.flush().await?;
    if let Some(user) = user {
        st.signouts().record(&user, unix_ms()).await?;
        let Some(issued_before) = st.revoker().revoke_user(&user).await? else {
            tracing::info!(user, "signed out (no revocation file or stream configured)");
            return Ok(Redirect::to("/"));
        };
        tracing::info!(user, "signed out everywhere");
        // Tokens carry whole seconds: one minted before `issued_before` begins is revoked,
        // so the answer waits for it (under a second), and a sign-in right after gets a
        // token that works.
        let starts = std::time::UNIX_EPOCH + std::time::Duration::from_secs(issued_before);
        if let Ok(wait) = starts.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(Redirect::to("/"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `GET /socket.io/socket.io.min.js`: the vendored socket.io client (no CDN).
pub async fn client_bundle() -> Response {
    asset(
        "application/javascript; charset=utf-8",
        include_str!("../assets/socket.io.min.js"),
    )
}

/// `GET /assets/private.js`: the signed-in page's script.
pub async fn private_js() -> Response {
    asset(
        "application/javascript; charset=utf-8",
        include_str!("../assets/private.js"),
    )
}
