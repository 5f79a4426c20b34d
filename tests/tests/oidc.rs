//! `auth.oidc_issuer` (docs/configuration.md, "OIDC discovery") against a local server
//! serving discovery documents and JWK Sets shaped like Keycloak's (an issuer with a
//! path) and Auth0's (an issuer with a trailing slash): the `jwks_uri` is used, `iss`
//! must be the issuer unless `issuer` is set, and `--check` and start-up refuse a
//! document naming another issuer, an `algorithms` list the issuer does not sign with,
//! an unreachable issuer, and a second key source.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tests::SECRET;
use tests::http1;
use tests::procs::{Gateway, GatewayConfig, bin, free_addr};
use tests::recorder::Recorder;
use tests::tokens::{self, claims, private_key, sign};

/// The issuers served, by the path their documents are under.
async fn provider() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{addr}");
    let document = |issuer: String, jwks_uri: String, algs: &[&str]| {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{base}/auth"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": jwks_uri,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        })
        .to_string()
    };
    let keycloak = document(
        format!("{base}/realms/x"),
        format!("{base}/realms/x/protocol/openid-connect/certs"),
        &["PS384", "RS256", "ES256"],
    );
    let auth0 = document(
        format!("{base}/"),
        format!("{base}/.well-known/jwks.json"),
        &["HS256", "RS256"],
    );
    let liar = document(
        format!("{base}/realms/other"),
        format!("{base}/realms/x/protocol/openid-connect/certs"),
        &["RS256"],
    );
    let es_only = document(
        format!("{base}/realms/es"),
        format!("{base}/realms/x/protocol/openid-connect/certs"),
        &["ES256"],
    );
    let jwks = tokens::jwks(&[("rsa", Algorithm::RS256, "k1")]);
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get({
                let auth0 = auth0.clone();
                move || async move { auth0 }
            }),
        )
        .route(
            "/.well-known/jwks.json",
            axum::routing::get({
                let jwks = jwks.clone();
                move || async move { jwks }
            }),
        )
        .route(
            "/realms/x/protocol/openid-connect/certs",
            axum::routing::get(move || async move { jwks }),
        )
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            axum::routing::get(
                |State(docs): State<[String; 3]>, Path(realm): Path<String>| async move {
                    let [keycloak, liar, es_only] = docs;
                    match realm.as_str() {
                        "x" => keycloak.into_response(),
                        "liar" => liar.into_response(),
                        "es" => es_only.into_response(),
                        _ => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .with_state([keycloak, liar, es_only]);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// `proxy --check` on `[auth]` lines; exit code and stderr.
fn check(auth: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\n{auth}"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin("proxy"))
        .arg("--check")
        .arg("--config")
        .arg(&file)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    if code == 0 {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{err}");
    }
    (code, err)
}

/// An RS256 token of the provider's key `k1` for `user`, issued by `iss`.
fn token(user: &str, iss: &str) -> String {
    let mut c = claims(user);
    c["iss"] = json!(iss);
    sign(Algorithm::RS256, &private_key("rsa"), Some("k1"), &c)
}

/// `(status, error code)` of a polling handshake with `token` (retried while the keys
/// are being fetched).
async fn handshake(gw: &Gateway, token: &str) -> (u16, String) {
    for _ in 0..100 {
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
        if code != "keys_unavailable" {
            return (r.status, code);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("keys never fetched; logs:\n{}", gw.logs());
}

async fn gateway(up: &Recorder, auth: &str) -> Gateway {
    let cfg = GatewayConfig::hs256(up.addr).auth(auth);
    Gateway::start(&cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keycloak_realm_gives_its_keys_and_its_issuer() {
    let idp = provider().await;
    let issuer = format!("http://{idp}/realms/x");
    let auth =
        format!("algorithms = [\"RS256\"]\noidc_issuer = \"{issuer}\"\naudience = \"socket.io\"\n");
    assert_eq!(check(&auth).0, 0);
    let up = Recorder::start().await;
    let gw = gateway(&up, &auth).await;
    assert_eq!(
        handshake(&gw, &token("kim", &issuer)).await,
        (200, String::new())
    );
    assert_eq!(up.last().one("x-auth-user"), Some("kim"));
    assert_eq!(
        handshake(&gw, &token("kim", "upstream-demo")).await,
        (401, "invalid_issuer".into())
    );
    assert_eq!(
        handshake(&gw, &token("kim", &format!("{issuer}/"))).await,
        (401, "invalid_issuer".into()),
        "the issuer exactly"
    );

    // `issuer` set: it is the one required.
    let auth = format!("{auth}issuer = \"upstream-demo\"\n");
    let gw = gateway(&up, &auth).await;
    assert_eq!(handshake(&gw, &token("kim", "upstream-demo")).await.0, 200);
    assert_eq!(
        handshake(&gw, &token("kim", &issuer)).await,
        (401, "invalid_issuer".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth0_tenant_with_its_trailing_slash() {
    let idp = provider().await;
    let issuer = format!("http://{idp}/");
    let auth = format!("algorithms = [\"RS256\"]\noidc_issuer = \"{issuer}\"\n");
    let up = Recorder::start().await;
    let gw = gateway(&up, &auth).await;
    assert_eq!(handshake(&gw, &token("ada", &issuer)).await.0, 200);
    assert_eq!(
        handshake(&gw, &token("ada", &format!("http://{idp}"))).await,
        (401, "invalid_issuer".into())
    );
    // Written without its slash, the issuer is not the document's: refused.
    let (code, err) = check(&format!(
        "algorithms = [\"RS256\"]\noidc_issuer = \"http://{idp}\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "auth.oidc_issuer (line 7): http://{idp}/.well-known/openid-configuration names the issuer \"http://{idp}/\", not \"http://{idp}\""
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_start_up_refuse_what_cannot_work() {
    let idp = provider().await;
    let (code, err) = check(&format!(
        "algorithms = [\"RS256\"]\noidc_issuer = \"http://{idp}/realms/liar\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("auth.oidc_issuer (line 7)")
            && err.contains(&format!("names the issuer \"http://{idp}/realms/other\"")),
        "{err}"
    );

    let (code, err) = check(&format!(
        "algorithms = [\"RS256\", \"HS256\"]\noidc_issuer = \"http://{idp}/realms/es\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("auth.algorithms (line 6): none of RS256, HS256 is used by http://{idp}/realms/es (its id_token_signing_alg_values_supported: ES256)")),
        "{err}"
    );
    assert_eq!(
        check(&format!(
            "algorithms = [\"ES256\", \"RS256\"]\noidc_issuer = \"http://{idp}/realms/es\"\n"
        ))
        .0,
        0,
        "one shared algorithm is enough"
    );

    let (code, err) = check(&format!(
        "oidc_issuer = \"http://{idp}/realms/x\"\njwks_url = \"http://{idp}/.well-known/jwks.json\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("auth.oidc_issuer (line 6): exactly one key source")
            && err.contains("auth.jwks_url (line 7): exactly one key source"),
        "{err}"
    );

    let down = free_addr();
    let (code, err) = check(&format!(
        "algorithms = [\"RS256\"]\noidc_issuer = \"http://{down}/realms/x\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "auth.oidc_issuer (line 7): cannot read http://{down}/realms/x/.well-known/openid-configuration"
        )),
        "{err}"
    );
    let (code, err) = check("oidc_issuer = \"sso.example\"\n");
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "auth.oidc_issuer (line 6): \"sso.example\" is not an http:// or https:// URL"
        ),
        "{err}"
    );

    // Start-up says the same and does not serve.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.toml");
    let listen = free_addr();
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"{listen}\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nalgorithms = [\"RS256\"]\noidc_issuer = \"http://{idp}/realms/liar\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("proxy"))
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth.oidc_issuer (line 7)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
