//! API tokens for `serve`: stored as the SHA-256 of their text, each creation and revocation
//! a change row of the audit log that names no flag.

use serde_json::json;

use crate::audit::Entry;
use crate::error::{Error, Result};
use crate::token::Role;

use super::{Store, WriteTx, append_audit};

/// An API token of `flagstore serve`, as stored: only the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub name: String,
    pub sha256: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl Store {
    /// Stores a new API token (only its SHA-256) under `name`, audited as a change by `actor`.
    /// A name in use, even by a revoked token, is refused: the audit log names tokens, so a
    /// name must mean one token forever.
    pub fn create_token(
        &mut self,
        name: &str,
        sha256: &str,
        role: Role,
        actor: &str,
    ) -> Result<()> {
        // Token names follow the rules of flag names: printable, at most 128 characters.
        crate::flag::validate_name(name).map_err(|error| match error {
            Error::InvalidName { name, why } => Error::InvalidTokenName { name, why },
            other => other,
        })?;
        let tx = self.write_transaction()?;
        if tx.list_tokens(false)?.iter().any(|t| t.name == name) {
            return Err(Error::TokenExists {
                name: name.to_string(),
            });
        }
        let ts = self.now();
        tx.insert_token(&TokenRecord {
            name: name.to_string(),
            sha256: sha256.to_string(),
            role,
            created_at: ts.clone(),
            revoked_at: None,
        })?;
        append_token_change(&tx, "token_create", name, Some(role), actor, &ts)?;
        tx.commit()
    }

    /// Revokes the active token `name`, audited as a change by `actor`.
    pub fn revoke_token(&mut self, name: &str, actor: &str) -> Result<()> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        if !tx.revoke_token(name, &ts)? {
            return Err(Error::UnknownToken {
                name: name.to_string(),
            });
        }
        append_token_change(&tx, "token_revoke", name, None, actor, &ts)?;
        tx.commit()
    }

    /// Every API token, active and revoked, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read_transaction()?.list_tokens(true)
    }
}

/// The change row of a token created or revoked: it names the token, never its text.
fn append_token_change(
    tx: &WriteTx,
    action: &str,
    name: &str,
    role: Option<Role>,
    actor: &str,
    ts: &str,
) -> Result<()> {
    let done = match role {
        Some(role) => format!("created with role {}", role.as_str()),
        None => "revoked".to_string(),
    };
    let mut detail = json!({ "token": name });
    if let Some(role) = role {
        detail["role"] = json!(role.as_str());
    }
    append_audit(
        tx,
        &[Entry {
            ts,
            kind: "change",
            actor,
            action: Some(action),
            flag: None,
            context_key: None,
            result: None,
            source: None,
            reason: Some(&format!("token {name:?} {done}")),
            detail: &detail.to_string(),
        }],
    )
    .map(|_| ())
}
