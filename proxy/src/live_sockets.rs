//! The WebSockets open at this gateway, by Engine.IO session (docs/websockets.md,
//! "Refresh and revocation"): for each, its user and the `jti`/`iat` of the latest token
//! it was opened or refreshed with, and a handle that moves its close (a refresh: never
//! earlier) or closes it now (a revocation). The tunnel holds the other end
//! ([`Registration`]) and waits on it; nothing polls.
//!
//! One mutex over two maps; it is never held across an await, and every operation
//! under it is a few hash operations, except a revocation's scan of every socket (one
//! hash lookup each). An entry lives exactly as long as its tunnel: the
//! [`Registration`] removes it when dropped. At most [`MAX_SOCKETS`] are registered;
//! past that a WebSocket is still carried, closed at its first token's expiry, but
//! neither refreshed nor closed by a revocation (and a warning is logged).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::revocation::{Revocations, TokenFacts};

/// Most WebSockets registered at once (far above what a gateway holds).
pub const MAX_SOCKETS: usize = 4_000_000;

/// An Engine.IO session, named by a hash of the upstream's `sid` and its server, so
/// that every gateway derives the same name from a sealed `sid` and none is kept in
/// clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 16]);

impl SessionKey {
    /// The session of upstream `sid` on `server`.
    pub fn of(sid: &[u8], server: Option<SocketAddr>) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"socketio-jwt-gateway session\0");
        ctx.update(&(sid.len() as u64).to_be_bytes());
        ctx.update(sid);
        if let Some(server) = server {
            ctx.update(server.to_string().as_bytes());
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&ctx.finish().as_ref()[..16]);
        SessionKey(key)
    }

    /// Lower-case hex, for cluster keys and messages.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From [`SessionKey::hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(SessionKey(key))
    }
}

/// What a tunnel is told: close at this deadline (unix seconds, `None`: never), or
/// now because the token was revoked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Close at `exp + leeway` of the latest token (or never).
    Until(Option<f64>),
    /// The token was revoked: close now.
    Revoked,
}

/// What one tunnel is told, shared by the registry (which writes it) and the tunnel
/// (which waits on it). Two atomics and a `Notify` (about 60 bytes), rather than a
/// `watch` channel (about 500 bytes): it is held by every open WebSocket.
#[derive(Debug)]
pub struct Slot {
    /// `f64` bits of the deadline (unix seconds); NaN: none.
    deadline: AtomicU64,
    revoked: AtomicBool,
    /// Woken on every change; the one waiter is the tunnel (a permit is kept when it
    /// is not waiting, so no change is missed).
    changed: Notify,
}

