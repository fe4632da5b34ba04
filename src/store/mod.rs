//! The SQLite store: the only module that speaks SQL.
//!
//! Every read-then-write runs in one `BEGIN IMMEDIATE` transaction, so two processes evaluating
//! the same (flag, context) end with one assignment and the same answer, and every write lands
//! together with its audit row or not at all.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::backup::Backup;
use rusqlite::{
    CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql,
    TransactionBehavior,
};
use serde_json::json;

use crate::audit::{Entry, GENESIS_HASH, timestamp};
use crate::change::{self, Change};
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation, StoredAssignment};
use crate::file::PendingFile;
use crate::flag::{Flag, FlagSet};
use crate::record;

mod query;
mod review;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long one attempt waits for another process's lock, in polls of [`BUSY_POLL`].
const BUSY_POLLS: i32 = 2_000;

/// How often a waiting connection tries the lock again. SQLite's own busy timeout backs off to
/// 100 ms sleeps, and batch workers that take the lock again within a few milliseconds of
/// releasing it then starve a waiting operator: a kill switch thrown during a batch waited
/// until every batch had finished. Polling every millisecond catches the gaps between their
/// transactions.
const BUSY_POLL: Duration = Duration::from_millis(1);

fn wait_for_lock(attempts_so_far: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    attempts_so_far < BUSY_POLLS
}

/// How long a writer keeps retrying a busy database before reporting it.
const BUSY_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Prepared statements kept per connection (see `insert_rows`).
const STATEMENT_CACHE: usize = 128;

/// SQLite page cache, in KiB as a negative `cache_size` (SQLite's convention): large enough to
/// hold the hot B-tree pages of a batch, small enough for a flat 64 MB process.
const PAGE_CACHE_KIB: i64 = -16_384;

/// WAL size, in pages, at which a commit checkpoints it into the database file.
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

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

