//! The store: flags, sticky assignments and the audit trail, in SQLite or PostgreSQL. The only
//! module that speaks SQL.
//!
//! Each public method of [`Store`] is one whole transaction. The rules (which flags a request
//! evaluates, what is stored, what is audited, how the chain is extended) are written once
//! here, over the `Backend` trait; `sqlite.rs` and `postgres.rs` only say how each step is
//! done in their SQL. Every write transaction holds the store's single writer lock from its
//! first read, so two processes evaluating the same (flag, context), on one machine or many,
//! end with one assignment and the same answer, the audit chain never forks, and every write
//! lands together with its audit rows or not at all.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::{Entry, GENESIS_HASH, timestamp};
use crate::change::{self, Change};
use crate::error::{Error, Result};
use crate::eval::{self, ContextEvaluation, Evaluation, NewAssignment, StoredAssignment};
use crate::flag::{Flag, FlagSet};
use crate::record;
use crate::token::Role;

mod copy;
mod postgres;
mod query;
mod ranges;
mod review;
mod sqlite;

pub use copy::CopyReport;
pub use postgres::{
    ScratchSchema, describe as describe_postgres_error, redacted_url, url_to_repeat,
};
pub use ranges::{IndexReport, Reindexed, Runs};
pub use review::{DEFAULT_STALE_DAYS, StaleFlag};

/// How long a writer whose connection was cut during COMMIT keeps trying to ask the server
/// whether it landed, before it reports that it cannot tell.
const COMMIT_OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// How long a writer keeps retrying a busy database before reporting it.
const BUSY_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Evaluations per transaction in a batch (as whole keys: all of a key's flags commit
/// together): large enough that commits are a small share of the work, small enough that a
/// crash loses little and other writers wait at most a few tens of milliseconds. Side by side
/// against 10,000, this cost 2-6% of throughput and halved the time each transaction holds
/// the write lock.
pub const BATCH_EVALUATIONS: usize = 5_000;

/// Keys per batch transaction when each key is evaluated for `flags` flags.
pub fn keys_per_transaction(flags: usize) -> usize {
    (BATCH_EVALUATIONS / flags.max(1)).max(1)
}

/// Where a store lives: `--db` or `$FLAGSTORE_DB`, a `postgres://` or `postgresql://` URL, or
/// else the path of an SQLite file.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    pub fn parse(text: &OsStr) -> Location {
        match text.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Location::Postgres(url.to_string())
            }
            _ => Location::Sqlite(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for Location {
    /// The location as messages name it: never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redacted_url(url)),
        }
    }
}

/// Which flags to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    Flags(Vec<String>),
}

impl Selection {
    fn names<'a>(&'a self, flags: &'a FlagSet) -> Vec<&'a str> {
        match self {
            Selection::All => flags.names().collect(),
            Selection::Flags(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// One evaluation request of many answered together ([`Store::evaluate_requests`]).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub selection: &'a Selection,
    pub context: &'a str,
    pub actor: &'a str,
}

/// What a batch evaluation did, for throughput and latency reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReport {
    pub evaluations: u64,
    /// Wall time of each transaction, from taking the write lock to the commit.
    pub batch_latencies: Vec<Duration>,
}

/// A flag with the flags that require it and its bookkeeping times.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagRecord {
    pub flag: Flag,
    pub required_by: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A flag's stored assignments, counted for an operator about to change it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssignmentTally {
    pub on: i64,
    pub off: i64,
    /// Assignments whose stored decision differs from what their bucket gives under the
    /// rollout the tally was asked about: the contexts a sticky assignment keeps from it.
    pub kept_from_rollout: i64,
}

/// A row of the `assignments` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentRow {
    pub flag: String,
    pub context_key: String,
    pub decision: bool,
    pub bucket: u8,
    pub rollout_pct: f64,
    pub assigned_at: String,
}

impl AssignmentRow {
    /// The row as `assignments list --json` and the admin API show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flag": self.flag,
            "context": self.context_key,
            "decision": self.decision,
            "bucket": self.bucket,
            "rollout_pct": crate::output::percentage(self.rollout_pct),
            "assigned_at": self.assigned_at,
        })
    }
}

/// An API token of `flagstore serve`, as stored: only the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub name: String,
    pub sha256: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// An assignment that differs from the record that stored it: the table's values and the
/// record's, as `(decision, bucket, rollout_pct)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Misrecorded {
    pub flag: String,
    pub context_key: String,
    pub stored: (i64, i64, f64),
    pub record_id: i64,
    pub recorded: (i64, i64, f64),
}

/// An assignment about to be stored, borrowed from a decision or from a row being copied.
struct AssignmentRef<'a> {
    flag: &'a str,
    context_key: &'a str,
    decision: bool,
    bucket: u8,
    rollout_pct: f64,
    assigned_at: &'a str,
}

impl<'a> AssignmentRef<'a> {
    fn new(context_key: &'a str, assignment: &'a NewAssignment, assigned_at: &'a str) -> Self {
        AssignmentRef {
            flag: &assignment.flag,
            context_key,
            decision: assignment.decision,
            bucket: assignment.bucket,
            rollout_pct: assignment.rollout_pct,
            assigned_at,
        }
    }
}

impl<'a> From<&'a AssignmentRow> for AssignmentRef<'a> {
    fn from(row: &'a AssignmentRow) -> Self {
        AssignmentRef {
            flag: &row.flag,
            context_key: &row.context_key,
            decision: row.decision,
            bucket: row.bucket,
            rollout_pct: row.rollout_pct,
            assigned_at: &row.assigned_at,
        }
    }
}

/// An audit row about to be stored: its columns, its id and its place in the chain.
struct ChainedEntry<'a> {
    id: i64,
    entry: Entry<'a>,
    prev_hash: &'a str,
    hash: &'a str,
}

/// Which audit rows one scan reads, beyond the query's own filters.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Everything,
    /// Rows whose `flag` column is this flag: changes and schema-1 evaluations.
    FlagColumn(&'a str),
    /// Decision records with ids in this range.
    Records {
        first_id: i64,
        last_id: i64,
    },
    /// Every row with an id in this range.
    Ids {
        first_id: i64,
        last_id: i64,
    },
}

