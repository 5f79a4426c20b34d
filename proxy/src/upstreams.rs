//! Where a request goes (docs/configuration.md, `[upstream]`): the one server, or with
//! several, the server an Engine.IO session lives on (sealed in its `sid`, docs/request-handling.md
//! "Engine.IO sessions") while it is healthy, else the healthy server its sticky key
//! hashes to (Ketama consistent hashing).

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::Consistent;

use crate::config::Sticky;

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
/// to the same server (docs/clusters.md).
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

    /// The server for a request: the only one, or with several the server its
    /// session lives on (while healthy), else the healthy one the sticky key hashes to;
    /// `None` when no server is healthy.
    pub fn pick(&self, session: Option<SocketAddr>, sticky: u64) -> Option<SocketAddr> {
        match self {
            Upstreams::One(addr) => Some(*addr),
            Upstreams::Many(lb) => {
                let backends = lb.backends();
                let known = session.and_then(|addr| {
                    backends
                        .get_backend()
                        .iter()
                        .find(|b| b.addr.as_inet() == Some(&addr))
                        .filter(|b| backends.ready(b))
                        .map(|_| addr)
                });
                let chosen = match known {
                    Some(addr) => addr,
                    None => *lb.select(&sticky.to_le_bytes(), 256)?.addr.as_inet()?,
                };
                tracing::debug!(sticky, backend = %chosen, "upstream chosen");
                Some(chosen)
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
