//! Revoked tokens (README "Refresh and revocation", docs/websockets.md): the entries in
//! force, from `auth.revocation_file` and, with `[cluster]`, from the Redis stream
//! `<key_prefix>revocations`, and the lookup every request makes against them.
//!
//! An entry is `{"jti": "<id>"}`, `{"user": "<name>", "issued_before": <unix seconds>}`
//! or `{"issued_before": <unix seconds>}`. A token matches an `issued_before` entry
//! when its `iat` is earlier, or when it has no `iat`. The lookup is two hash lookups
//! (the token's `jti`, its user) and one comparison, whatever the number of entries:
//! entries of one user are kept as one (the latest `issued_before`), and so are those
//! for every user.
//!
//! Memory is bounded (docs/websockets.md, "What revocation keeps"): with
//! `auth.max_lifetime`, an `issued_before` entry is dropped once `issued_before +
//! max_lifetime + leeway` has passed, and a stream's `jti` entry once that long has
//! passed since it was added: every token that was accepted when it was issued has
//! expired by then. The file's entries are bounded by its size ([`MAX_FILE_BYTES`]).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;

/// A revocation file larger than this is refused (the last good list is kept).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// One entry, as written in the file or in the stream's `revoke` field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    jti: Option<String>,
    user: Option<String>,
    issued_before: Option<f64>,
}

/// One revocation entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// The token with this `jti`.
    Jti(Box<str>),
    /// The tokens of this user (the `user_header` value) issued before this time.
    User {
        /// The user.
        user: Box<[u8]>,
        /// Unix seconds.
        before: f64,
    },
    /// Every token issued before this time.
    Everyone {
        /// Unix seconds.
        before: f64,
    },
}

/// Why an entry or a file is not understood.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Not JSON, or not the shape of an entry.
    #[error("not a revocation entry: {0}")]
    Json(#[from] serde_json::Error),
    /// `jti` together with another member, or nothing at all.
    #[error(
        "an entry is {{\"jti\": ...}}, {{\"user\": ..., \"issued_before\": ...}} or {{\"issued_before\": ...}}"
    )]
    Shape,
    /// `jti` or `user` empty.
    #[error("jti and user must not be empty")]
    Empty,
    /// `issued_before` not a finite number.
    #[error("issued_before must be a number of seconds since the epoch")]
    Time,
}

impl Entry {
    /// Parses one entry (the stream's `revoke` field).
    pub fn parse(json: &[u8]) -> Result<Entry, EntryError> {
        Entry::from_raw(serde_json::from_slice(json)?)
    }

    /// Parses a JSON array of entries (the revocation file): the entries, and the
    /// position and problem of each element that is not one. One bad entry (a typo, a
    /// member of another program's) is skipped alone, as in the stream: it must not
    /// switch off every revocation written after it.
    pub fn parse_list(json: &[u8]) -> Result<Listed, EntryError> {
        let raw: Vec<serde_json::Value> = serde_json::from_slice(json)?;
        let mut listed = Listed::default();
        for (at, value) in raw.into_iter().enumerate() {
            let entry = serde_json::from_value::<RawEntry>(value)
                .map_err(EntryError::from)
                .and_then(Entry::from_raw);
            match entry {
                Ok(entry) => listed.entries.push(entry),
                Err(e) => listed.skipped.push((at, e)),
            }
        }
        Ok(listed)
    }

    fn from_raw(raw: RawEntry) -> Result<Entry, EntryError> {
        if raw.issued_before.is_some_and(|t| !t.is_finite()) {
            return Err(EntryError::Time);
        }
        match (raw.jti, raw.user, raw.issued_before) {
            (Some(jti), None, None) if jti.is_empty() => Err(EntryError::Empty),
            (Some(jti), None, None) => Ok(Entry::Jti(jti.into())),
            (None, Some(user), Some(_)) if user.is_empty() => Err(EntryError::Empty),
            (None, Some(user), Some(before)) => Ok(Entry::User {
                user: user.into_bytes().into(),
                before,
            }),
            (None, None, Some(before)) => Ok(Entry::Everyone { before }),
            _ => Err(EntryError::Shape),
        }
    }
}

/// A revocation file's entries, and the elements skipped (position, problem).
#[derive(Debug, Default)]
pub struct Listed {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The elements that are not entries, with their position in the array.
    pub skipped: Vec<(usize, EntryError)>,
}

/// What revocation needs to know of a token.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    /// The `user_header` value.
    pub user: &'a [u8],
    /// `jti`, when a string.
    pub jti: Option<&'a str>,
    /// `iat`.
    pub iat: Option<f64>,
}