/// One page of audit rows: `scope` under the query's filters (all but `flag`, which decision
/// records answer inside their detail), after `cursor` in the query's order, at most `limit`.
#[derive(Debug, Clone, Copy)]
struct Scan<'a> {
    query: &'a crate::audit::AuditQuery,
    scope: Scope<'a>,
    cursor: Option<i64>,
    /// The newest row a scan read in short transactions shows: the head when it began.
    through: Option<i64>,
    limit: usize,
}

/// What a storage engine does, one step at a time. Every method but `begin_*` runs inside a
/// transaction the caller began. Implementations keep their own connection state; methods take
/// `&self` so a [`Transaction`] guard can hold the backend while steps run.
trait Backend: Send {
    /// The database as messages name it: a path, or a URL without its password.
    fn name(&self) -> &str;

    /// Begins a transaction holding the store's writer lock, waiting up to `lock_wait` for it.
    fn begin_write(&self, lock_wait: Duration) -> Result<()>;
    /// Begins a read-only transaction: one snapshot for all its reads.
    fn begin_read(&self) -> Result<()>;
    fn commit(&self) -> Result<()>;
    fn rollback(&self);

    fn load_flags(&self) -> Result<FlagSet>;
    /// `created_at` and `updated_at` of a flag.
    fn flag_times(&self, name: &str) -> Result<Option<(String, String)>>;
    fn insert_flag(&self, flag: &Flag, created_at: &str, updated_at: &str) -> Result<()>;
    fn update_flag(&self, flag: &Flag, ts: &str) -> Result<()>;
    fn replace_requirements(&self, flag: &str, requires: &[String]) -> Result<()>;
    /// Deletes a flag (its requirements already removed) and its assignments; returns how many
    /// assignments went with it.
    fn delete_flag(&self, name: &str) -> Result<usize>;

    /// Keys per step of a batch transaction (see `EvaluationPlan::evaluate_keys`).
    fn keys_per_step(&self) -> usize;

    /// Calls `found(i, flag, assignment)` for each stored assignment of any of `keys` (each
    /// listed once; `i` is the key's index) for any of `flags`.
    fn fetch_assignments(
        &self,
        flags: &[&str],
        keys: &[&str],
        found: &mut dyn FnMut(usize, String, StoredAssignment),
    ) -> Result<()>;
    /// Stores assignments, none of them stored yet.
    fn insert_assignments(&self, rows: &[AssignmentRef]) -> Result<()>;
    /// Streams assignments, optionally of one flag and/or one context, by flag then context.
    fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        visit: &mut dyn FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()>;
    fn delete_assignments(&self, flag: &str, context: Option<&str>) -> Result<usize>;

    /// Id and hash of the newest audit row.
    fn audit_tail(&self) -> Result<Option<(i64, String)>>;
    /// The hash of audit row `id`, if there is one.
    fn audit_hash(&self, id: i64) -> Result<Option<String>>;
    fn insert_audit(&self, rows: &[ChainedEntry]) -> Result<()>;
    /// Records that the decision records `first_id..=last_id` were asked for each of `flags`.
    fn insert_flag_ranges(&self, flags: &[&str], first_id: i64, last_id: i64) -> Result<()>;
    /// The `(first_id, last_id)` ranges listing `flag`, after `cursor` (ascending: ranges
    /// ending past it; descending: ranges starting before it), in order of `last_id`.
    fn flag_ranges(
        &self,
        flag: &str,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>>;
    /// Up to `limit` flag ranges `(flag, first_id, last_id)` after `(first_id, flag)`, in
    /// that order: the order of the records they list.
    fn ranges_by_first_id(
        &self,
        after: (i64, &str),
        limit: usize,
    ) -> Result<Vec<(String, i64, i64)>>;
    fn audit_page(&self, scan: &Scan) -> Result<Vec<crate::audit::AuditRow>>;
    fn audit_len(&self) -> Result<i64>;

    /// Checks the stored pages and indexes (`quick`: only what is linear in the size); returns
    /// what was checked, in words.
    fn check_storage(&self, quick: bool) -> Result<&'static str>;
    /// A foreign key that does not hold, as `(table, row, parent table)`.
    fn broken_reference(&self) -> Result<Option<(String, String, String)>>;
    /// An assignment, `(flag, context_key)`, with no evaluation row that stored it.
    fn unaudited_assignment(&self) -> Result<Option<(String, String)>>;
    /// An assignment whose decision, bucket or rollout is not what the decision record that
    /// stored it says.
    fn misrecorded_assignment(&self) -> Result<Option<Misrecorded>>;
    fn assignment_count(&self) -> Result<i64>;
    /// Of `flag`'s stored assignments: how many are on, how many off, and how many were
    /// decided otherwise than a hash under `rollout_pct` would decide them now.
    fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally>;

    /// Every API token, active and revoked, by name.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    /// Marks an active token revoked; false when there is no active token of that name.
    fn revoke_token(&self, name: &str, ts: &str) -> Result<bool>;

    /// Writes something every write would, changing nothing (see [`Store::probe_write`]).
    fn rewrite_header(&self) -> Result<()>;
    /// Checkpoints the WAL whenever it reaches `pages` pages and truncates it back to that
    /// size, where the backend has a WAL of its own to manage (SQLite).
    fn limit_wal(&self, pages: i64) -> Result<()>;
    /// Copies what the write-ahead log holds into the database and empties it, where the
    /// backend has one of its own to manage (SQLite's WAL); waits for no reader.
    fn checkpoint(&self) -> Result<()>;

    /// Opens a new connection if the server closed this one (a restart, a terminated backend);
    /// true if it did. With `ask_server`, a connection that seems open is first asked a no-op
    /// query: one that sat idle learns of its end only when used. Never true for SQLite,
    /// which has no connection to lose.
    fn reconnect_if_lost(&self, ask_server: bool) -> Result<bool>;

    /// Why the connected role can disable the append-only triggers and rewrite the audit
    /// trail (a superuser, the owner of `audit_log`), where the backend has roles at all.
    fn rewrite_power(&self) -> Result<Option<String>>;

    /// Writes a copy of the whole store as one SQLite file, from one snapshot; `None` when the
    /// backend has no such copy of its own (the caller copies row by row instead).
    fn backup_to(&self, destination: &Path) -> Option<Result<()>>;
}

/// An open transaction: committed by [`Transaction::commit`], rolled back if dropped, so an
/// error anywhere leaves the database as it was.
struct Transaction<'s> {
    backend: &'s dyn Backend,
    finished: bool,
    /// A write transaction, which ends with the audit row it appended last.
    writes: bool,
}

