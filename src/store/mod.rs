//! The store: flags, sticky assignments and the audit trail, in SQLite or PostgreSQL. The only
//! module that speaks SQL.
//!
//! Each public method of [`Store`] is one whole transaction. The rules (which flags a request
//! evaluates, what is stored, what is audited, how the chain is extended) are written once
//! here, over the `Backend` trait; `sqlite/` and `postgres/` only say how each step is done
//! in their SQL. Steps run only inside a transaction: a `ReadTx` reaches the `Reads`, a
//! `WriteTx` also the `Writes`, and nothing else reaches either. Every write transaction holds the store's single writer lock from its
//! first read, so two processes evaluating the same (flag, context), on one machine or many,
//! end with one assignment and the same answer, the audit chain never forks, and every write
//! lands together with its audit rows or not at all.
//!
//! Rooms: `backend.rs` the `Backend`, `Reads` and `Writes` traits, the step types and the
//! `ReadTx` and `WriteTx` guards; `evaluate.rs` evaluation; `flags.rs` flag reads and writes;
//! `chain.rs` appending to the audit chain; `tokens.rs` API tokens; `location.rs` where a store
//! lives; `view.rs` one snapshot for a whole answer; `query.rs` audit scans; `review.rs` and
//! `ranges.rs` what reviewers check; `copy.rs` whole-store copies; `sql.rs` the statements both
//! backends share; `schema.rs` what a database holds; `sqlite/` and `postgres/` the backends
//! (`mod.rs` connection, locking and migrations, `reads.rs`, `writes.rs`). This file: the
//! public types, opening a store, assignments, and transactions with their retries.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::{Entry, timestamp};
use crate::error::{DatabaseError, Error, Result};
use crate::eval::ContextEvaluation;
use crate::flag::{Flag, FlagSet};

mod backend;
mod chain;
mod copy;
mod evaluate;
mod flags;
mod location;
mod postgres;
mod publisher;
mod query;
mod ranges;
mod review;
mod schema;
mod sql;
mod sqlite;
mod sticky_audit;
mod stored;
mod tokens;
mod view;
mod witness;

use backend::{
    AssignmentRef, Backend, ChainedEntry, ReadTx, Reads, References, Scan, Scope, WriteTx,
};
pub use backend::{KeepWaiting, LockWait, PageCheck};
use chain::append_audit;

pub use copy::CopyReport;
pub use location::Location;
pub use postgres::{ScratchSchema, redacted_url, url_to_repeat};
pub use publisher::{Publisher, Publishing};
pub use ranges::{IndexReport, Reindexed, Runs};
pub use review::{DEFAULT_STALE_DAYS, StaleFlag};
pub use sticky_audit::StickyReport;
pub use tokens::TokenRecord;
pub use view::View;
pub use witness::{HeadsVerified, Proof};

/// WAL pages (of 4 KiB) at which an SQLite writer checkpoints, and the size its WAL is cut
/// back to: SQLite's default. Writers of small transactions (serve's groups, the Python
/// manager's calls, `flagstore eval`) gain nothing from a longer WAL, a small volume has no
/// room for one, and while a WAL grows each commit makes its file longer, which a sync must
/// then record too: with a WAL let grow to 40 MB a durable decision's median was 0.49 ms for
/// a process's first thousand, 0.27 ms once the WAL was reused in place.
const WAL_PAGES: i64 = 1_000;

/// The WAL limit while a batch runs, whose transactions write about 12 MB each: at 40 MB it
/// rewrites its hot pages in the WAL before they are copied, and the checkpointer thread does
/// the copying, not a commit.
const BATCH_WAL_PAGES: i64 = 10_000;

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

/// Which flags to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Every flag, in the store's order.
    All,
    Flags(Vec<String>),
    /// These flags, in this order (one the store lacks answered as unknown), then every other
    /// flag in the store's order, read in the evaluating transaction: the Python manager's
    /// `evaluate_all`, whose order is that of the flags it was given, as the prototype's was.
    AllAfter(Vec<String>),
}

