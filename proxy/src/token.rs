//! Finding the token in a request (docs/request-handling.md)
//! and removing exactly it.
//!
//! The token comes from the first configured source that is present, and only from it:
//! an invalid token in the query is never "rescued" by a cookie. A source given twice
//! (two `token=` pairs, two cookies of that name) is refused as malformed, because the
//! gateway and the upstream could otherwise read different copies.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, header};

/// One `auth.token_sources` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `query:NAME`
    Query(String),
    /// `cookie:NAME`
    Cookie(String),
    /// `header:authorization`: the `Bearer` scheme only.
    Bearer,
    /// `header:NAME`: the raw value.
    Header(HeaderName),
}

impl TokenSource {
    /// Parses `kind:name`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, name) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not kind:name (query:, header: or cookie:)"))?;
        if name.is_empty() {
            return Err(format!("{text:?} has an empty name"));
        }
        match kind {
            "query" => Ok(TokenSource::Query(name.to_string())),
            "cookie" => Ok(TokenSource::Cookie(name.to_string())),
            "header" => {
                let h = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?;
                Ok(if h == header::AUTHORIZATION {
                    TokenSource::Bearer
                } else {
                    TokenSource::Header(h)
                })
            }
            other => Err(format!(
                "unknown source kind {other:?}; use query:, header: or cookie:"
            )),
        }
    }
}

/// Where the token was found, so that exactly it can be stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Byte range of the `name=value` pair inside the query string.
    Query(std::ops::Range<usize>),
    /// The cookie of this name.
    Cookie(String),
    /// The `Authorization` header.
    Authorization,
    /// This header.
    Header(HeaderName),
}

/// A token and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    /// The token text, percent-decoded when it came from the query.
    pub token: Cow<'a, str>,
    /// Where it was, for stripping.
    pub location: Location,
}

/// Why extraction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The first present source holds more than one token.
    #[error("the token was given more than once")]
    Duplicate,
    /// The token is not valid UTF-8 after decoding.
    #[error("the token is not valid text")]
    NotText,
}

/// Decodes a query component as Node's `querystring` does (`+` is a space).
fn query_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|b| *b == b'%' || *b == b'+') {
        return Cow::Borrowed(raw);
    }
    let plus: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    Cow::Owned(percent_encoding::percent_decode(&plus).collect())
}

/// Iterates `(range of pair, decoded name, raw value)` over a query string.
pub fn query_pairs(
    query: &[u8],
) -> impl Iterator<Item = (std::ops::Range<usize>, Cow<'_, [u8]>, &[u8])> {
    let mut start = 0;
    query
        .split(|b| *b == b'&')
        .map(move |pair| {
            let range = start..start + pair.len();
            start += pair.len() + 1;
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            (range, query_decode(name), value)
        })
        .filter(|(r, _, _)| !r.is_empty())
}

/// The `(name, value)` pairs of the `Cookie` headers (a quoted value unquoted).
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (n, v) = c.trim().split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            Some((n.trim(), v))
        })
}

pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Finds the token: the first source that is present, and only it.
pub fn extract<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    query: &'a [u8],
) -> Result<Option<Found<'a>>, ExtractError> {
    for source in sources {
        let mut found: Option<Found<'a>> = None;
        let mut put = |f: Found<'a>| {
            if found.is_some() {
                return Err(ExtractError::Duplicate);
            }
            found = Some(f);
            Ok(())
        };
        match source {
            TokenSource::Query(name) => {
                for (range, n, value) in query_pairs(query) {
                    if *n == *name.as_bytes() && !value.is_empty() {
                        let token = match query_decode(value) {
                            Cow::Borrowed(b) => Cow::Borrowed(
                                std::str::from_utf8(b).map_err(|_| ExtractError::NotText)?,
                            ),
                            Cow::Owned(b) => {
                                Cow::Owned(String::from_utf8(b).map_err(|_| ExtractError::NotText)?)
                            }
                        };
                        put(Found {
                            token,
                            location: Location::Query(range),
                        })?;
                    }
                }
            }
            TokenSource::Cookie(name) => {
                for (n, v) in cookies(headers) {
                    if n == name && !v.is_empty() {
                        put(Found {
                            token: Cow::Borrowed(v),
                            location: Location::Cookie(name.clone()),
                        })?;
                    }
                }
            }
            TokenSource::Bearer => {
                for v in headers.get_all(header::AUTHORIZATION) {
                    if let Some(t) = v.to_str().ok().and_then(bearer) {
                        put(Found {
                            token: Cow::Borrowed(t),
                            location: Location::Authorization,
                        })?;
                    }
                }
            }
            TokenSource::Header(h) => {
                for v in headers.get_all(h) {
                    let t = v.to_str().map_err(|_| ExtractError::NotText)?.trim();
                    if !t.is_empty() {
                        put(Found {
                            token: Cow::Borrowed(t),
                            location: Location::Header(h.clone()),
                        })?;
                    }
                }
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// A `Cookie` header value without the cookie `name`; `None` when nothing is left.
pub fn strip_cookie(value: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| c.split_once('=').is_none_or(|(n, _)| n.trim() != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<TokenSource> {
        ["query:token", "header:authorization", "cookie:io_token"]
            .iter()
            .filter_map(|s| TokenSource::parse(s).ok())
            .collect()
    }

    #[test]
    fn first_present_source_wins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer b.b.b"),
        );
        let f = extract(&sources(), &h, b"EIO=4&token=q.q.q").ok().flatten();
        assert_eq!(f.map(|f| f.token.into_owned()), Some("q.q.q".into()));
        let f = extract(&sources(), &h, b"EIO=4&token=").ok().flatten();
        assert_eq!(f.map(|f| f.token.into_owned()), Some("b.b.b".into()));
    }

    #[test]
    fn other_schemes_count_as_absent() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        h.insert(
            header::COOKIE,
            http::HeaderValue::from_static("a=1; io_token=c.c.c"),
        );
        let f = extract(&sources(), &h, b"").ok().flatten();
        assert_eq!(
            f.map(|f| f.location),
            Some(Location::Cookie("io_token".into()))
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let h = HeaderMap::new();
        assert_eq!(
            extract(&sources(), &h, b"token=a&token=b"),
            Err(ExtractError::Duplicate)
        );
    }

    #[test]
    fn strip_cookie_removes_only_that_cookie() {
        assert_eq!(
            strip_cookie("a=1; io_token=x; b=2", "io_token"),
            Some("a=1; b=2".into())
        );
        assert_eq!(strip_cookie("io_token=x", "io_token"), None);
    }
}