impl Transaction<'_> {
    /// Commits. A connection lost during COMMIT (a server restart, a terminated backend) leaves
    /// unknown whether the transaction landed; a write transaction then asks a new connection
    /// for the audit row it appended last (its hash covers everything before it), so that
    /// work that committed is reported committed, and a caller that retries work reported
    /// [`Error::NotCommitted`] never records it twice.
    fn commit(mut self) -> Result<()> {
        self.finished = true;
        let head = match self.writes {
            true => self.backend.audit_tail()?,
            false => None,
        };
        match (self.backend.commit(), head) {
            (Err(error), Some((id, hash))) => match self.backend.reconnect_if_lost(false) {
                // The connection is sound: the server refused the commit.
                Ok(false) => Err(error),
                reconnected => self.commit_outcome(error, reconnected, id, &hash),
            },
            (committed, _) => committed,
        }
    }

    /// Whether a COMMIT cut off with its connection landed: asks new connections whether row
    /// `id` holds `hash`, for up to [`COMMIT_OUTCOME_WAIT`] while the server cannot be reached.
    fn commit_outcome(
        &self,
        cause: Error,
        mut reconnected: Result<bool>,
        id: i64,
        hash: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + COMMIT_OUTCOME_WAIT;
        loop {
            match reconnected.and_then(|_| self.backend.audit_hash(id)) {
                Ok(found) if found.as_deref() == Some(hash) => return Ok(()),
                Ok(_) => {
                    return Err(Error::NotCommitted {
                        cause: cause.to_string(),
                    });
                }
                Err(why) if Instant::now() >= deadline => {
                    return Err(Error::CommitOutcomeUnknown {
                        cause: cause.to_string(),
                        why: why.to_string(),
                    });
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    reconnected = self.backend.reconnect_if_lost(false);
                }
            }
        }
    }
}

impl<'s> std::ops::Deref for Transaction<'s> {
    type Target = dyn Backend + 's;

    fn deref(&self) -> &Self::Target {
        self.backend
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.backend.rollback();
        }
    }
}

pub struct Store {
    backend: Box<dyn Backend>,
    /// Where it was opened; `None` in memory.
    location: Option<Location>,
    clock: Box<dyn Fn() -> DateTime<Utc> + Send>,
    lock_wait: Duration,
}

impl Store {
    fn with_backend(backend: Box<dyn Backend>) -> Store {
        Store {
            backend,
            location: None,
            clock: Box::new(Utc::now),
            lock_wait: BUSY_RETRY_BUDGET,
        }
    }

    fn at(mut self, location: &Location) -> Store {
        self.location = Some(location.clone());
        self
    }

