//! Path normalization and the protected/public decision (docs/request-handling.md,
//! "What the gateway does to a request", step 2).
//!
//! Matching works on the normalized path, and the upstream receives that same path, so a
//! client cannot make the gateway and the upstream disagree on what was requested:
//! unreserved percent-escapes are decoded (`%73` -> `s`), `.`/`..` segments resolved,
//! repeated slashes collapsed. An encoded `/`, `\` or NUL that would decode into a
//! protected path is refused outright, because routers differ on whether they decode it.

use std::borrow::Cow;

/// A configured path list that can not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A path that does not start with `/`.
    #[error("{path:?} must start with a slash")]
    NotAbsolute {
        /// `protected_paths` or `public_paths`.
        list: &'static str,
        /// Its position in the list.
        index: usize,
        /// The path as written.
        path: String,
    },
}

impl PolicyError {
    /// The config key the problem is about, e.g. `auth.public_paths[1]`.
    pub fn key(&self) -> String {
        match self {
            PolicyError::NotAbsolute { list, index, .. } => format!("auth.{list}[{index}]"),
        }
    }
}

/// Why a path was refused with `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The request target is not an origin-form path.
    #[error("the request path must start with a slash")]
    NotAbsolute,
    /// An encoded separator or NUL hides a protected path.
    #[error("the request path hides a protected path behind an encoded separator")]
    Ambiguous,
    /// A `%` not followed by two hex digits (RFC 3986 2.1). Kept as it is, it could
    /// combine with decoded characters into a new escape that the upstream decodes again
    /// (`/%%37%33ocket.io/` would become `/%73ocket.io/`).
    #[error("the request path has an invalid percent-escape")]
    BadEscape,
    /// An encoded NUL (`%00`) anywhere in the path: no legitimate path has one, and
    /// upstreams written in C-like languages may cut the path there.
    #[error("the request path has an encoded NUL (%00)")]
    EncodedNul,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` escapes: only unreserved characters when `all` is false, every escape
/// when it is true (then `\` also becomes `/`, as WHATWG URL parsers read it).
fn decode(path: &[u8], all: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                let c = h * 16 + l;
                if all || is_unreserved(c) {
                    out.push(if all && c == b'\\' { b'/' } else { c });
                    i += 3;
                    continue;
                }
            }
        }
        out.push(if all && b == b'\\' { b'/' } else { b });
        i += 1;
    }
    out
}

/// Resolves `.` and `..` segments and collapses repeated slashes. `path` starts with `/`.
fn resolve(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in path.split(|b| *b == b'/').skip(1) {
        trailing = false;
        match seg {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || segments.is_empty() {
        out.push(b'/');
    }
    out
}

/// Whether `path` needs any normalization work at all (the common case does not).
fn is_plain(path: &[u8]) -> bool {
    !path.contains(&b'%')
        && !path.contains(&b'\\')
        && !path.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// Normalizes a raw path (without the query).
pub fn normalize(raw: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let bad_escape = raw.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(raw.get(i + 1).copied().and_then(hex).is_some()
                && raw.get(i + 2).copied().and_then(hex).is_some())
    });
    if bad_escape {
        return Err(PathError::BadEscape);
    }
    if raw.windows(3).any(|w| w == b"%00") {
        return Err(PathError::EncodedNul);
    }
    Ok(Cow::Owned(resolve(&decode(raw, false))))
}

/// Whether a normalized path still carries something routers may decode differently.
fn has_hidden_separator(path: &[u8]) -> bool {
    path.contains(&b'\\')
        || path.windows(3).any(|w| {
            w[0] == b'%'
                && matches!(
                    (w[1], w[2].to_ascii_uppercase()),
                    (b'2', b'F') | (b'5', b'C') | (b'0', b'0')
                )
        })
}

/// The configured protected prefixes and public exact paths.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    /// Lower-cased prefixes without their trailing slash.
    protected: Vec<Vec<u8>>,
    /// Normalized exact paths.
    public: Vec<Vec<u8>>,
}

/// What a request path is, for authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Outside every protected prefix.
    Open,
    /// Inside a protected prefix: needs a valid token (unless public, see [`PathPolicy::is_public`]).
    Protected,
}

impl PathPolicy {
    /// Builds the policy; the error names the offending key.
    pub fn new(protected: &[String], public: &[String]) -> Result<Self, PolicyError> {
        let mut p = Vec::new();
        for (i, s) in protected.iter().enumerate() {
            if !s.starts_with('/') {
                return Err(PolicyError::NotAbsolute {
                    list: "protected_paths",
                    index: i,
                    path: s.clone(),
                });
            }
            let norm = resolve(&decode(s.as_bytes(), false));
            let mut lower = norm.to_ascii_lowercase();
            while lower.last() == Some(&b'/') {
                lower.pop();
            }
            p.push(lower);
        }
        let mut q = Vec::new();
        for (i, s) in public.iter().enumerate() {
            if !s.starts_with('/') {
                return Err(PolicyError::NotAbsolute {
                    list: "public_paths",
                    index: i,
                    path: s.clone(),
                });
            }
            q.push(resolve(&decode(s.as_bytes(), false)));
        }
        Ok(PathPolicy {
            protected: p,
            public: q,
        })
    }

    fn covers(&self, path: &[u8]) -> bool {
        self.protected
            .iter()
            .any(|p| path.len() >= p.len() && path[..p.len()].eq_ignore_ascii_case(p))
    }

    /// Classifies a normalized path; refuses one that hides a protected path behind an
    /// encoded separator.
    pub fn access(&self, normalized: &[u8]) -> Result<Access, PathError> {
        if self.covers(normalized) {
            return Ok(Access::Protected);
        }
        if has_hidden_separator(normalized) {
            let decoded = decode(normalized, true);
            if decoded.contains(&0) || self.covers(&resolve(&decoded)) {
                return Err(PathError::Ambiguous);
            }
        }
        Ok(Access::Open)
    }

    /// Whether a normalized path is one of the exact public paths.
    pub fn is_public(&self, normalized: &[u8]) -> bool {
        self.public.iter().any(|p| p == normalized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        String::from_utf8_lossy(&normalize(s.as_bytes()).unwrap_or_default()).into_owned()
    }

    #[test]
    fn normalizes_like_rfc3986() {
        assert_eq!(norm("/socket.io/"), "/socket.io/");
        assert_eq!(norm("//socket.io/"), "/socket.io/");
        assert_eq!(norm("/./socket.io/"), "/socket.io/");
        assert_eq!(norm("/x/../socket.io/"), "/socket.io/");
        assert_eq!(norm("/../../socket.io"), "/socket.io");
        assert_eq!(norm("/%73ocket.io/"), "/socket.io/");
        assert_eq!(norm("/%2e%2E/socket.io/."), "/socket.io/");
        assert_eq!(norm("/a%2Fb"), "/a%2Fb");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/a/.."), "/");
        assert!(normalize(b"socket.io").is_err());
    }

    #[test]
    fn prefix_match_is_plain_and_case_insensitive() {
        let p = PathPolicy::new(&["/socket.io/".into()], &[]).unwrap_or_else(|e| panic!("{e:?}"));
        for path in [
            "/socket.io",
            "/socket.io/",
            "/Socket.IO/x",
            "/socket.iox",
            "/socket.io.js",
        ] {
            assert_eq!(p.access(path.as_bytes()), Ok(Access::Protected), "{path}");
        }
        for path in ["/", "/login", "/socket", "/sock"] {
            assert_eq!(p.access(path.as_bytes()), Ok(Access::Open), "{path}");
        }
    }

    #[test]
    fn encoded_separators_hiding_a_protected_path_are_refused() {
        let p = PathPolicy::new(&["/socket.io/".into()], &[]).unwrap_or_else(|e| panic!("{e:?}"));
        for raw in [
            "/%2Fsocket.io/",
            "/x%2F..%2Fsocket.io",
            "/%5Csocket.io",
            "/\\socket.io/",
        ] {
            let n = normalize(raw.as_bytes()).unwrap_or_default();
            assert_eq!(p.access(&n), Err(PathError::Ambiguous), "{raw}");
        }
        let n = normalize(b"/files/a%2Fb").unwrap_or_default();
        assert_eq!(p.access(&n), Ok(Access::Open));
    }

    #[test]
    fn invalid_escapes_are_refused() {
        // Found by the `paths` fuzz target: `/%/%3%36o/` normalized to `/%/%36o/`, which
        // normalizes again to `/%/6o/`: a lone `%` plus decoded digits made a new escape.
        for raw in [
            "/%/%3%36o/",
            "/%%37%33ocket.io/",
            "/a%",
            "/a%2",
            "/a%zz",
            "/%%",
        ] {
            assert_eq!(
                normalize(raw.as_bytes()),
                Err(PathError::BadEscape),
                "{raw}"
            );
        }
        assert_eq!(norm("/a%25b"), "/a%25b");
    }
}
