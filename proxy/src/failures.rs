//! The failed-authentication limit (`auth.failure_limit`, docs/request-handling.md, "Hostile clients"):
//! failures are counted per client address, IPv6 by its /64 (one subscriber's
//! allocation), over a sliding second; past the limit the address is answered `429`
//! before its token is even looked at.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use pingora_limits::rate::{PROPORTIONAL_RATE_ESTIMATE_CALC_FN, Rate};

/// The window of the failed-authentication rate, in seconds.
const WINDOW_SECS: u64 = 1;

/// `Retry-After` of a `429`: two windows, after which an address that stopped failing
/// has a zero estimate again.
pub const RETRY_AFTER: &str = "2";
const _: () = assert!(2 * WINDOW_SECS == 2, "RETRY_AFTER is two windows");

/// Failed authentications per client address over the last second or two.
pub struct FailureLimit {
    rate: Rate,
    /// Failures per second an address may have (`auth.failure_limit`).
    per_second: f64,
}

impl std::fmt::Debug for FailureLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailureLimit({}/s)", self.per_second)
    }
}

impl FailureLimit {
    /// A limit of `per_second` failures; `None` when the limit is off (`0`).
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| FailureLimit {
            rate: Rate::new(Duration::from_secs(WINDOW_SECS)),
            per_second: f64::from(per_second),
        })
    }

    /// Whether this address failed more than the limit per second recently (the
    /// estimate spans the current and the previous second).
    pub fn exceeded(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| {
            self.rate
                .rate_with(&rate_key(ip), PROPORTIONAL_RATE_ESTIMATE_CALC_FN)
                > self.per_second
        })
    }

    /// Counts one failed authentication of this address.
    pub fn count(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            self.rate.observe(&rate_key(ip), 1);
        }
    }
}

/// The key of a client address: IPv4 as is (also when written IPv4-mapped), IPv6 by
/// its /64.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_a_failure_budget_per_64() {
        let key = |s: &str| rate_key(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn the_limit_is_off_at_zero() {
        assert!(FailureLimit::new(0).is_none());
        let limit = FailureLimit::new(1).unwrap_or_else(|| panic!("on"));
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!limit.exceeded(Some(ip)));
        for _ in 0..3 {
            limit.count(Some(ip));
        }
        assert!(limit.exceeded(Some(ip)));
        assert!(!limit.exceeded(None));
    }
}
