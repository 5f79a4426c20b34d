//! socket.io JWT gateway: a Pingora reverse proxy that verifies the JWT of every
//! socket.io request (polling and the WebSocket upgrade), strips it, and tells the
//! upstream who the user is in a header.
//!
//! Module map, in the order a request meets them:
//!
//! - [`config`]: the TOML file, defaults, and validation that reports every problem.
//! - [`path`]: path normalization and the protected/public decision.
//! - [`token`]: finding the token in the query, a header or a cookie, and stripping it.
//! - [`keys`]: loading keys, pinning each to its algorithms, reloading `jwks_file`.
//! - [`verify`]: signature and claim checks, mapped to the SPEC's error codes.
//! - [`gateway`]: the `ProxyHttp` implementation tying the above together.
//! - [`sessions`]: the Engine.IO sessions seen opened: their user, and their server.
//! - [`socketio`]: refusals spoken in socket.io's protocol (`reject_with = "socketio"`).
//! - [`assertion`]: the optional signed identity assertion and its JWK Set.
//! - [`metrics`]: the Prometheus series, resolved once, counted in `logging`.
//! - [`server`]: the Pingora server, built in code, with its background services.
//! - [`logging`]: `RUST_LOG` tracing with token redaction at the sink.
//! - [`memory`]: returning freed memory to the system after bursts.

pub mod assertion;
pub mod config;
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
pub mod verify;
