//! Property tests of the parsers the security of the gateway rests on.
//!
//! Central property: for any request path, if the gateway would let it through without
//! a token (`Access::Open`), then the path it forwards (the normalized one) reaches
//! `/socket.io` neither in a plain-string-prefix router (socketioxide) nor in a router
//! that percent-decodes and resolves dot segments first (Node's engine.io).

use proptest::prelude::*;
use proxy::path::{Access, PathPolicy, normalize};
use proxy::token::{query_pairs, strip_query};

fn policy() -> PathPolicy {
    PathPolicy::new(&["/socket.io/".into()], &[]).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A router that decodes every escape (and `\` as `/`), then resolves dot segments
/// and collapses slashes, as URL parsers do.
fn decoded_router_path(path: &str) -> String {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Path pieces that matter for bypasses: the target name in many spellings, dot
/// segments, separators and their encodings, NUL.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("socket.io".to_string()),
        Just("Socket.IO".to_string()),
        Just("%73ocket.io".to_string()),
        Just("socket%2eio".to_string()),
        Just("SOCKET%2EIO".to_string()),
        Just("socket.iox".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2F".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("\\".to_string()),
        Just("%00".to_string()),
        Just("%25".to_string()),
        Just("/".to_string()),
        Just("//".to_string()),
        "[a-z]{1,3}".prop_map(|s| s),
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..8).prop_map(|parts| {
        let mut p = String::from("/");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 && !part.starts_with('/') {
                p.push('/');
            }
            p.push_str(part);
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn nothing_forwarded_without_a_token_reaches_socket_io(raw in request_path()) {
        let policy = policy();
        let Ok(normalized) = normalize(raw.as_bytes()) else { return Ok(()) };
        if let Ok(Access::Open) = policy.access(&normalized) {
            let forwarded = String::from_utf8_lossy(&normalized).into_owned();
            prop_assert!(
                !forwarded.to_ascii_lowercase().starts_with("/socket.io"),
                "plain-prefix router: {raw} -> {forwarded}"
            );
            let decoded = decoded_router_path(&forwarded);
            prop_assert!(
                !decoded.to_ascii_lowercase().starts_with("/socket.io"),
                "decoding router: {raw} -> {forwarded} -> {decoded}"
            );
        }
    }

    #[test]
    fn normalization_is_idempotent(raw in request_path()) {
        if let Ok(once) = normalize(raw.as_bytes()) {
            let twice = normalize(&once).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(once.as_ref(), twice.as_ref());
        }
    }

    #[test]
    fn stripping_removes_exactly_the_token_pair(
        before in prop::collection::vec("[a-zA-Z0-9%+=._~-]{0,8}", 0..4),
        token in "[A-Za-z0-9_.-]{1,40}",
        after in prop::collection::vec("[a-zA-Z0-9%+=._~-]{0,8}", 0..4),
    ) {
        // Other pairs never named `token` (that would be a second token).
        let keep = |v: &Vec<String>| -> Vec<String> {
            v.iter()
                .filter(|p| !query_pairs(p.as_bytes()).any(|(_, name, _)| *name == *b"token"))
                .cloned()
                .collect()
        };
        let (before, after) = (keep(&before), keep(&after));
        let mut pairs = before.clone();
        pairs.push(format!("token={token}"));
        pairs.extend(after.iter().cloned());
        let query = pairs.join("&");
        let range = query_pairs(query.as_bytes())
            .find(|(_, name, _)| **name == *b"token")
            .map(|(r, _, _)| r)
            .unwrap_or_else(|| panic!("no token pair in {query}"));
        let stripped = String::from_utf8(strip_query(query.as_bytes(), range)).unwrap_or_default();
        let mut expected: Vec<String> = before;
        expected.extend(after);
        prop_assert_eq!(stripped, expected.join("&"), "query {}", query);
    }
}
