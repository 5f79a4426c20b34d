//! Property tests of the parsers the security of the gateway rests on.
//!
//! Central property: for any request path, if the gateway would let it through without
//! a token (`Access::Open`), then the path it forwards (the normalized one) reaches
//! `/socket.io` neither in a plain-string-prefix router (socketioxide) nor in a router
//! that percent-decodes and resolves dot segments first (Node's engine.io).

use http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;
use proxy::path::{Access, PathPolicy, normalize};
use proxy::request::rewrite_query;
use proxy::token::{Location, TokenSource, extract, query_pairs, strip_cookie};

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
        Just("%".to_string()),
        Just("%3%36o".to_string()),
        Just("%%37%33ocket.io".to_string()),
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
        let stripped = String::from_utf8(rewrite_query(query.as_bytes(), &[range], None)).unwrap_or_default();
        let mut expected: Vec<String> = before;
        expected.extend(after);
        prop_assert_eq!(stripped, expected.join("&"), "query {}", query);
    }

    #[test]
    fn extraction_finds_the_token_in_whichever_source_holds_it(
        token in "[A-Za-z0-9_-]{1,20}\\.[A-Za-z0-9_-]{1,20}\\.[A-Za-z0-9_-]{0,20}",
        other_pairs in prop::collection::vec("[a-z]{1,5}=[a-zA-Z0-9]{0,5}", 0..4),
        other_cookies in prop::collection::vec("[a-z]{1,5}=[a-zA-Z0-9]{0,5}", 0..4),
        place in 0..3usize,
    ) {
        let sources = [
            TokenSource::Query("token".into()),
            TokenSource::Bearer,
            TokenSource::Cookie("io_token".into()),
        ];
        // Other names never collide with the token's.
        let others = |v: &Vec<String>| -> Vec<String> {
            v.iter().filter(|p| !p.starts_with("token=") && !p.starts_with("io_token=")).cloned().collect()
        };
        let mut pairs = others(&other_pairs);
        let mut cookies = others(&other_cookies);
        let mut headers = HeaderMap::new();
        match place {
            0 => pairs.insert(pairs.len() / 2, format!("token={token}")),
            1 => {
                let v = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|e| panic!("{e}"));
                headers.insert(header::AUTHORIZATION, v);
            }
            _ => cookies.insert(cookies.len() / 2, format!("io_token={token}")),
        }
        if !cookies.is_empty() {
            let v = HeaderValue::from_str(&cookies.join("; ")).unwrap_or_else(|e| panic!("{e}"));
            headers.insert(header::COOKIE, v);
        }
        let query = pairs.join("&");
        let found = extract(&sources, &headers, query.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no token in {query:?} / {headers:?}"));
        prop_assert_eq!(found.token.as_ref(), token.as_str());
        match (place, found.location) {
            (0, Location::Query(range)) => prop_assert_eq!(&query[range], format!("token={token}")),
            (1, Location::Authorization) => {}
            (2, Location::Cookie(name)) => {
                prop_assert_eq!(name.as_str(), "io_token");
                let kept = strip_cookie(&cookies.join("; "), &name);
                let expected = others(&other_cookies);
                prop_assert_eq!(kept, (!expected.is_empty()).then(|| expected.join("; ")));
            }
            (p, l) => prop_assert!(false, "placed in source {p}, found at {l:?}"),
        }
    }
}
