//! What the gateway checks and rewrites in a request head before deciding it (docs/request-handling.md,
//! "What the gateway does to a request", 1): framings a server behind it could read
//! differently, client copies of the identity headers under any spelling, a
//! `Connection` header that would remove headers the gateway sets, and the target
//! split into path and query and joined again after rewriting.

use std::ops::Range;

use http::{HeaderName, header};
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::connection_options;
use crate::token::{self, TokenSource};

/// The path and the query (without `?`) of a request target.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// A request target from a path and a query (an empty query is left out).
pub fn join_target(path: &[u8], query: Option<&[u8]>) -> Vec<u8> {
    let mut t = Vec::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    t.extend_from_slice(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        t.push(b'?');
        t.extend_from_slice(q);
    }
    t
}

/// Replaces the request target with `target` (origin form). An HTTP/2 request names its
/// host only in `:authority`, which the new target drops; it goes upstream as HTTP/1.1,
/// which requires `Host` (RFC 9113 8.3.1, RFC 9112 3.2; Node's and nginx's servers
/// answer `400` without one), so the authority is kept as the `Host` header.
pub fn set_target(req: &mut RequestHeader, target: &[u8]) -> Result<()> {
    let authority = req
        .uri
        .authority()
        .filter(|_| !req.headers.contains_key(header::HOST))
        .map(|a| a.as_str().to_owned());
    req.set_raw_path(target)?;
    if let Some(host) = authority {
        req.insert_header(header::HOST, host)?;
    }
    Ok(())
}

/// Refuses message framings a server behind us could read differently (request
/// smuggling, RFC 9112 6.1 and 6.3), by the same rule as the heads the gateway reads
/// itself ([`crate::framing::framing_of`]): for HTTP/2 requests, whose heads Pingora
/// reads.
pub fn framing_problem(req: &RequestHeader) -> Option<&'static str> {
    crate::framing::map_framing(&req.headers)
        .err()
        .map(crate::framing::FramingError::reason)
}

/// A header-name byte as servers that fold names compare it: lower case, `_` as `-`.
fn fold_header_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// The names of the identity headers the gateway owns, lower-case with `-`, to catch
/// client copies under any spelling a server may fold into them (case, `_` for `-`).
#[derive(Debug)]
pub struct IdentityNames(Vec<Vec<u8>>);

impl IdentityNames {
    /// From the identity header names.
    pub fn new<'a>(names: impl Iterator<Item = &'a HeaderName>) -> Self {
        IdentityNames(names.map(|h| h.as_str().as_bytes().to_vec()).collect())
    }

    /// Whether `name` is a spelling of an identity header that some server reads as
    /// that header: any letter case, `_` for `-`.
    fn is_spelling(&self, name: &[u8]) -> bool {
        self.0.iter().any(|id| {
            id.len() == name.len() && id.iter().zip(name).all(|(a, b)| *a == fold_header_byte(*b))
        })
    }

    /// Removes every client copy of the identity headers, under every spelling.
    pub fn remove_copies(&self, req: &mut RequestHeader) {
        let copies: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| self.is_spelling(n.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in copies {
            req.remove_header(&name);
        }
    }

    /// A `Connection` header naming a header the gateway sets (the identity headers) or
    /// one that frames or routes the message: proxies strip what `Connection` names
    /// (RFC 9110 7.6.1), so honouring it would let a client delete them.
    pub fn connection_problem(&self, req: &RequestHeader) -> Option<&'static str> {
        for token in connection_options::of_map(&req.headers) {
            let framing = [&b"host"[..], b"content-length", b"transfer-encoding"]
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h));
            if framing || self.is_spelling(token) {
                return Some(
                    "the Connection header names a header the gateway sets or frames with",
                );
            }
        }
        None
    }
}

