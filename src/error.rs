//! The library's one error type. Every message names the flag, file, line or value at fault,
//! because it is printed to an operator as the only line they get.

use std::io;

/// A database's own error, worded where it happened (inside the store, from the SQLite or
/// PostgreSQL driver's or the migration runner's error), so that nothing outside `src/store`
/// names a database crate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DatabaseError {
    pub(crate) message: String,
    /// SQLite refused a write to a file this user may only read.
    pub(crate) read_only: bool,
    /// SQLite found the database's file full (`SQLITE_FULL`).
    pub(crate) full: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a store in memory ([`Store::open_in_memory`](crate::Store::open_in_memory)) is named in
/// messages, as SQLite names one.
pub const IN_MEMORY: &str = ":memory:";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid flag name {name:?}: {why}")]
    InvalidName { name: String, why: String },

    #[error("flag {flag:?}: rollout_pct {value} is outside 0-100")]
    RolloutOutOfRange { flag: String, value: String },

    #[error("unknown sticky policy {value:?} (expected on_only, all or none)")]
    UnknownStickyPolicy { value: String },

    #[error(
        "flag {flag:?} requires unknown flag {requires:?}{}",
        did_you_mean(suggestion)
    )]
    UnknownRequirement {
        flag: String,
        requires: String,
        suggestion: Option<String>,
    },

    #[error("flag {flag:?} requires itself")]
    SelfDependency { flag: String },

    #[error("the wait for the store's write lock was interrupted; nothing was written")]
    Interrupted,

    #[error("flag {flag:?} lists requirement {requires:?} twice")]
    RepeatedRequirement { flag: String, requires: String },

    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },

    #[error(
        "a dependency chain of {} flags is longer than the limit of {}: {}",
        chain.len(),
        limit,
        chain_shown(chain)
    )]
    ChainTooLong { chain: Vec<String>, limit: usize },

    #[error("cannot delete flag {flag:?}: required by {}", dependents.join(", "))]
    RequiredBy {
        flag: String,
        dependents: Vec<String>,
    },

    #[error("unknown flag {name:?}{}", did_you_mean(suggestion))]
    UnknownFlag {
        name: String,
        suggestion: Option<String>,
    },

    #[error(
        "unknown flag {name:?}{}; create a flag with `flagstore flag create`",
        did_you_mean(suggestion)
    )]
    NoSuchFlagToSet {
        name: String,
        suggestion: Option<String>,
    },

    #[error("flag {name:?} already exists; change it with `flagstore flag set`")]
    FlagExists { name: String },

    #[error("{path}: {at}: {why}")]
    BadDocument {
        path: String,
        at: String,
        why: String,
    },

    #[error("flag {name:?} appears twice (flags[{first}] and flags[{second}])")]
    DuplicateName {
        name: String,
        first: usize,
        second: usize,
    },

    #[error("{path}: line {line}, column {column}: {message}")]
    MalformedJson {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// A validation error found while reading a file, so the message can name the file.
    #[error("{path}: {source}")]
    InFile { path: String, source: Box<Error> },

    #[error("{path}: line {line}: {why}")]
    BadContextLine {
        path: String,
        line: u64,
        why: String,
    },

    #[error("context key {}: {why}", shortened_key(key))]
    InvalidContextKey { key: String, why: String },

    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },

    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },

    #[error("{path} is not a flagstore database: {detail}")]
    NotADatabase { path: String, detail: String },

    #[error(
        "{path} was migrated by a newer flagstore (schema version {found}; this flagstore knows up to {supported})"
    )]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },

    #[error("audit log does not verify at row {id}: {why}")]
    AuditChain { id: i64, why: String },

    #[error(
        "audit log does not contain checkpoint {hash}{at}: it has {rows} rows that verify (rows deleted from the end, or the chain rewritten)"
    )]
    CheckpointMissing { hash: String, at: String, rows: i64 },

    #[error("{path}: {why}")]
    BadKey { path: String, why: String },

    #[error("{path}: is {kind}, not a file: heads are appended to a file and read back")]
    HeadsNotAFile { path: String, kind: &'static str },

    #[error("{path}: {at}: {why}")]
    BadHeads {
        path: String,
        at: String,
        why: String,
    },

    #[error("the witness at {url} did not take the head of {size} rows: {why}")]
    Witness { url: String, size: u64, why: String },

    /// The store no longer holds what a signed head covers, or cannot extend it.
    #[error("{path}: {at}: {why}")]
    HeadMismatch {
        path: String,
        at: String,
        why: String,
    },

    #[error("{path}: not a checkpoint file: {why}")]
    BadCheckpoint { path: String, why: String },

    #[error("audit row {id} cannot be read: {why}")]
    UnreadableAuditRow { id: i64, why: String },

    /// A row of `table` holding a value of a type flagstore never stores there (SQLite keeps
    /// any value in any column; an edit made by SQL), `row` saying which.
    #[error("{table}: {row} cannot be read: {why}")]
    UnreadableRow {
        table: &'static str,
        row: String,
        why: String,
    },

    /// Ranges of one flag that overlap (flagstore writes them disjoint; one added by SQL).
    #[error(
        "audit_ranges: ranges {first_id}-{last_id} and {shown_first}-{shown_last} of flag \
         {flag:?} overlap, so records oldest first cannot be shown once each and in order; \
         check names the ids the wrong one lists; newest first they show once each"
    )]
    OverlappingRanges {
        flag: String,
        first_id: i64,
        last_id: i64,
        shown_first: i64,
        shown_last: i64,
    },

    #[error("{path}: database disk image is malformed: {problem}")]
    Damaged { path: String, problem: String },

    #[error("{path}: {problem}")]
    Inconsistent { path: String, problem: String },

    #[error(
        "invalid time {value:?}: expected RFC 3339 (2026-11-23T20:45:00Z) or a date (2026-11-23)"
    )]
    InvalidTime { value: String },

    #[error(
        "--at {value} is in the future (the store's clock says {now}): without --at, explain \
         answers as of now"
    )]
    FutureTime { value: String, now: String },

    #[error(
        "{path}: no such database (create one with `flagstore init` or `flagstore import FILE`, or name another with --db)"
    )]
    NoDatabase { path: String },

    /// The command was given something it cannot do (an option combination, a missing token).
    #[error("{message}")]
    Usage { message: String },

    /// The system failed the process: a thread or runtime that would not start or panicked,
    /// no random bytes. Not the caller's mistake.
    #[error("{message}")]
    System { message: String },

    #[error("{path} is {kind}, not a database file")]
    NotAFile { path: String, kind: &'static str },

    #[error("{path} already exists")]
    AlreadyExists { path: String },

    #[error("{path}: the database is read-only for this user ({source})")]
    ReadOnly { path: String, source: DatabaseError },

    #[error("cannot open database {path}: {source}")]
    Open { path: String, source: DatabaseError },

    #[error("database error: {0}")]
    Database(DatabaseError),

    /// "database or disk is full" would send an operator to look for a full disk.
    #[error(
        "{path}: the store is full: one kept in memory holds at most 2 GiB (the most SQLite \
         allocates at once), and the write that found it full recorded nothing; keep the store in a \
         file to record more"
    )]
    InMemoryFull { path: String },

    /// A sort larger than memory spills to SQLite's temporary directory (`check`'s of the log
    /// by context): "database or disk is full" would send an operator to the store's disk,
    /// which the command does not write.
    #[error(
        "{path}: the temporary directory {dir} is full: SQLite sorts there what outgrows its \
         memory (check's sort of the log by context takes about half the database's size); set \
         SQLITE_TMPDIR to a directory with room"
    )]
    TemporaryDirectoryFull { path: String, dir: String },

    /// A database error with the file it happened in: "database or disk is full",
    /// "database disk image is malformed", "database is locked" name no file by themselves.
    #[error("{path}: {source}")]
    AtDatabase { path: String, source: DatabaseError },

    /// Names the server and database, never the password.
    #[error("{server}: {source}")]
    Postgres {
        server: String,
        source: DatabaseError,
    },

    /// The connection was lost during COMMIT, and a new one found that nothing was committed.
    #[error("{cause} (the connection was lost during commit; nothing of it was committed)")]
    NotCommitted { cause: String },

    /// The connection was lost during COMMIT, and the server could not be asked since.
    #[error(
        "{cause} (the connection was lost during commit, and whether it landed is unknown: {why})"
    )]
    CommitOutcomeUnknown { cause: String, why: String },

    #[error(
        "flag {flag:?} changed since version {expected} (now version {current}); read it again and redo the change"
    )]
    StaleVersion {
        flag: String,
        expected: i64,
        current: i64,
    },

    #[error("unknown token role {value:?} (expected viewer, operator or admin)")]
    UnknownRole { value: String },

    #[error("{message}")]
    InvalidFilter { message: String },

    #[error("{what} {value} is outside {range}")]
    OutOfRange {
        what: &'static str,
        value: String,
        range: String,
    },

    #[error("invalid token name {name:?}: {why}")]
    InvalidTokenName { name: String, why: String },

    #[error("a token named {name:?} exists already (names are never reused; pick another)")]
    TokenExists { name: String },

    #[error("no active token named {name:?} (see `flagstore token list`)")]
    UnknownToken { name: String },

    #[error("cannot serve on {address}: {source}")]
    Listen { address: String, source: io::Error },

    #[error("{url}: not a PostgreSQL URL: {why}")]
    BadUrl { url: String, why: String },

    #[error(
        "{path} is not empty ({holds}); copy into a new SQLite file or an empty PostgreSQL schema"
    )]
    NotEmpty { path: String, holds: String },

    #[error("migrating {path} failed: {source}")]
    Migration { path: String, source: DatabaseError },
}

