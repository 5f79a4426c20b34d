//! `reject_with` left out of the file (docs/request-handling.md, "Refusals the socket.io
//! client understands"): Engine.IO v4 requests are refused in socket.io's protocol, so
//! a client gets the reason and stops; other requests keep the `401`.

use std::process::Command;

use tests::SECRET;
use tests::http1;
use tests::procs::{Gateway, GatewayConfig, Proc, bin, free_addr, wait_listening};
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256};

const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling";

/// A gateway started from a file without `reject_with`.
async fn default_gateway(up: &Recorder) -> (Proc, std::net::SocketAddr, tempfile::TempDir) {
    let cfg = GatewayConfig::hs256(up.addr);
    let addr = free_addr();
    let text = cfg.render(addr).replace("reject_with = \"http\"\n", "");
    assert!(!text.contains("reject_with"), "{text}");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin("proxy"));
    cmd.arg("--config").arg(&file).env("JWT_SECRET", SECRET);
    let proc_ = Proc::spawn("proxy", cmd);
    wait_listening(addr, &proc_).await;
    (proc_, addr, dir)
}

#[tokio::test]
async fn without_reject_with_a_refusal_is_a_connect_error() {
    let up = Recorder::start().await;
    let (_gw, addr, _dir) = default_gateway(&up).await;

    // An expired token: the gateway's own open packet, then CONNECT_ERROR with the reason.
    let mut expired = claims("eve");
    expired["exp"] = serde_json::json!(tokens_now() - 60);
    let token = hs256(&expired);
    let r = http1::get(addr, &format!("{HANDSHAKE}&token={token}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let open: serde_json::Value = serde_json::from_str(
        text.strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {text}")),
    )
    .unwrap_or_else(|e| panic!("{e}: {text}"));
    let sid = open["sid"].as_str().unwrap_or_default().to_string();
    let q = format!("{HANDSHAKE}&sid={sid}");
    let r = http1::request(addr, "POST", &q, &[("content-type", "text/plain")], b"40").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = http1::get(addr, &q, &[]).await;
    assert_eq!(
        r.text(),
        r#"44{"message":"the token has expired","data":{"error":"token_expired"}}"#
    );

    // Not Engine.IO v4: the 401 with its JSON body, as before.
    for target in ["/socket.io/?EIO=3&transport=polling", "/socket.io/"] {
        let r = http1::get(addr, target, &[]).await;
        assert_eq!(r.status, 401, "{target}");
        assert_eq!(r.json()["error"], "missing_token", "{target}");
    }
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());

    // The harness's default gateway says "http" itself, and gets the 401.
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    assert_eq!(http1::get(gw.addr, HANDSHAKE, &[]).await.status, 401);
}

fn tokens_now() -> i64 {
    i64::try_from(tests::tokens::now()).unwrap_or(i64::MAX)
}
