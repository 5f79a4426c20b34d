//! Tokens govern live sessions (README "Refresh and revocation", docs/websockets.md),
//! through the real binary and upstream-demo: a WebSocket kept past three token
//! lifetimes by refreshes on its `sid`; refused refreshes (another user, a bad token,
//! an unknown session) leave its deadline alone; revocations from
//! `auth.revocation_file` close exactly the matching sockets with 1008 within a second
//! of the file's change and refuse their tokens; a broken file keeps the last good list,
//! and an element that is not an entry is skipped alone.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::eio::Ws;
use tests::http1;
use tests::live::{alive, closed_within, open, token};
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::tokens::{claims, hs256, now};

/// `POST <refresh_path>?sid=<sid>` with `token` as a bearer token.
async fn refresh(gw: &Gateway, sid: &str, token: &str) -> http1::Response {
    let auth = format!("Bearer {token}");
    let target = format!("/socket.io/refresh?sid={sid}");
    http1::request(gw.addr, "POST", &target, &[("Authorization", &auth)], b"").await
}

/// Writes the revocation file by rename, as an issuer would.
fn write_list(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, file).unwrap_or_else(|e| panic!("{e}"));
}

fn config(demo: &Demo, dir: &Path) -> GatewayConfig {
    let base = GatewayConfig::hs256(demo.addr);
    let auth = format!(
        "{}revocation_file = \"{}\"\n",
        base.auth,
        dir.join("revoked.json").display()
    );
    base.auth(&auth)
}

#[tokio::test]
async fn refreshes_keep_a_websocket_past_three_token_lifetimes() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    let (mut ws, sid) = open(gw.addr, &token("rae", 2, "r0")).await;
    let started = Instant::now();
    let mut n = 1;
    while started.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = refresh(&gw, &sid, &token("rae", 2, &format!("r{n}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["exp"].as_u64().is_some(), "{}", r.text());
        assert!(
            alive(&mut ws, n).await,
            "closed after {:?}: {:?}",
            started.elapsed(),
            ws.ended
        );
        n += 1;
    }
    // No more refreshes: closed at the last token's expiry, as ever.
    let how = closed_within(&mut ws, Duration::from_secs(4)).await;
    let how = how.unwrap_or_else(|| panic!("still open 4 s after the last refresh"));
    assert!(
        how.contains("Policy") && how.contains("token expired"),
        "{how}"
    );
}

#[tokio::test]
async fn refused_refreshes_leave_the_deadline_alone() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    let (mut ws, sid) = open(gw.addr, &token("sam", 3, "s0")).await;
    let opened = Instant::now();
    let other = refresh(&gw, &sid, &token("tom", 60, "t1")).await;
    assert_eq!(other.status, 403, "{}", other.text());
    assert_eq!(other.json()["error"], "session_mismatch");
    let mut bad = claims("sam");
    bad["exp"] = json!(now() + 60);
    let forged = format!("{}x", hs256(&bad));
    let bad = refresh(&gw, &sid, &forged).await;
    assert_eq!(bad.status, 401, "{}", bad.text());
    assert_eq!(bad.json()["error"], "invalid_signature");
    let (_, gone_sid) = {
        let (w, s) = open(gw.addr, &token("sam", 60, "s9")).await;
        drop(w);
        ((), s)
    };
    // The dropped socket leaves the registry once the gateway sees its end.
    let deadline = Instant::now() + Duration::from_secs(5);
    let unknown = loop {
        let r = refresh(&gw, &gone_sid, &token("sam", 60, "s1")).await;
        if r.status == 404 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(unknown.json(), json!({ "error": "unknown_session" }));
    let how = closed_within(&mut ws, Duration::from_secs(6)).await;
    let how = how.unwrap_or_else(|| panic!("the refused refreshes extended the socket"));
    assert!(how.contains("token expired"), "{how}");
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "closed late: {:?}",
        opened.elapsed()
    );
    let m = http1::get(gw.addr, "/socket.io/refresh?sid=x", &[]).await;
    assert_eq!(m.status, 405, "{}", m.text());
}

