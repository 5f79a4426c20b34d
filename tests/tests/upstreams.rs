//! Several upstream servers (docs/configuration.md, `[upstream]`): every request of one Engine.IO session
//! reaches the same server, a server failing its TCP health check gets no new sessions
//! within 3 x `health_check`, it gets its share back when it returns without moving the
//! sessions opened elsewhere meanwhile, and with no healthy server the answer is `502` JSON.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::eio::{Polling, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::tokens::valid;

const HEALTH_CHECK: Duration = Duration::from_millis(300);

/// Opens a polling session for `user` and drives it (join, echo): any request routed to
/// another server would fail with an unknown sid.
async fn session(gw: &Gateway, token: &str, user: &str) -> Result<(), String> {
    let s = Polling::handshake(gw.addr, &format!("token={token}"), &[])
        .await
        .map_err(|r| format!("handshake {}: {}", r.status, r.text()))?;
    if s.join().await != json!({ "user": user }) {
        return Err("wrong welcome".into());
    }
    for i in 0..3 {
        let r = s.post(&[&format!("42{i}[\"echo\",{i}]")]).await;
        if r.status != 200 {
            return Err(format!("post {}: {}", r.status, r.text()));
        }
        let ack = s.poll_until(&format!("43{i}")).await;
        if ack != format!("43{i}[{i}]") {
            return Err(format!("ack {ack}"));
        }
    }
    // The upgrade of the session reaches the same server too.
    let mut ws = Ws::upgrade(gw.addr, &s).await;
    if ws.echo(9, &json!("upgraded")).await != json!("upgraded") {
        return Err("no echo after the upgrade".into());
    }
    Ok(())
}

fn holder(demos: &[Demo], user: &str) -> Option<usize> {
    let needle = format!("user={user} ");
    demos.iter().position(|d| d.proc_.logs().contains(&needle))
}

async fn cluster(n: usize, sticky: &str) {
    let mut demos = Vec::new();
    for _ in 0..n {
        demos.push(Demo::start("25s").await);
    }
    let mut cfg = GatewayConfig::hs256(demos[0].addr);
    cfg.more_upstreams = demos[1..].iter().map(|d| d.addr).collect();
    cfg.upstream_lines = format!(
        "sticky = \"{sticky}\"\nhealth_check = \"{}ms\"",
        HEALTH_CHECK.as_millis()
    );
    let gw = Gateway::start(&cfg).await;

    // 16 sessions with 16 tokens: each is served end to end by one server, and the
    // sessions spread over the servers.
    let users: Vec<String> = (0..16).map(|i| format!("u{n}-{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| valid(u)).collect();
    for (u, t) in users.iter().zip(&tokens) {
        session(&gw, t, u)
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
    }
    let mut used = vec![0; n];
    for u in &users {
        let h = holder(&demos, u).unwrap_or_else(|| panic!("no server saw {u}"));
        used[h] += 1;
    }
    assert!(
        used.iter().filter(|c| **c > 0).count() > 1,
        "all sessions on one server: {used:?}"
    );

    // Kill the server of users[0]: a new session with the same token lands elsewhere
    // within 3 x health_check.
    let victim = holder(&demos, &users[0]).unwrap_or(0);
    let port = demos[victim].addr;
    demos[victim]
        .proc_
        .signal(nix::sys::signal::Signal::SIGKILL);
    demos[victim].proc_.wait_exit(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    loop {
        if session(&gw, &tokens[0], &users[0]).await.is_ok() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "never failed over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed_at.elapsed();
    assert!(
        took <= HEALTH_CHECK * 3,
        "failover took {took:?} (health_check {HEALTH_CHECK:?})"
    );

    // A session living on the fallback server while the victim is away...
    let living = Polling::handshake(gw.addr, &format!("token={}", tokens[0]), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status));
    living.join().await;
    // ...and one whose handshake is answered there but whose first request with its
    // `sid` comes only after the victim is back (the health check may flip in between).
    let pending = Polling::handshake(gw.addr, &format!("token={}", tokens[0]), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status));

    // Bring it back: once healthy, the same token's new sessions go to it again.
    demos[victim] = Demo::start_on(&port.to_string(), "25s").await;
    let back_at = Instant::now();
    loop {
        session(&gw, &tokens[0], &users[0])
            .await
            .unwrap_or_else(|e| panic!("after the return: {e}"));
        if demos[victim]
            .proc_
            .logs()
            .contains(&format!("user={} ", users[0]))
        {
            break;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "the returned server got nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...are not broken by the remapping: their requests still reach their server.
    assert_eq!(
        pending.join().await,
        json!({ "user": users[0] }),
        "the pending session was moved"
    );
    let r = living.post(&["429[\"echo\",\"still\"]"]).await;
    assert_eq!(r.status, 200, "the living session was moved: {}", r.text());
    assert_eq!(living.poll_until("439").await, "439[\"still\"]");

    // No healthy server at all: 502 JSON.
    for d in &demos {
        d.proc_.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let start = Instant::now();
    loop {
        let resp = http1::get(
            gw.addr,
            &format!("/socket.io/?EIO=4&transport=polling&token={}", tokens[1]),
            &[],
        )
        .await;
        if resp.status == 502 {
            assert_eq!(resp.json()["error"], "upstream_unavailable");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "got {}",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_servers_sticky_failover_and_return() {
    cluster(2, "token").await;
}

#[tokio::test]
async fn two_servers_sticky_by_user() {
    cluster(2, "user").await;
}

#[tokio::test]
async fn three_servers_sticky_failover_and_return() {
    cluster(3, "token").await;
}
