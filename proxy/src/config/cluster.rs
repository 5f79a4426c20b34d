//! `[cluster]` (docs/clusters.md, docs/configuration.md): the Redis that gateways share
//! refreshes, revocations and which sessions are open through. Off when absent.

use serde::{Deserialize, Serialize};

use super::parse::Problems;

/// `[cluster]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`: every gateway of the cluster names the same Redis.
    pub redis_url: String,
    /// Put in front of every key, stream and channel the gateways use, so that one
    /// Redis can serve several clusters (and the demo's own keys).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "socketio-gateway:".into()
}

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The Redis client (not connected: the gateway connects at start and after each
    /// outage).
    pub client: redis::Client,
    /// `key_prefix`.
    pub key_prefix: String,
}

impl ClusterConfig {
    /// Checks `[cluster]`: a `redis://` URL the client understands.
    pub(super) fn validate(&self, v: &mut Problems<'_>) -> Option<ClusterSettings> {
        if !self.redis_url.starts_with("redis://") {
            v.push(
                "cluster.redis_url",
                format!("{:?} is not a redis://host:port[/db] URL", self.redis_url),
            );
            return None;
        }
        let client = match redis::Client::open(self.redis_url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                v.push("cluster.redis_url", format!("not a Redis URL: {e}"));
                return None;
            }
        };
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            v.push(
                "cluster.key_prefix",
                "must not contain spaces or control characters".into(),
            );
            return None;
        }
        Some(ClusterSettings {
            client,
            key_prefix: self.key_prefix.clone(),
        })
    }
}
