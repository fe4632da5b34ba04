//! API tokens of `flagstore serve`: random text shown once, stored only as its SHA-256.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A token's text starts with this, so a leaked one is recognisable in logs and by secret
/// scanners.
pub const PREFIX: &str = "fst_";

/// A new token: [`PREFIX`] and 32 random bytes from the operating system, in hex.
pub fn generate() -> Result<String> {
    Ok(format!("{PREFIX}{}", random_hex()?))
}

/// 32 random bytes from the operating system, in hex: a secret nobody can guess.
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::System {
        message: format!("no random bytes from the operating system: {e}"),
    })?;
    Ok(crate::hex::lowercase(&bytes))
}

/// The SHA-256 of a token's text, in lowercase hex: what the store keeps and looks up.
pub fn sha256_hex(token: &str) -> String {
    crate::hex::lowercase(&Sha256::digest(token.as_bytes()))
}

/// What a token may do. Each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// Evaluate flags (OFREP) and read flags, the audit log and explanations.
    Viewer,
    /// Also change flags: the kill switch, rollouts.
    Operator,
    /// Also create and revoke tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(text: &str) -> Result<Role> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(Error::UnknownRole {
                value: other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed_as_sha256() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64, "{a}");
        // Python: hashlib.sha256(b"fst_x").hexdigest()
        assert_eq!(
            sha256_hex("fst_x"),
            "cf9e8eeb30e429cfd4503bdd1967880e192b79ac0cc810b5d9be1b1bad870022"
        );
    }
}