    /// Where the store was opened, so another connection can reach it (serve's readers);
    /// `None` for a store in memory.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// Opens (creating if needed) the store at `location` and brings its schema up to date.
    /// A file that is not SQLite, or a database migrated by a newer flagstore, is refused
    /// untouched.
    pub fn open(location: &Location) -> Result<Store> {
        let backend: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url, true)?),
        };
        Ok(Store::with_backend(backend).at(location))
    }

    /// Opens the store at `location`, refusing to create one: for commands that only read or
    /// evaluate, where a mistyped path must not silently give an empty store. An SQLite file
    /// this user cannot write is opened read-only, so reviewers can read it; writes then fail
    /// naming it. A PostgreSQL database without flagstore's tables is refused the same way.
    pub fn open_existing(location: &Location) -> Result<Store> {
        let backend: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open_existing(path)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url, false)?),
        };
        Ok(Store::with_backend(backend).at(location))
    }

    /// Creates a new, empty store at `location`; an existing file, or a PostgreSQL database
    /// that already holds a store, is refused, whatever it holds.
    pub fn create(location: &Location) -> Result<Store> {
        match location {
            Location::Sqlite(path) if path.exists() => Err(Error::AlreadyExists {
                path: path.display().to_string(),
            }),
            Location::Sqlite(_) => Store::open(location),
            Location::Postgres(url) => {
                Ok(Store::with_backend(Box::new(postgres::Postgres::create(url)?)).at(location))
            }
        }
    }

    /// A private SQLite database in memory, for tests and experiments.
    pub fn open_in_memory() -> Result<Store> {
        Ok(Store::with_backend(Box::new(sqlite::Sqlite::in_memory()?)))
    }

    /// The store as messages name it: a path, or a URL without its password.
    pub fn path(&self) -> &str {
        self.backend.name()
    }

    pub fn flags(&self) -> Result<FlagSet> {
        self.backend.load_flags()
    }

    pub fn flag(&self, name: &str) -> Result<Option<FlagRecord>> {
        let tx = self.read_transaction()?;
        let flags = tx.load_flags()?;
        let (Some(flag), Some((created_at, updated_at))) = (flags.get(name), tx.flag_times(name)?)
        else {
            return Ok(None);
        };
        Ok(Some(FlagRecord {
            flag: flag.clone(),
            required_by: flags.dependents_of(name),
            created_at,
            updated_at,
        }))
    }

    /// The error for a flag name that does not exist, with the nearest existing name.
    pub fn unknown_flag(&self, name: &str) -> Result<Error> {
        Ok(Error::UnknownFlag {
            name: name.to_string(),
            suggestion: self.flags()?.nearest_name(name),
        })
    }

    /// Applies `edit` to the current flags as one atomic, audited write. `edit` sees the flags
    /// as they are under the write lock and returns the flags as they should be; the result
    /// must pass [`FlagSet::validate`]. Returns the changes made (or, with `dry_run`, the changes
    /// that would be made, leaving the store untouched).
    pub fn modify(
        &mut self,
        actor: &str,
        via: &str,
        dry_run: bool,
        edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
    ) -> Result<Vec<Change>> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let (_, changes) = edit_flags(&tx, edit, (!dry_run).then_some((actor, via, ts.as_str())))?;
        if !dry_run && !changes.is_empty() {
            tx.commit()?;
        }
        Ok(changes)
    }

    /// The version of a flag: the id of its newest change row (0 if it has none). Every write
    /// to a flag adds a change row, so a version names one state of the flag.
    pub fn flag_version(&self, name: &str) -> Result<i64> {
        let tx = self.read_transaction()?;
        last_change_id(&tx, name)
    }

    /// Applies `edit` to flag `name` as [`Store::modify`] does, but only if the flag is still
    /// at `expected_version` ([`Store::flag_version`]), checked under the write lock: an editor
    /// working from a stale view is refused, not silently overwritten. Returns the changes and
    /// the flag's new version.
    pub fn modify_flag_at_version(
        &mut self,
        name: &str,
        expected_version: i64,
        actor: &str,
        via: &str,
        edit: impl FnOnce(&Flag) -> Result<Flag>,
    ) -> Result<(Vec<Change>, i64)> {
        let tx = self.write_transaction()?;
        let flags = tx.load_flags()?;
        if !flags.contains(name) {
            return Err(Error::UnknownFlag {
                name: name.to_string(),
                suggestion: flags.nearest_name(name),
            });
        }
        let current = last_change_id(&tx, name)?;
        if current != expected_version {
            return Err(Error::StaleVersion {
                flag: name.to_string(),
                expected: expected_version,
                current,
            });
        }
        let ts = self.now();
        let edit_one = |flags: &FlagSet| -> Result<FlagSet> {
            let mut edited = flags.clone();
            if let Some(flag) = flags.get(name) {
                edited.insert(edit(flag)?);
            }
            Ok(edited)
        };
        let (_, changes) = edit_flags(&tx, edit_one, Some((actor, via, ts.as_str())))?;
        let version = last_change_id(&tx, name)?;
        tx.commit()?;
        Ok((changes, version))
    }

    /// Applies `edit` as [`Store::modify`] does, then evaluates `selection` for `context`
    /// against the flags as edited, all in one transaction. `confirm` sees the result before it
    /// commits; an error from it (say, the output file cannot be written) rolls everything
    /// back, so a refused run leaves the store as it was.
    pub fn modify_and_evaluate(
        &mut self,
        actor: &str,
        via: &str,
        edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
        selection: &Selection,
        context: &str,
        confirm: impl FnOnce(&FlagSet, &[Change], &[Evaluation]) -> Result<()>,
    ) -> Result<(Vec<Change>, Vec<Evaluation>)> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let (next, changes) = edit_flags(&tx, edit, Some((actor, via, ts.as_str())))?;
        let keys = [context.to_string()];
        let evaluations = EvaluationPlan::new(&next, selection)
            .evaluate_keys(&tx, &keys, actor, &ts)?
            .pop()
            .unwrap_or_default()
            .evaluations;
        confirm(&next, &changes, &evaluations)?;
        tx.commit()?;
        Ok((changes, evaluations))
    }

    /// Writes a consistent copy of the whole store to `destination`, one SQLite file, from one
    /// snapshot while writers carry on. The copy goes to a temporary file beside `destination`
    /// and is renamed into place.
    pub fn backup_to(&self, destination: &Path) -> Result<()> {
        if let Some(done) = self.backend.backup_to(destination) {
            return done;
        }
        copy::to_new_sqlite_file(self, destination).map(|_| ())
    }

    /// Evaluates the selected flags for one context key, storing sticky decisions and one
    /// decision record.
    pub fn evaluate(
        &mut self,
        selection: &Selection,
        context: &str,
        actor: &str,
    ) -> Result<Vec<Evaluation>> {
        Ok(self
            .evaluate_context(selection, context, actor)?
            .evaluations)
    }

    /// [`Store::evaluate`], also returning the requirements decided on the way, in the order
    /// they were decided: what the decision record holds, and what a caller that reports
    /// every decision (the prototype's audit trail) needs.
    pub fn evaluate_context(
        &mut self,
        selection: &Selection,
        context: &str,
        actor: &str,
    ) -> Result<ContextEvaluation> {
        let keys = [context.to_string()];
        let mut results = self.retried_on_new_connection(|store| {
            let tx = store.write_transaction()?;
            let ts = store.now();
            let flags = tx.load_flags()?;
            let results =
                EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &keys, actor, &ts)?;
            tx.commit()?;
            Ok(results)
        })?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Evaluates the selected flags for every key, about [`BATCH_EVALUATIONS`] evaluations
    /// per transaction. Keys are read before the write lock is taken, so a slow producer never
    /// holds other writers up; results are handed to `emit` only once their transaction has
    /// committed, so nothing is reported that was not persisted.
    pub fn evaluate_batch(
        &mut self,
        selection: &Selection,
        actor: &str,
        keys: impl IntoIterator<Item = Result<String>>,
        mut emit: impl FnMut(&str, &[Evaluation]) -> Result<()>,
    ) -> Result<BatchReport> {
        let flags_per_key = match selection {
            Selection::All => self.flags()?.len(),
            Selection::Flags(names) => names.len(),
        };
        let chunk_keys = keys_per_transaction(flags_per_key);
        let mut keys = keys.into_iter();
        let mut chunk: Vec<String> = Vec::with_capacity(chunk_keys);
        let mut report = BatchReport::default();
        loop {
            chunk.clear();
            for key in keys.by_ref().take(chunk_keys) {
                chunk.push(key?);
            }
            if chunk.is_empty() {
                return Ok(report);
            }
            let started = Instant::now();
            let results = self.retried_on_new_connection(|store| {
                let tx = store.write_transaction()?;
                let ts = store.now();
                // Flags are re-read for every chunk so that a kill switch thrown during a long
                // run takes effect within one chunk.
                let flags = tx.load_flags()?;
                let results = EvaluationPlan::new(&flags, selection)
                    .evaluate_keys(&tx, &chunk, actor, &ts)?;
                tx.commit()?;
                Ok(results)
            })?;
            report.batch_latencies.push(started.elapsed());
            for (key, evaluated) in chunk.iter().zip(&results) {
                emit(key, &evaluated.evaluations)?;
                report.evaluations += evaluated.evaluations.len() as u64;
            }
        }
    }

    /// Evaluates many requests, each for one context and by its own actor, in one transaction:
    /// the group commit of `flagstore serve`, where one writer answers many connections with
    /// one fsync. Requests with the same selection and actor are evaluated together, a key
    /// repeated among them seeing what an earlier one stored. A request naming a single flag
    /// that does not exist is not evaluated (`None`): there is no decision to record. Returns
    /// the flags as they were in the transaction, too. A group cut off with its connection (a
    /// PostgreSQL restart) is evaluated once more on a new one, unless its COMMIT landed.
    pub fn evaluate_requests(
        &mut self,
        requests: &[Request],
    ) -> Result<(FlagSet, Vec<Option<ContextEvaluation>>)> {
        self.retried_on_new_connection(|store| store.evaluate_requests_once(requests))
    }

    fn evaluate_requests_once(
        &mut self,
        requests: &[Request],
    ) -> Result<(FlagSet, Vec<Option<ContextEvaluation>>)> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let flags = tx.load_flags()?;
        let mut results: Vec<Option<ContextEvaluation>> = vec![None; requests.len()];
        let mut groups: Vec<(&Selection, &str, Vec<usize>)> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            if let Selection::Flags(names) = request.selection
                && names.iter().any(|name| !flags.contains(name))
            {
                continue;
            }
            match groups.iter_mut().find(|(selection, actor, _)| {
                *selection == request.selection && *actor == request.actor
            }) {
                Some((_, _, members)) => members.push(index),
                None => groups.push((request.selection, request.actor, vec![index])),
            }
        }
        for (selection, actor, members) in groups {
            let keys: Vec<String> = members
                .iter()
                .map(|&i| requests[i].context.to_string())
                .collect();
            let evaluated =
                EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &keys, actor, &ts)?;
            for (index, evaluated) in members.into_iter().zip(evaluated) {
                results[index] = Some(evaluated);
            }
        }
        tx.commit()?;
        Ok((flags, results))
    }

    /// Stored assignments, optionally for one flag and/or one context, ordered by flag then
    /// context key.
    pub fn assignments(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
    ) -> Result<Vec<AssignmentRow>> {
        let mut rows = Vec::new();
        self.for_each_assignment(flag, context, |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Calls `visit` with each stored assignment (of `flag`, of `context`, or all), by flag then
    /// context key, from one snapshot, holding one row at a time.
    pub fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        mut visit: impl FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()> {
        let tx = self.read_transaction()?;
        tx.for_each_assignment(flag, context, &mut visit)
    }

    /// Counts `flag`'s stored assignments, on and off, and how many of them a rollout of
    /// `rollout_pct` would decide otherwise if they were decided afresh (they are not: they
    /// are sticky). Reads only.
    pub fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally> {
        let tx = self.read_transaction()?;
        tx.assignment_tally(flag, rollout_pct)
    }

    /// Forgets the stored assignments of `flag` (for one context, or all), so the next
    /// evaluation decides afresh. Audited; returns how many were cleared.
    pub fn reset_assignments(
        &mut self,
        flag: &str,
        context: Option<&str>,
        actor: &str,
    ) -> Result<usize> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let flags = tx.load_flags()?;
        if !flags.contains(flag) {
            return Err(Error::UnknownFlag {
                name: flag.to_string(),
                suggestion: flags.nearest_name(flag),
            });
        }
        let cleared = tx.delete_assignments(flag, context)?;
        let scope = match context {
            Some(context) => format!("for context {context:?}"),
            None => "for every context".to_string(),
        };
        append_audit(
            &tx,
            &[Entry {
                ts: &ts,
                kind: "change",
                actor,
                action: Some("reset_assignments"),
                flag: Some(flag),
                context_key: context,
                result: None,
                source: None,
                reason: Some(&format!("assignments reset: cleared {cleared} {scope}")),
                detail: &json!({ "cleared": cleared, "context_key": context }).to_string(),
            }],
        )?;
        tx.commit()?;
        Ok(cleared)
    }

    /// The current flags and the stored assignments of `context` for `flag` and everything
    /// it requires, read in one snapshot, without writing anything.
    pub fn evaluation_state(
        &mut self,
        flag: &str,
        context: &str,
    ) -> Result<(FlagSet, HashMap<String, StoredAssignment>)> {
        let tx = self.read_transaction()?;
        let flags = tx.load_flags()?;
        let selection = Selection::Flags(vec![flag.to_string()]);
        let plan = EvaluationPlan::showing_all_assignments(&flags, &selection);
        let mut stored = HashMap::new();
        tx.fetch_assignments(&plan.lookups, &[context], &mut |_, flag, assignment| {
            stored.insert(flag, assignment);
        })?;
        Ok((flags, stored))
    }

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
        if tx.list_tokens()?.iter().any(|t| t.name == name) {
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
        self.backend.list_tokens()
    }

    /// Opens a new connection if the database server closed this one, as a restart of
    /// PostgreSQL does, asking the server first (a round trip): for a connection that sat idle,
    /// such as one of serve's readers, before its next use. Returns whether it reconnected.
    pub fn reconnect_if_lost(&self) -> Result<bool> {
        self.backend.reconnect_if_lost(true)
    }

    /// Keeps an SQLite store's WAL under about `pages` pages of 4 KiB, for a long-running
    /// writer of small transactions (`serve`): a batch's default lets it grow to 40 MB, which
    /// rewrites hot pages in the WAL instead of the database but fills a small volume.
    pub fn limit_wal(&self, pages: i64) -> Result<()> {
        self.backend.limit_wal(pages)
    }

    /// Moves what an SQLite store's WAL holds into the database file and empties the WAL, so
    /// that a copy of the file alone holds everything committed. A reader's snapshot can keep
    /// part of it in the WAL until the next checkpoint.
    pub fn checkpoint(&self) -> Result<()> {
        self.backend.checkpoint()
    }

    /// A warning for the operator when this connection could rewrite history unseen by the
    /// triggers (on PostgreSQL, a superuser or the owner of `audit_log`); `None` when it cannot
    /// or the backend has no roles (SQLite: the file's owner is the operating system's matter).
    pub fn owner_warning(&self) -> Result<Option<String>> {
        Ok(self.backend.rewrite_power()?.map(|why| {
            format!(
                "{why}, so it can disable the triggers that keep the audit trail append-only: \
                 run flagstore as a role that cannot (README: PostgreSQL roles)"
            )
        }))
    }

    /// A write transaction that changes nothing a reader can see, committed as a real write
    /// (on SQLite, the database header rewritten as it is, which needs room in the WAL): whether
    /// the store can take writes now, for a health check after a write failed. On PostgreSQL it
    /// reconnects first if the server closed the connection.
    pub fn probe_write(&self) -> Result<()> {
        self.backend.reconnect_if_lost(true)?;
        self.backend.begin_write(self.lock_wait)?;
        let tx = Transaction {
            backend: self.backend.as_ref(),
            finished: false,
            writes: false,
        };
        tx.rewrite_header()?;
        tx.commit()
    }

    /// Closes the store. An SQLite store first moves its WAL into the database file, so that a
    /// copy of the file alone holds everything committed, even while other processes keep
    /// the store open.
    pub fn close(self) -> Result<()> {
        self.backend.checkpoint()
    }

    /// Number of rows in the audit log.
    pub fn audit_len(&self) -> Result<i64> {
        self.backend.audit_len()
    }

    /// Takes the writer lock. A writer kept waiting by other processes retries, with growing
    /// pauses, for up to a minute (see [`Store::set_lock_wait`]), so a burst of contention from
    /// many pipeline workers slows them down instead of failing them.
    fn write_transaction(&self) -> Result<Transaction<'_>> {
        self.backend.begin_write(self.lock_wait)?;
        Ok(Transaction {
            backend: self.backend.as_ref(),
            finished: false,
            writes: true,
        })
    }

    fn read_transaction(&self) -> Result<Transaction<'_>> {
        self.backend.begin_read()?;
        Ok(Transaction {
            backend: self.backend.as_ref(),
            finished: false,
            writes: false,
        })
    }

    /// Runs `attempt`, one whole write transaction, once more on a new connection when the
    /// database server closed the connection under the first (a restart, a terminated
    /// backend): nothing of the first was committed, [`Transaction::commit`] makes sure of
    /// that. A server that cannot be reached again is reported with its own cause.
    fn retried_on_new_connection<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Store) -> Result<T>,
    ) -> Result<T> {
        match attempt(self) {
            Err(Error::NotCommitted { .. }) => attempt(self),
            // Running it again might record it twice.
            Err(error @ Error::CommitOutcomeUnknown { .. }) => Err(error),
            Err(error) if self.backend.reconnect_if_lost(false)? => {
                drop(error);
                attempt(self)
            }
            done => done,
        }
    }

    /// How long a writer keeps retrying a busy database before it reports "database is
    /// locked" (`BUSY_RETRY_BUDGET` unless changed).
    pub fn set_lock_wait(&mut self, budget: Duration) {
        self.lock_wait = budget;
    }

    /// Replaces the clock that timestamps rows (tests use it to turn time back).
    pub fn set_clock(&mut self, clock: impl Fn() -> DateTime<Utc> + Send + 'static) {
        self.clock = Box::new(clock);
    }

    /// The store's clock, as rows are timestamped: RFC 3339 UTC with milliseconds.
    pub fn now(&self) -> String {
        timestamp((self.clock)())
    }
}

