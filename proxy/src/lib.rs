//! socket.io JWT gateway: a Pingora reverse proxy that verifies the JWT of every
//! socket.io request (polling and the WebSocket upgrade), strips it, and tells the
//! upstream who the user is in a header.
//!
//! Module map, in the order a request meets them:
//!
//! - [`app`]: each accepted connection: its request heads read by the gateway, upgrades
//!   to [`tunnel`], every other HTTP/1 request to [`exchange`], HTTP/2 connections to
//!   Pingora's HTTP/2 server, each stream to [`h2_stream`].
//! - [`certs`]: the gateway's own certificate (`[proxy.tls]`): checked, served, and
//!   swapped when its files change.
//! - [`conn`]: a client connection with the bytes read ahead replayed.
//! - [`connection_options`]: the tokens of a message's `Connection` header, read one way
//!   everywhere.
//! - [`config`]: the TOML file, defaults, and validation that reports every problem.
//! - [`exchange`]: one HTTP/1 request carried by the gateway: decided, answered or
//!   forwarded, its answer relayed, counted and logged once.
//! - [`h2_stream`]: one HTTP/2 request carried the same way: made an HTTP/1.1 head,
//!   decided, answered or forwarded, counted and logged once.
//! - [`forward`]: the forwarding step of both: the head written upstream, the body and
//!   the answer relayed, a handshake's answer sealed; [`h1_client`] and [`h2_client`]
//!   are its two client sides (how the body is read, how the answer is written).
//! - [`body`]: message bodies relayed by their framing (chunked bodies decoded and
//!   written again).
//! - [`response_head`]: the upstream's answer head, read strictly, written again for
//!   the client.
//! - [`pool`]: kept-alive upstream connections.
//! - [`request`]: framing and `Connection` checks, client identity copies, target
//!   rewriting, token stripping.
//! - [`path`]: path normalization and the protected/public decision.
//! - [`token`]: finding the token in the query, a header or a cookie, and stripping it.
//! - [`keys`]: loading keys, pinning each to its algorithms, reloading `jwks_file`.
//! - [`verify`]: signature and claim checks, mapped to the refusal codes
//!   ([`refusal`]); [`verifier`] caches tokens that verified.
//! - [`engineio`]: Engine.IO as the gateway reads it: the query's parameters (parsed
//!   once), request kinds, `sid`, the open packet of a handshake's answer.
//! - [`file_stamp`]: a file's version on disk, for the watchers that re-read files.
//! - [`failures`]: the failed-authentication limit per client address.
//! - [`decision`]: what is decided about a request (forward it, or answer it), and
//!   every answer the gateway writes itself.
//! - [`gateway`]: the decision, [`gateway::Gateway::authenticate`], step by step.
//! - [`sealed_sid`]: the Engine.IO `sid` the client holds: the upstream's own, its
//!   user and its server, sealed with the session key.
//! - [`upstreams`]: which server a request goes to (stickiness, health, sessions).
//! - [`upstream_tls`]: TLS to the upstreams, shared by tunnels and health checks.
//! - [`dial`]: connects to an upstream server: at most `upstream.max_connecting` in
//!   flight per server, retried, within one time budget.
//! - [`head`]: HTTP/1 heads read and written by the gateway (bounded in size and time,
//!   parsed once with `httparse`).
//! - [`framing`]: where a request message ends (its length, or its chunked body's end),
//!   so that [`conn`] hands readers one message at a time.
//! - [`tunnel`]: upgrades carried by the gateway itself: decision, upstream, `101`.
//! - [`open_frame`]: the first frame of a WebSocket-only session, read whole and
//!   written again with the sealed `sid`.
//! - [`relay`]: an open tunnel's bytes both ways, and the close at token expiry.
//! - [`live_sockets`]: the WebSockets open here by Engine.IO session, each with the
//!   handle a refresh moves and a revocation fires.
//! - [`refresh`]: the refresh endpoint (`auth.refresh_path`), answered by the gateway.
//! - [`revocation`]: revocation entries in force and the lookup every request makes;
//!   [`revocation_file`] re-reads `auth.revocation_file`.
//! - [`cluster`]: `[cluster]`: refreshes, revocations and open sessions shared through
//!   Redis.
//! - [`socketio`]: refusals spoken in socket.io's protocol (`reject_with = "socketio"`).
//! - [`assertion`]: the optional signed identity assertion and its JWK Set.
//! - [`metrics`]: the Prometheus series, resolved once, counted in `logging`.
//! - [`health`]: what `metrics_listen` serves: `/metrics`, `/healthz`, `/readyz`.
//! - [`mod@serve`]: the HTTP/1 path served in-process on a caller's listener until a
//!   shutdown future completes ([`serve()`]), for tests.
//! - [`server`]: the Pingora server, built in code, with its background services.
//! - [`logging`]: `RUST_LOG` tracing with token redaction at the sink.
//! - [`memory`]: returning freed memory to the system after bursts.

pub mod answers;
pub mod app;
pub mod assertion;
pub mod body;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod connection_options;
pub mod decision;
pub mod dial;
pub mod engineio;
pub mod exchange;
pub mod failures;
pub mod file_stamp;
pub mod forward;
pub mod framing;
pub mod gateway;
pub mod h1_client;
pub mod h2_client;
pub mod h2_stream;
pub mod head;
pub mod health;
pub mod keys;
pub mod live_sockets;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod open_frame;
pub mod path;
pub mod pool;
pub mod refresh;
pub mod refusal;
pub mod relay;
pub mod request;
pub mod response_head;
pub mod revocation;
pub mod revocation_file;
pub mod sealed_sid;
pub mod serve;
pub mod server;
pub mod socketio;
pub mod token;
pub mod tunnel;
pub mod upstream_tls;
pub mod upstreams;
pub mod verifier;
pub mod verify;

pub use serve::serve;
