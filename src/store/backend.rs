//! What a storage engine does, one step at a time (`Backend`, its `Reads` and `Writes`), the
//! step types it takes, and the transactions every step runs in: a `ReadTx` reaches only the
//! reads; a `WriteTx` also the writes, is committed explicitly and rolled back when dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::Entry;
use crate::error::{Error, Result};
use crate::eval::{NewAssignment, StoredAssignment};
use crate::flag::{Flag, FlagSet};

use super::sticky_audit::ContextItem;
use super::{AssignmentRow, AssignmentTally, COMMIT_OUTCOME_WAIT, TokenRecord};

/// Which pages a storage check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// The audit trail's tables and their indexes, each page well formed (SQLite's
    /// `quick_check` of each): what `audit verify` holds beside the chain, in a time that
    /// grows with the trail, not with the contexts and assignments beside it.
    AuditTrail,
    /// Every page of the file, and every index holding exactly its table's rows (SQLite's
    /// `integrity_check`): what `check` holds.
    Everything,
}

/// An assignment about to be stored, borrowed from a decision or from a row being copied.
pub(super) struct AssignmentRef<'a> {
    pub(super) flag: &'a str,
    pub(super) context_key: &'a str,
    pub(super) decision: bool,
    pub(super) bucket: u8,
    pub(super) rollout_pct: f64,
    pub(super) assigned_at: &'a str,
}

impl<'a> AssignmentRef<'a> {
    pub(super) fn new(
        context_key: &'a str,
        assignment: &'a NewAssignment,
        assigned_at: &'a str,
    ) -> Self {
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
pub(super) struct ChainedEntry<'a> {
    pub(super) id: i64,
    pub(super) entry: Entry<'a>,
    pub(super) prev_hash: &'a str,
    pub(super) hash: &'a str,
    /// Whether `prev_hash` is the hash of row `id - 1` (the genesis hash for row 1), as for
    /// every row the chain links; a copy of a store edited by hand may hold rows that are not.
    /// SQLite then stores no `prev_hash` (schema 14).
    pub(super) follows_previous: bool,
}

/// Which audit rows one scan reads, beyond the query's own filters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    Everything,
    /// Rows whose `flag` column is this flag: changes and schema-1 evaluations.
    FlagColumn(&'a str),
    /// Decision records with ids in this range.
    Records {
        first_id: i64,
        last_id: i64,
    },
    /// Every row with an id up to this one (where a scan starts is its query's cursor: see
    /// [`Store::for_each_audit_page`](super::Store)).
    Through(i64),
}

/// One page of audit rows: `scope` under the query's filters (all but `flag`, which decision
/// records answer inside their detail), after `cursor` in the query's order, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scan<'a> {
    pub(super) query: &'a crate::audit::AuditQuery,
    pub(super) scope: Scope<'a>,
    pub(super) cursor: Option<i64>,
    /// The newest row a scan read in short transactions shows: the head when it began.
    pub(super) through: Option<i64>,
    pub(super) limit: usize,
}

/// What a storage engine does, one step at a time: [`Reads`] and [`Writes`] run inside a
/// transaction the caller began, and only a [`WriteTx`] reaches the writes. Implementations
/// keep their own connection state; methods take `&self` so a transaction guard can hold the
/// backend while steps run.
pub(super) trait Backend: Send {
    /// Its reads and writes, for the transaction guards alone: a step outside a transaction
    /// does not type-check.
    fn steps(&self) -> &dyn Steps;

    /// The database as messages name it: a path, or a URL without its password.
    fn name(&self) -> &str;

    /// Begins a transaction holding the store's writer lock, waiting for it as `lock_wait`
    /// says.
    fn begin_write(&self, lock_wait: &LockWait, references: References) -> Result<()>;

    /// Begins a read-only transaction: one snapshot for all its reads.
    fn begin_read(&self) -> Result<()>;

    fn commit(&self) -> Result<()>;

    fn rollback(&self);
    /// Stores audit rows linked into the chain; only through [`WriteTx::append_audit`].
    fn insert_audit(&self, rows: &[ChainedEntry]) -> Result<()>;
    /// Stores one evaluated step: its new assignments, its decision records (linked into the
    /// chain) and, on a transaction's last step, its range of records (the flag set's JSON,
    /// first and last record id); only through [`WriteTx::append_step`]. A backend that pays
    /// a round trip per statement sends them as one.
    fn insert_step(
        &self,
        assignments: &[AssignmentRef],
        records: &[ChainedEntry],
        range: Option<(&str, i64, i64)>,
    ) -> Result<()> {
        if !assignments.is_empty() {
            self.steps().insert_assignments(assignments)?;
        }
        if !records.is_empty() {
            self.insert_audit(records)?;
        }
        if let Some((flags, first_id, last_id)) = range {
            self.steps().insert_record_range(flags, first_id, last_id)?;
        }
        Ok(())
    }

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

