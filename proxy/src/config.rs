//! The TOML configuration file (docs/configuration.md), one module per section, each
//! holding that section's schema (the serde structs), its defaults (the `default_*`
//! functions and `Default` impls serde uses, which the table in docs/configuration.md
//! and config.toml are checked against), its checks and its runtime settings:
//! `[proxy]` and `[proxy.tls]` in `proxy.rs`, `[upstream]` in `upstream.rs`, `[auth]`
//! in `auth.rs` with its key sources in `key_source.rs`, `[assertion]` in
//! `assertion.rs`, `[cluster]` in `cluster.rs`. `[demo]` belongs to upstream-demo and is not read here.
//!
//! This module holds what ties them together. Parsing ([`Config::parse`], in
//! `parse.rs`) turns the text into the structs; unknown keys and bad types are
//! reported with the key path and line. Validation ([`Config::validate`]) asks each
//! section to check everything it refers to (environment variables, key files, secret
//! lengths, algorithm names) and builds the runtime [`Settings`]. Both report *every*
//! problem at once, each prefixed with its key path, so that `proxy --check` and
//! start-up give the same answer ([`load_settings`]). Everything is parsed, resolved
//! and lower-cased once, at start-up, so the request path does no such work.

mod assertion;
mod auth;
mod cluster;
mod key_source;
mod parse;
mod proxy;
mod upstream;
mod values;

pub use assertion::AssertionConfig;
pub use auth::{AuthConfig, AuthSettings, RejectWith};
pub use cluster::{ClusterConfig, ClusterSettings};
pub use parse::{ConfigErrors, KeyLines, Problem};
pub use proxy::{ProxyConfig, ProxySettings, ProxyTls, ProxyTlsConfig};
pub use upstream::{Sticky, UpstreamConfig, UpstreamSettings};
pub use values::{Dur, parse_duration};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::assertion::Asserter;
use parse::Problems;

/// The whole file. `[demo]` belongs to upstream-demo and is ignored here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens and how it runs.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// The socket.io server(s) behind the gateway.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// How tokens are found, verified and turned into identity headers.
    #[serde(default)]
    pub auth: AuthConfig,
    /// upstream-demo's own settings; the gateway does not read them.
    #[serde(default)]
    pub demo: Option<toml::Table>,
    /// Optional signed identity assertion for the upstream.
    #[serde(default)]
    pub assertion: Option<AssertionConfig>,
    /// Optional Redis shared by several gateways (refreshes, revocations).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// The validated configuration the gateway runs with, by section.