/// Applies `edit` to the flags as they are in `tx`, checks the result and works out the
/// changes; with `write` (actor, via, timestamp) also writes them, audited. Returns the flags
/// as edited and the changes.
fn edit_flags(
    tx: &Transaction,
    edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
    write: Option<(&str, &str, &str)>,
) -> Result<(FlagSet, Vec<Change>)> {
    let current = tx.load_flags()?;
    let next = edit(&current)?;
    next.validate()?;
    let changes = change::diff(&current, &next);
    if let Some((actor, via, ts)) = write {
        write_changes(tx, &changes, actor, via, ts)?;
    }
    Ok((next, changes))
}

/// Writes flag rows, then requirements, then deletions, so that every foreign key holds after
/// each statement whatever order the changes came in.
fn write_changes(
    tx: &Transaction,
    changes: &[Change],
    actor: &str,
    via: &str,
    ts: &str,
) -> Result<()> {
    for change in changes {
        match change {
            Change::Create(flag) => tx.insert_flag(flag, ts, ts)?,
            Change::Update { after, .. } => tx.update_flag(after, ts)?,
            Change::Delete(_) => {}
        }
    }
    // Requirements before deletions: a flag being deleted may be required by another being
    // deleted.
    for change in changes {
        let after = change.after();
        if change.before().map(|b| &b.requires) != after.map(|a| &a.requires) {
            let requires = after.map(|a| a.requires.as_slice()).unwrap_or_default();
            tx.replace_requirements(change.flag_name(), requires)?;
        }
    }
    let mut texts = Vec::with_capacity(changes.len());
    for change in changes {
        let mut detail = json!({ "before": change.before(), "after": change.after() });
        if let Change::Delete(flag) = change {
            detail["assignments_deleted"] = json!(tx.delete_flag(&flag.name)?);
        }
        texts.push((format!("{via}: {}", change.summary()), detail.to_string()));
    }
    let entries: Vec<Entry> = changes
        .iter()
        .zip(&texts)
        .map(|(change, (reason, detail))| Entry {
            ts,
            kind: "change",
            actor,
            action: Some(change.action()),
            flag: Some(change.flag_name()),
            context_key: None,
            result: None,
            source: None,
            reason: Some(reason),
            detail,
        })
        .collect();
    append_audit(tx, &entries).map(|_| ())
}

