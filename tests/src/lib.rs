//! The shared test harness: starts the real `proxy` and `upstream-demo` binaries (and an
//! in-process recording upstream) on ephemeral 127.0.0.1 ports, waits for readiness,
//! mints tokens, speaks raw HTTP/1.1 and Engine.IO/socket.io, and stops every process
//! when its handle is dropped, even when a test fails.
//!
//! Module map:
//! - [`mod@bench`]: the systems under test of the benchmark tools.
//! - [`tls`]: a test CA (rcgen), its leaves as PEM files, and a TLS client.
//! - [`procs`]: locating the binaries, spawning them, capturing their logs.
//! - [`http1`]: a byte-exact HTTP/1.1 client (paths are sent exactly as written).
//! - [`recorder`]: an upstream that records what reached it.
//! - [`raw_upstream`]: a raw keep-alive HTTP/1.1 upstream recording every request it
//!   parses on a connection (the witness for smuggled requests), answering each with a
//!   fixed response or a scripted one.
//! - [`wire`]: echo answers, whole-connection reads, and the rules a forwarded request
//!   must follow (the framing and smuggling corpora).
//! - [`tokens`]: minting test tokens with the fixture keys.
//! - [`eio`]: Engine.IO v4 / socket.io v5 over polling and WebSocket.
//! - [`live`]: tokens with a `jti`, joined WebSocket sessions and how they close
//!   (refresh and revocation).

pub mod bench;
pub mod eio;
pub mod http1;
pub mod live;
pub mod procs;
pub mod raw_upstream;
pub mod recorder;
pub mod tls;
pub mod tokens;
pub mod wire;

/// The HS256 secret the tests run the gateway with (>= 32 bytes).
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

/// How long a readiness wait may take before the test fails with the process logs.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
