//! Zero-downtime restarts: a new `proxy --upgrade` process takes over the listening
//! socket from the running one (SIGQUIT), which drains and exits, while polling
//! handshakes and WebSocket sessions keep flowing: nothing is refused, a WebSocket
//! opened before the handover keeps working while the old process drains, and the new
//! configuration is in force afterwards.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tests::SECRET;
use tests::eio::{Polling, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig, Proc, bin};
use tests::tokens::valid;

#[tokio::test]
async fn a_graceful_upgrade_to_a_new_config_refuses_nothing() {
    let demo = Demo::start("25s").await;
    let cfg1 = GatewayConfig::hs256(demo.addr).proxy("shutdown_grace = \"5s\"");
    let mut old = Gateway::start(&cfg1).await;
    let addr = old.addr;
    assert_eq!(
        http1::get(addr, "/extra/page", &[]).await.status,
        404,
        "not protected yet"
    );

    // A WebSocket open before the upgrade: the old process keeps carrying it while it
    // drains.
    let mut held = Ws::connect(addr, &format!("token={}", valid("vera")), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    held.open_and_join().await;

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let traffic = {
        let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
        tokio::spawn(async move {
            let token = valid("uma");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                attempts.fetch_add(1, Ordering::SeqCst);
                let outcome = if i % 4 == 0 {
                    match Ws::connect(addr, &format!("token={token}"), &[]).await {
                        Ok(mut ws) => {
                            match tokio::time::timeout(Duration::from_secs(5), ws.open_and_join())
                                .await
                            {
                                Ok(_) => Ok(()),
                                Err(_) => Err("websocket: no welcome".to_string()),
                            }
                        }
                        Err(e) => Err(format!("websocket: {e}")),
                    }
                } else {
                    Polling::handshake(addr, &format!("token={token}"), &[])
                        .await
                        .map(|_| ())
                        .map_err(|r| format!("polling: {} {}", r.status, r.text()))
                };
                if let Err(e) = outcome {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new configuration also protects /extra/.
    let cfg2 = cfg1.clone().auth(&format!(
        "{}\nprotected_paths = [\"/socket.io/\", \"/extra/\"]\n",
        cfg1.auth
    ));
    let file = old.dir.path().join("gateway-v2.toml");
    std::fs::write(&file, cfg2.render(addr)).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin("proxy"));
    cmd.arg("--config")
        .arg(&file)
        .arg("--upgrade")
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "info");
    let new = Proc::spawn("proxy (new)", cmd);
    new.wait_for_line("waiting for the running gateway's listening sockets")
        .await;
    old.proc_.signal(Signal::SIGQUIT);
    // Once the new process answers (the new config in force), the tunnel opened
    // before the handover still carries messages through the old, draining one.
    let handed_over = std::time::Instant::now();
    while http1::get(addr, "/extra/page", &[]).await.status != 401 {
        assert!(
            handed_over.elapsed() < Duration::from_secs(4),
            "the new process never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        held.echo(7, &serde_json::json!("across the handover"))
            .await,
        serde_json::json!("across the handover")
    );
    let status = old
        .proc_
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the old process did not exit:\n{}\nnew:\n{}",
                old.logs(),
                new.logs()
            )
        });
    assert!(status.success(), "old process: {status:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http1::get(addr, "/extra/page", &[]).await.status,
        401,
        "the new config is in force"
    );
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap_or_else(|e| panic!("{e}"));
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let n = attempts.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:?}\nnew:\n{}",
        failures.len(),
        new.logs()
    );
    assert!(n > 20, "too little traffic: {n}");
}
