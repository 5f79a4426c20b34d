//! Engine.IO session ids as the gateway hands them to clients (docs/request-handling.md "Engine.IO
//! sessions"): the upstream's own `sid`, the user whose handshake opened the session
//! and, with several servers, the server it lives on, sealed together with AES-256-GCM-SIV
//! under a key from the config (`auth.session_key_env` / `auth.session_key_file`).
//!
//! The gateway rewrites the `sid` of every open packet on its way to the client and
//! unseals the `sid` of every request on its way in, so any gateway holding the key,
//! after any restart, knows whose session a request names and where it lives, with no
//! shared state and nothing a flood of handshakes could evict. A `sid` that does not
//! unseal was not handed out by a gateway with this key: it is refused, never judged
//! on its token alone.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The sealed form's first byte: its layout, so that a later layout can coexist.
const VERSION: u8 = 1;

/// Bound into every seal, so that nothing sealed for another purpose opens as a sid.
const AAD: &[u8] = b"socketio-jwt-gateway sid v1";

/// Nonce and tag lengths of AES-256-GCM-SIV.
const NONCE: usize = 12;
const TAG: usize = 16;

/// Longest upstream `sid` and user sealed (longer ones are not sealed; the handshake's
/// answer is then refused).
pub const MAX_SID: usize = 255;
const MAX_USER: usize = 4096;

/// Longest sealed `sid` a request may carry (base64 of the largest seal).
pub const MAX_SEALED: usize = (1 + NONCE + 1 + MAX_SID + 2 + MAX_USER + 19 + TAG) * 4 / 3 + 4;

/// Seals and unseals session ids.
pub struct SidSeal {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for SidSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SidSeal")
    }
}

/// What a sealed `sid` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The upstream's own `sid`.
    pub sid: String,
    /// The user whose handshake opened it (the `user_header` value).
    pub user: Vec<u8>,
    /// The server it lives on, with several servers.
    pub server: Option<SocketAddr>,
}

/// The key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the session key could not be set up")]
pub struct KeyError;

impl SidSeal {
    /// A seal keyed from `secret` (at least 32 bytes; checked by the config).
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, AAD);
        let mut key = [0u8; 32];
        salt.extract(secret)
            .expand(&[b"engine.io sid"], aws_lc_rs::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| KeyError)?;
        let key = RandomizedNonceKey::new(&AES_256_GCM_SIV, &key).map_err(|_| KeyError)?;
        Ok(SidSeal { key })
    }

    /// A seal with a random key: sids survive neither a restart nor another gateway.
    pub fn random() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| KeyError)?;
        Self::new(&secret)
    }

    /// The sealed, URL-safe form of a session (`None` when the sid or user is longer
    /// than a seal holds).
    pub fn seal(&self, sid: &[u8], user: &[u8], server: Option<SocketAddr>) -> Option<String> {
        if sid.is_empty() || sid.len() > MAX_SID || user.len() > MAX_USER {
            return None;
        }
        let mut plain = Vec::with_capacity(1 + sid.len() + 2 + user.len() + 19 + TAG);
        plain.push(sid.len() as u8);
        plain.extend_from_slice(sid);
        plain.extend_from_slice(&(user.len() as u16).to_be_bytes());
        plain.extend_from_slice(user);
        match server {
            None => plain.push(0),
            Some(SocketAddr::V4(a)) => {
                plain.push(4);
                plain.extend_from_slice(&a.ip().octets());
                plain.extend_from_slice(&a.port().to_be_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                plain.push(6);
                plain.extend_from_slice(&a.ip().octets());
                plain.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(AAD), &mut plain)
            .ok()?;
        let mut sealed = Vec::with_capacity(1 + NONCE + plain.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&plain);
        Some(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The session a sealed `sid` names; `None` when it was not sealed with this key
    /// (forged, altered, or from a gateway with another key).
    pub fn open(&self, sealed: &[u8]) -> Option<Session> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < 1 + NONCE + TAG || bytes[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[1..1 + NONCE]).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut bytes[1 + NONCE..])
            .ok()?;
        let (&sid_len, rest) = plain.split_first()?;
        let sid = rest.get(..usize::from(sid_len))?;
        let rest = &rest[sid.len()..];
        let user_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let user = rest.get(2..2 + user_len)?;
        let rest = &rest[2 + user_len..];
        let server = match rest {
            [0] => None,
            [4, ip @ .., p0, p1] if ip.len() == 4 => {
                let octets: [u8; 4] = ip.try_into().ok()?;
                Some(SocketAddr::new(
                    IpAddr::from(octets),
                    u16::from_be_bytes([*p0, *p1]),
                ))
            }
            [6, ip @ .., p0, p1] if ip.len() == 16 => {
                let octets: [u8; 16] = ip.try_into().ok()?;
                Some(SocketAddr::new(
                    IpAddr::from(octets),
                    u16::from_be_bytes([*p0, *p1]),
                ))
            }
            _ => return None,
        };
        Some(Session {
            sid: String::from_utf8(sid.to_vec()).ok()?,
            user: user.to_vec(),
            server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> SidSeal {
        SidSeal::new(b"0123456789abcdef0123456789abcdef-session").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_sealed_sid_opens_to_what_was_sealed_and_only_with_its_key() {
        let s = seal();
        for server in [
            None,
            Some(SocketAddr::from(([127, 0, 0, 1], 3000))),
            Some("[::1]:8443".parse().unwrap_or_else(|e| panic!("{e}"))),
        ] {
            let sealed = s
                .seal(b"lv_VI97HAXpY6yYWAAAC", b"alice", server)
                .unwrap_or_else(|| panic!("not sealed"));
            assert!(
                sealed
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{sealed}"
            );
            let opened = s.open(sealed.as_bytes());
            assert_eq!(
                opened,
                Some(Session {
                    sid: "lv_VI97HAXpY6yYWAAAC".into(),
                    user: b"alice".to_vec(),
                    server
                })
            );
            // Another key, or any altered character, opens nothing.
            let other = SidSeal::random().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(other.open(sealed.as_bytes()), None);
            for i in 0..sealed.len() {
                let mut altered = sealed.clone().into_bytes();
                altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
                assert_eq!(s.open(&altered), None, "altered at {i}");
            }
        }
        // Two seals of the same session differ (random nonces): a sid says nothing.
        let a = s.seal(b"x", b"alice", None);
        assert_ne!(a, s.seal(b"x", b"alice", None));
        assert_eq!(s.open(b"zzzzzzzzzzzzzzzzzzzz"), None);
        assert_eq!(s.open(b""), None);
        assert_eq!(s.seal(b"", b"alice", None), None);
    }
}