/// What a set of evaluations needs to know once per flag definition, not once per key.
struct EvaluationPlan<'a> {
    flags: &'a FlagSet,
    requested: Vec<&'a str>,
    /// Flags whose assignment the evaluation may consult.
    lookups: Vec<&'a str>,
}

impl<'a> EvaluationPlan<'a> {
    /// A plan for evaluating: a disabled flag is decided before its assignment is consulted
    /// (the kill switch wins), so only enabled flags are looked up.
    fn new(flags: &'a FlagSet, selection: &'a Selection) -> EvaluationPlan<'a> {
        EvaluationPlan::looking_up(flags, selection, |flag| flag.enabled)
    }

    /// A plan for explaining, which shows every stored assignment, relevant or not.
    fn showing_all_assignments(flags: &'a FlagSet, selection: &'a Selection) -> EvaluationPlan<'a> {
        EvaluationPlan::looking_up(flags, selection, |_| true)
    }

    fn looking_up(
        flags: &'a FlagSet,
        selection: &'a Selection,
        consulted: impl Fn(&Flag) -> bool,
    ) -> EvaluationPlan<'a> {
        let requested = selection.names(flags);
        let lookups = flags
            .closure(requested.iter().copied())
            .into_iter()
            .filter(|name| flags.get(name).is_some_and(&consulted))
            .collect();
        EvaluationPlan {
            flags,
            requested,
            lookups,
        }
    }

    /// Evaluates every key within the caller's transaction and writes the new assignments and
    /// one decision record per key, with one `audit_flag_ranges` row per requested flag
    /// covering them. A key may repeat: a later occurrence sees what an earlier one stored.
    ///
    /// Keys go through in steps (`Backend::keys_per_step`). The store is read and written on this
    /// thread, and steps are evaluated, recorded and hashed on another meanwhile: the
    /// evaluator sees every assignment stored before the transaction (all reads come first)
    /// and remembers what it decided itself, so the answers are those of one key at a time.
    fn evaluate_keys(
        &self,
        tx: &Transaction,
        keys: &[String],
        actor: &str,
        ts: &str,
    ) -> Result<Vec<ContextEvaluation>> {
        // Callers that can name where a key came from (a file's line, an HTTP request) check
        // it first; this is the guard for every other caller of the library.
        for key in keys {
            if let Some(why) = crate::contexts::key_problem(key) {
                return Err(Error::InvalidContextKey {
                    key: key.clone(),
                    why,
                });
            }
        }
        let audited = !self.requested.is_empty() && !keys.is_empty();
        let chain = if audited {
            Some(Chain::at_tail(tx)?)
        } else {
            None
        };
        let first_id = chain.as_ref().map_or(0, |chain| chain.next_id);
        let mut writer = StepWriter {
            tx,
            actor,
            ts,
            results: Vec::with_capacity(keys.len()),
        };
        let mut evaluator = KeyEvaluator {
            plan: self,
            actor,
            ts,
            chain,
            stored: HashMap::new(),
        };
        let mut seen: HashSet<&str> = HashSet::new();
        let mut fetch = |step| self.fetch_step(tx, step, &mut seen);
        let steps: Vec<&[String]> = keys.chunks(tx.keys_per_step()).collect();
        if steps.len() <= 1 {
            for step in steps {
                let evaluated = evaluator.evaluate(step, fetch(step)?);
                writer.write(step, evaluated)?;
            }
        } else {
            std::thread::scope(|scope| -> Result<()> {
                let (to_evaluate, fetched_steps) = std::sync::mpsc::channel();
                let (to_write, evaluated_steps) = std::sync::mpsc::channel();
                scope.spawn(move || {
                    for (step, fetched) in fetched_steps {
                        let evaluated = evaluator.evaluate(step, fetched);
                        if to_write.send((step, evaluated)).is_err() {
                            break;
                        }
                    }
                });
                for &step in &steps {
                    // Fails only if the evaluator panicked, which the scope raises again.
                    let _ = to_evaluate.send((step, fetch(step)?));
                }
                drop(to_evaluate);
                for (step, evaluated) in evaluated_steps {
                    writer.write(step, evaluated)?;
                }
                Ok(())
            })?;
        }
        if audited {
            let mut flags = self.requested.clone();
            flags.sort_unstable();
            flags.dedup();
            tx.insert_flag_ranges(&flags, first_id, first_id + keys.len() as i64 - 1)?;
        }
        Ok(writer.results)
    }

    /// The stored assignments of the keys of `step` not `seen` before in the transaction.
    fn fetch_step<'k>(
        &self,
        tx: &Transaction,
        step: &'k [String],
        seen: &mut HashSet<&'k str>,
    ) -> Result<Fetched<'k>> {
        let new: Vec<&str> = step
            .iter()
            .map(String::as_str)
            .filter(|key| seen.insert(key))
            .collect();
        let mut fetched = Vec::new();
        if !self.lookups.is_empty() && !new.is_empty() {
            tx.fetch_assignments(&self.lookups, &new, &mut |i, flag, assignment| {
                fetched.push((new[i], flag, assignment));
            })?;
        }
        Ok(fetched)
    }
}

