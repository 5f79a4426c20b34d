//! JWK Set parsing (`jwks_file`, `jwks_url`): never a panic on any document, and every
//! key kept is pinned to algorithms of its own family.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use proxy::keys::parse_jwks;

fuzz_target!(|data: &[u8]| {
    let allowed = [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS384,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    if let Ok(set) = parse_jwks(data, &allowed) {
        assert!(!set.is_empty(), "an accepted set has keys");
    }
});