    /// The schema objects whose loss or change would go unseen by the chain (triggers, views,
    /// indexes, and what defines them: SQLite's table texts with their constraints,
    /// PostgreSQL's functions), as this store has them and as the migrations make them in a
    /// new, empty database, each sorted; outside any transaction of the caller's.
    fn schema_objects(&self) -> Result<SchemaObjects>;
}

/// A schema object: its kind (`trigger`, `view`, ...), its name and its definition as the
/// database prints it.
pub type SchemaObject = (String, String, String);

/// Where a row of `audit_ranges` sorts: first id, last id, set.
pub(super) type RangeKey = (i64, i64, i64);

/// A row of `audit_ranges` with its set's text, which is `None` when no set has its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordRange {
    pub(super) first_id: i64,
    pub(super) last_id: i64,
    pub(super) flag_set: i64,
    pub(super) flags: Option<String>,
}

impl RecordRange {
    pub(super) fn key(&self) -> RangeKey {
        (self.first_id, self.last_id, self.flag_set)
    }
}

/// The schema objects of a store, and those the migrations make ([`Backend::schema_objects`]):
/// `Err` naming why they could not be made (a PostgreSQL role that may not create the scratch
/// schema they are made in).
pub struct SchemaObjects {
    pub live: Vec<SchemaObject>,
    pub made: std::result::Result<Vec<SchemaObject>, String>,
}

/// What any transaction may read: in a [`ReadTx`], all from one snapshot.
pub(super) trait Reads {
    fn load_flags(&self) -> Result<FlagSet>;

    /// `created_at` and `updated_at` of a flag.
    fn flag_times(&self, name: &str) -> Result<Option<(String, String)>>;

    /// Keys per step of a batch transaction (see `EvaluationPlan::evaluate_keys`).
    fn keys_per_step(&self) -> usize;

    /// Calls `found` for each stored assignment of any of `keys` (each listed once) for any
    /// of `flags`, its time borrowed from the row read.
    fn fetch_assignments(
        &self,
        flags: &[&str],
        keys: &[&str],
        found: &mut dyn FnMut(FoundAssignment<&str>),
    ) -> Result<()>;

    /// Streams assignments, optionally of one flag and/or one context, by flag then context.
    fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        visit: &mut dyn FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()>;

    /// Id and hash of the newest audit row.
    fn audit_tail(&self) -> Result<Option<(i64, String)>>;

    /// The hash of audit row `id`, if there is one.
    fn audit_hash(&self, id: i64) -> Result<Option<String>>;

    /// Id, `prev_hash` and `hash` of the first `limit` audit rows after row `after_id`: the
    /// chain's links without the rows' contents.
    fn audit_links(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, String, String)>>;

    /// Every row of `audit_flag_sets`: id and the JSON list of flag names, as stored.
    fn flag_sets(&self) -> Result<Vec<(i64, String)>>;