/// The assignments one step read from the store, as (context key, flag, assignment), for keys
/// met for the first time in the transaction.
type Fetched<'k> = Vec<(&'k str, String, StoredAssignment)>;

/// What the evaluating thread made of one step's keys, in their order.
struct Evaluated {
    evaluations: Vec<ContextEvaluation>,
    /// Their decision records, when the request is audited.
    records: Option<Records>,
}

/// Decision records linked into the chain: the first one's id, the hash it follows, and each
/// record's `detail` with its hash.
struct Records {
    first_id: i64,
    prev_hash: String,
    linked: Vec<(String, String)>,
}

/// The evaluating side of [`EvaluationPlan::evaluate_keys`]: pure work, no store.
struct KeyEvaluator<'a, 'k> {
    plan: &'a EvaluationPlan<'a>,
    actor: &'a str,
    ts: &'a str,
    /// Where the next decision record links in, when the request is audited.
    chain: Option<Chain>,
    /// Every key's assignments: as read, then as this transaction stored them.
    stored: HashMap<&'k str, HashMap<String, StoredAssignment>>,
}

impl<'k> KeyEvaluator<'_, 'k> {
    fn evaluate(&mut self, step: &'k [String], fetched: Fetched<'k>) -> Evaluated {
        for (key, flag, assignment) in fetched {
            self.stored.entry(key).or_default().insert(flag, assignment);
        }
        let mut evaluated = Evaluated {
            evaluations: Vec::with_capacity(step.len()),
            records: self.chain.as_ref().map(|chain| Records {
                first_id: chain.next_id,
                prev_hash: chain.prev_hash.clone(),
                linked: Vec::with_capacity(step.len()),
            }),
        };
        for key in step {
            let of_key = self.stored.entry(key).or_default();
            let evaluation =
                eval::evaluate_context(self.plan.flags, key, of_key, &self.plan.requested);
            for assignment in evaluation
                .evaluations
                .iter()
                .flat_map(|e| &e.new_assignments)
            {
                of_key.insert(
                    assignment.flag.clone(),
                    StoredAssignment {
                        decision: assignment.decision,
                        bucket: assignment.bucket,
                        rollout_pct: assignment.rollout_pct,
                        assigned_at: self.ts.to_string(),
                    },
                );
            }
            if let (Some(chain), Some(records)) = (&mut self.chain, &mut evaluated.records) {
                let detail = record::encode(&evaluation);
                let hash = chain.link(&decision_record(self.ts, self.actor, key, &detail));
                records.linked.push((detail, hash));
            }
            evaluated.evaluations.push(evaluation);
        }
        evaluated
    }
}

