//! `jwks_url` (docs/configuration.md) against a local JWKS server: `503 keys_unavailable` until
//! a key set was ever fetched, a rotated-in key accepted within 10 s of appearing
//! (re-fetch on an unknown `kid`), and the last good keys kept while the server serves
//! garbage or is down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use jsonwebtoken::Algorithm;
use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tokens::{self, claims, private_key, sign};

/// What the JWKS server answers: status and body.
type Served = Arc<Mutex<(StatusCode, String)>>;

async fn jwks_server(served: Served) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let served = served.clone();
            async move {
                let (status, body) = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
                (status, [(header::CACHE_CONTROL, "max-age=3600")], body).into_response()
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn status_of(gw: &Gateway, token: &str) -> (u16, String) {
    let r = http1::get(
        gw.addr,
        &format!("/socket.io/?EIO=4&transport=polling&token={token}"),
        &[],
    )
    .await;
    let code = if r.status == 200 {
        String::new()
    } else {
        r.json()["error"].as_str().unwrap_or_default().to_string()
    };
    (r.status, code)
}

async fn wait_for(gw: &Gateway, token: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, code) = status_of(gw, token).await;
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {status} {code} after {limit:?}; logs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn jwks_url_is_fetched_rotated_and_kept_through_failures() {
    let served: Served = Arc::new(Mutex::new((StatusCode::SERVICE_UNAVAILABLE, "down".into())));
    let jwks = jwks_server(served.clone()).await;
    let up = Recorder::start().await;
    let cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "algorithms = [\"RS256\", \"ES256\"]\njwks_url = \"http://{jwks}/.well-known/jwks.json\"\n"
    ));
    let gw = Gateway::start(&cfg).await;
    let k1 = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        Some("k1"),
        &claims("ann"),
    );
    let k2 = sign(
        Algorithm::ES256,
        &private_key("ec256"),
        Some("k2"),
        &claims("bob"),
    );

    // Never fetched: 503, not 401.
    let r = http1::get(
        gw.addr,
        &format!("/socket.io/?EIO=4&transport=polling&token={k1}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "keys_unavailable");
    assert_eq!(
        http1::get(gw.addr, "/public", &[]).await.status,
        200,
        "unprotected paths still pass"
    );

    // The server comes up with k1.
    *served.lock().unwrap_or_else(|p| p.into_inner()) = (
        StatusCode::OK,
        tokens::jwks(&[("rsa", Algorithm::RS256, "k1")]),
    );
    wait_for(&gw, &k1, 200, Duration::from_secs(10)).await;
    assert_eq!(up.last().one("x-auth-user"), Some("ann"));
    assert_eq!(status_of(&gw, &k2).await, (401, "unknown_key".into()));

    // k2 appears (max-age is an hour): the unknown kid triggers a re-fetch, k2 is
    // accepted within 10 s of appearing.
    *served.lock().unwrap_or_else(|p| p.into_inner()) = (
        StatusCode::OK,
        tokens::jwks(&[
            ("rsa", Algorithm::RS256, "k1"),
            ("ec256", Algorithm::ES256, "k2"),
        ]),
    );
    let took = wait_for(&gw, &k2, 200, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(10), "rotation took {took:?}");

    // Garbage, then down: the last good keys stay.
    *served.lock().unwrap_or_else(|p| p.into_inner()) = (StatusCode::OK, "{ not json".into());
    let k3 = sign(
        Algorithm::RS256,
        &private_key("rsa2"),
        Some("k3"),
        &claims("cy"),
    );
    assert_eq!(
        status_of(&gw, &k3).await,
        (401, "unknown_key".into()),
        "triggers a re-fetch of garbage"
    );
    gw.proc_.wait_for_line("keeping the last good keys").await;
    assert_eq!(status_of(&gw, &k1).await.0, 200);
    assert_eq!(status_of(&gw, &k2).await.0, 200);
    *served.lock().unwrap_or_else(|p| p.into_inner()) =
        (StatusCode::INTERNAL_SERVER_ERROR, "down".into());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(status_of(&gw, &k3).await, (401, "unknown_key".into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        status_of(&gw, &k1).await.0,
        200,
        "kept while the server is down"
    );
}
