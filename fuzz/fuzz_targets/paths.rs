//! Path normalization and the protected/public decision: never a panic, normalization
//! is idempotent, and a path the gateway lets through without a token reaches
//! `/socket.io` neither as written nor after a router decodes and resolves it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxy::path::{Access, PathPolicy, normalize};

static POLICY: OnceLock<PathPolicy> = OnceLock::new();

fn reaches_socket_io(path: &[u8]) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == b"/socket.io" || lower.starts_with(b"/socket.io/")
}

/// What a router that decodes every escape and resolves dot segments would route on.
fn decoded(path: &[u8]) -> Vec<u8> {
    let bytes: Vec<u8> = percent_encoding::percent_decode(path)
        .map(|b| if b == b'\\' { b'/' } else { b })
        .collect();
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in bytes.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = Vec::new();
    for s in out {
        p.push(b'/');
        p.extend_from_slice(s);
    }
    if p.is_empty() {
        p.push(b'/');
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let policy = POLICY.get_or_init(|| {
        PathPolicy::new(
            &["/socket.io/".to_string()],
            &["/socket.io/socket.io.js".to_string()],
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    });
    let Ok(normalized) = normalize(data) else {
        return;
    };
    let again = normalize(&normalized).unwrap_or_else(|e| panic!("normalized path refused: {e}"));
    assert_eq!(*again, *normalized, "normalization is not idempotent");
    if let Ok(Access::Open) = policy.access(&normalized) {
        assert!(
            !reaches_socket_io(&normalized) && !reaches_socket_io(&decoded(&normalized)),
            "open path reaches /socket.io: {:?}",
            String::from_utf8_lossy(&normalized)
        );
    }
});
