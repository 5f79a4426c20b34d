//! Engine.IO session ids as the gateway hands them to clients (docs/request-handling.md "Engine.IO
//! sessions"): the upstream's own `sid`, then `.` and a seal of the user whose handshake
//! opened the session and, with several servers, the server it lives on, under
//! AES-256-GCM-SIV with the upstream's `sid` as associated data and a key from the config
//! (`auth.session_key_env` / `auth.session_key_file`).
//!
//! The gateway rewrites the `sid` of every open packet on its way to the client and
//! opens the `sid` of every request on its way in, so any gateway holding the key,
//! after any restart, knows whose session a request names and where it lives, with no
//! shared state and nothing a flood of handshakes could evict. A `sid` that does not
//! open was not handed out by a gateway with this key: it is refused, never judged
//! on its token alone.
//!
//! The upstream's `sid` stays readable in front of the seal so that the sealed form
//! grows by a length known before the answer's body is read ([`SidSeal::growth`]): a
//! polling handshake's answer keeps a `Content-Length`, one write to the client.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The seal's first byte: its layout, so that a later layout can coexist.
const VERSION: u8 = 2;

/// Bound into every seal before the `sid`, so that nothing sealed for another purpose
/// opens as a session.
const AAD: &[u8] = b"socketio-jwt-gateway sid v2\0";

/// Nonce and tag lengths of AES-256-GCM-SIV.
const NONCE: usize = 12;
const TAG: usize = 16;

/// Longest upstream `sid` and user sealed (longer ones are not sealed; the handshake's
/// answer is then refused).
pub const MAX_SID: usize = 255;
const MAX_USER: usize = 4096;

/// Longest sealed `sid` a request may carry.
pub const MAX_SEALED: usize = MAX_SID + 1 + b64_len(1 + NONCE + 2 + MAX_USER + 19 + TAG);

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

/// Length of unpadded base64 of `n` bytes.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Bytes of the server's encoding in the seal.
fn server_len(server: Option<SocketAddr>) -> usize {
    match server {
        None => 1,
        Some(SocketAddr::V4(_)) => 7,
        Some(SocketAddr::V6(_)) => 19,
    }
}

/// Bytes an upstream `sid` may hold: URL-unreserved characters (RFC 3986 2.3), which
/// neither a query nor a JSON string changes. Engine.IO's and socketioxide's ids are.
fn sid_is_plain(sid: &[u8]) -> bool {
    !sid.is_empty()
        && sid.len() <= MAX_SID
        && sid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The associated data of a seal: the purpose, then the upstream's `sid`.
fn aad<'b>(sid: &[u8], buf: &'b mut [u8; AAD.len() + MAX_SID]) -> &'b [u8] {
    buf[..AAD.len()].copy_from_slice(AAD);
    buf[AAD.len()..AAD.len() + sid.len()].copy_from_slice(sid);
    &buf[..AAD.len() + sid.len()]
}

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

    /// How many bytes longer than the upstream's `sid` its sealed form is, for `user`
    /// and `server`: known before the `sid` is.
    pub fn growth(user: &[u8], server: Option<SocketAddr>) -> usize {
        1 + b64_len(1 + NONCE + 2 + user.len() + server_len(server) + TAG)
    }

    /// The sealed, URL-safe form of a session (`None` when the sid is not made of
    /// URL-unreserved characters, or it or the user is longer than a seal holds).
    pub fn seal(&self, sid: &[u8], user: &[u8], server: Option<SocketAddr>) -> Option<String> {
        if !sid_is_plain(sid) || user.len() > MAX_USER {
            return None;
        }
        let mut plain = Vec::with_capacity(2 + user.len() + server_len(server) + TAG);
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
        let mut buf = [0u8; AAD.len() + MAX_SID];
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad(sid, &mut buf)), &mut plain)
            .ok()?;
        let mut sealed = Vec::with_capacity(1 + NONCE + plain.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&plain);
        let mut out = String::with_capacity(sid.len() + Self::growth(user, server));
        out.push_str(std::str::from_utf8(sid).ok()?);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sealed, &mut out);
        Some(out)
    }

    /// The session a sealed `sid` names; `None` when it was not sealed with this key
    /// (forged, altered, or from a gateway with another key).
    pub fn open(&self, sealed: &[u8]) -> Option<Session> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        // The seal is base64url, which has no `.`: the last one ends the upstream's sid.
        let dot = sealed.iter().rposition(|b| *b == b'.')?;
        let (sid, seal) = (&sealed[..dot], &sealed[dot + 1..]);
        if !sid_is_plain(sid) {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(seal).ok()?;
        if bytes.len() < 1 + NONCE + TAG || bytes[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[1..1 + NONCE]).ok()?;
        let mut buf = [0u8; AAD.len() + MAX_SID];
        let plain = self
            .key
            .open_in_place(
                nonce,
                Aad::from(aad(sid, &mut buf)),
                &mut bytes[1 + NONCE..],
            )
            .ok()?;
        let user_len = usize::from(u16::from_be_bytes([*plain.first()?, *plain.get(1)?]));
        let user = plain.get(2..2 + user_len)?;
        let rest = &plain[2 + user_len..];
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
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "{sealed}"
            );
            assert_eq!(
                sealed.len(),
                "lv_VI97HAXpY6yYWAAAC".len() + SidSeal::growth(b"alice", server),
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
        // Only URL-unreserved sids are sealed (they read the same in a query and in JSON).
        assert_eq!(s.seal(b"a/b", b"alice", None), None);
        assert_eq!(s.seal(br#"a\u0041"#, b"alice", None), None);
        assert!(s.seal(b"a.b~c", b"alice", None).is_some());
        // The readable sid is bound: the same seal behind another sid opens nothing.
        let sealed = s
            .seal(b"lv_VI97HAXpY6yYWAAAC", b"alice", None)
            .unwrap_or_else(|| panic!("not sealed"));
        let seal_part = sealed.rsplit_once('.').map(|(_, p)| p).unwrap_or_default();
        assert_eq!(
            s.open(format!("lv_VI97HAXpY6yYWAAAD.{seal_part}").as_bytes()),
            None
        );
    }
}
