//! Heap held per open WebSocket tunnel, without timing: 1,000 socket.io WebSocket-only
//! sessions held through the gateway's own proxy service (Pingora's listener, [`App`],
//! the tunnel), in this process, under a global allocator that counts the live heap
//! bytes allocated by the gateway's threads; then closed by their clients, after which
//! the gateway must have given back what they held. The figures are exact and the
//! same within a few bytes on every run, unlike the soak's RSS (docs/performance.md).
//!
//! The bound, [`MAX_BYTES_PER_TUNNEL`] = 3.25 KiB: a held tunnel keeps about 3.2 KiB
//! (3,239 bytes per tunnel measured; 2,675 to 2,690 before the registry of open
//! WebSockets, whose entry, `Slot` and larger relay future take about 550 bytes,
//! docs/websockets.md "What revocation keeps"): its own task with the relay's state (about 650
//! bytes), the two sockets' tokio registrations (256 bytes each), the client connection
//! (`Conn` around Pingora's `Stream` with its digests, no buffers), the upstream
//! socket, the expiry timer and the log fields of its end. A tunnel left in the task
//! Pingora spawns for its connection also keeps that task's TLS handshake future
//! (about 9 KiB, see `proxy::tunnel::carry`) and fails this test, as does a copy or
//! write buffer kept per connection (Pingora's defaults: 64 KiB read, 1,460 bytes
//! write).
//!
//! [`App`]: proxy::app::App

