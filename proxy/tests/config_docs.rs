//! Every key of the gateway's configuration is documented where users look for it: a
//! row of the table in `docs/configuration.md` (the README links it), whose default
//! must be the real one, and a line in the demo `config.toml` (set, or commented out). The defaults live in one
//! place, each section's schema in its file of `proxy/src/config/`; this test holds the other two to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proxy::config::Config;

const SECTIONS: [&str; 6] = [
    "proxy",
    "proxy.tls",
    "upstream",
    "auth",
    "assertion",
    "cluster",
];

/// The smallest file every section parses in: the keys without a default given.
const MINIMAL: &str = "[proxy]\nlisten = \"127.0.0.1:1\"\n[proxy.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\n[assertion]\nkey_file = \"k.pem\"\naudience = \"up\"\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n";

/// The keys [`MINIMAL`] gives: they have no default to compare.
const GIVEN: [&str; 7] = [
    "proxy.listen",
    "proxy.tls.cert_file",
    "proxy.tls.key_file",
    "upstream.servers",
    "assertion.key_file",
    "assertion.audience",
    "cluster.redis_url",
];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every key of `section`, as the schema itself lists them (serde names the expected
/// fields when it meets an unknown one).
fn keys_of(section: &str) -> Vec<String> {
    let src = MINIMAL.replace(
        &format!("[{section}]\n"),
        &format!("[{section}]\nno_such_key_here = 1\n"),
    );
    let problems = match Config::parse(&src) {
        Ok((_, _, problems)) => problems,
        Err(problems) => problems,
    };
    let message = problems
        .iter()
        .find(|p| p.key == format!("{section}.no_such_key_here"))
        .map(|p| p.message.clone())
        .unwrap_or_else(|| panic!("no unknown-field problem in {problems:?}"));
    let expected = message
        .split_once("expected")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{message}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The defaults, as the schema fills them in (keys without one are absent).
fn defaults() -> toml::Table {
    let (cfg, _, problems) = Config::parse(MINIMAL).unwrap_or_else(|p| panic!("{p:?}"));
    assert!(problems.is_empty(), "{problems:?}");
    toml::Table::try_from(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// `key -> default column` of the configuration table in `docs/configuration.md`.
fn documented_rows() -> BTreeMap<String, String> {
    read("docs/configuration.md")
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            Some((key.to_string(), cells.get(1)?.trim().to_string()))
        })
        .collect()
}

/// `section.key` for every key line of config.toml, commented out or not.
fn config_toml_keys() -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in read("config.toml").lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            section = name.0.to_string();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

#[test]
fn the_configuration_page_and_config_toml_list_every_key_with_its_real_default() {
    let defaults = defaults();
    let rows = documented_rows();
    let listed = config_toml_keys();
    let mut wrong = Vec::new();
    for section in SECTIONS {
        let keys = keys_of(section);
        assert!(keys.len() >= 2, "{section}: {keys:?}");
        for key in keys {
            let path = format!("{section}.{key}");
            if SECTIONS.contains(&path.as_str()) {
                continue; // a table, whose keys have rows of their own
            }
            if !listed.contains(&path) {
                wrong.push(format!("{path}: not in config.toml"));
            }
            let Some(documented) = rows.get(&path) else {
                wrong.push(format!("{path}: no row in the docs/configuration.md table"));
                continue;
            };
            let real = defaults.get(section).and_then(|s| s.get(&key));
            let Some(real) = real.filter(|_| !GIVEN.contains(&path.as_str())) else {
                continue; // no default: required, or off until set
            };
            let value = documented
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .and_then(|d| toml::from_str::<toml::Table>(&format!("v = {d}")).ok())
                .and_then(|mut t| t.remove("v"));
            if value.as_ref() != Some(real) {
                wrong.push(format!(
                    "{path}: docs/configuration.md says {documented}, the default is `{real}`"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
