//! API tokens for `serve`: stored as the SHA-256 of their text, each creation and revocation
//! a change row of the audit log that names no flag. A token row the change rows do not
//! explain (inserted or edited by SQL) is refused by `serve` and named by `check`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::audit::Entry;
use crate::error::{Error, Result};
use crate::token::Role;

use super::{Reads, Store, WriteTx, append_audit};

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
        append_token_change(&tx, "token_create", name, Some((role, sha256)), actor, &ts)?;
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

    /// The API tokens the chain explains (their role, creation and revocation are those their
    /// change rows leave), by name, from one snapshot: what `serve` accepts.
    pub fn explained_tokens(&self) -> Result<Vec<TokenRecord>> {
        let tx = self.read_transaction()?;
        let history = token_history(&*tx)?;
        Ok(tx
            .list_tokens(true)?
            .into_iter()
            .filter(|token| token_differences(token, &history).is_empty())
            .collect())
    }
}

/// What the token change rows leave of one token.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TokenState {
    role: String,
    created_at: String,
    revoked_at: Option<String>,
    /// The SHA-256 of the token's stored digest, which its creation row binds; `None` for a
    /// token created before creation rows did.
    digest_sha256: Option<String>,
}

/// What the token change rows leave, by token name.
pub(super) type TokenHistory = BTreeMap<String, TokenState>;

/// Replays the token change rows, oldest first.
pub(super) fn token_history(reads: &dyn Reads) -> Result<TokenHistory> {
    let mut history = TokenHistory::new();
    for (id, action, ts, detail) in reads.token_changes()? {
        let unreadable = |why: String| Error::UnreadableAuditRow { id, why };
        let detail: serde_json::Value =
            serde_json::from_str(&detail).map_err(|e| unreadable(e.to_string()))?;
        let name = detail["token"]
            .as_str()
            .ok_or_else(|| unreadable("detail.token is not a token's name".to_string()))?
            .to_string();
        if action == "token_create" {
            let role = detail["role"].as_str().unwrap_or_default().to_string();
            let state = TokenState {
                role,
                created_at: ts,
                revoked_at: None,
                digest_sha256: detail["digest_sha256"].as_str().map(str::to_string),
            };
            history.insert(name, state);
        } else if let Some(state) = history.get_mut(&name) {
            state.revoked_at = Some(ts);
        }
    }
    Ok(history)
}

/// How `token` differs from what its change rows leave, a line per field with both values;
/// none when they explain it. The chain holds not the token's digest (reviewers are kept from
/// those) but the digest's own SHA-256, which names a digest swapped under the token's name
/// and cannot be turned back into one that `serve` would accept.
fn token_differences(token: &TokenRecord, history: &TokenHistory) -> Vec<String> {
    let Some(state) = history.get(&token.name) else {
        return vec![format!(
            "api_tokens: token {:?} is stored, but no change row created it",
            token.name
        )];
    };
    let shown = |time: &Option<String>| time.clone().unwrap_or_else(|| "(none)".to_string());
    [
        ("role", token.role.as_str().to_string(), state.role.clone()),
        (
            "created_at",
            token.created_at.clone(),
            state.created_at.clone(),
        ),
        (
            "revoked_at",
            shown(&token.revoked_at),
            shown(&state.revoked_at),
        ),
    ]
    .into_iter()
    // A digest read as empty was not read (a role that may not: see `list_tokens`); a stored
    // one is 64 hex digits.
    .chain(
        state
            .digest_sha256
            .as_ref()
            .filter(|_| !token.sha256.is_empty())
            .map(|bound| {
                (
                    "the SHA-256 of token_sha256",
                    crate::token::sha256_hex(&token.sha256),
                    bound.clone(),
                )
            }),
    )
    .filter(|(_, live, recorded)| live != recorded)
    .map(|(field, live, recorded)| {
        format!(
            "api_tokens: token {:?}: {field} is {live} in the table, {recorded} by its change \
             rows",
            token.name
        )
    })
    .collect()
}

/// A line per `api_tokens` row the token change rows do not explain (an admin token inserted
/// by SQL, a role raised, a revocation undone) and per token they leave that the table lacks.
pub(super) fn unexplained_tokens(stored: &[TokenRecord], history: &TokenHistory) -> Vec<String> {
    let mut found: Vec<String> = stored
        .iter()
        .flat_map(|token| token_differences(token, history))
        .collect();
    for name in history.keys() {
        if !stored.iter().any(|token| &token.name == name) {
            found.push(format!(
                "api_tokens: token {name:?} is missing from the table, but its change rows leave it"
            ));
        }
    }
    found
}

/// The change row of a token created (with its role and stored digest) or revoked: it names
/// the token, never its text nor its digest, and binds the digest by its own SHA-256.
fn append_token_change(
    tx: &WriteTx,
    action: &str,
    name: &str,
    created: Option<(Role, &str)>,
    actor: &str,
    ts: &str,
) -> Result<()> {
    let done = match created {
        Some((role, _)) => format!("created with role {}", role.as_str()),
        None => "revoked".to_string(),
    };
    let mut detail = json!({ "token": name });
    if let Some((role, digest)) = created {
        detail["role"] = json!(role.as_str());
        detail["digest_sha256"] = json!(crate::token::sha256_hex(digest));
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