// A `GlobalAlloc` has to be `unsafe`; this one only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use pingora::services::Service as _;
use proxy::config::load_settings;
use proxy::serve::in_process_gateway;
use proxy::server::{plain_listener, proxy_service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Tunnels held at once.
const TUNNELS: usize = 1000;

/// Tunnels opened (and held) before the count starts, so that what a gateway allocates
/// once (its worker threads' copy buffers, the verified token in the cache, tokio's
/// slabs) is not counted per tunnel.
const WARM_UP: usize = 50;

/// Most heap bytes the gateway may hold per open tunnel.
const MAX_BYTES_PER_TUNNEL: isize = 3 * 1024 + 256;

/// Most heap bytes the gateway may keep per tunnel once it closed (24 to 31 measured: timers
/// and structures that grew for the open ones and keep their capacity).
const MAX_BYTES_LEFT_PER_CLOSED: isize = 64;

thread_local! {
    /// Set on the gateway runtime's threads: what they allocate is counted.
    static GATEWAY_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Live heap bytes allocated on the gateway's threads (wherever they are freed).
static GATEWAY_LIVE: AtomicIsize = AtomicIsize::new(0);

/// Room before each allocation for the mark of who allocated it.
const PREFIX: usize = 16;

struct Counting;

fn with_prefix(layout: Layout) -> Option<(Layout, usize)> {
    let offset = layout.align().max(PREFIX);
    let full = Layout::from_size_align(layout.size().checked_add(offset)?, offset).ok()?;
    Some((full, offset))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((full, offset)) = with_prefix(layout) else {
            return std::ptr::null_mut();
        };
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            return base;
        }
        let counted = GATEWAY_THREAD.try_with(Cell::get).unwrap_or(false);
        if counted {
            GATEWAY_LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe {
            let ptr = base.add(offset);
            *ptr.sub(1) = u8::from(counted);
            ptr
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((full, offset)) = with_prefix(layout) else {
            return;
        };
        unsafe {
            if *ptr.sub(1) == 1 {
                GATEWAY_LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            }
            System.dealloc(ptr.sub(offset), full);
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SECRET: &str = "a held-tunnels test secret of forty bytes";

/// A socket.io server that accepts every WebSocket upgrade, answers `101` with an
/// Engine.IO open packet and then only reads until the gateway closes.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let head = match read_until_head_end(&mut s).await {
                Some(h) => h,
                None => return,
            };
            let key = String::from_utf8_lossy(&head)
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let open = br#"0{"sid":"AAAAAAAAAAAAAAAAAAAA","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&[0x81, open.len() as u8]);
            out.extend_from_slice(open);
            if s.write_all(&out).await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

/// Reads up to the end of an HTTP head; the bytes read.
async fn read_until_head_end(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(got)
}

/// Opens a WebSocket-only Engine.IO session through the gateway and reads its `101`
/// and open packet (with the sealed `sid`).
async fn open_session(gateway: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(gateway)
        .await
        .unwrap_or_else(|e| panic!("connect to the gateway: {e}"));
    let head = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={token} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write the upgrade: {e}"));
    let mut got = read_until_head_end(&mut s)
        .await
        .unwrap_or_else(|| panic!("no answer to the upgrade"));
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let head_len = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_default()
        + 4;
    // The open packet: one unmasked text frame with a 7-bit or 16-bit length.
    let mut buf = [0u8; 512];
    loop {
        let frame = &got[head_len..];
        let whole = match frame {
            [0x81, 126, a, b, rest @ ..] => rest.len() >= usize::from(u16::from_be_bytes([*a, *b])),
            [0x81, n, rest @ ..] => rest.len() >= usize::from(*n),
            _ => false,
        };
        if whole {
            assert!(
                frame.windows(7).any(|w| w == b"\"sid\":\""),
                "no open packet"
            );
            return s;
        }
        let n = s
            .read(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("read the open packet: {e}"));
        assert!(n > 0, "closed before the open packet");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Waits (bounded) until the gateway's live heap stops changing: what it allocated for
/// the sessions just opened is settled, whatever the order of its tasks.
async fn settled() -> isize {
    let mut last = GATEWAY_LIVE.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = GATEWAY_LIVE.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn a_thousand_held_tunnels_keep_at_most_three_and_a_quarter_kib_of_heap_each() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap_or_else(|e| panic!("{e}"));
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let listen = free.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(free);

    let test_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = test_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("{e}"));
    let up_addr = up.local_addr().unwrap_or_else(|e| panic!("{e}"));
    test_rt.spawn(upstream(up));

    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{listen}\"\nthreads = 2\n\n[upstream]\nservers = [\"{up_addr}\"]\n\n[auth]\nsecret_file = \"{}\"\nfailure_limit = 0\n",
            secret.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = Arc::new(load_settings(&config).unwrap_or_else(|e| panic!("{e}")));
    let gateway = in_process_gateway(settings.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut service = proxy_service(gateway.clone());
    service.add_listener(plain_listener(&listen.to_string()));

    // The gateway's runtime, as Pingora runs a service: two worker threads.
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| GATEWAY_THREAD.with(|g| g.set(true)))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    gateway_rt.spawn(async move { service.start_service(None, shutdown, 1).await });

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "held", "exp": now + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    test_rt.block_on(async {
        for _ in 0..100 {
            if TcpStream::connect(listen).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut warm = Vec::with_capacity(WARM_UP);
        for _ in 0..WARM_UP {
            warm.push(open_session(listen, &token).await);
        }
        let before = settled().await;
        let mut held = Vec::with_capacity(TUNNELS);
        for _ in 0..TUNNELS {
            held.push(open_session(listen, &token).await);
        }
        let after = settled().await;
        let open = gateway.metrics().websockets_open.get();
        assert_eq!(open, (WARM_UP + TUNNELS) as i64, "tunnels open");
        let per_tunnel = (after - before) / TUNNELS as isize;
        println!(
            "{TUNNELS} held tunnels: {} bytes of gateway heap, {per_tunnel} bytes per tunnel (bound {MAX_BYTES_PER_TUNNEL})",
            after - before
        );
        assert!(
            per_tunnel <= MAX_BYTES_PER_TUNNEL,
            "{per_tunnel} heap bytes held per open tunnel, more than {MAX_BYTES_PER_TUNNEL}"
        );
        // Closed by their clients, the tunnels give back what they held.
        drop(held);
        for _ in 0..200 {
            if gateway.metrics().websockets_open.get() == WARM_UP as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            gateway.metrics().websockets_open.get(),
            WARM_UP as i64,
            "tunnels still open after their clients closed"
        );
        let left = settled().await - before;
        println!("after they closed: {left} bytes more than before they opened");
        assert!(
            left / TUNNELS as isize <= MAX_BYTES_LEFT_PER_CLOSED,
            "{left} heap bytes kept after {TUNNELS} tunnels closed"
        );
        drop(warm);
    });
    gateway_rt.shutdown_background();
    test_rt.shutdown_background();
}