/// What kind of fault an error is, for callers that map errors to types of their own (the
/// Python package raises `ValueError` for input, an `OSError` for storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// What the caller gave is wrong: a definition, a name, a time, a filter, a URL.
    Input,
    /// The store could not be opened, read or written.
    Storage,
    Other,
}

impl Error {
    pub fn fault(&self) -> Fault {
        match self {
            Error::InFile { source, .. } => source.fault(),
            Error::InvalidName { .. }
            | Error::RolloutOutOfRange { .. }
            | Error::UnknownStickyPolicy { .. }
            | Error::UnknownRequirement { .. }
            | Error::SelfDependency { .. }
            | Error::RepeatedRequirement { .. }
            | Error::Cycle { .. }
            | Error::ChainTooLong { .. }
            | Error::RequiredBy { .. }
            | Error::UnknownFlag { .. }
            | Error::NoSuchFlagToSet { .. }
            | Error::FlagExists { .. }
            | Error::BadDocument { .. }
            | Error::DuplicateName { .. }
            | Error::MalformedJson { .. }
            | Error::InvalidContextKey { .. }
            | Error::InvalidTime { .. }
            | Error::FutureTime { .. }
            | Error::InvalidFilter { .. }
            | Error::OutOfRange { .. }
            | Error::UnknownRole { .. }
            | Error::InvalidTokenName { .. }
            | Error::TokenExists { .. }
            | Error::UnknownToken { .. }
            | Error::BadUrl { .. }
            | Error::BadKey { .. }
            | Error::BadHeads { .. }
            | Error::HeadsNotAFile { .. } => Fault::Input,
            Error::Read { .. }
            | Error::Write { .. }
            | Error::NotADatabase { .. }
            | Error::NewerSchema { .. }
            | Error::NoDatabase { .. }
            | Error::NotAFile { .. }
            | Error::AlreadyExists { .. }
            | Error::ReadOnly { .. }
            | Error::Open { .. }
            | Error::Database(_)
            | Error::AtDatabase { .. }
            | Error::InMemoryFull { .. }
            | Error::Postgres { .. }
            | Error::NotCommitted { .. }
            | Error::CommitOutcomeUnknown { .. }
            | Error::Damaged { .. }
            | Error::Inconsistent { .. }
            | Error::AuditChain { .. }
            | Error::HeadMismatch { .. }
            | Error::Witness { .. }
            | Error::UnreadableAuditRow { .. }
            | Error::UnreadableRow { .. }
            | Error::OverlappingRanges { .. }
            | Error::Migration { .. } => Fault::Storage,
            _ => Fault::Other,
        }
    }
}

