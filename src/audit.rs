//! Tamper evidence for the audit log: each row carries the SHA-256 of the previous row's hash
//! and its own columns, so editing, removing or reordering any row breaks the chain.
//!
//! The encoding is deliberately trivial so a reviewer can recompute it in a few lines of any
//! language (README.md has a Python version). Hash input, as bytes:
//!
//! ```text
//! prev_hash (64 lowercase hex characters)
//! then, for each of id, ts, kind, actor, action, flag, context_key, result, source, reason,
//! detail, in that order:
//!   NULL     -> "N"
//!   integer  -> "I" + decimal digits + ";"
//!   text     -> "T" + byte length in decimal + ":" + the UTF-8 bytes
//! ```
//!
//! `hash` is the lowercase hex SHA-256 of that input. The first row's `prev_hash` is
//! [`GENESIS_HASH`].

use chrono::{DateTime, DurationRound, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, shortened};

/// The `prev_hash` of row 1: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One `audit_log` row, as stored; or, read through [`AuditQuery`], one decision of a
/// decision record, with its flag, result, source and reason filled in from the record.
/// Serialized as `audit --format json` and the admin API show it: every column, `detail` as
/// the JSON it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    /// Shared, as `actor` is, by the rows of a page that show the same one (the rows of one
    /// transaction share their time): a walk of the chain builds a million rows a second,
    /// and three strings allocated for each were a tenth of its time.
    pub ts: std::sync::Arc<str>,
    /// "evaluation" or "change", borrowed; anything else a tampered row holds, as it is.
    pub kind: std::borrow::Cow<'static, str>,
    pub actor: std::sync::Arc<str>,
    pub action: Option<String>,
    /// `None` only on a decision record as stored.
    pub flag: Option<String>,
    pub context_key: Option<String>,
    pub result: Option<i64>,
    pub source: Option<String>,
    /// `None` only on a decision record as stored.
    pub reason: Option<String>,
    #[serde(serialize_with = "detail_as_json")]
    pub detail: std::sync::Arc<str>,
    pub prev_hash: String,
    pub hash: String,
}

/// `detail` as the JSON it holds, or as a string where a row holds something else (a
/// reviewer reads a damaged row too).
fn detail_as_json<S: serde::Serializer>(
    detail: &std::sync::Arc<str>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(detail) {
        Ok(json) => json.serialize(serializer),
        Err(_) => serializer.serialize_str(detail),
    }
}

/// Which audit rows to read. Every filter is optional and they combine; `since` and `until`
/// are normalized timestamps (see [`parse_time_bound`]), `until` exclusive; `cursor` continues
/// after the row with that id in the chosen order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub flag: Option<String>,
    pub context: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<i64>,
    pub ascending: bool,
    pub cursor: Option<i64>,
}

/// The kinds of audit row.
pub const KINDS: [&str; 2] = ["evaluation", "change"];

/// A stored `kind` as an [`AuditRow`] holds it: one of [`KINDS`] borrowed, anything else (a
/// tampered row) as it is.
pub fn stored_kind(kind: &str) -> std::borrow::Cow<'static, str> {
    match KINDS.iter().find(|known| **known == kind) {
        Some(known) => std::borrow::Cow::Borrowed(known),
        None => std::borrow::Cow::Owned(kind.to_string()),
    }
}

impl AuditQuery {
    /// Every change row in id order, those before `until` when given: what a replay of the
    /// flags' history or of the assignments' removals reads.
    pub fn changes(until: Option<&str>) -> AuditQuery {
        AuditQuery {
            kind: Some("change".to_string()),
            until: until.map(str::to_string),
            ascending: true,
            ..AuditQuery::default()
        }
    }

    /// Refuses a query no row could match because of a mistake, so that a reviewer's typo is
    /// an error naming the value, not a page that looks like "no records": an unknown kind,
    /// a negative cursor, `since` after `until`.
    pub fn check(&self) -> Result<()> {
        if let Some(kind) = self.kind.as_deref().filter(|kind| !KINDS.contains(kind)) {
            let nearest = KINDS
                .iter()
                .min_by_key(|known| strsim::levenshtein(&kind.to_lowercase(), known))
                .copied()
                .unwrap_or("evaluation");
            return Err(Error::InvalidFilter {
                message: format!(
                    "kind {kind:?} is neither evaluation nor change (did you mean {nearest:?}?)"
                ),
            });
        }
        if let Some(context) = &self.context
            && let Some(why) = crate::contexts::key_problem(context)
        {
            return Err(Error::InvalidContextKey {
                key: context.clone(),
                why,
            });
        }
        if let Some(cursor) = self.cursor.filter(|cursor| *cursor < 0) {
            return Err(Error::InvalidFilter {
                message: format!("cursor {cursor} is not a row id (ids start at 1)"),
            });
        }
        if let (Some(since), Some(until)) = (&self.since, &self.until)
            && since >= until
        {
            return Err(Error::InvalidFilter {
                message: format!("since {since} is not before until {until}: no row can match"),
            });
        }
        Ok(())
    }
}

