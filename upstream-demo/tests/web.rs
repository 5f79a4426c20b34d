//! The demo web app driven through `app(state)` without sockets: login (Basic and the
//! CSRF-protected form), sessions, the token endpoint, logout, pages and assets.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proxy::config::AuthConfig;
use serde_json::Value;
use tower::ServiceExt;
use upstream_demo::config::DemoUser;
use upstream_demo::{AppState, DemoSettings, app};

async fn demo() -> Router {
    demo_with(|_| {}).await
}

async fn demo_with(adjust: impl FnOnce(&mut DemoSettings)) -> Router {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret.key");
    std::fs::write(&secret, "web-test-secret-0123456789-abcdefghijklmnop\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let auth: AuthConfig = toml::from_str(&format!(
        "secret_file = \"{}\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\n",
        secret.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let hash = upstream_demo::accounts::hash_password("password").unwrap_or_else(|e| panic!("{e}"));
    let mut settings = DemoSettings {
        users: vec![DemoUser {
            name: "gonzalo".into(),
            password_hash: hash,
        }],
        auth,
        token_ttl: std::time::Duration::from_secs(60),
        ..DemoSettings::default()
    };
    adjust(&mut settings);
    let state = AppState::new(settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(dir); // the secret was read by AppState::new
    app(state)
}

async fn call(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {})
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap_or_else(|e| panic!("{e}"))
}

fn basic(user: &str, password: &str) -> Request<Body> {
    Request::get("/login")
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
        )
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn set_cookie(resp: &Response<Body>) -> Option<String> {
    resp.headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

async fn body_text(resp: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn basic_login_starts_a_session_and_the_token_endpoint_mints_spec_claims() {
    let app = demo().await;
    let resp = call(&app, get("/getIoConnectionToken", None)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = serde_json::from_str(&body_text(resp).await).unwrap_or_default();
    assert_eq!(body["error"], "forbidden");

    let resp = call(&app, basic("gonzalo", "wrong")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"site_login\"")
    );
    let resp = call(&app, basic("nobody", "password")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = call(&app, basic("gonzalo", "password")).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/private")
    );
    let sc = set_cookie(&resp).unwrap_or_else(|| panic!("no session cookie"));
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax"),
        "{sc}"
    );
    assert!(!sc.contains("Secure"), "plain HTTP demo: {sc}");
    let cookie = cookie_pair(&sc);

    let resp = call(&app, get("/getIoConnectionToken", Some(&cookie))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let token: String = serde_json::from_str(&body_text(resp).await).unwrap_or_default();
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(claims["sub"], "gonzalo");
    assert_eq!(claims["user"]["username"], "gonzalo");
    assert_eq!(claims["iss"], "upstream-demo");
    assert_eq!(claims["aud"], "socket.io");
    assert_eq!(
        claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0),
        60
    );
    assert!(
        claims["jti"].as_str().is_some_and(|j| j.len() >= 32),
        "{claims}"
    );

    let page = body_text(call(&app, get("/private", Some(&cookie))).await).await;
    assert!(page.contains("Welcome, gonzalo") && page.contains("/socket.io/socket.io.min.js"));

    let resp = call(&app, get("/logout", Some(&cookie))).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = call(&app, get("/getIoConnectionToken", Some(&cookie))).await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "logout ends the session"
    );
    let resp = call(&app, get("/private", Some(&cookie))).await;
    assert_eq!(
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/login")
    );
}

fn form(cookie: &str, body: &str) -> Request<Body> {
    Request::post("/login")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_form_needs_its_csrf_token_and_rotates_the_session_id() {
    let app = demo().await;
    let resp = call(&app, get("/login", None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let pre = cookie_pair(&set_cookie(&resp).unwrap_or_default());
    let page = body_text(resp).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(csrf.len(), 32, "{page}");

    for bad in ["", "csrf=wrong&", "csrf=&"] {
        let resp = call(
            &app,
            form(&pre, &format!("{bad}username=gonzalo&password=password")),
        )
        .await;
        assert!(
            resp.status() == StatusCode::FORBIDDEN
                || resp.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad:?}: {}",
            resp.status()
        );
    }
    let resp = call(
        &app,
        form(
            "demo_session=forged",
            &format!("csrf={csrf}&username=gonzalo&password=password"),
        ),
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the token is bound to the session"
    );

    let resp = call(
        &app,
        form(&pre, &format!("csrf={csrf}&username=gonzalo&password=nope")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers().get(header::WWW_AUTHENTICATE).is_none(),
        "no Basic prompt for the form"
    );
    assert!(body_text(resp).await.contains("Wrong user or password"));

    let resp = call(
        &app,
        form(
            &pre,
            &format!("csrf={csrf}&username=gonzalo&password=password"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let post = cookie_pair(&set_cookie(&resp).unwrap_or_default());
    assert_ne!(post, pre, "a new session id after sign-in");
    let resp = call(&app, get("/getIoConnectionToken", Some(&post))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = call(&app, get("/getIoConnectionToken", Some(&pre))).await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the pre-login id is dead"
    );
}

#[tokio::test]
async fn the_client_bundle_is_served_locally_with_its_licence() {
    let app = demo().await;
    let resp = call(&app, get("/socket.io/socket.io.min.js", None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/javascript")
    );
    let js = body_text(resp).await;
    assert!(js.starts_with("/*!\n * Socket.IO v4.8.4") && js.contains("MIT License"));
    let home = body_text(call(&app, get("/", None)).await).await;
    assert!(
        home.contains("/login") && !home.contains("http://cdn"),
        "{home}"
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `/logout` revokes the user's tokens in the gateway's revocation file: the entry
/// names the user as the gateway forwards it and covers every token minted so far, the
/// file is replaced whole (no temporary file left beside it), concurrent sign-outs lose
/// no entry, the user's session in another browser ends too, and a sign-in right after
/// the answer mints a token the entry does not cover.
#[tokio::test]
async fn logout_revokes_the_users_tokens_in_the_revocation_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("revoked.json");
    std::fs::write(&file, "[{\"jti\": \"someone-elses\"}]\n").unwrap_or_else(|e| panic!("{e}"));
    let app = demo_with(|s| {
        s.revocation_file = Some(file.clone());
        s.users.push(DemoUser {
            name: "alice".into(),
            password_hash: s.users[0].password_hash.clone(),
        });
    })
    .await;
    let gonzalo = cookie_pair(
        &set_cookie(&call(&app, basic("gonzalo", "password")).await).unwrap_or_default(),
    );
    // The same user in another browser.
    let elsewhere = cookie_pair(
        &set_cookie(&call(&app, basic("gonzalo", "password")).await).unwrap_or_default(),
    );
    let alice =
        cookie_pair(&set_cookie(&call(&app, basic("alice", "password")).await).unwrap_or_default());
    let before: Value = serde_json::from_str(
        &body_text(call(&app, get("/getIoConnectionToken", Some(&gonzalo))).await).await,
    )
    .unwrap_or_default();
    let token = before
        .as_str()
        .unwrap_or_else(|| panic!("no token: {before}"));
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
            .unwrap_or_default();
    let iat = claims["iat"]
        .as_u64()
        .unwrap_or_else(|| panic!("no iat: {claims}"));

    // Both sign out at once: the header link (GET) and the page's button (POST).
    let post = Request::post("/logout")
        .header(header::COOKIE, &alice)
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = tokio::join!(call(&app, get("/logout", Some(&gonzalo))), call(&app, post));
    assert_eq!(a.status(), StatusCode::SEE_OTHER);
    assert_eq!(b.status(), StatusCode::SEE_OTHER);
    let answered = unix_now();

    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
            .unwrap_or_else(|e| panic!("not a JSON array: {e}"));
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[0], serde_json::json!({"jti": "someone-elses"}));
    let of = |user: &str| {
        entries
            .iter()
            .find(|e| e["user"] == user)
            .and_then(|e| e["issued_before"].as_u64())
            .unwrap_or_else(|| panic!("no entry for {user}: {entries:?}"))
    };
    for user in ["gonzalo", "alice"] {
        let at = of(user);
        assert!(
            iat < at,
            "the token minted before sign-out (iat {iat}) is not covered by {at}"
        );
        assert!(
            at <= answered,
            "a token minted after the answer would be revoked: {at} > {answered}"
        );
    }
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "revoked.json")
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");

    // The other browser's web session ended too; signing in again works at once.
    let resp = call(&app, get("/getIoConnectionToken", Some(&elsewhere))).await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the other browser is still signed in"
    );
    // Signing out again replaces the user's entry instead of piling up entries.
    let again = cookie_pair(
        &set_cookie(&call(&app, basic("gonzalo", "password")).await).unwrap_or_default(),
    );
    let resp = call(&app, get("/getIoConnectionToken", Some(&again))).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a sign-in after the sign-out"
    );
    call(&app, get("/logout", Some(&again))).await;
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(
        entries.iter().filter(|e| e["user"] == "gonzalo").count(),
        1,
        "{entries:?}"
    );
    assert_eq!(entries.len(), 3, "{entries:?}");
}