/// `text` cut to its first `shown` characters, with `…` where something was cut: an error
/// message stays one readable line whatever it quotes.
pub fn shortened(text: &str, shown: usize) -> String {
    match text.char_indices().nth(shown) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A long chain as one line: its first three and last two links.
fn chain_shown(chain: &[String]) -> String {
    if chain.len() <= 6 {
        return chain.join(" -> ");
    }
    format!(
        "{} -> … -> {}",
        chain[..3].join(" -> "),
        chain[chain.len() - 2..].join(" -> ")
    )
}

/// A context key as an error quotes it: its start, escaped, so the line stays short.
fn shortened_key(key: &str) -> String {
    format!("{:?}", shortened(key, 40))
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean {name:?}?)"),
        None => String::new(),
    }
}

impl Error {
    /// Names the database file in a bare SQLite error.
    pub fn at_database(self, path: &str) -> Error {
        match self {
            Error::Database(source) if source.read_only => Error::ReadOnly {
                path: path.to_string(),
                source,
            },
            Error::Database(source) if source.full && path == IN_MEMORY => Error::InMemoryFull {
                path: path.to_string(),
            },
            Error::Database(source) => Error::AtDatabase {
                path: path.to_string(),
                source,
            },
            other => other,
        }
    }

    pub fn in_file(self, path: &str) -> Error {
        Error::InFile {
            path: path.to_string(),
            source: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_cuts_only_what_is_longer() {
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "abc…");
        assert_eq!(shortened("éé", 1), "é…");
        assert_eq!(shortened("", 0), "");
    }
}