#[tokio::test]
async fn revocations_close_exactly_the_matching_sockets_within_a_second() {
    let demo = Demo::start("25s").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("revoked.json");
    let gw = Gateway::start(&config(&demo, dir.path())).await;
    let (mut a1, _) = open(gw.addr, &token("ann", 300, "a1")).await;
    let (mut a2, a2_sid) = open(gw.addr, &token("ann", 300, "a2")).await;
    let (mut bob, _) = open(gw.addr, &token("bob", 300, "b1")).await;
    // a2 is refreshed with a token whose jti is then revoked: its latest token counts.
    let r = refresh(&gw, &a2_sid, &token("ann", 300, "a2-new")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let written = Instant::now();
    write_list(&file, r#"[{"jti":"a1"}]"#);
    let how = closed_within(&mut a1, Duration::from_secs(2)).await;
    let took = written.elapsed();
    let how = how.unwrap_or_else(|| panic!("a1 still open"));
    assert!(
        how.contains("Policy") && how.contains("token revoked"),
        "{how}"
    );
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after the change"
    );
    assert!(alive(&mut a2, 1).await, "a2 closed: {:?}", a2.ended);
    assert!(alive(&mut bob, 2).await, "bob closed: {:?}", bob.ended);
    let refused = Ws::connect(gw.addr, &format!("token={}", token("ann", 300, "a1")), &[]).await;
    assert!(refused.is_err(), "a revoked token opened a WebSocket");

    let written = Instant::now();
    let list = format!(
        r#"[{{"jti":"a1"}},{{"jti":"a2-new"}},{{"user":"bob","issued_before":{}}}]"#,
        now() + 1
    );
    write_list(&file, &list);
    for ws in [&mut a2, &mut bob] {
        let how = closed_within(ws, Duration::from_secs(2)).await;
        assert!(
            how.as_deref().is_some_and(|h| h.contains("token revoked")),
            "{how:?}"
        );
    }
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "{:?}",
        written.elapsed()
    );
    // A token of bob's issued later is not revoked.
    let mut later = claims("bob");
    later["iat"] = json!(now() + 2);
    let (mut fresh, _) = open(gw.addr, &hs256(&later)).await;
    assert!(alive(&mut fresh, 3).await);
    let poll = http1::get(
        gw.addr,
        &format!(
            "/socket.io/?EIO=4&transport=polling&token={}",
            token("bob", 300, "b2")
        ),
        &[],
    )
    .await;
    assert_eq!(poll.status, 401, "{}", poll.text());
    assert_eq!(poll.json()["error"], "token_revoked");
    let metrics = gw.logs();
    assert!(metrics.contains("revocation list loaded"), "{metrics}");
}

#[tokio::test]
async fn a_broken_revocation_file_keeps_the_last_good_list() {
    let demo = Demo::start("25s").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("revoked.json");
    write_list(&file, r#"[{"jti":"gone"}]"#);
    let gw = Gateway::start(&config(&demo, dir.path())).await;
    let try_token = |jti: &'static str| {
        let addr = gw.addr;
        async move {
            let t = token("cy", 300, jti);
            let target = format!("/socket.io/?EIO=4&transport=polling&token={t}");
            http1::get(addr, &target, &[]).await.status
        }
    };
    assert_eq!(try_token("gone").await, 401);
    assert_eq!(try_token("kept").await, 200);
    write_list(&file, r#"[{"jti":"kept"}, {"jti": "#);
    gw.proc_
        .wait_for_line("revocation list not reloaded, keeping the last good list")
        .await;
    assert_eq!(
        try_token("gone").await,
        401,
        "the last good list was dropped"
    );
    assert_eq!(try_token("kept").await, 200);
    write_list(&file, r#"[{"jti":"kept"}]"#);
    let deadline = Instant::now() + Duration::from_secs(3);
    while try_token("kept").await != 401 {
        assert!(Instant::now() < deadline, "the fixed file was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(try_token("gone").await, 200);
    // An element that is not an entry (a number for a jti, a member of another
    // program's) is skipped alone: the entries after it still count.
    write_list(
        &file,
        r#"[{"jti": 5}, {"jti": "kept", "note": "x"}, {"jti": "gone"}]"#,
    );
    gw.proc_.wait_for_line("revocation entry ignored").await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while try_token("gone").await != 401 {
        assert!(
            Instant::now() < deadline,
            "the entry after a bad one was not read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        try_token("kept").await,
        200,
        "the bad element revoked nothing"
    );
}
