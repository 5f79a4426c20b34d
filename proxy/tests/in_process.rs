//! The in-process seam, [`proxy::serve`]: the gateway's HTTP/1 path on a listener bound
//! to port 0 in this process, in front of a tiny tokio upstream that records each
//! request head. A valid token is forwarded with the verified user in `x-auth-user`
//! (and without the token), a missing one is `401` before the upstream, and the
//! shutdown future stops it: `serve` returns and the port no longer accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proxy::config::load_settings;
use proxy::serve::in_process_gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &str = "an in-process test secret of forty bytes!";

/// Longest wait for any step.
const STEP: Duration = Duration::from_secs(10);

/// Answers `200 ok` to every request head, keeping each connection, and sends each head
/// it read to `heads`.
async fn upstream(listener: TcpListener, heads: mpsc::UnboundedSender<String>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let heads = heads.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = got.drain(..end + 4).collect();
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
    }
}

/// One request on its own connection (`Connection: close`): the whole answer.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let run = async {
        let mut s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(STEP, run)
        .await
        .unwrap_or_else(|_| panic!("no answer within {STEP:?}"))
}

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": sub, "exp": now + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn serve_forwards_a_valid_token_with_its_user_refuses_a_missing_one_and_stops() {
    let up = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let up_addr = up.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (heads_tx, mut heads) = mpsc::unbounded_channel();
    tokio::spawn(upstream(up, heads_tx));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("gateway.toml");
    // `listen` is required by the schema; `serve` uses the listener it is given.
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\nshutdown_grace = \"2s\"\n\n[upstream]\nservers = [\"{up_addr}\"]\n\n[auth]\nsecret_file = \"{}\"\nprotected_paths = [\"/api/\"]\nreject_with = \"http\"\n",
            secret.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = Arc::new(load_settings(&config).unwrap_or_else(|e| panic!("{e}")));
    let gateway = in_process_gateway(settings).unwrap_or_else(|e| panic!("{e}"));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy::serve(gateway, listener, async {
        let _ = stopped.await;
    }));

    let answer = exchange(
        addr,
        &format!(
            "GET /api/me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token("alice")
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let head = tokio::time::timeout(STEP, heads.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the upstream got no request"));
    let fields: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert!(fields.iter().any(|l| l == "x-auth-user: alice"), "{head}");
    assert!(
        !fields.iter().any(|l| l.starts_with("authorization:")),
        "{head}"
    );

    let answer = exchange(
        addr,
        "GET /api/me HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(
        heads.try_recv().is_err(),
        "a refused request reached the upstream"
    );

    let _ = stop.send(());
    tokio::time::timeout(STEP, served)
        .await
        .unwrap_or_else(|_| panic!("serve did not return after its shutdown"))
        .unwrap_or_else(|e| panic!("serve panicked: {e}"));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener still accepts after the shutdown"
    );
}
