//! Values every section writes the same way (docs/configuration.md): durations with a
//! unit, `address:port`, header names, and paths relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::Problems;

/// A duration written with a unit (`"500ms"`, `"5s"`, `"10m"`); a bare number or a
/// negative value is refused so that nobody has to guess the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Written back as the config file writes it (`"5s"`, `"1m 30s"`), for the defaults
/// the documentation is checked against.
impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a duration with a unit, as the config file and the demo's flags accept it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().any(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "invalid duration {text:?}: a unit is required, e.g. \"500ms\", \"5s\", \"10m\""
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// `text` as an `address:port`, or a problem about `key`.
pub(super) fn parse_addr(v: &mut Problems<'_>, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            v.push(
                key,
                format!("{text:?} is not an address:port such as \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

/// `text` as a header name, or a problem about `key`.
pub(super) fn header_name(v: &mut Problems<'_>, key: &str, text: &str) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            v.push(key, format!("{text:?} is not a valid header name"));
            None
        }
    }
}

/// A path written in the file, relative ones resolved against the file's directory.
pub(super) fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_no_sign() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("").is_err());
    }
}
