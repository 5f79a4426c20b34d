//! The decision about a request ([`Gateway::authenticate`], docs/request-handling.md
//! "What the gateway does to a request"), in process: a gateway built from a TOML file
//! as `proxy` builds it, asked about request heads, without a socket.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora::http::RequestHeader;
use proxy::config::Config;
use proxy::decision::{Answer, Decision, Forward, Outcome};
use proxy::gateway::{Gateway, InFlight};
use proxy::logging::Redactor;
use proxy::metrics::Metrics;
use proxy::upstreams::Upstreams;
use proxy::verify::ErrorCode;

const SECRET: &str = "the authenticate tests' secret, more than 32 bytes";

/// The gateway of this file, with its secret in `secret_file` next to it; refusals
/// answered `401` (`reject_with = "http"`), a claim forwarded as `x-auth-role`.
const CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
[upstream]
servers = ["127.0.0.1:3000"]
[auth]
secret_file = "jwt-secret"
reject_with = "http"
forward_claims = { role = "x-auth-role" }
"#;

const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("jwt-secret"), format!("{SECRET}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (cfg, lines, problems) = Config::parse(CONFIG).unwrap_or_else(|p| panic!("{p:?}"));
    assert!(problems.is_empty(), "{problems:?}");
    // The secret is read here, once: the directory may go afterwards.
    let settings = cfg
        .validate(&lines, dir.path())
        .unwrap_or_else(|p| panic!("{p:?}"));
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let redactor = Arc::new(Redactor::for_sources(&settings.auth.token_sources));
    let upstream = settings.upstream.servers[0];
    Gateway::new(
        Arc::new(settings),
        redactor,
        InFlight::default(),
        metrics,
        Upstreams::One(upstream),
    )
}

/// An HS256 token for `sub`, valid for ten minutes, signed with `secret`.
fn token(sub: &str, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({ "sub": sub, "role": "admin", "exp": now + 600 });
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req =
        RequestHeader::build("GET", target.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in headers {
        req.append_header(name.to_string(), *value)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    req
}

fn forwarded(decision: Decision) -> Forward {
    match decision {
        Decision::Forward(f) => f,
        Decision::Answer(a) => panic!("answered {} {:?}", a.status, a.body),
    }
}

fn answered(decision: Decision) -> Answer {
    match decision {
        Decision::Answer(a) => a,
        Decision::Forward(f) => panic!("forwarded: {f:?}"),
    }
}

fn decide(gw: &Gateway, req: &mut RequestHeader) -> Decision {
    gw.authenticate(req, CLIENT)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn identity<'f>(f: &'f Forward, name: &str) -> Option<&'f [u8]> {
    f.identity
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.as_bytes())
}

#[test]
fn a_valid_token_is_forwarded_with_the_user_and_stripped_from_the_query() {
    let gw = gateway();
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}&t=abc",
        token("alice", SECRET)
    );
    let mut req = request(&target, &[]);
    let f = forwarded(decide(&gw, &mut req));
    assert_eq!(f.outcome, Outcome::Allowed);
    assert_eq!(identity(&f, "x-auth-user"), Some(&b"alice"[..]), "{f:?}");
    assert_eq!(identity(&f, "x-auth-role"), Some(&b"admin"[..]), "{f:?}");
    let sent = String::from_utf8_lossy(req.raw_path()).into_owned();
    assert!(!sent.contains("token"), "{sent}");
    assert!(
        sent.starts_with("/socket.io/?EIO=4&transport=polling") && sent.ends_with("t=abc"),
        "{sent}"
    );
}

#[test]
fn a_missing_token_is_answered_401_missing_token() {
    let gw = gateway();
    let mut req = request("/socket.io/?EIO=4&transport=polling", &[]);
    let a = answered(decide(&gw, &mut req));
    assert_eq!(a.status, 401);
    assert_eq!(a.outcome, Outcome::Rejected(ErrorCode::MissingToken));
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"], "missing_token", "{body}");
}

#[test]
fn identity_headers_a_client_sends_are_removed() {
    let gw = gateway();
    let spoofed = [("X-Auth-User", "mallory"), ("x-auth-role", "root")];
    // With a valid token: the gateway's values only, set when forwarding.
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}",
        token("alice", SECRET)
    );
    let mut req = request(&target, &spoofed);
    let f = forwarded(decide(&gw, &mut req));
    assert_eq!(identity(&f, "x-auth-user"), Some(&b"alice"[..]), "{f:?}");
    for (name, _) in spoofed {
        assert!(req.headers.get(name).is_none(), "{name} kept: {req:?}");
    }
    // Outside the protected paths too, where no identity is set at all.
    let mut req = request("/index.html", &spoofed);
    let f = forwarded(decide(&gw, &mut req));
    assert!(f.identity.is_empty(), "{f:?}");
    for (name, _) in spoofed {
        assert!(req.headers.get(name).is_none(), "{name} kept: {req:?}");
    }
}

#[test]
fn a_path_outside_the_protected_prefix_is_public() {
    let gw = gateway();
    for target in [
        "/",
        "/index.html?token=whatever",
        "/app.js",
        "/api/socket.io/",
    ] {
        let mut req = request(target, &[]);
        let Decision::Forward(f) = decide(&gw, &mut req) else {
            panic!("{target} answered");
        };
        assert_eq!(f.outcome, Outcome::Public, "{target}");
        assert!(f.identity.is_empty(), "{target}: {f:?}");
        assert_eq!(req.raw_path(), target.as_bytes(), "{target} rewritten");
    }
}

#[test]
fn a_token_signed_with_another_secret_is_invalid_signature() {
    let gw = gateway();
    let forged = token("alice", "another secret, also more than 32 bytes long");
    let target = format!("/socket.io/?EIO=4&transport=polling&token={forged}");
    let mut req = request(&target, &[]);
    let a = answered(decide(&gw, &mut req));
    assert_eq!(a.status, 401);
    assert_eq!(a.outcome, Outcome::Rejected(ErrorCode::InvalidSignature));
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"], "invalid_signature", "{body}");
}

/// The verification cache remembers a well-signed token before its time is checked
/// (a client retrying with its stale token costs no signature check), and checks its
/// time on every use: an expired token is refused every time, and a token whose other
/// claims are wrong too is still refused for its time.
#[test]
fn an_expired_token_is_refused_every_time_also_once_remembered() {
    let gw = gateway();
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let expired = sign(serde_json::json!({ "sub": "alice", "exp": 1_000_000 }));
    let expired_without_user = sign(serde_json::json!({ "exp": 1_000_000 }));
    for token in [&expired, &expired_without_user] {
        for round in 0..3 {
            let target = format!("/socket.io/?EIO=4&transport=polling&token={token}");
            let a = answered(decide(&gw, &mut request(&target, &[])));
            assert_eq!(a.status, 401, "round {round}");
            let expected = Outcome::Rejected(ErrorCode::TokenExpired);
            assert_eq!(a.outcome, expected, "round {round}");
            assert!(a.is_fixed(), "round {round}: rendered at start-up");
        }
    }
}

#[test]
fn a_connection_header_naming_the_identity_header_is_400() {
    let gw = gateway();
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}",
        token("alice", SECRET)
    );
    for connection in ["x-auth-user", "keep-alive, X-Auth-User"] {
        let mut req = request(&target, &[("connection", connection)]);
        let a = answered(decide(&gw, &mut req));
        assert_eq!(a.status, 400, "{connection}");
        assert_eq!(a.outcome, Outcome::BadRequest, "{connection}");
    }
}
