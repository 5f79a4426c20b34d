//! Several gateways in front of the same servers, as behind an L4 load balancer
//! (docs/clusters.md): a client's requests may land on any
//! gateway, and nothing a gateway keeps may break its session. The sticky key maps to
//! the same server in every gateway process (a specified hash on the same Ketama ring),
//! and a session's sid, sealed with the key the gateways share (README "Engine.IO
//! sessions"), names its user and server at every gateway.

use serde_json::json;
use tests::eio::{Polling, event};
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::tokens::valid;

#[tokio::test]
async fn a_polling_session_alternating_between_two_gateways_is_welcomed_and_echoes() {
    let mut demos = Vec::new();
    for _ in 0..3 {
        demos.push(Demo::start("25s").await);
    }
    let mut cfg = GatewayConfig::hs256(demos[0].addr);
    cfg.more_upstreams = demos[1..].iter().map(|d| d.addr).collect();
    cfg.upstream_lines = "sticky = \"token\"".into();
    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key_file = keys.path().join("session.key");
    std::fs::write(&key_file, "a shared session key, at least 32 bytes long\n")
        .unwrap_or_else(|e| panic!("{e}"));
    cfg.auth
        .push_str(&format!("session_key_file = \"{}\"\n", key_file.display()));
    let a = Gateway::start(&cfg).await;
    let b = Gateway::start(&cfg).await;

    // Several users, so that the sessions spread over the three servers: each must
    // still reach its own server through either gateway.
    for n in 0..6 {
        let user = format!("alternating-{n}");
        let token = valid(&user);
        let via_a = Polling::handshake(a.addr, &format!("token={token}"), &[])
            .await
            .unwrap_or_else(|r| panic!("handshake: {} {}", r.status, r.text()));
        let via_b = via_a.via(b.addr);
        let r = via_b.post(&["40"]).await;
        assert_eq!(r.status, 200, "{user}: CONNECT via B: {}", r.text());
        let mut welcome = None;
        for i in 0..10 {
            let side = if i % 2 == 0 { &via_a } else { &via_b };
            let packets = side
                .poll()
                .await
                .unwrap_or_else(|r| panic!("{user}: poll {i}: {} {}", r.status, r.text()));
            if let Some(w) = packets.iter().find_map(|p| event(p, "welcome")) {
                welcome = Some(w);
                break;
            }
        }
        assert_eq!(welcome, Some(json!({ "user": user })), "{user}");
        for i in 0..4 {
            let (send, receive) = if i % 2 == 0 {
                (&via_a, &via_b)
            } else {
                (&via_b, &via_a)
            };
            let r = send.post(&[&format!("42{i}[\"echo\",{i}]")]).await;
            assert_eq!(r.status, 200, "{user}: echo {i}: {}", r.text());
            assert_eq!(
                receive.poll_until(&format!("43{i}")).await,
                format!("43{i}[{i}]")
            );
        }
    }
    // The sessions were spread over the servers (so both gateways had to agree on
    // which server holds which session).
    let holders: std::collections::BTreeSet<usize> = (0..6)
        .filter_map(|n| {
            let needle = format!("user=alternating-{n} ");
            demos.iter().position(|d| d.proc_.logs().contains(&needle))
        })
        .collect();
    assert!(
        holders.len() > 1,
        "every session on one server: {holders:?}"
    );
}
