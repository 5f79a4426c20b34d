//! Demo accounts: argon2 password hashes from `[demo].users`.
//!
//! Passwords are only ever compared through argon2. An unknown user is checked against
//! a dummy hash made at start-up with the same parameters, so a failed login takes the
//! same time whether or not the user exists.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

use crate::config::DemoUser;

/// The accounts, with their hashes parsed once.
#[derive(Debug)]
pub struct Accounts {
    users: Vec<(String, String)>,
    dummy: String,
}

/// Hashes a password for `[demo].users` (PHC string, argon2id, default parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

impl Accounts {
    /// Checks every hash once; the error names the account.
    pub fn new(users: &[DemoUser]) -> Result<Self, String> {
        for (i, u) in users.iter().enumerate() {
            PasswordHash::new(&u.password_hash).map_err(|e| {
                format!(
                    "demo.users[{i}] ({}): password_hash is not an argon2 PHC string: {e}",
                    u.name
                )
            })?;
        }
        Ok(Accounts {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            dummy: hash_password("no such user: equal-time dummy")?,
        })
    }

    /// Whether `name`/`password` is a valid login. Runs argon2 exactly once either way.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let (known, hash) = match self.users.iter().find(|(n, _)| n == name) {
            Some((_, h)) => (true, h.as_str()),
            None => (false, self.dummy.as_str()),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && ok
    }
}