pub struct Store {
    conn: Connection,
    path: String,
    clock: Box<dyn Fn() -> DateTime<Utc>>,
    lock_wait: Duration,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// A file that is not SQLite, or was migrated by a newer flagstore, is refused untouched.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, OpenFlags::SQLITE_OPEN_CREATE)
    }

    /// Opens the database at `path`, refusing to create one: for commands that only read or
    /// evaluate, where a mistyped path must not silently give an empty store. A file this user
    /// cannot write is opened read-only, so reviewers can read it; writes then fail naming it.
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::NoDatabase {
                path: path.display().to_string(),
            });
        }
        let opened = Store::open_with(path, OpenFlags::empty());
        match opened {
            Err(Error::ReadOnly { .. }) if Store::is_snapshot_only(path) => {
                Store::open_immutable(path)
            }
            opened => opened,
        }
    }

    /// Whether `path` can only be read as a snapshot: this user cannot write the file, and no
    /// flagstore has it open (the last connection to close removes the WAL). SQLite then cannot
    /// create the shared-memory file it reads a WAL database with, and reads the file as
    /// immutable instead.
    fn is_snapshot_only(path: &Path) -> bool {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::OpenOptions::new().write(true).open(path).is_err() && !Path::new(&wal).exists()
    }

    fn open_immutable(path: &Path) -> Result<Store> {
        let display = path.display().to_string();
        let mut uri = String::from("file:");
        for byte in path.as_os_str().as_encoded_bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                    uri.push(char::from(*byte));
                }
                _ => uri.push_str(&format!("%{byte:02X}")),
            }
        }
        uri.push_str("?immutable=1");
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Store::connect(&uri, display, flags)
    }

    /// Creates a new, empty store at `path`; an existing file is refused, whatever it holds.
    pub fn create(path: &Path) -> Result<Store> {
        if path.exists() {
            return Err(Error::AlreadyExists {
                path: path.display().to_string(),
            });
        }
        Store::open(path)
    }

    fn open_with(path: &Path, create: OpenFlags) -> Result<Store> {
        let display = path.display().to_string();
        if path.is_dir() {
            return Err(Error::IsDirectory { path: display });
        }
        // Without CREATE, SQLite opens a file it may not write read-only.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | create;
        Store::connect(path, display, flags)
    }

    /// Opens `target` (a path or URI) with `flags` and initialises the store; errors name
    /// the database as `display`.
    fn connect(target: impl AsRef<Path>, display: String, flags: OpenFlags) -> Result<Store> {
        let conn = Connection::open_with_flags(target, flags).map_err(|source| Error::Open {
            path: display.clone(),
            source,
        })?;
        Store::init(conn, display.clone()).map_err(|e| e.at_database(&display))
    }

    /// A private database in memory, for tests and experiments.
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        Store::init(conn, ":memory:".to_string())
    }

    fn init(mut conn: Connection, path: String) -> Result<Store> {
        conn.busy_handler(Some(wait_for_lock))?;
        // The first read is what fails on a file that is not a database; nothing has been
        // written yet at that point, so the file is left exactly as it was.
        let schema = schema_state(&conn).map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Error::NotADatabase {
                path: path.clone(),
                detail: e.to_string(),
            },
            _ => Error::Database(e),
        })?;
        schema.check(&path)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Multi-row inserts use one statement per row count; keep them all prepared.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
        // Multi-row inserts keep a statement journal; as a file it cost a tenth of batch time.
        conn.pragma_update(None, "temp_store", "memory")?;
        // While connections are open the WAL is checkpointed as it grows, every
        // WAL_CHECKPOINT_PAGES pages (about 40 MB), which lets a batch rewrite its hot pages in
        // the WAL before they are copied. The last connection to close checkpoints the rest
        // and removes the WAL (SQLite's default), so that when no flagstore runs, all state
        // is in the one database file and a plain copy of it is complete.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        // Asked first, because setting it, even to what it is, is a write, which a reviewer
        // with read-only access to the file cannot make.
        let journal: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if journal != "wal" {
            retry_while_busy(BUSY_RETRY_BUDGET, || {
                conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
            })?;
        }
        if schema != SchemaState::Current {
            migrate(&mut conn, &path)?;
        }
        Ok(Store {
            conn,
            path,
            clock: Box::new(Utc::now),
            lock_wait: BUSY_RETRY_BUDGET,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn flags(&self) -> Result<FlagSet> {
        load_flags(&self.conn)
    }

    pub fn flag(&self, name: &str) -> Result<Option<FlagRecord>> {
        let flags = self.flags()?;
        let Some(flag) = flags.get(name) else {
            return Ok(None);
        };
        let (created_at, updated_at) = self.conn.query_row(
            "SELECT created_at, updated_at FROM flags WHERE name = ?1",
            [name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
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
            .unwrap_or_default();
        confirm(&next, &changes, &evaluations)?;
        tx.commit()?;
        Ok((changes, evaluations))
    }

    /// Writes a consistent copy of the whole store to `destination` with SQLite's online
    /// backup API: every page in one step, so from one read snapshot while writers carry on.
    /// The copy goes to a temporary file beside `destination` and is renamed into place, and
    /// it is left in rollback-journal mode: one self-contained file.
    pub fn backup_to(&self, destination: &Path) -> Result<()> {
        let pending = PendingFile::create(destination)?;
        let copied = (|| -> rusqlite::Result<()> {
            let mut copy = Connection::open(pending.path())?;
            Backup::new(&self.conn, &mut copy)?.step(-1)?;
            copy.pragma_update_and_check(None, "journal_mode", "delete", |_| Ok(()))?;
            copy.close().map_err(|(_, e)| e)
        })();
        copied?;
        pending.persist()
    }

    /// Evaluates the selected flags for one context key, storing sticky decisions and one
    /// audit row per returned decision.
    pub fn evaluate(
        &mut self,
        selection: &Selection,
        context: &str,
        actor: &str,
    ) -> Result<Vec<Evaluation>> {
        let keys = [context.to_string()];
        let tx = self.write_transaction()?;
        let ts = self.now();
        let flags = load_flags(&tx)?;
        let mut results =
            EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &keys, actor, &ts)?;
        tx.commit()?;
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
            let tx = self.write_transaction()?;
            let ts = self.now();
            // Flags are re-read for every chunk so that a kill switch thrown during a long run
            // takes effect within one chunk.
            let flags = load_flags(&tx)?;
            let results =
                EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &chunk, actor, &ts)?;
            tx.commit()?;
            report.batch_latencies.push(started.elapsed());
            for (key, evaluations) in chunk.iter().zip(&results) {
                emit(key, evaluations)?;
                report.evaluations += evaluations.len() as u64;
            }
        }
    }

    /// Stored assignments, optionally for one flag and/or one context, ordered by flag then
    /// context key.
    pub fn assignments(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
    ) -> Result<Vec<AssignmentRow>> {
        const COLUMNS: &str =
            "SELECT flag, context_key, decision, bucket, rollout_pct, assigned_at FROM assignments";
        // One statement per filter combination: those with a flag use the primary key; a
        // context alone scans, which is fine for an operator's occasional look.
        let (sql, params) = match (flag, context) {
            (None, None) => (format!("{COLUMNS} ORDER BY flag, context_key"), vec![]),
            (Some(flag), None) => (
                format!("{COLUMNS} WHERE flag = ?1 ORDER BY context_key"),
                vec![flag],
            ),
            (None, Some(context)) => (
                format!("{COLUMNS} WHERE context_key = ?1 ORDER BY flag"),
                vec![context],
            ),
            (Some(flag), Some(context)) => (
                format!("{COLUMNS} WHERE flag = ?1 AND context_key = ?2"),
                vec![flag, context],
            ),
        };
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
            Ok(AssignmentRow {
                flag: row.get(0)?,
                context_key: row.get(1)?,
                decision: row.get(2)?,
                bucket: row.get(3)?,
                rollout_pct: row.get(4)?,
                assigned_at: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        let flags = load_flags(&tx)?;
        if !flags.contains(flag) {
            return Err(Error::UnknownFlag {
                name: flag.to_string(),
                suggestion: flags.nearest_name(flag),
            });
        }
        let cleared = tx.execute(
            "DELETE FROM assignments WHERE flag = ?1 AND (?2 IS NULL OR context_key = ?2)",
            (flag, context),
        )?;
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
        let tx = self.conn.transaction()?;
        let flags = load_flags(&tx)?;
        let selection = Selection::Flags(vec![flag.to_string()]);
        let plan = EvaluationPlan::showing_all_assignments(&flags, &selection);
        let mut stored = HashMap::new();
        plan.fetch_assignments(&mut plan.lookup_statements(&tx)?, context, &mut stored)?;
        Ok((flags, stored))
    }

    /// Number of rows in the audit log.
    pub fn audit_len(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM audit_log", [], |row| row.get(0))?)
    }

    /// Takes the write lock (`BEGIN IMMEDIATE`). Waiting is first SQLite's busy timeout; a
    /// writer still busy after it is retried with growing pauses for up to a minute, so a burst
    /// of contention from many pipeline workers slows them down instead of failing them.
    fn write_transaction(&self) -> Result<WriteTransaction<'_>> {
        retry_while_busy(self.lock_wait, || {
            self.conn.execute_batch("BEGIN IMMEDIATE")
        })?;
        Ok(WriteTransaction {
            conn: &self.conn,
            finished: false,
        })
    }

    /// How long a writer keeps retrying a busy database before it reports "database is
    /// locked" ([`BUSY_RETRY_BUDGET`] unless changed).
    pub fn set_lock_wait(&mut self, budget: Duration) {
        self.lock_wait = budget;
    }

    /// Replaces the clock that timestamps rows (tests use it to turn time back).
    pub fn set_clock(&mut self, clock: impl Fn() -> DateTime<Utc> + 'static) {
        self.clock = Box::new(clock);
    }

    fn now(&self) -> String {
        timestamp((self.clock)())
    }
}

/// What a database holds, as far as flagstore is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaState {
    /// No tables, or only the empty history table of a first migration that was interrupted
    /// (refinery creates it in a transaction of its own before the schema's).
    Empty,
    /// Migrated, to this version, by an older flagstore.
    Older(i64),
    Current,
    Newer(i64),
    /// Some other application's tables: adding ours to them would be a surprise.
    Foreign,
}

