//! socket.io JWT gateway: a Pingora reverse proxy that verifies the JWT of every
//! socket.io request (polling and the WebSocket upgrade), strips it, and tells the
//! upstream who the user is in a header.
//!
//! Module map, in the order a request meets them:
//!
//! - [`app`]: each accepted connection: its request heads read by the gateway, upgrades
//!   to [`tunnel`], everything else to Pingora's HTTP path ([`gateway::HttpPath`]).
//! - [`conn`]: a client connection with the bytes read ahead replayed.
//! - [`config`]: the TOML file, defaults, and validation that reports every problem.
//! - [`path`]: path normalization and the protected/public decision.
//! - [`token`]: finding the token in the query, a header or a cookie, and stripping it.
//! - [`keys`]: loading keys, pinning each to its algorithms, reloading `jwks_file`.
//! - [`verify`]: signature and claim checks, mapped to the SPEC's error codes.
//! - [`decision`]: what is decided about a request: forward it, or answer it.
//! - [`gateway`]: the decision ([`gateway::Gateway::authenticate`]) and the `ProxyHttp`
//!   implementation that carries plain HTTP requests.
//! - [`sessions`]: the Engine.IO sessions seen opened: their user, and their server.
//! - [`tunnel`]: upgrades carried by the gateway itself: head, upstream, relay, expiry.
//! - [`socketio`]: refusals spoken in socket.io's protocol (`reject_with = "socketio"`).
//! - [`assertion`]: the optional signed identity assertion and its JWK Set.
//! - [`metrics`]: the Prometheus series, resolved once, counted in `logging`.
//! - [`server`]: the Pingora server, built in code, with its background services.
//! - [`logging`]: `RUST_LOG` tracing with token redaction at the sink.
//! - [`memory`]: returning freed memory to the system after bursts.

pub mod app;
pub mod assertion;
pub mod config;
pub mod conn;
pub mod decision;
pub mod gateway;
pub mod keys;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod path;
pub mod server;
pub mod sessions;
pub mod socketio;
pub mod token;
pub mod tunnel;
pub mod verify;