impl Selection {
    fn names<'a>(&'a self, flags: &'a FlagSet) -> Vec<&'a str> {
        match self {
            Selection::All => flags.names().collect(),
            Selection::Flags(names) => names.iter().map(String::as_str).collect(),
            Selection::AllAfter(first) => {
                let mut names: Vec<&str> = first.iter().map(String::as_str).collect();
                names.extend(
                    flags
                        .names()
                        .filter(|name| !first.iter().any(|f| f == name)),
                );
                names
            }
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

/// What one request of a group got ([`Store::evaluate_requests`]): its decisions, `None` for
/// a single flag that does not exist, or the fault of what it asked.
pub type RequestResult = Result<Option<ContextEvaluation>>;

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

/// A row of the `assignments` table; serialized as `assignments list --json` and the admin
/// API show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AssignmentRow {
    pub flag: String,
    #[serde(rename = "context")]
    pub context_key: String,
    pub decision: bool,
    pub bucket: u8,
    #[serde(serialize_with = "crate::output::serialize_percentage")]
    pub rollout_pct: f64,
    pub assigned_at: String,
}

impl DatabaseError {
    fn new(message: String) -> DatabaseError {
        DatabaseError {
            message,
            read_only: false,
            full: false,
        }
    }

    /// refinery's error on one line: what it was doing and why, in the database's own words
    /// as `words` finds them in the backend's error (refinery's text of an SQLite error holds
    /// the whole migration's SQL; PostgreSQL's client says only "db error").
    fn from_migration(
        error: &refinery::Error,
        words: impl Fn(&(dyn std::error::Error + 'static)) -> Option<String>,
    ) -> DatabaseError {
        let message = match error.kind() {
            refinery::error::Kind::Connection(doing, cause) => {
                let cause: &(dyn std::error::Error + 'static) = cause.as_ref();
                let why = words(cause).unwrap_or_else(|| cause.to_string());
                format!("{doing}: {why}")
            }
            _ => error.to_string(),
        };
        DatabaseError::new(message.replace('\n', " "))
    }
}

pub struct Store {
    backend: Box<dyn Backend>,
    /// Where it was opened; `None` in memory.
    location: Option<Location>,
    clock: Box<dyn Fn() -> DateTime<Utc> + Send>,
    lock_wait: LockWait,
}

impl Store {
    fn with_backend(backend: Box<dyn Backend>) -> Store {
        Store {
            backend,
            location: None,
            clock: Box::new(Utc::now),
            lock_wait: LockWait {
                budget: BUSY_RETRY_BUDGET,
                keep_waiting: None,
            },
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

    /// Writes a consistent copy of the whole store to `destination`, one SQLite file, from one
    /// snapshot while writers carry on. The copy goes to a temporary file beside `destination`
    /// and is renamed into place.
    pub fn backup_to(&self, destination: &Path) -> Result<()> {
        if let Some(done) = self.backend.backup_to(destination) {
            return done;
        }
        copy::to_new_sqlite_file(self, destination).map(|_| ())
    }

    /// Stored assignments, optionally for one flag and/or one context, ordered by flag then
    /// context key.
    pub fn assignments(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
    ) -> Result<Vec<AssignmentRow>> {
        self.read(|view| view.assignments(flag, context))
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
        self.read(|view| view.assignment_tally(flag, rollout_pct))
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

    /// Opens a new connection if the database server closed this one, as a restart of
    /// PostgreSQL does, asking the server first (a round trip): for a connection that sat idle,
    /// such as one of serve's readers, before its next use. Returns whether it reconnected.
    pub fn reconnect_if_lost(&self) -> Result<bool> {
        self.backend.reconnect_if_lost(true)
    }

    /// Moves what an SQLite store's WAL holds into the database file and empties the WAL, so
    /// that a copy of the file alone holds everything committed. A reader's snapshot can keep
    /// part of it in the WAL until the next checkpoint.
    pub fn checkpoint(&self) -> Result<()> {
        self.backend.checkpoint()
    }

    /// The bytes each table and index occupies, by name (see `Reads::space_by_object`): what
    /// a benchmark reports as the cost of each kind of row.
    pub fn space_by_object(&self) -> Result<Vec<(String, i64)>> {
        self.read_transaction()?.space_by_object()
    }

    /// How far a database server's write-ahead log has come, in bytes (see
    /// `Reads::log_position`): what a benchmark counts as bytes written on PostgreSQL. `None`
    /// on SQLite.
    pub fn log_position(&self) -> Result<Option<u64>> {
        self.read_transaction()?.log_position()
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
        let tx = self.write_transaction()?;
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
        self.read_transaction()?.audit_len()
    }

    /// The id of the audit log's last row (0 when it is empty): what a writer appended since
    /// an earlier call, at the cost of one index lookup, where [`Store::audit_len`] counts.
    pub fn last_audit_id(&self) -> Result<i64> {
        Ok(self
            .read_transaction()?
            .audit_tail()?
            .map_or(0, |(id, _)| id))
    }

    /// Takes the writer lock. A writer kept waiting by other processes retries, with growing
    /// pauses, for up to a minute (see [`Store::set_lock_wait`]), so a burst of contention from
    /// many pipeline workers slows them down instead of failing them.
    fn write_transaction(&self) -> Result<WriteTx<'_>> {
        WriteTx::begin(self.backend.as_ref(), &self.lock_wait, References::Checked)
    }

    /// [`Store::write_transaction`] for a transaction that only evaluates: everything it
    /// writes goes through `EvaluationPlan::evaluate_keys` (see
    /// [`References::EstablishedByTheTransaction`]).
    fn evaluation_transaction(&self) -> Result<WriteTx<'_>> {
        WriteTx::begin(
            self.backend.as_ref(),
            &self.lock_wait,
            References::EstablishedByTheTransaction,
        )
    }

    fn read_transaction(&self) -> Result<ReadTx<'_>> {
        ReadTx::begin(self.backend.as_ref())
    }

    /// Runs `attempt`, one whole write transaction, once more on a new connection when the
    /// database server closed the connection under the first (a restart, a terminated
    /// backend): nothing of the first was committed, [`WriteTx::commit`] makes sure of
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
        self.lock_wait.budget = budget;
    }

    /// Has a writer waiting for the lock ask `keep_waiting` at least every
    /// [`LockWait::ASKED_EVERY`], and give up with [`Error::Interrupted`], having written
    /// nothing, when it answers `false`. On PostgreSQL, where the server does the waiting, it
    /// then waits in turns of that length, queueing for the lock again after each.
    pub fn set_keep_waiting(&mut self, keep_waiting: KeepWaiting) {
        self.lock_wait.keep_waiting = Some(keep_waiting);
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
}