/// Removes every token a header or cookie carries (`auth.strip_token`), the verified one
/// and any other: the upstream must not find a token the gateway did not verify in a
/// place it might look (a `Bearer` credential, a token header or cookie). Tokens in the
/// query go with [`rewrite_query`].
pub fn strip_token_carriers(req: &mut RequestHeader, sources: &[TokenSource]) -> Result<()> {
    for source in sources {
        match source {
            TokenSource::Query(_) => {}
            TokenSource::Bearer => {
                let values = req.headers.get_all(header::AUTHORIZATION);
                let bearer =
                    |v: &http::HeaderValue| v.to_str().ok().and_then(token::bearer).is_some();
                if values.iter().any(bearer) {
                    let kept: Vec<http::HeaderValue> =
                        values.iter().filter(|v| !bearer(v)).cloned().collect();
                    req.remove_header(&header::AUTHORIZATION);
                    for v in kept {
                        req.append_header(header::AUTHORIZATION, v)?;
                    }
                }
            }
            TokenSource::Header(name) => {
                req.remove_header(name);
            }
            TokenSource::Cookie(name) => {
                if !token::cookies(&req.headers).any(|(n, _)| n == name) {
                    continue;
                }
                let kept = req
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| token::strip_cookie(v, name))
                    .collect::<Vec<_>>()
                    .join("; ");
                req.remove_header(&header::COOKIE);
                if !kept.is_empty() {
                    req.insert_header(header::COOKIE, kept)?;
                }
            }
        }
    }
    Ok(())
}

/// The query sent upstream: the pairs at `tokens` removed (each with one `&`), and the
/// `sid=` pair at `sid` replaced by `sid=<upstream's sid>`; every other byte kept, in
/// order.
pub fn rewrite_query(
    query: &[u8],
    tokens: &[Range<usize>],
    sid: Option<(Range<usize>, &[u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.len() + sid.as_ref().map_or(0, |(_, s)| s.len()));
    let mut start = 0;
    let mut first = true;
    for piece in query.split(|b| *b == b'&') {
        let range = start..start + piece.len();
        start += piece.len() + 1;
        if !range.is_empty() && tokens.contains(&range) {
            continue;
        }
        if !first {
            out.push(b'&');
        }
        first = false;
        match &sid {
            Some((at, upstream_sid)) if *at == range => {
                out.extend_from_slice(b"sid=");
                out.extend_from_slice(upstream_sid);
            }
            _ => out.extend_from_slice(piece),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_spellings_fold_case_and_underscore() {
        assert_eq!(fold_header_byte(b'_'), b'-');
        assert_eq!(fold_header_byte(b'X'), b'x');
        let names = IdentityNames::new([HeaderName::from_static("x-auth-user")].iter());
        assert!(names.is_spelling(b"X_Auth-USER"));
        assert!(!names.is_spelling(b"x-auth-users"));
    }

    #[test]
    fn targets_split_and_join() {
        assert_eq!(split_target(b"/a?b=1"), (&b"/a"[..], Some(&b"b=1"[..])));
        assert_eq!(split_target(b"/a"), (&b"/a"[..], None));
        assert_eq!(join_target(b"/a", Some(b"")), b"/a");
        assert_eq!(join_target(b"/a", Some(b"x=1")), b"/a?x=1");
    }

    #[test]
    fn the_query_loses_the_token_and_carries_the_upstream_sid_every_other_byte_kept() {
        let q = b"EIO=4&transport=polling&sid=SEALED&t=N%2Fx&token=abc";
        let sid = (24..34, &b"up1"[..]);
        assert_eq!(
            rewrite_query(q, std::slice::from_ref(&(43..52)), Some(sid.clone())),
            b"EIO=4&transport=polling&sid=up1&t=N%2Fx"
        );
        let q = b"token=abc&EIO=4&sid=SEALED&t=1";
        assert_eq!(
            rewrite_query(
                q,
                std::slice::from_ref(&(0..9)),
                Some((16..26, b"upstream-sid-x"))
            ),
            b"EIO=4&sid=upstream-sid-x&t=1"
        );
        assert_eq!(
            rewrite_query(b"a=1&token=x", std::slice::from_ref(&(4..11)), None),
            b"a=1"
        );
        assert_eq!(
            rewrite_query(
                b"token=a&x=1&access=b&token=c",
                &[0..7, 12..20, 21..28],
                None
            ),
            b"x=1"
        );
        assert_eq!(rewrite_query(b"sid=S", &[], Some((0..5, b"u"))), b"sid=u");
        // A token pair found by `query_pairs`, first, middle or last: every other byte kept.
        let q = b"EIO=4&token=abc&transport=polling&t=N%2Fx";
        let (range, _, _) = token::query_pairs(q)
            .nth(1)
            .unwrap_or_else(|| panic!("no second pair"));
        assert_eq!(
            rewrite_query(q, &[range], None),
            b"EIO=4&transport=polling&t=N%2Fx"
        );
        assert_eq!(
            rewrite_query(b"token=x", std::slice::from_ref(&(0..7)), None),
            b""
        );
        assert_eq!(
            rewrite_query(b"token=x&a=1", std::slice::from_ref(&(0..7)), None),
            b"a=1"
        );
    }
}
