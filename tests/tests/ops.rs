//! Operating the gateway: `--check`, bad configs at start-up, an upstream that goes
//! down and comes back, SIGTERM with an open WebSocket, and logs free of secrets.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use tests::SECRET;
use tests::eio::{Polling, Recv, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig, bin, fixture, free_addr, repo_root};
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256, valid};

fn check(file: &std::path::Path, secret: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(bin("proxy"));
    cmd.arg("--check")
        .arg("--config")
        .arg(file)
        .env_remove("JWT_SECRET");
    if let Some(s) = secret {
        cmd.env("JWT_SECRET", s);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run proxy --check: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_repository_config_and_reports_every_problem_of_a_bad_one() {
    let (code, out, err) = check(&repo_root().join("config.toml"), Some(SECRET));
    assert_eq!((code, out.as_str()), (0, "ok\n"), "stderr: {err}");

    let (code, out, err) = check(&repo_root().join("config.toml"), None);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("auth.secret_env (line")
            && err.contains("environment variable JWT_SECRET is not set"),
        "{err}"
    );

    let (code, _, err) = check(&repo_root().join("config.toml"), Some("short"));
    assert_eq!(code, 1);
    assert!(
        err.contains("is 5 bytes; at least 32 are required"),
        "{err}"
    );
    assert!(
        !err.contains("short"),
        "the secret itself is never printed: {err}"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cases: Vec<(String, Vec<&str>)> = vec![
        (
            "[proxy]\nlisten = \"localhost\"\nthreads = 0\nshutdown_grace = \"10s\"\n[upstream]\nservers = []\n[auth]\nalgorithms = [\"HS256\", \"none\", \"HS999\"]\ntoken_sources = [\"query:token\", \"body:token\"]\nuser_header = \"x auth\"\n".into(),
            vec![
                "proxy.listen (line 2)",
                "proxy.threads (line 3)",
                "upstream.servers (line 6)",
                "auth.algorithms (line 8): \"none\" is never accepted",
                "auth.algorithms (line 8): unknown algorithm \"HS999\"",
                "auth.token_sources[1] (line 9)",
                "auth.user_header (line 10)",
                "auth.secret_env (line 7): environment variable JWT_SECRET is not set",
            ],
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\nhealth_check = \"10\"\n".into(),
            vec!["upstream.health_check (line 5)", "a unit is required"],
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_backlog = 5\n[upstream]\nservers = [\"127.0.0.1:2\"]\n".into(),
            vec!["proxy.listen_backlog (line 3)", "unknown field"],
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"garbage.pem\"\n".into(),
            vec!["auth.public_key_file (line 7)"],
        ),
        (
            format!(
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nalgorithms = [\"HS256\", \"RS256\"]\npublic_key_file = \"{}\"\n",
                fixture("rsa.pub.pem").display()
            ),
            vec!["auth.public_key_file (line 7): an RSA key cannot verify HS256"],
        ),
        (
            format!(
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{}\"\n",
                fixture("ec384.pub.pem").display()
            ),
            vec!["auth.public_key_file (line 7): an EC P-384 key cannot verify ES256"],
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nsecret_env = \"JWT_SECRET\"\nsecret_file = \"nope.key\"\n".into(),
            vec!["auth.secret_env (line 6): exactly one key source", "auth.secret_file (line 7): exactly one key source"],
        ),
    ];
    cases.push((
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://idp/keys\"\n".into(),
        vec!["auth.jwks_url (line 7): \"ftp://idp/keys\" is not an http:// or https:// URL"],
    ));
    cases.push((
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nfailure_limit = -1\n".into(),
        vec!["auth.failure_limit (line 6)"],
    ));
    cases.push((
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nrequired_typ = \" \"\n[assertion]\nheader = \"x-auth-user\"\nkey_file = \"garbage.pem\"\naudience = \"\"\nttl = \"0s\"\njwks_path = \"jwks.json\"\n".into(),
        vec![
            "auth.required_typ (line 6): must not be empty",
            "assertion.header (line 8): x-auth-user is already auth.user_header",
            "assertion.key_file (line 9)",
            "expected an Ed25519 \"PRIVATE KEY\"",
            "assertion.audience (line 10)",
            "assertion.ttl (line 11)",
            "assertion.jwks_path (line 12)",
        ],
    ));
    for (text, expected) in cases {
        std::fs::write(&bad, &text).unwrap_or_else(|e| panic!("{e}"));
        let (code, out, err) = check(&bad, None);
        assert_eq!(code, 1, "{text}\n{err}");
        assert!(out.is_empty(), "{out}");
        for e in expected {
            assert!(err.contains(e), "missing {e:?} in:\n{err}");
        }
    }

    // Start-up with a bad config exits non-zero naming the problem.
    std::fs::write(
        &bad,
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin("proxy"))
        .arg("--config")
        .arg(&bad)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET is not set"));
}

#[test]
fn check_reports_a_mistyped_value_with_every_other_problem_and_names_a_missing_listen() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "[proxy]\nlisten = \"127.0.0.1:1\"\nthreads = \"two\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nleeway = \"forever\"\nsecret_env = \"GATEWAY_TEST_UNSET_VARIABLE\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = check(&file, None);
    assert_eq!(code, 1, "{err}");
    for expected in [
        "3 problems",
        "proxy.threads (line 3)",
        "auth.leeway (line 7): invalid duration \"forever\"",
        "auth.secret_env (line 8): environment variable GATEWAY_TEST_UNSET_VARIABLE is not set",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    std::fs::write(
        &file,
        "[proxy]\nthreads = 1\n[upstream]\nservers = [\"127.0.0.1:2\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = check(&file, Some(SECRET));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("proxy.listen (line 1): is required") && !err.contains("missing field"),
        "{err}"
    );
}

#[tokio::test]
async fn upstream_down_gives_502_json_and_recovers_when_it_comes_back() {
    let addr = free_addr();
    let gw = Gateway::start(&GatewayConfig::hs256(addr)).await;
    let token_target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}",
        valid("alice")
    );
    for target in ["/login", token_target.as_str()] {
        let resp = http1::get(gw.addr, target, &[]).await;
        assert_eq!(resp.status, 502, "{target}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["error"], "upstream_unavailable");
    }
    let up = Recorder::start_on(addr).await;
    let start = Instant::now();
    loop {
        let resp = http1::get(gw.addr, &token_target, &[]).await;
        if resp.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not recovered: {}",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.last().one("x-auth-user"), Some("alice"));
}

#[tokio::test]
async fn sigterm_lets_an_open_websocket_finish_within_the_grace_then_exits_zero() {
    let demo = Demo::start("25s").await;
    let cfg = GatewayConfig::hs256(demo.addr).proxy("shutdown_grace = \"3s\"");
    let mut gw = Gateway::start(&cfg).await;
    let mut ws = Ws::connect(gw.addr, &format!("token={}", valid("frank")), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.open_and_join().await;

    let t0 = Instant::now();
    gw.proc_.signal(Signal::SIGTERM);
    // New connections are refused quickly...
    loop {
        if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the open WebSocket keeps working.
    assert_eq!(ws.echo(1, &json!("still here")).await, json!("still here"));
    let status = gw
        .proc_
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("did not exit; logs:\n{}", gw.logs()));
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "exited after {took:?}, before the grace ended"
    );
    assert!(took < Duration::from_secs(6), "exited after {took:?}");
    let closed = tokio::time::timeout(Duration::from_secs(2), ws.recv()).await;
    assert_eq!(closed.ok(), Some(Recv::Closed));
}

#[tokio::test]
async fn sigterm_with_nothing_open_exits_at_once() {
    let up = Recorder::start().await;
    let mut gw =
        Gateway::start(&GatewayConfig::hs256(up.addr).proxy("shutdown_grace = \"10s\"")).await;
    assert_eq!(http1::get(gw.addr, "/", &[]).await.status, 200);
    let t0 = Instant::now();
    gw.proc_.signal(Signal::SIGTERM);
    let status = gw.proc_.wait_exit(Duration::from_secs(12)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn no_token_secret_or_credential_in_the_logs_at_debug() {
    let demo = Demo::start("25s").await;
    let cfg = GatewayConfig::hs256(demo.addr).rust_log("trace");
    let cfg = cfg.clone().auth(&format!(
        "{}\ntoken_sources = [\"query:token\", \"header:authorization\", \"cookie:io_token\"]\n",
        cfg.auth
    ));
    let gw = Gateway::start(&cfg).await;
    let good = valid("grace");
    let mut expired_claims = claims("grace");
    expired_claims["exp"] = json!(1);
    let expired = hs256(&expired_claims);
    let garbage = "garbage-token-value-123";
    let session_cookie = "sessionid-abcdef-987654";

    let s = Polling::handshake(gw.addr, &format!("token={good}"), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status));
    s.join().await;
    let mut ws = Ws::upgrade(gw.addr, &s).await;
    ws.echo(1, &json!(1)).await;
    for (target, headers) in [
        (
            format!("/socket.io/?EIO=4&transport=polling&token={expired}"),
            vec![],
        ),
        (
            format!("/socket.io/?EIO=4&transport=polling&token={garbage}"),
            vec![],
        ),
        (
            "/socket.io/?EIO=4&transport=polling".to_string(),
            vec![("Authorization".to_string(), format!("Bearer {good}"))],
        ),
        (
            "/socket.io/?EIO=4&transport=polling".to_string(),
            vec![("Authorization".to_string(), format!("Bearer {garbage}"))],
        ),
        (
            "/socket.io/?EIO=4&transport=polling".to_string(),
            vec![(
                "Cookie".to_string(),
                format!("sid={session_cookie}; io_token={expired}"),
            )],
        ),
        (
            "/login".to_string(),
            vec![
                ("Cookie".to_string(), format!("sid={session_cookie}")),
                ("Authorization".to_string(), format!("Bearer {good}")),
            ],
        ),
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        http1::get(gw.addr, &target, &h).await;
    }
    // Wait for the last request's log line, then look at everything.
    let start = Instant::now();
    while gw.logs().matches("rejected").count() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "rejections not logged:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    // Verbose: the gateway's own debug lines (Pingora's targets, which dump requests
    // and bodies below info, are held at info whatever RUST_LOG says).
    assert!(logs.contains("DEBUG"), "the check needs verbose logs");
    assert!(
        logs.contains("reason=\"token_expired\"") || logs.contains("reason=token_expired"),
        "{logs}"
    );
    for secret in [
        good.as_str(),
        expired.as_str(),
        garbage,
        session_cookie,
        SECRET,
    ] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("{secret} appears in the logs: {line}");
        }
        // Not even a recognisable piece of a token.
        if secret.len() > 40 {
            assert!(
                !logs.contains(&secret[secret.len() - 30..]),
                "a piece of a token appears in the logs"
            );
        }
    }
}