impl SchemaState {
    fn check(self, path: &str) -> Result<()> {
        match self {
            SchemaState::Newer(found) => Err(Error::NewerSchema {
                path: path.to_string(),
                found,
                supported: LATEST_SCHEMA_VERSION,
            }),
            SchemaState::Foreign => Err(Error::NotADatabase {
                path: path.to_string(),
                detail: "it is an SQLite database with tables of its own".to_string(),
            }),
            _ => Ok(()),
        }
    }
}

fn schema_state(conn: &Connection) -> rusqlite::Result<SchemaState> {
    let (tables, has_history): (i64, bool) = conn.query_row(
        "SELECT count(*), coalesce(max(name = 'refinery_schema_history'), 0) \
           FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if !has_history {
        return Ok(if tables == 0 {
            SchemaState::Empty
        } else {
            SchemaState::Foreign
        });
    }
    let version: Option<i64> = conn.query_row(
        "SELECT max(version) FROM refinery_schema_history",
        [],
        |row| row.get(0),
    )?;
    Ok(match version {
        None if tables == 1 => SchemaState::Empty,
        None => SchemaState::Foreign,
        Some(v) if v < LATEST_SCHEMA_VERSION => SchemaState::Older(v),
        Some(v) if v == LATEST_SCHEMA_VERSION => SchemaState::Current,
        Some(v) => SchemaState::Newer(v),
    })
}