/// A kept `issued_before`: the time, and when it may be dropped.
#[derive(Debug, Clone, Copy)]
struct Before {
    before: f64,
    drop_at: f64,
}

impl Before {
    fn matches(&self, iat: Option<f64>) -> bool {
        iat.is_none_or(|iat| iat < self.before)
    }

    fn merge(slot: &mut Option<Before>, new: Before) {
        match slot {
            Some(old) if old.before >= new.before => old.drop_at = old.drop_at.max(new.drop_at),
            _ => *slot = Some(new),
        }
    }
}

/// Entries in force, indexed for the lookup.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// `jti` -> when it may be dropped.
    jtis: HashMap<Box<str>, f64>,
    /// user -> the latest `issued_before` of that user.
    users: HashMap<Box<[u8]>, Before>,
    /// The latest `issued_before` for everyone.
    everyone: Option<Before>,
}

impl Index {
    /// Adds an entry that reached the gateway at `added` (unix seconds); `horizon` is
    /// `max_lifetime + leeway`, when `auth.max_lifetime` is set.
    pub fn insert(&mut self, entry: Entry, added: f64, horizon: Option<f64>) {
        let keep = |t: f64| horizon.map_or(f64::INFINITY, |h| t + h);
        match entry {
            Entry::Jti(jti) => {
                let at = keep(added);
                let slot = self.jtis.entry(jti).or_insert(at);
                *slot = slot.max(at);
            }
            Entry::User { user, before } => {
                let new = Before {
                    before,
                    drop_at: keep(before),
                };
                let mut slot = self.users.get(&user).copied();
                Before::merge(&mut slot, new);
                if let Some(b) = slot {
                    self.users.insert(user, b);
                }
            }
            Entry::Everyone { before } => {
                let new = Before {
                    before,
                    drop_at: keep(before),
                };
                Before::merge(&mut self.everyone, new);
            }
        }
    }

    /// Drops what can match no token the gateway would still accept.
    pub fn prune(&mut self, now: f64) {
        self.jtis.retain(|_, drop_at| *drop_at > now);
        self.users.retain(|_, b| b.drop_at > now);
        if self.everyone.is_some_and(|b| b.drop_at <= now) {
            self.everyone = None;
        }
    }

    /// Whether `token` matches an entry.
    pub fn matches(&self, token: &TokenFacts<'_>) -> bool {
        if self.everyone.is_some_and(|b| b.matches(token.iat)) {
            return true;
        }
        if !self.users.is_empty()
            && self
                .users
                .get(token.user)
                .is_some_and(|b| b.matches(token.iat))
        {
            return true;
        }
        !self.jtis.is_empty() && token.jti.is_some_and(|j| self.jtis.contains_key(j))
    }

