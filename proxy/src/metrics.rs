//! Prometheus metrics (SPEC item 12), registered once at start-up in the default
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
    /// `gateway_auth_failures_total{reason}`, in [`ErrorCode::ALL`] order.
    failures: Vec<IntCounter>,
    /// `gateway_upstream_errors_total`
    pub upstream_errors: IntCounter,
    /// `gateway_websockets_open`
    pub websockets_open: IntGauge,
    /// `gateway_verify_seconds`
    pub verify_seconds: Histogram,
    /// `gateway_websocket_expiry_closes_total`: tunnels closed at `exp + leeway`
    /// (`close_on_expiry`).
    pub expiry_closes: IntCounter,
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
        Ok(Metrics {
            allowed: requests.with_label_values(&["allowed"]),
            rejected: requests.with_label_values(&["rejected"]),
            public: requests.with_label_values(&["public"]),
            rate_limited: requests.with_label_values(&["rate_limited"]),
            failures: ErrorCode::ALL
                .iter()
                .map(|c| failures.with_label_values(&[c.as_str()]))
                .collect(),
            upstream_errors,
            websockets_open,
            verify_seconds,
            expiry_closes,
        })
    }

    /// The failure counter of `code`.
    pub fn failure(&self, code: ErrorCode) -> &IntCounter {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        &self.failures[i]
    }
}