    /// Up to `limit` `(first_id, last_id)` ranges of `flag_set`, after `cursor` (ascending:
    /// ranges ending past it; descending: ranges starting before it), in order of `last_id`.
    fn set_ranges(
        &self,
        flag_set: i64,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>>;

    /// Up to `limit` ranges after the one keyed `after`, in key order (first id, last id,
    /// set): the order of the records they list.
    fn record_ranges(&self, after: RangeKey, limit: usize) -> Result<Vec<RecordRange>>;

    fn audit_page(&self, scan: &Scan) -> Result<Vec<crate::audit::AuditRow>>;

    fn audit_len(&self) -> Result<i64>;

    /// Checks the stored pages (and indexes) `scope` names; returns what was checked, in words.
    fn check_storage(&self, scope: PageCheck) -> Result<&'static str>;

    /// A foreign key that does not hold, as `(table, row, parent table)`.
    fn broken_reference(&self) -> Result<Option<(String, String, String)>>;

    /// Every context's evaluation rows and rows of the assignments table, in one pass: the
    /// items of a context together (`true` with its first), its evaluation rows in id order.
    fn for_each_context_item(
        &self,
        visit: &mut dyn FnMut(bool, ContextItem) -> Result<()>,
    ) -> Result<()>;

    /// The first audit row filed under another context than its own key (a number that does
    /// not name its `context_key`, which the hash covers), which a query by context would not
    /// find: its id and key. Only SQLite numbers contexts (schema 10); PostgreSQL finds a
    /// context's rows by the key itself, so none of its rows can be misfiled.
    fn misfiled_context(&self) -> Result<Option<(i64, Option<String>)>>;

    fn assignment_count(&self) -> Result<i64>;

    /// The bytes each table and index of the store occupies, by name: on SQLite the pages
    /// `dbstat` counts for it, on PostgreSQL `pg_relation_size` of each table and index in
    /// the store's schema (TOAST data apart).
    fn space_by_object(&self) -> Result<Vec<(String, i64)>>;

    /// How far the server's write-ahead log has come, in bytes, where the store's writes go
    /// through a server that writes in processes of its own (PostgreSQL: `pg_current_wal_lsn`,
    /// every database of the server alike): what a benchmark counts as bytes written there.
    /// `None` on SQLite, where the writing process counts its own.
    fn log_position(&self) -> Result<Option<u64>>;

    /// Of `flag`'s stored assignments: how many are on, how many off, and how many were
    /// decided otherwise than a hash under `rollout_pct` would decide them now.
    fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally>;

    /// Every API token, active and revoked, by name.
    /// The token change rows, oldest first: (id, action, ts, detail).
    fn token_changes(&self) -> Result<Vec<(i64, String, String, String)>>;

    /// Every API token by name; without `digests`, each `sha256` empty and the column not
    /// read, for a role that may read everything but the digests (README: PostgreSQL roles).
    fn list_tokens(&self, digests: bool) -> Result<Vec<TokenRecord>>;

    /// Whether this connection may read the tokens' digests: on PostgreSQL a reviewer's role
    /// may not (README: PostgreSQL roles); an SQLite file's reader reads everything.
    fn may_read_token_digests(&self) -> Result<bool>;
}

/// What only a write transaction, holding the store's writer lock, may do.
pub(super) trait Writes {
    /// Adds a flag at `position` in the store's order (`flags.position`).
    fn insert_flag(
        &self,
        flag: &Flag,
        position: usize,
        created_at: &str,
        updated_at: &str,
    ) -> Result<()>;

    fn update_flag(&self, flag: &Flag, ts: &str) -> Result<()>;

    /// Puts a flag at `position` in the store's order.
    fn move_flag(&self, name: &str, position: usize) -> Result<()>;

    /// Replaces a flag's requirements with `requires`, kept in that order.
    fn replace_requirements(&self, flag: &str, requires: &[String]) -> Result<()>;

    /// Deletes a flag (its requirements already removed) and its assignments; returns how many
    /// assignments went with it.
    fn delete_flag(&self, name: &str) -> Result<usize>;

    /// Stores assignments, none of them stored yet.
    fn insert_assignments(&self, rows: &[AssignmentRef]) -> Result<()>;

    fn delete_assignments(&self, flag: &str, context: Option<&str>) -> Result<usize>;

    /// Records that the decision records `first_id..=last_id` were each asked for the flags
    /// of the set `flags` (its JSON, as [`super::ranges::flag_set_json`] writes it), adding
    /// the set if it is new.
    fn insert_record_range(&self, flags: &str, first_id: i64, last_id: i64) -> Result<()>;

    fn insert_token(&self, token: &TokenRecord) -> Result<()>;

    /// Marks an active token revoked; false when there is no active token of that name.
    fn revoke_token(&self, name: &str, ts: &str) -> Result<bool>;

    /// Writes something every write would, changing nothing (see [`Store::probe_write`]).
    fn rewrite_header(&self) -> Result<()>;
}

/// A read-only transaction: one snapshot for every read, ended when dropped. Only
/// [`Reads`] are reachable through it.
pub(super) struct ReadTx<'s> {
    backend: &'s dyn Backend,
}

impl<'s> ReadTx<'s> {
    pub(super) fn begin(backend: &'s dyn Backend) -> Result<ReadTx<'s>> {
        backend.begin_read()?;
        Ok(ReadTx { backend })
    }
}

impl<'s> std::ops::Deref for ReadTx<'s> {
    type Target = dyn Reads + 's;

    fn deref(&self) -> &Self::Target {
        self.backend.steps()
    }
}

impl Drop for ReadTx<'_> {
    fn drop(&mut self) {
        // A snapshot has nothing to keep: rolling back ends it.
        self.backend.rollback();
    }
}

/// Whether the rows a write transaction writes need their references checked as they are
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum References {
    /// Any write: the database checks every foreign key and applies its cascades.
    Checked,
    /// Evaluations alone, whose rows refer only to flags the transaction read and contexts it
    /// read or numbered, under the writer lock, so no other writer can remove them. SQLite
    /// then skips its per-row checks (a fifth of a fresh batch); `flagstore check` still
    /// proves every reference afterwards. PostgreSQL always checks.
    EstablishedByTheTransaction,
}

