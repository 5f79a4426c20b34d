//! Token extraction from the query, the Authorization header and cookies, and token
//! stripping: never a panic, and stripping removes exactly the token's pair.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use proxy::request::rewrite_query;
use proxy::token::{Location, TokenSource, extract, query_pairs, strip_cookie};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let query = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(Ok(v)) = parts.next().map(HeaderValue::from_bytes) {
        headers.insert(header::AUTHORIZATION, v);
    }
    if let Some(Ok(v)) = parts.next().map(HeaderValue::from_bytes) {
        headers.insert(header::COOKIE, v);
    }
    let sources = [
        TokenSource::Query("token".into()),
        TokenSource::Bearer,
        TokenSource::Cookie("io_token".into()),
    ];
    let Ok(Some(found)) = extract(&sources, &headers, query) else {
        return;
    };
    assert!(!found.token.is_empty());
    match found.location {
        Location::Query(range) => {
            let stripped = rewrite_query(query, std::slice::from_ref(&range), None);
            let kept: Vec<&[u8]> = query_pairs(query)
                .filter(|(r, _, _)| *r != range)
                .map(|(r, _, _)| &query[r])
                .collect();
            let left: Vec<&[u8]> = query_pairs(&stripped).map(|(r, _, _)| &stripped[r]).collect();
            assert_eq!(kept, left, "stripping changed other pairs");
        }
        Location::Cookie(name) => {
            for v in headers.get_all(header::COOKIE) {
                if let Some(rest) = v.to_str().ok().and_then(|v| strip_cookie(v, &name)) {
                    let left = rest
                        .split(';')
                        .filter_map(|c| c.split_once('='))
                        .any(|(n, _)| n.trim() == name);
                    assert!(!left, "cookie {name} left in {rest:?}");
                }
            }
        }
        Location::Authorization | Location::Header(_) => {}
    }
});
