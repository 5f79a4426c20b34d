//! Prometheus metrics (docs/operations.md, "Metrics"), registered once at start-up in the default
//! registry that `metrics_listen` serves. Every labelled series is resolved here, so the
//! request path only increments atomics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::verify::ErrorCode;

/// What the request path counts.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `gateway_requests_total{outcome="allowed"}`
    pub allowed: IntCounter,
    /// `gateway_requests_total{outcome="rejected"}` (401s and unsafe paths answered 400)
    pub rejected: IntCounter,
    /// `gateway_requests_total{outcome="public"}`
    pub public: IntCounter,
    /// `gateway_requests_total{outcome="rate_limited"}` (429: `auth.failure_limit`)
    pub rate_limited: IntCounter,
    /// `gateway_auth_failures_total{reason}`, one per code, indexed by
    /// [`ErrorCode::index`]: every code has its own counter by construction.
    failures: [IntCounter; ErrorCode::ALL.len()],
    /// `gateway_upstream_errors_total`
    pub upstream_errors: IntCounter,
    /// `gateway_websockets_open`
    pub websockets_open: IntGauge,
    /// `gateway_verify_seconds`
    pub verify_seconds: Histogram,
    /// `gateway_websocket_expiry_closes_total`: tunnels closed at `exp + leeway`
    /// (`close_on_expiry`).
    pub expiry_closes: IntCounter,
    /// `gateway_refreshes_total{result}`: refreshes (docs/websockets.md, "Refresh and
    /// revocation") that moved a session's close, were refused for their token or
    /// user, or named no open session.
    pub refreshes: Refreshes,
    /// `gateway_revocations_applied_total{source}`: entries taken into force, from
    /// `auth.revocation_file` (all of its entries at each re-read) or the cluster's
    /// stream.
    pub revocations_file: IntCounter,
    /// The same, `source="cluster"`.
    pub revocations_cluster: IntCounter,
    /// `gateway_revocation_entries`: entries kept now (both sources).
    pub revocation_entries: IntGauge,
    /// `gateway_websocket_revocation_closes_total`: WebSockets closed because their
    /// token was revoked (each also counted in
    /// `gateway_auth_failures_total{reason="token_revoked"}`).
    pub revocation_closes: IntCounter,
    /// `gateway_cluster_connected`: 1 while the `[cluster]` Redis is reachable.
    pub cluster_connected: IntGauge,
}

/// `gateway_refreshes_total` by result.
#[derive(Debug, Clone)]
pub struct Refreshes {
    /// `result="extended"`
    pub extended: IntCounter,
    /// `result="rejected"`
    pub rejected: IntCounter,
    /// `result="unknown_session"`
    pub unknown_session: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("gateway_requests_total", "Requests by outcome."),
            &["outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "gateway_auth_failures_total",
                "Refused tokens by reason code.",
            ),
            &["reason"],
        )?;
        let upstream_errors = IntCounter::new(
            "gateway_upstream_errors_total",
            "Requests answered 502/504 because the upstream was unreachable.",
        )?;
        let websockets_open =
            IntGauge::new("gateway_websockets_open", "Upgraded connections open now.")?;
        let verify_seconds = Histogram::with_opts(
            HistogramOpts::new("gateway_verify_seconds", "Time to verify a token.").buckets(vec![
                0.000_001,
                0.000_002_5,
                0.000_005,
                0.000_01,
                0.000_025,
                0.000_05,
                0.000_1,
                0.000_25,
                0.000_5,
                0.001,
                0.005,
            ]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(websockets_open.clone()))?;
        let expiry_closes = IntCounter::new(
            "gateway_websocket_expiry_closes_total",
            "WebSockets closed by the gateway because their token expired.",
        )?;
        registry.register(Box::new(verify_seconds.clone()))?;
        registry.register(Box::new(expiry_closes.clone()))?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "gateway_refreshes_total",
                "Token refreshes of open sessions by result.",
            ),
            &["result"],
        )?;
        let applied = IntCounterVec::new(
            Opts::new(
                "gateway_revocations_applied_total",
                "Revocation entries taken into force, by source.",
            ),
            &["source"],
        )?;
        let revocation_entries = IntGauge::new(
            "gateway_revocation_entries",
            "Revocation entries kept in force now.",
        )?;
        let revocation_closes = IntCounter::new(
            "gateway_websocket_revocation_closes_total",
            "WebSockets closed by the gateway because their token was revoked.",
        )?;
        let cluster_connected = IntGauge::new(
            "gateway_cluster_connected",
            "1 while the [cluster] Redis is reachable, else 0.",
        )?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(revocation_entries.clone()))?;
        registry.register(Box::new(revocation_closes.clone()))?;
        registry.register(Box::new(cluster_connected.clone()))?;
        Ok(Metrics {
            refreshes: Refreshes {
                extended: refreshes.with_label_values(&["extended"]),
                rejected: refreshes.with_label_values(&["rejected"]),
                unknown_session: refreshes.with_label_values(&["unknown_session"]),
            },
            revocations_file: applied.with_label_values(&["file"]),
            revocations_cluster: applied.with_label_values(&["cluster"]),
            revocation_entries,
            revocation_closes,
            cluster_connected,
            allowed: requests.with_label_values(&["allowed"]),
            rejected: requests.with_label_values(&["rejected"]),
            public: requests.with_label_values(&["public"]),
            rate_limited: requests.with_label_values(&["rate_limited"]),
            failures: ErrorCode::ALL.map(|c| failures.with_label_values(&[c.as_str()])),
            upstream_errors,
            websockets_open,
            verify_seconds,
            expiry_closes,
        })
    }

    /// The failure counter of `code`.
    pub fn failure(&self, code: ErrorCode) -> &IntCounter {
        &self.failures[code.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_code_counts_under_its_own_label() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.failure(*code).inc();
            }
        }
        let families = registry.gather();
        let failures = families
            .iter()
            .find(|f| f.name() == "gateway_auth_failures_total")
            .unwrap_or_else(|| panic!("no gateway_auth_failures_total"));
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let series = failures
                .get_metric()
                .iter()
                .find(|s| s.get_label().iter().any(|l| l.value() == code.as_str()))
                .unwrap_or_else(|| panic!("no series for {}", code.as_str()));
            assert_eq!(
                series.get_counter().get_value(),
                (i + 1) as f64,
                "{}",
                code.as_str()
            );
        }
    }
}