/// A stored assignment as [`Reads::fetch_assignments`] finds it: its key and flag as indexes
/// into the lists asked for, and its time as `T`, so that a reader on a busy thread need not
/// allocate per row.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FoundAssignment<T> {
    pub(super) key: usize,
    pub(super) flag: usize,
    pub(super) decision: bool,
    pub(super) bucket: u8,
    pub(super) rollout_pct: f64,
    pub(super) assigned_at: T,
}

impl<T> FoundAssignment<T> {
    pub(super) fn with_time<U>(self, assigned_at: U) -> FoundAssignment<U> {
        FoundAssignment {
            key: self.key,
            flag: self.flag,
            decision: self.decision,
            bucket: self.bucket,
            rollout_pct: self.rollout_pct,
            assigned_at,
        }
    }
}

impl FoundAssignment<&str> {
    pub(super) fn to_stored(&self) -> StoredAssignment {
        StoredAssignment {
            decision: self.decision,
            bucket: self.bucket,
            rollout_pct: self.rollout_pct,
            assigned_at: self.assigned_at.to_string(),
        }
    }
}

/// Every step a write transaction may take: [`Reads`] and [`Writes`].
pub(super) trait Steps: Reads + Writes {}

impl<T: Reads + Writes + ?Sized> Steps for T {}

/// Asked while a writer waits for the lock: `false` ends the wait.
pub type KeepWaiting = Arc<dyn Fn() -> bool + Send + Sync>;

/// How a writer waits for the writer lock another holds.
#[derive(Clone)]
pub struct LockWait {
    /// How long it keeps trying before it reports the store busy.
    pub budget: Duration,
    /// Asked at least every [`LockWait::ASKED_EVERY`] while it waits, where given: `false`
    /// ends the wait with [`Error::Interrupted`], before anything is written. The Python
    /// package asks whether Ctrl-C was pressed.
    pub keep_waiting: Option<KeepWaiting>,
}

impl LockWait {
    pub const ASKED_EVERY: Duration = Duration::from_millis(50);

    /// Whether to go on waiting, as `keep_waiting` says (always, without it); `Err` to stop.
    pub(super) fn go_on(&self) -> Result<()> {
        match &self.keep_waiting {
            Some(keep_waiting) if !keep_waiting() => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }
}

/// A transaction holding the store's writer lock: committed by [`WriteTx::commit`], which
/// consumes it, and rolled back if dropped, so an error anywhere leaves the database as it was.
pub(super) struct WriteTx<'s> {
    backend: &'s dyn Backend,
    finished: bool,
}

impl<'s> WriteTx<'s> {
    /// Begins a write transaction, waiting for the writer lock as `lock_wait` says.
    pub(super) fn begin(
        backend: &'s dyn Backend,
        lock_wait: &LockWait,
        references: References,
    ) -> Result<WriteTx<'s>> {
        backend.begin_write(lock_wait, references)?;
        Ok(WriteTx {
            backend,
            finished: false,
        })
    }

    /// This transaction as a reader, for steps that only read.
    pub(super) fn reads(&self) -> &(dyn Reads + 's) {
        self.backend.steps()
    }

    /// Appends audit rows, already linked into the chain. With [`WriteTx::append_step`], the
    /// only way rows reach `audit_log`.
    pub(super) fn append_audit(&self, rows: &[ChainedEntry]) -> Result<()> {
        self.backend.insert_audit(rows)
    }

    /// Stores one evaluated step (see [`Backend::insert_step`]).
    pub(super) fn append_step(
        &self,
        assignments: &[AssignmentRef],
        records: &[ChainedEntry],
        range: Option<(&str, i64, i64)>,
    ) -> Result<()> {
        self.backend.insert_step(assignments, records, range)
    }

    /// Commits. A connection lost during COMMIT (a server restart, a terminated backend) leaves
    /// unknown whether the transaction landed; a new connection is then asked for the audit
    /// row this transaction appended last (its hash covers everything before it), so that
    /// work that committed is reported committed, and a caller that retries work reported
    /// [`Error::NotCommitted`] never records it twice.
    pub(super) fn commit(mut self) -> Result<()> {
        self.finished = true;
        // PostgreSQL answers from the tail its transaction keeps, with no round trip.
        let head = self.backend.steps().audit_tail()?;
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
            match reconnected.and_then(|_| self.backend.steps().audit_hash(id)) {
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

impl<'s> std::ops::Deref for WriteTx<'s> {
    type Target = dyn Steps + 's;

    fn deref(&self) -> &Self::Target {
        self.backend.steps()
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.backend.rollback();
        }
    }
}
