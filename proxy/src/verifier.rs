//! The verification cache (`auth.verify_cache`, docs/performance.md): tokens that
//! verified, so that the polls of a session skip decoding and the signature check.

use std::sync::Arc;

use crate::keys::KeySet;
use crate::verify::{AuthError, Rules, Verified, check_time, verify, verify_but_time};

/// A verified token, remembered with the key set it was verified with.
#[derive(Debug)]
struct Cached {
    generation: u64,
    verified: Verified,
}

/// Verification with a bounded cache of tokens that verified: a token seen again (every
/// poll of a session carries the same one, and a client retrying with an expired token
/// too) skips decoding and the signature check, but `exp`/`nbf` are checked on every
/// use, so the cache never extends a token's life; a key reload voids every entry. Keys are the whole token, compared in full.
#[derive(Debug)]
pub struct Verifier {
    rules: Rules,
    cache: Option<quick_cache::sync::Cache<Box<str>, Arc<Cached>>>,
}

impl Verifier {
    /// A verifier with room for `cache_entries` tokens (0: no cache).
    pub fn new(rules: Rules, cache_entries: usize) -> Self {
        Verifier {
            rules,
            cache: (cache_entries > 0).then(|| quick_cache::sync::Cache::new(cache_entries)),
        }
    }

    /// The claim rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Verifies `token` with `keys` at `now` (seconds since the epoch).
    pub fn verify(&self, keys: &KeySet, token: &str, now: f64) -> Result<Verified, AuthError> {
        let Some(cache) = &self.cache else {
            return verify(&self.rules, keys, token, now);
        };
        if token.len() <= self.rules.max_token_bytes {
            if let Some(hit) = cache.get(token) {
                if hit.generation == keys.generation() {
                    check_time(&self.rules, hit.verified.exp, hit.verified.nbf, now)?;
                    return Ok(hit.verified.clone());
                }
            }
        }
        // Remembered before its time is checked: a client retrying with an expired
        // token is refused from the cache, without another signature check.
        let verified = verify_but_time(&self.rules, keys, token, now)?;
        cache.insert(
            token.into(),
            Arc::new(Cached {
                generation: keys.generation(),
                verified: verified.clone(),
            }),
        );
        check_time(&self.rules, verified.exp, verified.nbf, now)?;
        Ok(verified)
    }
}