#[derive(Debug)]
pub struct Settings {
    /// `[proxy]`
    pub proxy: ProxySettings,
    /// `[upstream]`
    pub upstream: UpstreamSettings,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[assertion]`, when configured.
    pub assertion: Option<Asserter>,
    /// `[cluster]`, when configured.
    pub cluster: Option<ClusterSettings>,
}

impl Settings {
    /// Every identity header the gateway owns: removed from every client request.
    pub fn identity_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        std::iter::once(&self.auth.user_header)
            .chain(self.auth.rules.forward_claims.iter().map(|(_, h)| h))
            .chain(self.assertion.as_ref().map(|a| a.header()))
    }
}

impl Config {
    /// Checks everything the file refers to and builds the runtime [`Settings`].
    /// Returns every problem found, not only the first.
    pub fn validate(&self, lines: &KeyLines, base_dir: &Path) -> Result<Settings, Vec<Problem>> {
        let mut v = Problems::new(lines);
        let proxy = self.proxy.validate(&mut v, base_dir);
        let upstream = self.upstream.validate(&mut v, base_dir);
        let auth = self.auth.validate(&mut v, base_dir);
        // Compared with the name as written, also when `[auth]` has problems of its own.
        let user_header = http::HeaderName::from_bytes(self.auth.user_header.as_bytes()).ok();
        let assertion = self
            .assertion
            .as_ref()
            .and_then(|a| a.validate(user_header.as_ref(), &mut v, base_dir));
        let cluster = self.cluster.as_ref().and_then(|c| c.validate(&mut v));
        let problems = v.into_list();
        match (proxy, upstream, auth) {
            (Some(proxy), Some(upstream), Some(auth)) if problems.is_empty() => Ok(Settings {
                proxy,
                upstream,
                auth,
                assertion,
                cluster,
            }),
            _ if !problems.is_empty() => Err(problems),
            _ => Err(vec![Problem {
                key: "(file)".into(),
                line: None,
                message: "invalid configuration".into(),
            }]),
        }
    }
}

/// Loads and validates a file in one step, as start-up and `--check` do.
/// Every problem is reported: those of parsing and those of validating what parsed.
pub fn load_settings(file: &Path) -> Result<Settings, ConfigErrors> {
    let (cfg, lines, mut problems) = Config::load(file)?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match cfg.validate(&lines, base) {
        Ok(settings) if problems.is_empty() => return Ok(settings),
        Ok(_) => {}
        // A key already reported as mistyped was left out; its default is not news.
        Err(more) => {
            let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
            problems.extend(more.into_iter().filter(|p| !reported.contains(&p.key)));
        }
    }
    // In the order of the file, as a reader goes through it; problems that no line
    // holds come last, in the order found.
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Err(ConfigErrors {
        file: file.to_path_buf(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let src =
            "[proxy]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n[upstream]\nservers=[\"127.0.0.1:2\"]\n";
        let err = match Config::parse(src) {
            Ok((_, _, problems)) => problems,
            Err(problems) => problems,
        };
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].line, Some(3), "{err:?}");
        assert!(err[0].message.contains("bogus"), "{err:?}");
        assert_eq!(err[0].key, "proxy.bogus");
    }

    #[test]
    fn validation_reports_every_problem_with_its_key() {
        let src = r#"
[proxy]
listen = "nowhere"
threads = 0
[upstream]
servers = ["127.0.0.1:3000"]
[auth]
algorithms = ["HS256", "none", "XX999"]
secret_env = "GATEWAY_TEST_UNSET_VARIABLE"
token_sources = ["query:token", "smoke:signal"]
user_header = "bad header"
"#;
        let (cfg, lines, parsed) = Config::parse(src).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(parsed.is_empty(), "{parsed:?}");
        let problems = cfg
            .validate(&lines, Path::new("."))
            .err()
            .unwrap_or_default();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "proxy.listen",
            "proxy.threads",
            "auth.algorithms",
            "auth.token_sources[1]",
            "auth.user_header",
        ] {
            assert!(keys.contains(&k), "{k} missing from {problems:#?}");
        }
        let listen = problems.iter().find(|p| p.key == "proxy.listen");
        assert_eq!(listen.and_then(|p| p.line), Some(3));
    }

    fn problems_of(src: &str) -> Vec<Problem> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, src).unwrap_or_else(|e| panic!("{e}"));
        load_settings(&file)
            .err()
            .map(|e| e.problems)
            .unwrap_or_default()
    }

    #[test]
    fn a_wrongly_typed_value_is_reported_with_every_other_problem() {
        let src = "[proxy]\nlisten = \"127.0.0.1:1\"\nthreads = \"two\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nleeway = \"forever\"\nsecret_env = \"GATEWAY_TEST_UNSET_VARIABLE\"\nbogus = 1\n";
        let problems = problems_of(src);
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        for (key, line) in [
            ("proxy.threads", Some(3)),
            ("auth.leeway", Some(7)),
            ("auth.bogus", Some(9)),
            ("auth.secret_env", Some(8)),
        ] {
            assert!(
                found.contains(&(key, line)),
                "{key} (line {line:?}) missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let leeway = problems.iter().find(|p| p.key == "auth.leeway");
        assert!(
            leeway.is_some_and(|p| p.message.contains("forever")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_missing_listen_is_named_by_its_key() {
        let problems = problems_of(
            "[proxy]\nthreads = 1\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nsecret_env = \"HOME\"\n",
        );
        let listen = problems.iter().find(|p| p.key == "proxy.listen");
        assert!(
            listen.is_some_and(|p| p.message.contains("required")),
            "{problems:#?}"
        );
        let problems = problems_of("[upstream]\nservers = [\"127.0.0.1:2\"]\n");
        assert!(
            problems.iter().any(|p| p.key == "proxy.listen"),
            "{problems:#?}"
        );
    }

    #[test]
    fn max_connecting_is_a_count_zero_meaning_no_cap() {
        for bad in ["-1", "\"many\"", "1.5"] {
            let problems = problems_of(&format!(
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\nmax_connecting = {bad}\n"
            ));
            let found = problems.iter().find(|p| p.key == "upstream.max_connecting");
            assert_eq!(found.and_then(|p| p.line), Some(5), "{bad}: {problems:#?}");
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("secret"), "s".repeat(32)).unwrap_or_else(|e| panic!("{e}"));
        for (written, cap) in [
            ("", Some(256)),
            ("max_connecting = 0\n", None),
            ("max_connecting = 3\n", Some(3)),
        ] {
            let file = dir.path().join("gateway.toml");
            let src = format!(
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n{written}[auth]\nsecret_file = \"secret\"\n"
            );
            std::fs::write(&file, src).unwrap_or_else(|e| panic!("{e}"));
            let settings = load_settings(&file).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(settings.upstream.max_connecting, cap, "{written}");
        }
    }
}
