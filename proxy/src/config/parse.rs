//! Reading the file (docs/configuration.md): TOML syntax, then the schema. Every
//! problem is tied to its dotted key path and the line it is written on; a key with a
//! wrong type or an unknown name is reported and left out, so that the rest is still
//! read and validated.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::Config;

/// One thing wrong with the configuration, tied to the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `auth.secret_env`.
    pub key: String,
    /// Line of that key in the file, when the key is written there.
    pub line: Option<usize>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file they were found in.
    pub file: PathBuf,
    /// All of them, in file order of discovery.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n{p}")?;
        }
        Ok(())
    }
}

/// Where each key is written in the file, so that validation problems can name the line.
#[derive(Debug, Default)]
pub struct KeyLines {
    lines: BTreeMap<String, usize>,
}

impl KeyLines {
    /// Indexes every key of `src` (best effort: an unparsable file indexes nothing).
    pub fn index(src: &str) -> Self {
        let mut lines = BTreeMap::new();
        if let Ok(doc) = toml::de::DeTable::parse(src) {
            walk_table(src, "", doc.get_ref(), &mut lines);
        }
        KeyLines { lines }
    }

    /// Line of `key` (dotted path), if written.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    /// The deepest key whose span starts at or before `offset`: the key an error is about.
    fn key_at(&self, src: &str, offset: usize) -> Option<(String, usize)> {
        let line = line_of(src, offset);
        self.lines
            .iter()
            .filter(|(_, l)| **l == line)
            .max_by_key(|(k, _)| k.len())
            .map(|(k, l)| (k.clone(), *l))
    }
}

fn walk_table(
    src: &str,
    prefix: &str,
    table: &toml::de::DeTable<'_>,
    out: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(path.clone(), line_of(src, key.span().start));
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            walk_table(src, &path, inner, out);
        }
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// Removes the key at `path` from `root`; false when it is not there.
fn remove_key(root: &mut toml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = root;
    for segment in parents {
        let next = match (segment, at) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key.as_str()),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

/// Why the file could not be read; a missing one names the directory it was looked for
/// in (the default `config.toml` is relative to where `proxy` was started) and the flag
/// that names another file.
fn unreadable(file: &Path, e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::NotFound {
        return format!("cannot read {}: {e}", file.display());
    }
    let dir = match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!(
        "there is no {name} in {}; run proxy where it is, or name the file with --config FILE",
        dir.display()
    )
}

impl Config {
    /// Reads and parses a file; see [`Config::parse`].
    pub fn load(file: &Path) -> Result<(Config, KeyLines, Vec<Problem>), ConfigErrors> {
        let src = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: "(file)".into(),
                line: None,
                message: unreadable(file, &e),
            }],
        })?;
        Self::parse(&src).map_err(|problems| ConfigErrors {
            file: file.to_path_buf(),
            problems,
        })
    }

    /// Parses TOML text. A syntax error stops here. Every key with a wrong type or
    /// an unknown name is reported with its path and line, then left out so that the
    /// rest of the file is still read: the problems come back with the [`Config`]
    /// built from what remained, for validation to add its own.
    pub fn parse(src: &str) -> Result<(Config, KeyLines, Vec<Problem>), Vec<Problem>> {
        let lines = KeyLines::index(src);
        let mut root = match toml::from_str::<toml::Table>(src) {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let (key, line) = match lines.key_at(src, offset) {
                    Some((key, line)) => (key, Some(line)),
                    None => (
                        "(file)".to_string(),
                        e.span().map(|s| line_of(src, s.start)),
                    ),
                };
                let message = e.message().trim().to_string();
                return Err(vec![Problem { key, line, message }]);
            }
        };
        let mut v = Problems::new(&lines);
        loop {
            match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
                Ok(cfg) => {
                    let problems = v.into_list();
                    return Ok((cfg, lines, problems));
                }
                Err(e) => {
                    let key = e.path().to_string();
                    v.push(&key, e.inner().message().trim().to_string());
                    // Each round removes one key, so this ends; a key that can not be
                    // removed (it should never happen) ends the parse with what we have.
                    if !remove_key(&mut root, e.path()) {
                        return Err(v.into_list());
                    }
                }
            }
        }
    }
}

/// Problems being collected, each placed on the line of its key.
pub(super) struct Problems<'a> {
    lines: &'a KeyLines,
    list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    /// None yet, for the file indexed in `lines`.
    pub(super) fn new(lines: &'a KeyLines) -> Self {
        Problems {
            lines,
            list: Vec::new(),
        }
    }

    /// All of them, in the order found.
    pub(super) fn into_list(self) -> Vec<Problem> {
        self.list
    }

    /// Not a problem, but worth acting on (a certificate about to expire): logged as a
    /// warning with its key and line, at start-up and by `--check`.
    pub(super) fn warn(&self, key: &str, message: String) {
        let warning = Problem {
            key: key.to_string(),
            line: self.line_of(key),
            message,
        };
        tracing::warn!("{warning}");
    }

    /// The line `key` (or the nearest enclosing key) is written on.
    fn line_of(&self, key: &str) -> Option<usize> {
        // `auth.token_sources[1]` is written on the line of `auth.token_sources`.
        let mut k = key.split('[').next().unwrap_or(key);
        loop {
            if let Some(line) = self.lines.line(k) {
                return Some(line);
            }
            k = &k[..k.rfind('.')?];
        }
    }

    /// One more, about `key`.
    pub(super) fn push(&mut self, key: &str, message: String) {
        let line = self.line_of(key);
        self.list.push(Problem {
            key: key.to_string(),
            line,
            message,
        });
    }
}