/// The writing side of [`EvaluationPlan::evaluate_keys`]: stores each evaluated step.
struct StepWriter<'t, 'a> {
    tx: &'t Transaction<'t>,
    actor: &'a str,
    ts: &'a str,
    results: Vec<ContextEvaluation>,
}

impl StepWriter<'_, '_> {
    fn write(&mut self, step: &[String], evaluated: Evaluated) -> Result<()> {
        let ts = self.ts;
        let new_assignments: Vec<AssignmentRef> = step
            .iter()
            .zip(&evaluated.evaluations)
            .flat_map(|(key, evaluated)| {
                evaluated
                    .evaluations
                    .iter()
                    .flat_map(|e| &e.new_assignments)
                    .map(move |assignment| AssignmentRef::new(key, assignment, ts))
            })
            .collect();
        if !new_assignments.is_empty() {
            self.tx.insert_assignments(&new_assignments)?;
        }
        if let Some(records) = &evaluated.records {
            let entries = step
                .iter()
                .zip(&records.linked)
                .map(|(key, (detail, hash))| (decision_record(ts, self.actor, key, detail), hash));
            insert_linked(self.tx, records.first_id, &records.prev_hash, entries)?;
        }
        self.results.extend(evaluated.evaluations);
        Ok(())
    }
}

/// The audit row of one key's decisions in an evaluation request.
fn decision_record<'a>(ts: &'a str, actor: &'a str, key: &'a str, detail: &'a str) -> Entry<'a> {
    Entry {
        ts,
        kind: "evaluation",
        actor,
        action: None,
        flag: None,
        context_key: Some(key),
        result: None,
        source: None,
        reason: None,
        detail,
    }
}

/// The head of the audit chain as rows are linked to it.
struct Chain {
    next_id: i64,
    prev_hash: String,
}

impl Chain {
    fn at_tail(tx: &Transaction) -> Result<Chain> {
        let (last_id, prev_hash) = tx.audit_tail()?.unwrap_or((0, GENESIS_HASH.to_string()));
        Ok(Chain {
            next_id: last_id + 1,
            prev_hash,
        })
    }

    /// Takes `entry` as the next row and returns its hash.
    fn link(&mut self, entry: &Entry) -> String {
        let hash = entry.hash(self.next_id, &self.prev_hash);
        self.next_id += 1;
        self.prev_hash.clone_from(&hash);
        hash
    }
}

/// The id of the newest change row of flag `name`, or 0.
fn last_change_id(tx: &Transaction, name: &str) -> Result<i64> {
    let changes = crate::audit::AuditQuery {
        kind: Some("change".to_string()),
        ..crate::audit::AuditQuery::default()
    };
    let newest = tx.audit_page(&Scan {
        query: &changes,
        scope: Scope::FlagColumn(name),
        cursor: None,
        through: None,
        limit: 1,
    })?;
    Ok(newest.first().map_or(0, |row| row.id))
}

/// The change row of a token created or revoked: it names the token, never its text.
fn append_token_change(
    tx: &Transaction,
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

/// Appends rows to the audit log, extending its hash chain from the last row, and returns the
/// id of the first. Runs inside the caller's write transaction, which holds the writer lock,
/// so no other writer can interleave rows: ids are gapless and the chain never forks.
fn append_audit(tx: &Transaction, entries: &[Entry]) -> Result<i64> {
    let mut chain = Chain::at_tail(tx)?;
    let (first_id, prev_hash) = (chain.next_id, chain.prev_hash.clone());
    let hashes: Vec<String> = entries.iter().map(|entry| chain.link(entry)).collect();
    insert_linked(
        tx,
        first_id,
        &prev_hash,
        entries.iter().copied().zip(&hashes),
    )?;
    Ok(first_id)
}

/// Inserts audit rows already linked into the chain: `first_id` and the hash it follows, then
/// each row with its hash.
fn insert_linked<'a>(
    tx: &Transaction,
    first_id: i64,
    prev_hash: &'a str,
    entries: impl Iterator<Item = (Entry<'a>, &'a String)>,
) -> Result<()> {
    let mut prev_hash = prev_hash;
    let rows: Vec<ChainedEntry> = (first_id..)
        .zip(entries)
        .map(|(id, (entry, hash))| ChainedEntry {
            id,
            entry,
            prev_hash: std::mem::replace(&mut prev_hash, hash),
            hash,
        })
        .collect();
    tx.insert_audit(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_hold_about_batch_evaluations_and_whole_keys() {
        assert_eq!(keys_per_transaction(5), 1_000);
        assert_eq!(keys_per_transaction(1), BATCH_EVALUATIONS);
        assert_eq!(keys_per_transaction(0), BATCH_EVALUATIONS);
        assert_eq!(keys_per_transaction(BATCH_EVALUATIONS * 3), 1);
    }

    #[test]
    fn postgres_urls_select_postgres_and_anything_else_is_a_path() {
        for url in [
            "postgres://u@h/db",
            "postgresql://u:secret@h:5433/db?sslmode=disable",
        ] {
            assert_eq!(
                Location::parse(OsStr::new(url)),
                Location::Postgres(url.to_string())
            );
        }
        for path in [
            "flags.db",
            "postgres",
            "./postgres://x",
            "/srv/postgresql:/x.db",
        ] {
            assert_eq!(
                Location::parse(OsStr::new(path)),
                Location::Sqlite(PathBuf::from(path))
            );
        }
        let location = Location::parse(OsStr::new("postgres://u:secret@h:5433/db"));
        assert_eq!(location.to_string(), "postgres://u@h:5433/db");
    }
}