impl Slot {
    fn new(deadline: Option<f64>) -> Self {
        Slot {
            deadline: AtomicU64::new(deadline.unwrap_or(f64::NAN).to_bits()),
            revoked: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// What the tunnel is told now.
    pub fn control(&self) -> Control {
        if self.revoked.load(Ordering::Acquire) {
            return Control::Revoked;
        }
        let d = f64::from_bits(self.deadline.load(Ordering::Acquire));
        Control::Until((!d.is_nan()).then_some(d))
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Moves the deadline to `new` when that is later (or takes it away); written
    /// under the registry's lock only, so read-then-write is not racy.
    fn extend(&self, new: Option<f64>) {
        let moved = match (self.control(), new) {
            (Control::Until(Some(old)), Some(new)) if new > old => Some(new),
            (Control::Until(Some(_)), None) => Some(f64::NAN),
            _ => None,
        };
        if let Some(d) = moved {
            self.deadline.store(d.to_bits(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Closes now; `false` when it already was revoked.
    fn revoke(&self) -> bool {
        let first = !self.revoked.swap(true, Ordering::AcqRel);
        if first {
            self.changed.notify_one();
        }
        first
    }
}

/// The token a WebSocket was opened (or last refreshed) with, for revocation.
#[derive(Debug, Clone)]
pub struct LiveToken {
    /// The session it belongs to (none for a WebSocket outside Engine.IO, or one whose
    /// session is only known from the open packet).
    pub session: Option<SessionKey>,
    /// The `user_header` value.
    pub user: http::HeaderValue,
    /// `jti`.
    pub jti: Option<Arc<str>>,
    /// `iat`.
    pub iat: Option<f64>,
}

impl LiveToken {
    /// What a revocation entry is matched against.
    pub fn facts(&self) -> TokenFacts<'_> {
        TokenFacts {
            user: self.user.as_bytes(),
            jti: self.jti.as_deref(),
            iat: self.iat,
        }
    }
}

#[derive(Debug)]
struct Socket {
    session: Option<SessionKey>,
    user: http::HeaderValue,
    jti: Option<Arc<str>>,
    iat: Option<f64>,
    control: Arc<Slot>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    sockets: HashMap<u64, Socket>,
    by_session: HashMap<SessionKey, Vec<u64>>,
    /// With `[cluster]`: sessions opened since the cluster last wrote their keys.
    fresh: Option<Vec<SessionKey>>,
}

/// Most sessions queued for the cluster at once; past it they wait for its sweep.
const MAX_FRESH: usize = 100_000;

/// The registry.
#[derive(Debug, Default)]
pub struct LiveSockets {
    inner: Mutex<Inner>,
    /// Wakes the cluster when a session opened.
    opened: tokio::sync::Notify,
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// No WebSocket of that session is open here.
    NotHere,
    /// Open here, but of another user: nothing changed.
    OtherUser,
    /// Every WebSocket of the session now closes at the later of its deadline and the
    /// new one.
    Moved,
    /// The refreshing token is revoked here: nothing changed (a refresh passed on by
    /// another gateway is judged again by the list of the one holding the socket).
    Revoked,
}

impl LiveSockets {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves the maps consistent (no operation is half
        // done across a call that can panic): go on with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an open WebSocket closing at `deadline`; `None` when the registry is
    /// full. The returned registration removes it when dropped.
    pub fn open(self: &Arc<Self>, token: LiveToken, deadline: Option<f64>) -> Option<Registration> {
        let slot = Arc::new(Slot::new(deadline));
        let mut inner = self.lock();
        if inner.sockets.len() >= MAX_SOCKETS {
            return None;
        }
        inner.next += 1;
        let id = inner.next;
        let mut fresh = false;
        if let Some(s) = token.session {
            let ids = inner.by_session.entry(s).or_default();
            ids.push(id);
            if ids.len() == 1
                && let Some(queue) = inner.fresh.as_mut().filter(|q| q.len() < MAX_FRESH)
            {
                queue.push(s);
                fresh = true;
            }
        }
        let socket = Socket {
            session: token.session,
            user: token.user,
            jti: token.jti,
            iat: token.iat,
            control: slot.clone(),
        };
        inner.sockets.insert(id, socket);
        drop(inner);
        if fresh {
            self.opened.notify_one();
        }
        Some(Registration {
            id,
            sockets: self.clone(),
            control: slot,
        })
    }

    /// Registers a tunnel that just opened: `token` from the decision, `session` from
    /// its open packet when the decision knew none. Logs when the registry is full.
    /// A token revoked while its upgrade waited for the upstream's `101` (after its
    /// decision, before this) is judged again here: the registration is revoked at once
    /// and `revoked_now` says so, for the count.
    pub fn register(
        self: &Arc<Self>,
        token: Option<LiveToken>,
        session: Option<SessionKey>,
        deadline: Option<f64>,
        revocations: &Revocations,
    ) -> (Option<Registration>, bool) {
        let Some(mut token) = token else {
            return (None, false);
        };
        if token.session.is_none() {
            token.session = session;
        }
        let revoked = revocations.matches(&token.facts());
        let registration = self.open(token, deadline);
        let revoked_now = revoked && registration.as_ref().is_some_and(|r| r.control.revoke());
        if registration.is_none() {
            tracing::warn!(
                max = MAX_SOCKETS,
                "too many open WebSockets to register: this one is neither refreshed nor revoked"
            );
        }
        (registration, revoked_now)
    }

    /// Whether a WebSocket of `session` is open here.
    pub fn is_open(&self, session: &SessionKey) -> bool {
        self.lock().by_session.contains_key(session)
    }

    /// A refresh of `session` by `token`, whose `exp + leeway` is `deadline`: every
    /// WebSocket of the session closes at the later of its deadline and this one, and
    /// takes the token's `jti`/`iat`.
    pub fn refresh(
        &self,
        session: &SessionKey,
        token: &LiveToken,
        deadline: Option<f64>,
        revocations: &Revocations,
    ) -> Refreshed {
        if revocations.matches(&token.facts()) {
            return Refreshed::Revoked;
        }
        let mut inner = self.lock();
        let Inner {
            sockets,
            by_session,
            ..
        } = &mut *inner;
        let Some(ids) = by_session.get(session) else {
            return Refreshed::NotHere;
        };
        let mine = |id: &u64| sockets.get(id).is_some_and(|s| s.user == token.user);
        if !ids.iter().all(mine) {
            return Refreshed::OtherUser;
        }
        for id in ids {
            let Some(socket) = sockets.get_mut(id) else {
                continue;
            };
            socket.jti.clone_from(&token.jti);
            socket.iat = token.iat;
            socket.control.extend(deadline);
        }
        Refreshed::Moved
    }

    /// Closes every open WebSocket whose latest token `revocations` match; returns how
    /// many.
    pub fn close_revoked(&self, revocations: &Revocations) -> usize {
        if revocations.is_empty() {
            return 0;
        }
        let inner = self.lock();
        let mut closed = 0;
        for socket in inner.sockets.values() {
            let facts = TokenFacts {
                user: socket.user.as_bytes(),
                jti: socket.jti.as_deref(),
                iat: socket.iat,
            };
            if socket.control.control() != Control::Revoked
                && revocations.matches(&facts)
                && socket.control.revoke()
            {
                closed += 1;
            }
        }
        closed
    }

    /// WebSockets registered now.
    pub fn len(&self) -> usize {
        self.lock().sockets.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From now on, queues every session that opens for the cluster
    /// ([`LiveSockets::take_fresh`]).
    pub fn queue_fresh_sessions(&self) {
        self.lock().fresh.get_or_insert_with(Vec::new);
    }

    /// The sessions opened since the last call, once [`LiveSockets::opened`] woke.
    pub fn take_fresh(&self) -> Vec<SessionKey> {
        self.lock()
            .fresh
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Notified when a session opened (with [`LiveSockets::queue_fresh_sessions`]).
    pub fn opened(&self) -> &tokio::sync::Notify {
        &self.opened
    }

    /// Sessions with a WebSocket open here, for the cluster's keys.
    pub fn sessions(&self) -> Vec<SessionKey> {
        self.lock().by_session.keys().copied().collect()
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        let Some(socket) = inner.sockets.remove(&id) else {
            return;
        };
        if let Some(session) = socket.session
            && let Some(ids) = inner.by_session.get_mut(&session)
        {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                inner.by_session.remove(&session);
            }
        }
        // Maps keep their capacity: give it back once most of it is unused, so that
        // a burst of sockets leaves nothing behind (amortized: at most one shrink per
        // halving).
        shrink(&mut inner.sockets);
        shrink(&mut inner.by_session);
    }
}

/// Shrinks a map to twice its length once it uses under a quarter of its capacity.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// One registered WebSocket, held by its tunnel: what it is told, and its removal
/// when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    sockets: Arc<LiveSockets>,
    /// The deadline or the revocation, as they change.
    pub control: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::Entry;

    fn token(session: Option<SessionKey>, user: &'static str, jti: &str) -> LiveToken {
        LiveToken {
            session,
            user: http::HeaderValue::from_static(user),
            jti: Some(jti.into()),
            iat: Some(100.0),
        }
    }

    fn open(live: &Arc<LiveSockets>, t: LiveToken, deadline: f64) -> Registration {
        live.open(t, Some(deadline))
            .unwrap_or_else(|| panic!("registry full"))
    }

    #[test]
    fn a_refresh_moves_the_deadline_of_every_socket_of_the_session_never_earlier() {
        let live = Arc::new(LiveSockets::default());
        let none = Revocations::new(None);
        let s = SessionKey::of(b"abc", None);
        let a = open(&live, token(Some(s), "alice", "j1"), 10.0);
        let b = open(&live, token(Some(s), "alice", "j1"), 12.0);
        let other = open(
            &live,
            token(Some(SessionKey::of(b"x", None)), "alice", "j1"),
            10.0,
        );
        assert_eq!(
            live.refresh(&s, &token(None, "alice", "j2"), Some(11.0), &none),
            Refreshed::Moved
        );
        assert_eq!(a.control.control(), Control::Until(Some(11.0)));
        assert_eq!(
            b.control.control(),
            Control::Until(Some(12.0)),
            "never earlier"
        );
        assert_eq!(other.control.control(), Control::Until(Some(10.0)));
        assert_eq!(
            live.refresh(&s, &token(None, "bob", "j3"), Some(50.0), &none),
            Refreshed::OtherUser
        );
        assert_eq!(a.control.control(), Control::Until(Some(11.0)));
        let gone = SessionKey::of(b"gone", None);
        assert_eq!(
            live.refresh(&gone, &token(None, "alice", "j2"), Some(50.0), &none),
            Refreshed::NotHere
        );
    }

    #[test]
    fn a_revocation_closes_exactly_the_matching_sockets_by_their_latest_token() {
        let live = Arc::new(LiveSockets::default());
        let none = Revocations::new(None);
        let s = SessionKey::of(b"abc", None);
        let a = open(&live, token(Some(s), "alice", "j1"), 10.0);
        let b = open(&live, token(None, "bob", "j9"), 10.0);
        live.refresh(&s, &token(None, "alice", "j2"), Some(20.0), &none);
        let r = Revocations::new(None);
        r.set_file(vec![Entry::Jti("j1".into())], 0.0);
        assert_eq!(live.close_revoked(&r), 0, "j1 was replaced by the refresh");
        r.set_file(vec![Entry::Jti("j2".into())], 0.0);
        assert_eq!(live.close_revoked(&r), 1);
        assert_eq!(a.control.control(), Control::Revoked);
        assert_eq!(b.control.control(), Control::Until(Some(10.0)));
        assert_eq!(live.close_revoked(&r), 0, "counted once");
    }

    #[test]
    fn a_revoked_token_neither_refreshes_nor_opens_a_live_socket() {
        let live = Arc::new(LiveSockets::default());
        let s = SessionKey::of(b"abc", None);
        let r = Revocations::new(None);
        r.set_file(vec![Entry::Jti("j2".into())], 0.0);
        let a = open(&live, token(Some(s), "alice", "j1"), 10.0);
        // A refresh passed on by another gateway, with a token revoked here.
        assert_eq!(
            live.refresh(&s, &token(None, "alice", "j2"), Some(50.0), &r),
            Refreshed::Revoked
        );
        assert_eq!(a.control.control(), Control::Until(Some(10.0)));
        // An upgrade whose token was revoked while it waited for its `101`.
        let (late, revoked_now) =
            live.register(Some(token(Some(s), "alice", "j2")), None, Some(50.0), &r);
        assert!(revoked_now);
        assert_eq!(late.map(|l| l.control.control()), Some(Control::Revoked));
        let (fine, revoked_now) =
            live.register(Some(token(Some(s), "alice", "j3")), None, Some(50.0), &r);
        assert!(!revoked_now);
        assert_eq!(
            fine.map(|l| l.control.control()),
            Some(Control::Until(Some(50.0)))
        );
    }

    #[test]
    fn a_closed_socket_leaves_the_registry() {
        let live = Arc::new(LiveSockets::default());
        let s = SessionKey::of(b"abc", None);
        let a = open(&live, token(Some(s), "alice", "j1"), 10.0);
        assert!(live.is_open(&s));
        drop(a);
        assert!(!live.is_open(&s));
        assert!(live.is_empty());
    }

    #[test]
    fn session_keys_round_trip_through_hex() {
        let s = SessionKey::of(b"abc", Some(SocketAddr::from(([127, 0, 0, 1], 80))));
        assert_eq!(SessionKey::from_hex(&s.hex()), Some(s));
        assert_ne!(s, SessionKey::of(b"abc", None));
    }
}