/// Turns a user's `--since`/`--until` value (RFC 3339, or a plain date) into the stored
/// timestamp format, which sorts as text. A date means its midnight (UTC) as a start, and the
/// whole day as an end; `until` bounds are returned exclusive.
pub fn parse_time_bound(value: &str, until: bool) -> Result<String> {
    let invalid = || Error::InvalidTime {
        value: value.to_string(),
    };
    let instant = if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let day = if until {
            date.succ_opt().ok_or_else(invalid)?
        } else {
            date
        };
        day.and_hms_opt(0, 0, 0).ok_or_else(invalid)?.and_utc()
    } else {
        let parsed = DateTime::parse_from_rfc3339(value)
            .map_err(|_| invalid())?
            .with_timezone(&Utc);
        if until {
            // Stored times have millisecond precision: "until T" includes T's millisecond.
            parsed
                .duration_trunc(TimeDelta::milliseconds(1))
                .map_err(|_| invalid())?
                + TimeDelta::milliseconds(1)
        } else {
            parsed
        }
    };
    Ok(timestamp(instant))
}

/// The stored timestamp format: UTC, RFC 3339, milliseconds, `Z`.
pub fn timestamp(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The columns of `audit_log`, in order: the header of CSV exports.
pub const COLUMNS: [&str; 13] = [
    "id",
    "ts",
    "kind",
    "actor",
    "action",
    "flag",
    "context_key",
    "result",
    "source",
    "reason",
    "detail",
    "prev_hash",
    "hash",
];

/// A column value as the hash encodes it.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Null,
    Integer(i64),
    Text(&'a str),
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(text: &'a str) -> Field<'a> {
        Field::Text(text)
    }
}

impl<'a> From<Option<&'a str>> for Field<'a> {
    fn from(text: Option<&'a str>) -> Field<'a> {
        text.map_or(Field::Null, Field::Text)
    }
}

impl From<Option<i64>> for Field<'_> {
    fn from(value: Option<i64>) -> Self {
        value.map_or(Field::Null, Field::Integer)
    }
}

/// The hash of a row whose columns (id through detail, in table order) are `fields`.
fn row_hash(prev_hash: &str, fields: &[Field]) -> String {
    // Runs for every audit row a batch writes, so numbers and hex are formatted without
    // allocating.
    let mut digits = itoa::Buffer::new();
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    for field in fields {
        match field {
            Field::Null => hasher.update(b"N"),
            Field::Integer(value) => {
                hasher.update(b"I");
                hasher.update(digits.format(*value).as_bytes());
                hasher.update(b";");
            }
            Field::Text(text) => {
                hasher.update(b"T");
                hasher.update(digits.format(text.len()).as_bytes());
                hasher.update(b":");
                hasher.update(text.as_bytes());
            }
        }
    }
    crate::hex::lowercase(&hasher.finalize())
}

impl AuditRow {
    /// The hash this row should carry, given the chain before it.
    pub fn expected_hash(&self, prev_hash: &str) -> String {
        self.entry().hash(self.id, prev_hash)
    }

    /// Whether the row's `hash` is the one its columns and its `prev_hash` give; whether
    /// `prev_hash` is the previous row's is the chain's to say ([`ChainVerifier`]).
    pub fn hash_matches(&self) -> bool {
        self.hash == self.expected_hash(&self.prev_hash)
    }

    /// The row as `flagstore audit export` writes it, one JSON object: exactly the fields the
    /// hash covers, `detail` as the very text hashed (parsed and written again, JSON may
    /// spell its numbers otherwise: `0.00001`, `1e-7`), and both hashes.
    pub fn stored_json(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "action": self.action,
            "flag": self.flag,
            "context_key": self.context_key,
            "result": self.result,
            "source": self.source,
            "reason": self.reason,
            "detail": &*self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
        .to_string()
    }

    /// The row as CSV exports write it, one field per [`COLUMNS`] entry, every field a
    /// spreadsheet would take for a formula made inert (see [`spreadsheet_safe`]).
    pub fn csv_record(&self) -> Vec<String> {
        self.fields().into_iter().map(spreadsheet_safe).collect()
    }

    /// The row's values as text, one per [`COLUMNS`] entry, as stored.
    pub fn fields(&self) -> Vec<String> {
        let optional = |value: &Option<String>| value.clone().unwrap_or_default();
        vec![
            self.id.to_string(),
            self.ts.to_string(),
            self.kind.to_string(),
            self.actor.to_string(),
            optional(&self.action),
            optional(&self.flag),
            optional(&self.context_key),
            self.result.map_or(String::new(), |r| r.to_string()),
            optional(&self.source),
            optional(&self.reason),
            self.detail.to_string(),
            self.prev_hash.clone(),
            self.hash.clone(),
        ]
    }

    /// The row's hashed columns, borrowed.
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            ts: &self.ts,
            kind: &self.kind,
            actor: &self.actor,
            action: self.action.as_deref(),
            flag: self.flag.as_deref(),
            context_key: self.context_key.as_deref(),
            result: self.result,
            source: self.source.as_deref(),
            reason: self.reason.as_deref(),
            detail: &self.detail,
        }
    }
}