/// The newest migration under `migrations/`. A constant, because building refinery's runner
/// parses every migration's name with a regex: most of a short process's start-up. A test keeps
/// it equal to the embedded migrations.
const LATEST_SCHEMA_VERSION: i64 = 2;

/// Runs `attempt` again, with growing pauses, while the database is busy, for up to
/// `budget`: a burst of contention from many pipeline workers slows them down
/// instead of failing them.
fn retry_while_busy<T>(
    budget: Duration,
    mut attempt: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(25);
    loop {
        match attempt() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            outcome => return outcome,
        }
    }
}

/// Brings the schema up to date. refinery's transactions take the write lock as they begin
/// (IMMEDIATE), so concurrent first openers queue for it instead of failing on a lock upgrade,
/// and all migrations apply in one transaction with their history rows (grouped), so a kill
/// leaves the old schema or the new one. An opener that lost the race finds the schema current
/// when it gets the lock, and refinery then has nothing to do.
fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let deadline = Instant::now() + BUSY_RETRY_BUDGET;
    let outcome = loop {
        let state = schema_state(conn)?;
        state.check(path)?;
        if state == SchemaState::Current {
            break Ok(());
        }
        match embedded::migrations::runner().set_grouped(true).run(conn) {
            Ok(_) => break Ok(()),
            Err(source) if Instant::now() >= deadline => {
                break Err(Error::Migration {
                    path: path.to_string(),
                    source,
                });
            }
            // Busy past the timeout, or beaten to it: look again.
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    outcome
}

/// An open write transaction: committed by [`WriteTransaction::commit`], rolled back if
/// dropped, so an error anywhere leaves the database as it was.
struct WriteTransaction<'c> {
    conn: &'c Connection,
    finished: bool,
}

impl WriteTransaction<'_> {
    fn commit(mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.finished = true;
        Ok(())
    }
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing useful can be done with a failed rollback: SQLite rolls back an
            // unfinished transaction itself when the connection closes.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn load_flags(conn: &Connection) -> Result<FlagSet> {
    let mut requires: HashMap<String, Vec<String>> = HashMap::new();
    let mut edges = conn
        .prepare_cached("SELECT flag, requires FROM flag_dependencies ORDER BY flag, requires")?;
    for edge in edges.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (flag, required): (String, String) = edge?;
        requires.entry(flag).or_default().push(required);
    }
    let mut statement =
        conn.prepare_cached("SELECT name, enabled, rollout_pct, sticky FROM flags")?;
    let mut rows = statement.query([])?;
    let mut flags = FlagSet::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let sticky: String = row.get(3)?;
        flags.insert(Flag {
            requires: requires.remove(&name).unwrap_or_default(),
            enabled: row.get(1)?,
            rollout_pct: row.get(2)?,
            sticky: sticky.parse()?,
            name,
        });
    }
    Ok(flags)
}

/// Applies `edit` to the flags as they are in `tx`, checks the result and works out the
/// changes; with `write` (actor, via, timestamp) also writes them, audited. Returns the flags
/// as edited and the changes.
fn edit_flags(
    tx: &Connection,
    edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
    write: Option<(&str, &str, &str)>,
) -> Result<(FlagSet, Vec<Change>)> {
    let current = load_flags(tx)?;
    let next = edit(&current)?;
    next.validate()?;
    let changes = change::diff(&current, &next);
    if let Some((actor, via, ts)) = write {
        write_changes(tx, &changes, actor, via, ts)?;
    }
    Ok((next, changes))
}

