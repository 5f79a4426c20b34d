//! What a trickled request head costs the gateway (docs/performance.md): the CPU time
//! of the gateway process (all threads, from `/proc/PID/task/*/schedstat`) for one head
//! sent at once and the same head written 150 bytes at a time, for a 60 KB head the
//! gateway forwards and a 1 MB head it refuses at its 64 KiB limit. Prints a table.
//!
//! `target/release/trickle` (bench/run trickle). Traffic stays on 127.0.0.1.

use std::time::Duration;

use tests::bench::cpu_ns;
use tests::procs::{Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tokens::valid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUNDS: u32 = 5;
const PIECE: usize = 150;

async fn send(addr: std::net::SocketAddr, head: &[u8], trickle: bool) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    if trickle {
        for piece in head.chunks(PIECE) {
            if s.write_all(piece).await.is_err() {
                break;
            }
        }
    } else {
        let _ = s.write_all(head).await;
    }
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::main]
async fn main() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr).rust_log("warn")).await;
    let pid = gw.proc_.pid();
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&token={}",
        valid("trickle")
    );
    println!("| head | sent | gateway CPU ms per request | answered |");
    println!("|---|---|---|---|");
    for (label, pad) in [("60 KB", 60_000usize), ("1 MB", 1_000_000)] {
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        );
        for trickle in [false, true] {
            up.clear();
            let before = cpu_ns(pid);
            for _ in 0..ROUNDS {
                send(gw.addr, head.as_bytes(), trickle).await;
            }
            let ms = (cpu_ns(pid) - before) as f64 / 1e6 / f64::from(ROUNDS);
            let how = if trickle {
                format!("{PIECE}-byte writes")
            } else {
                "at once".to_string()
            };
            println!(
                "| {label} | {how} | {ms:.2} | {} of {ROUNDS} forwarded |",
                up.seen().len()
            );
        }
    }
}
