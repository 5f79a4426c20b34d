//! Engine.IO sessions the gateway has seen opened: which user each belongs to, and
//! with several upstream servers, which server it lives on (README "What the gateway
//! does to a request", 7 and 11).
//!
//! Every request of a session carries its `sid`, and any valid token passes the token
//! check, so the token alone would let one user read and write another's session. The
//! gateway therefore binds each `sid` to the user whose handshake opened it, learning
//! the `sid` from the server's open packet (`0{"sid":"…",…}`) as the handshake answer
//! passes through. That answer reaches the gateway before the client can send any
//! request with the `sid`, so the binding (and the server) is known from the session's
//! first request on. Consistent hashing alone would also move a session's requests when
//! a server comes back; the remembered server keeps them where the session lives.
//!
//! The map is bounded ([`SESSIONS`], least recently used first out). A `sid` it does
//! not know (evicted, or opened through another gateway process) is judged on its
//! token alone.

use http::HeaderValue;
use pingora::lb::Backend;

/// How many Engine.IO sessions the map remembers; the least recently used go first, so
/// a flood of handshakes costs a fixed amount of memory.
pub const SESSIONS: usize = 100_000;

/// What the gateway knows of one session.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The user whose handshake opened it; `None` when the gateway only learnt the
    /// session's server (a `sid` first seen on a later request).
    pub user: Option<HeaderValue>,
    /// The server it lives on, with several servers.
    pub server: Option<Backend>,
}

/// The known Engine.IO sessions.
pub struct Sessions {
    map: quick_cache::sync::Cache<Box<str>, Owner>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::with_capacity(SESSIONS)
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} known)", self.map.len())
    }
}

impl Sessions {
    /// A map remembering at most `capacity` sessions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// What is known of `sid`.
    pub fn get(&self, sid: &str) -> Option<Owner> {
        self.map.get(sid)
    }

    /// Whether a request of `sid` by `user` must be refused: the session was opened by
    /// another user.
    pub fn belongs_to_another(&self, sid: &str, user: &HeaderValue) -> bool {
        self.map
            .get(sid)
            .and_then(|o| o.user)
            .is_some_and(|owner| owner != user)
    }

    /// Records a session opened by `user`'s handshake (on `server`).
    pub fn opened(&self, sid: &str, user: HeaderValue, server: Option<Backend>) {
        self.map.insert(
            sid.into(),
            Owner {
                user: Some(user),
                server,
            },
        );
    }

    /// Records that `sid` now lives on `server`, keeping its user.
    pub fn moved(&self, sid: &str, server: Backend) {
        let user = self.map.get(sid).and_then(|o| o.user);
        self.map.insert(
            sid.into(),
            Owner {
                user,
                server: Some(server),
            },
        );
    }

    /// Sessions known now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Backend {
        Backend::new("127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sessions_are_bound_to_the_user_who_opened_them() {
        let s = Sessions::default();
        let alice = HeaderValue::from_static("alice");
        let mallory = HeaderValue::from_static("mallory");
        s.opened("s1", alice.clone(), None);
        assert!(!s.belongs_to_another("s1", &alice));
        assert!(s.belongs_to_another("s1", &mallory));
        // Unknown: judged on the token alone.
        assert!(!s.belongs_to_another("s2", &mallory));
        // Moving a session keeps its user; a session first seen later has none.
        s.moved("s1", server());
        assert!(s.belongs_to_another("s1", &mallory));
        assert_eq!(
            s.get("s1")
                .and_then(|o| o.server)
                .map(|b| b.addr.to_string()),
            Some("127.0.0.1:9".into())
        );
        s.moved("s3", server());
        assert!(!s.belongs_to_another("s3", &mallory));
    }
}