/// The columns of an audit row that its writer supplies: all but `id` and the two hashes.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub ts: &'a str,
    pub kind: &'a str,
    pub actor: &'a str,
    pub action: Option<&'a str>,
    pub flag: Option<&'a str>,
    pub context_key: Option<&'a str>,
    pub result: Option<i64>,
    pub source: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub detail: &'a str,
}

impl Entry<'_> {
    /// The row's `hash` once it is stored as row `id` after a row whose hash is `prev_hash`.
    /// The one place that fixes which columns are hashed, and in which order.
    pub fn hash(&self, id: i64, prev_hash: &str) -> String {
        row_hash(
            prev_hash,
            &[
                Field::Integer(id),
                self.ts.into(),
                self.kind.into(),
                self.actor.into(),
                self.action.into(),
                self.flag.into(),
                self.context_key.into(),
                self.result.into(),
                self.source.into(),
                self.reason.into(),
                self.detail.into(),
            ],
        )
    }
}

/// Where and why the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub id: i64,
    pub why: String,
}

/// Walks rows in id order and checks the chain: ids gapless from 1, each `prev_hash` equal to
/// the previous row's `hash`, each `hash` equal to the hash of the row's own columns.
#[derive(Debug)]
pub struct ChainVerifier {
    next_id: i64,
    head: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            next_id: 1,
            head: GENESIS_HASH.to_string(),
        }
    }
}

impl ChainVerifier {
    /// A verifier that takes rows 1..=`rows` as verified, the last with hash `head`: from a
    /// signed head, which vouches for them.
    pub fn resume(rows: i64, head: String) -> ChainVerifier {
        ChainVerifier {
            next_id: rows + 1,
            head,
        }
    }

    pub fn check(&mut self, row: &AuditRow) -> Result<(), ChainBreak> {
        self.check_hashed(row, row.hash_matches())
    }

    /// [`ChainVerifier::check`] of a row whose hash was recomputed elsewhere (on another
    /// thread, while the next rows are read): `hash_matches` is [`AuditRow::hash_matches`].
    pub fn check_hashed(&mut self, row: &AuditRow, hash_matches: bool) -> Result<(), ChainBreak> {
        let broken = |why: String| ChainBreak { id: row.id, why };
        if row.id != self.next_id {
            return Err(broken(if row.id > self.next_id {
                format!(
                    "expected row {} next: rows {}..{} are missing",
                    self.next_id,
                    self.next_id,
                    row.id - 1
                )
            } else {
                format!("id out of order: expected {}", self.next_id)
            }));
        }
        if row.prev_hash != self.head {
            return Err(broken(format!(
                "prev_hash {} does not match the previous row's hash {} (broken link)",
                row.prev_hash, self.head
            )));
        }
        if !hash_matches {
            return Err(broken(
                "hash does not match the row's contents (the row was edited)".to_string(),
            ));
        }
        self.next_id += 1;
        self.head = row.hash.clone();
        Ok(())
    }

    /// Rows verified so far.
    pub fn rows(&self) -> i64 {
        self.next_id - 1
    }

    /// The hash of the last verified row (the genesis hash for an empty log).
    pub fn head(&self) -> &str {
        &self.head
    }
}

/// A point of the chain to hold the log to: the row `id` must exist and carry `hash`. Written
/// by `flagstore audit checkpoint` and kept away from the database, it exposes rows deleted from
/// the end, which a chain alone cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// `None` when only the hash is known (`--expect-head`).
    pub id: Option<i64>,
    pub hash: String,
}

impl Checkpoint {
    /// Reads a checkpoint file's text, `{"id": N, "hash": "64 hex digits"}`, saying in words
    /// what is wrong with anything else.
    pub fn parse(text: &str) -> std::result::Result<Checkpoint, String> {
        const SHAPE: &str = r#"expected {"id": N, "hash": "64 hex digits"} as written by `flagstore audit checkpoint`"#;
        let value: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| format!("{e}; {SHAPE}"))?;
        let id = value.get("id").and_then(serde_json::Value::as_i64);
        let hash = value.get("hash").and_then(serde_json::Value::as_str);
        match (value.as_object().map(|o| o.len()), id, hash) {
            (Some(2), Some(id), Some(hash))
                if id > 0 && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(Checkpoint {
                    id: Some(id),
                    hash: hash.to_ascii_lowercase(),
                })
            }
            _ => Err(format!(
                "got {}; {SHAPE}",
                shortened(&value.to_string(), 60)
            )),
        }
    }
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub rows: i64,
    pub head: String,
}