/// Writes flag rows, then dependency edges, then deletions, so that every foreign key holds
/// after each statement whatever order the changes came in.
fn write_changes(
    tx: &Connection,
    changes: &[Change],
    actor: &str,
    via: &str,
    ts: &str,
) -> Result<()> {
    for change in changes {
        match change {
            Change::Create(flag) => {
                tx.prepare_cached(
                    "INSERT INTO flags (name, enabled, rollout_pct, sticky, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?
                .execute((
                    &flag.name,
                    flag.enabled,
                    flag.rollout_pct,
                    flag.sticky.as_str(),
                    &ts,
                ))?;
            }
            Change::Update { after, .. } => {
                tx.prepare_cached(
                    "UPDATE flags SET enabled = ?2, rollout_pct = ?3, sticky = ?4, updated_at = ?5 \
                     WHERE name = ?1",
                )?
                .execute((
                    &after.name,
                    after.enabled,
                    after.rollout_pct,
                    after.sticky.as_str(),
                    &ts,
                ))?;
            }
            Change::Delete(_) => {}
        }
    }
    // Edges before deletions: a flag being deleted may be required by another being deleted.
    for change in changes {
        let after = change.after();
        if change.before().map(|b| &b.requires) == after.map(|a| &a.requires) {
            continue;
        }
        tx.prepare_cached("DELETE FROM flag_dependencies WHERE flag = ?1")?
            .execute([change.flag_name()])?;
        let mut insert =
            tx.prepare_cached("INSERT INTO flag_dependencies (flag, requires) VALUES (?1, ?2)")?;
        for required in after.map(|a| a.requires.as_slice()).unwrap_or_default() {
            insert.execute((change.flag_name(), required))?;
        }
    }
    let mut texts = Vec::with_capacity(changes.len());
    for change in changes {
        let mut detail = json!({ "before": change.before(), "after": change.after() });
        if let Change::Delete(flag) = change {
            let cleared = tx
                .prepare_cached("DELETE FROM assignments WHERE flag = ?1")?
                .execute([&flag.name])?;
            tx.prepare_cached("DELETE FROM flags WHERE name = ?1")?
                .execute([&flag.name])?;
            detail["assignments_deleted"] = json!(cleared);
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
    /// Enabled flags whose assignment the evaluation may consult.
    lookups: Vec<&'a str>,
    /// One query per [`FLAGS_PER_LOOKUP`] of `lookups`, fetching a key's assignments for all
    /// of them in one statement instead of one statement per flag.
    lookup_sql: Vec<String>,
}

/// Flags per assignment lookup statement, well inside SQLite's limit of 500 compound terms.
const FLAGS_PER_LOOKUP: usize = 64;

/// `SELECT` of the assignments of one context (`?1`) for `flags` flags (`?2`, `?3`, ...): a
/// UNION ALL of primary-key lookups, so each term is one index seek.
fn lookup_sql(flags: usize) -> String {
    (0..flags)
        .map(|i| {
            format!(
                "SELECT flag, decision, bucket, rollout_pct, assigned_at FROM assignments \
                 WHERE flag = ?{} AND context_key = ?1",
                i + 2
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
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
        let lookups: Vec<&str> = flags
            .closure(requested.iter().copied())
            .into_iter()
            .filter(|name| flags.get(name).is_some_and(&consulted))
            .collect();
        let lookup_sql = lookups
            .chunks(FLAGS_PER_LOOKUP)
            .map(|chunk| lookup_sql(chunk.len()))
            .collect();
        EvaluationPlan {
            flags,
            requested,
            lookups,
            lookup_sql,
        }
    }

    fn lookup_statements<'c>(&self, conn: &'c Connection) -> Result<Vec<CachedStatement<'c>>> {
        Ok(self
            .lookup_sql
            .iter()
            .map(|sql| conn.prepare_cached(sql))
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Replaces `stored` with the assignments of `key` for every flag the plan may consult.
    fn fetch_assignments(
        &self,
        statements: &mut [CachedStatement],
        key: &str,
        stored: &mut HashMap<String, StoredAssignment>,
    ) -> Result<()> {
        stored.clear();
        for (lookup, flags) in statements
            .iter_mut()
            .zip(self.lookups.chunks(FLAGS_PER_LOOKUP))
        {
            let params = std::iter::once(key).chain(flags.iter().copied());
            let mut rows = lookup.query(rusqlite::params_from_iter(params))?;
            while let Some(row) = rows.next()? {
                let assignment = StoredAssignment {
                    decision: row.get(1)?,
                    bucket: row.get(2)?,
                    rollout_pct: row.get(3)?,
                    assigned_at: row.get(4)?,
                };
                stored.insert(row.get::<_, String>(0)?, assignment);
            }
        }
        Ok(())
    }

    /// Evaluates every key within the caller's transaction: each key's new assignments are
    /// written before the next key is looked up (a key may repeat), and the decision records of
    /// all keys (one per key) at the end, several rows per statement, with one
    /// `audit_flag_ranges` row per requested flag covering them.
    fn evaluate_keys(
        &self,
        tx: &Connection,
        keys: &[String],
        actor: &str,
        ts: &str,
    ) -> Result<Vec<Vec<Evaluation>>> {
        let mut lookups = self.lookup_statements(tx)?;
        let mut stored = HashMap::new();
        let mut results = Vec::with_capacity(keys.len());
        let mut details = Vec::with_capacity(keys.len());
        for key in keys {
            self.fetch_assignments(&mut lookups, key, &mut stored)?;
            let evaluation = eval::evaluate_context(self.flags, key, &stored, &self.requested);
            let mut values: Vec<&dyn ToSql> = Vec::new();
            for assignment in evaluation
                .evaluations
                .iter()
                .flat_map(|e| &e.new_assignments)
            {
                values.extend([
                    &assignment.flag as &dyn ToSql,
                    key,
                    &assignment.decision,
                    &assignment.bucket,
                    &assignment.rollout_pct,
                    &ts,
                ]);
            }
            insert_rows(
                tx,
                "INSERT INTO assignments \
                 (flag, context_key, decision, bucket, rollout_pct, assigned_at)",
                6,
                &values,
            )?;
            details.push(record::encode(&evaluation));
            results.push(evaluation.evaluations);
        }
        if self.requested.is_empty() || keys.is_empty() {
            return Ok(results);
        }
        let entries: Vec<Entry> = keys
            .iter()
            .zip(&details)
            .map(|(key, detail)| Entry {
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
            })
            .collect();
        let first_id = append_audit(tx, &entries)?;
        let last_id = first_id + keys.len() as i64 - 1;
        let mut flags = self.requested.clone();
        flags.sort_unstable();
        flags.dedup();
        let mut range = tx.prepare_cached(
            "INSERT INTO audit_flag_ranges (flag, first_id, last_id) VALUES (?1, ?2, ?3)",
        )?;
        for flag in flags {
            range.execute((flag, first_id, last_id))?;
        }
        Ok(results)
    }
}

/// Appends rows to the audit log, extending its hash chain from the last row, and returns the
/// id of the first. Runs inside the caller's write transaction, so no other writer can
/// interleave rows.
fn append_audit(tx: &Connection, entries: &[Entry]) -> Result<i64> {
    let tail: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (mut id, mut prev_hash) = tail.unwrap_or((0, GENESIS_HASH.to_string()));
    let first_id = id + 1;
    let mut links: Vec<(i64, String, String)> = Vec::with_capacity(entries.len());
    for entry in entries {
        id += 1;
        let hash = entry.hash(id, &prev_hash);
        links.push((id, std::mem::replace(&mut prev_hash, hash.clone()), hash));
    }
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(entries.len() * 13);
    for (entry, (id, prev_hash, hash)) in entries.iter().zip(&links) {
        values.extend([
            id as &dyn ToSql,
            &entry.ts,
            &entry.kind,
            &entry.actor,
            &entry.action,
            &entry.flag,
            &entry.context_key,
            &entry.result,
            &entry.source,
            &entry.reason,
            &entry.detail,
            prev_hash,
            hash,
        ]);
    }
    insert_rows(
        tx,
        // OR ROLLBACK: a failed audit insert aborts the whole transaction anyway, and saying so
        // spares SQLite the statement journal it keeps for a multi-row insert that may abort.
        "INSERT OR ROLLBACK INTO audit_log (id, ts, kind, actor, action, flag, context_key, \
         result, source, reason, detail, prev_hash, hash)",
        13,
        &values,
    )?;
    Ok(first_id)
}

/// Rows per INSERT statement when writing many: a statement's fixed cost is several times that
/// of inserting one small row, so batching rows is most of the speed of batch evaluation.
const ROWS_PER_INSERT: usize = 64;

/// Inserts `values` (row-major, `columns` per row) with as few statements as possible.
/// `insert` is a constant `INSERT INTO table (columns)` prefix, never user input.
fn insert_rows(tx: &Connection, insert: &str, columns: usize, values: &[&dyn ToSql]) -> Result<()> {
    for group in values.chunks(ROWS_PER_INSERT * columns) {
        let row = format!("({})", vec!["?"; columns].join(", "));
        let rows = vec![row; group.len() / columns].join(", ");
        tx.prepare_cached(&format!("{insert} VALUES {rows}"))?
            .execute(rusqlite::params_from_iter(group))?;
    }
    Ok(())
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
    fn latest_schema_version_matches_the_embedded_migrations() {
        let newest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max();
        assert_eq!(newest, Some(LATEST_SCHEMA_VERSION));
    }
}
