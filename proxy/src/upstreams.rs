//! Where a request goes (README "Configuration", `[upstream]`): the one server, or with
//! several, the server an Engine.IO session lives on while it is healthy, else the
//! healthy server its sticky key hashes to (Ketama consistent hashing).

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use pingora::lb::selection::Consistent;
use pingora::lb::{Backend, LoadBalancer};

use crate::config::Sticky;
use crate::engineio::Handshake;
use crate::sessions::Sessions;

/// The upstream servers.
#[derive(Clone)]
pub enum Upstreams {
    /// A single server.
    One(SocketAddr),
    /// Several servers; health-checked in a background service.
    Many(Arc<LoadBalancer<Consistent>>),
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstreams::One(a) => write!(f, "One({a})"),
            Upstreams::Many(lb) => {
                write!(f, "Many({} servers)", lb.backends().get_backend().len())
            }
        }
    }
}

/// The sticky key hashed with FNV-1a (64-bit) over exactly its bytes: a specified
/// function, unlike `std`'s `DefaultHasher`, whose algorithm may change between Rust
/// releases. Every gateway process, of any build, behind the same load balancer or
/// after a graceful upgrade, maps a key to the same point of the same Ketama ring, so
/// to the same server (README "Running in production at scale").
fn sticky_hash(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

impl Upstreams {
    /// Whether there is more than one server (a choice to make).
    pub fn several(&self) -> bool {
        matches!(self, Upstreams::Many(..))
    }

    /// The sticky hash of a request without a verified token: its client address.
    pub fn client_key(&self, client: Option<IpAddr>) -> u64 {
        if !self.several() {
            return 0;
        }
        match client {
            Some(IpAddr::V4(ip)) => sticky_hash(&ip.octets()),
            Some(IpAddr::V6(ip)) => sticky_hash(&ip.octets()),
            None => 0,
        }
    }

    /// The sticky hash of an authenticated request (`upstream.sticky`).
    pub fn sticky_key(
        &self,
        sticky: Sticky,
        token: &str,
        user: &HeaderValue,
        client: Option<IpAddr>,
    ) -> u64 {
        match (self.several(), sticky) {
            (false, _) => 0,
            (true, Sticky::Token) => sticky_hash(token.as_bytes()),
            (true, Sticky::User) => sticky_hash(user.as_bytes()),
            (true, Sticky::Ip) => self.client_key(client),
        }
    }

    /// The server for a request: the only one, or with several the server a known
    /// session lives on (while healthy), else the healthy one the sticky key hashes to
    /// (remembered for the `sid`, or for the handshake's answer); `None` when no
    /// server is healthy.
    pub fn pick(
        &self,
        sessions: &Sessions,
        sid: Option<&str>,
        sticky: u64,
        handshake: Option<&mut Handshake>,
    ) -> Option<(SocketAddr, Option<Backend>)> {
        match self {
            Upstreams::One(addr) => Some((*addr, None)),
            Upstreams::Many(lb) => {
                let known = sid
                    .and_then(|sid| sessions.get(sid)?.server)
                    .filter(|b| lb.backends().ready(b));
                let chosen = known.or_else(|| {
                    let b = lb.select(&sticky.to_le_bytes(), 256)?;
                    match (sid, handshake) {
                        (Some(sid), _) => sessions.moved(sid, b.clone()),
                        (None, Some(h)) => h.server = Some(b.clone()),
                        (None, None) => {}
                    }
                    Some(b)
                })?;
                tracing::debug!(sticky, backend = %chosen.addr, "upstream chosen");
                let addr = *chosen.addr.as_inet()?;
                Some((addr, Some(chosen)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_hash_is_fnv_1a_64() {
        // Reference values of the FNV-1a 64-bit function.
        assert_eq!(sticky_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(sticky_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(sticky_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