/// `field` as a CSV cell a spreadsheet shows as text: one starting with `=`, `+`, `-`, `@`, a
/// tab or a carriage return (a context key such as `=HYPERLINK("http://evil")`) gets a `'`
/// in front, as OWASP advises, so that a reviewer who opens the export runs nothing. Such a
/// cell is no longer the stored value: JSON Lines exports are the ones to re-hash.
pub fn spreadsheet_safe(field: String) -> String {
    match field.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{field}"),
        _ => field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, prev_hash: &str) -> AuditRow {
        let mut row = AuditRow {
            id,
            ts: "2026-11-23T20:45:37.123Z".into(),
            kind: "evaluation".into(),
            actor: "ops".into(),
            action: None,
            flag: Some("enrich".to_string()),
            context_key: Some("tenant:é".to_string()),
            result: Some(1),
            source: Some("rollout".to_string()),
            reason: Some("rollout: bucket 3 < 50".to_string()),
            detail: "{}".into(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        row.hash = row.expected_hash(prev_hash);
        row
    }

    #[test]
    fn a_stored_kind_is_kept_as_stored() {
        assert!(matches!(
            stored_kind("change"),
            std::borrow::Cow::Borrowed("change")
        ));
        assert!(matches!(
            stored_kind("evaluation"),
            std::borrow::Cow::Borrowed(_)
        ));
        // A tampered row's kind is what the hash is checked against, byte for byte.
        assert_eq!(stored_kind("Change"), "Change");
        assert_eq!(stored_kind(""), "");
    }

    #[test]
    fn a_checkpoint_names_a_row_that_can_exist() {
        let hash = "ab".repeat(32);
        let parsed = Checkpoint::parse(&format!(
            r#"{{"id": 1, "hash": "{}"}}"#,
            hash.to_uppercase()
        ));
        assert_eq!(
            parsed,
            Ok(Checkpoint {
                id: Some(1),
                hash: hash.clone()
            })
        );
        for bad in [
            format!(r#"{{"id": 0, "hash": "{hash}"}}"#),
            format!(r#"{{"id": 1, "hash": "{}"}}"#, &hash[1..]),
            format!(r#"{{"id": 1, "hash": "{}zz"}}"#, &hash[2..]),
            format!(r#"{{"id": 1, "hash": "{hash}", "extra": 1}}"#),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // Literals from Python's hashlib, following the README's description:
        // hashlib.sha256(b"0" * 64 + "I1;NT2:é".encode()).hexdigest()
        assert_eq!(
            row_hash(
                GENESIS_HASH,
                &[Field::Integer(1), Field::Null, Field::Text("é")]
            ),
            "789d390a28c6ffee82fea740bdbec098d15b7cab58b493e4b24877a14c7d30d5"
        );
        // The whole row of `row(1, GENESIS_HASH)`, every column encoded as the README says.
        assert_eq!(
            row(1, GENESIS_HASH).hash,
            "fbe92c500e22171c135ba1b93c13e40d4388c17be231b6aaa479ba770e645493"
        );
    }

    #[test]
    fn a_sound_chain_verifies() {
        let first = row(1, GENESIS_HASH);
        let second = row(2, &first.hash);
        let mut verifier = ChainVerifier::default();
        assert_eq!(verifier.check(&first), Ok(()));
        assert_eq!(verifier.check(&second), Ok(()));
        assert_eq!(verifier.rows(), 2);
        assert_eq!(verifier.head(), second.hash);
    }

    #[test]
    fn edits_gaps_and_broken_links_are_named() {
        let first = row(1, GENESIS_HASH);
        let mut edited = first.clone();
        edited.result = Some(0);
        let why = ChainVerifier::default().check(&edited).unwrap_err();
        assert_eq!(why.id, 1);
        assert!(why.why.contains("edited"), "{}", why.why);

        let mut verifier = ChainVerifier::default();
        verifier.check(&first).unwrap();
        let gap = verifier.check(&row(3, &first.hash)).unwrap_err();
        assert_eq!(gap.why, "expected row 2 next: rows 2..2 are missing");

        let unlinked = row(2, GENESIS_HASH);
        assert!(
            verifier
                .check(&unlinked)
                .unwrap_err()
                .why
                .contains("broken link")
        );
    }
}