    /// Entries kept (users and `jti`s, and one for everyone).
    pub fn len(&self) -> usize {
        self.jtis.len() + self.users.len() + usize::from(self.everyone.is_some())
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entries in force from both sources, read without a lock on every request.
#[derive(Debug)]
pub struct Revocations {
    /// `auth.revocation_file`'s last good list (replaced whole on each re-read).
    file: ArcSwap<Index>,
    /// The cluster stream's entries (added to as they arrive).
    stream: ArcSwap<Index>,
    /// `max_lifetime + leeway`, when `auth.max_lifetime` is set: how long an entry
    /// can matter.
    horizon: Option<f64>,
}

impl Revocations {
    /// No entries yet; `horizon` as [`Index::insert`] takes it.
    pub fn new(horizon: Option<f64>) -> Self {
        Revocations {
            file: ArcSwap::from_pointee(Index::default()),
            stream: ArcSwap::from_pointee(Index::default()),
            horizon,
        }
    }

    /// Whether `token` is revoked.
    pub fn matches(&self, token: &TokenFacts<'_>) -> bool {
        let file = self.file.load();
        if !file.is_empty() && file.matches(token) {
            return true;
        }
        let stream = self.stream.load();
        !stream.is_empty() && stream.matches(token)
    }

    /// Installs the file's entries (all of them, read at `now`). Returns how many are
    /// kept.
    pub fn set_file(&self, entries: Vec<Entry>, now: f64) -> usize {
        let mut index = Index::default();
        for e in entries {
            index.insert(e, now, self.horizon);
        }
        index.prune(now);
        let n = index.len();
        self.file.store(Arc::new(index));
        n
    }

    /// Adds entries from the stream, each with the time it was added; drops what
    /// expired. Returns how many are kept.
    pub fn add_stream(&self, entries: Vec<(Entry, f64)>, now: f64) -> usize {
        let mut index = Index::clone(&self.stream.load());
        for (e, added) in entries {
            index.insert(e, added, self.horizon);
        }
        index.prune(now);
        let n = index.len();
        self.stream.store(Arc::new(index));
        n
    }

    /// Entries kept, from both sources.
    pub fn len(&self) -> usize {
        self.file.load().len() + self.stream.load().len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(user: &'a str, jti: Option<&'a str>, iat: Option<f64>) -> TokenFacts<'a> {
        TokenFacts {
            user: user.as_bytes(),
            jti,
            iat,
        }
    }

    #[test]
    fn entries_parse_in_their_three_shapes_and_nothing_else() {
        assert_eq!(
            Entry::parse(br#"{"jti":"a1"}"#).ok(),
            Some(Entry::Jti("a1".into()))
        );
        assert!(matches!(
            Entry::parse(br#"{"user":"alice","issued_before":10}"#),
            Ok(Entry::User { before, .. }) if before == 10.0
        ));
        assert!(matches!(
            Entry::parse(br#"{"issued_before":10.5}"#),
            Ok(Entry::Everyone { before }) if before == 10.5
        ));
        for bad in [
            &br#"{"user":"alice"}"#[..],
            br#"{"jti":"a","user":"b","issued_before":1}"#,
            br#"{}"#,
            br#"{"jti":""}"#,
            br#"{"jti":"a","extra":1}"#,
            br#"[1]"#,
        ] {
            assert!(
                Entry::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Entry::parse_list(br#"[{"jti":"a"},{"issued_before":3}]"#)
                .map(|l| (l.entries.len(), l.skipped.len()))
                .ok(),
            Some((2, 0))
        );
        // One element that is not an entry is skipped alone: the entries after it
        // still count.
        let listed = Entry::parse_list(
            br#"[{"jti":5},{"jti":"a","foo":1},{"user":"bob"},{"issued_before":"1"},{"user":"alice","issued_before":9}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            listed.entries,
            vec![Entry::User {
                user: b"alice".to_vec().into(),
                before: 9.0
            }]
        );
        let at: Vec<usize> = listed.skipped.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, vec![0, 1, 2, 3]);
        assert!(
            Entry::parse_list(br#"{"jti":"a"}"#).is_err(),
            "not an array"
        );
    }

    #[test]
    fn a_token_matches_by_jti_by_user_and_time_and_for_everyone() {
        let r = Revocations::new(None);
        r.set_file(
            vec![
                Entry::Jti("j1".into()),
                Entry::User {
                    user: (*b"alice").into(),
                    before: 100.0,
                },
            ],
            0.0,
        );
        assert!(r.matches(&facts("bob", Some("j1"), Some(500.0))));
        assert!(!r.matches(&facts("bob", Some("j2"), Some(50.0))));
        assert!(r.matches(&facts("alice", None, Some(99.0))));
        assert!(!r.matches(&facts("alice", None, Some(100.0))));
        // No `iat`: issued at an unknown time, so before any entry.
        assert!(r.matches(&facts("alice", None, None)));
        assert!(!r.matches(&facts("bob", None, None)));
        r.add_stream(vec![(Entry::Everyone { before: 20.0 }, 0.0)], 0.0);
        assert!(r.matches(&facts("bob", None, Some(19.0))));
        assert!(!r.matches(&facts("bob", None, Some(21.0))));
    }

    #[test]
    fn one_users_entries_are_kept_as_the_latest() {
        let mut index = Index::default();
        for before in [10.0, 30.0, 20.0] {
            let user = (*b"alice").into();
            index.insert(Entry::User { user, before }, 0.0, None);
        }
        assert_eq!(index.len(), 1);
        assert!(index.matches(&facts("alice", None, Some(29.0))));
    }

    #[test]
    fn entries_older_than_the_horizon_are_dropped() {
        let r = Revocations::new(Some(60.0));
        let n = r.add_stream(
            vec![
                (Entry::Jti("old".into()), 1000.0),
                (Entry::Jti("new".into()), 1050.0),
                (Entry::Everyone { before: 1000.0 }, 1000.0),
                (
                    Entry::User {
                        user: (*b"alice").into(),
                        before: 1100.0,
                    },
                    1100.0,
                ),
            ],
            1070.0,
        );
        assert_eq!(n, 2, "the old jti and the old everyone entry are gone");
        assert!(!r.matches(&facts("bob", Some("old"), Some(1.0))));
        assert!(r.matches(&facts("bob", Some("new"), Some(1.0))));
    }
}
