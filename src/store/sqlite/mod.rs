//! The SQLite backend: one database file, the embedded default.
//!
//! The writer lock is SQLite's own: every write transaction is `BEGIN IMMEDIATE`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::Backup;
use rusqlite::{Connection, ErrorCode, OpenFlags, ToSql, TransactionBehavior};

use super::backend::{
    AssignmentRef, Backend, ChainedEntry, LockWait, References, SchemaObject, SchemaObjects, Steps,
    Writes,
};
use super::schema::SchemaState;
use crate::error::{DatabaseError, Error, Result};
use crate::file::PendingFile;
use crate::flag::FlagSet;
use crate::store::sql;
use crate::store::stored::{StoredHash, StoredTime};

mod checkpointer;
mod reads;
mod writes;

use checkpointer::Checkpoints;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
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

/// [`wait_for_lock`] for a writer that is asked whether to go on waiting (see
/// [`LockWait::keep_waiting`]): it hands back to the writer every [`LockWait::ASKED_EVERY`].
fn wait_briefly_for_lock(attempts_so_far: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    attempts_so_far < BRIEF_POLLS
}

const BRIEF_POLLS: i32 = (LockWait::ASKED_EVERY.as_millis() / BUSY_POLL.as_millis()) as i32;

/// Prepared statements kept per connection: a statement for every row count of the three
/// multi-row inserts (decision records, assignments, contexts; see `insert_rows`), and room for
/// the rest. With 128, serve's groups, whose sizes vary, kept evicting and re-preparing them:
/// 6% of its writer's samples went to SQLite's parser.
const STATEMENT_CACHE: usize = 3 * ROWS_PER_INSERT + 64;

/// SQLite page cache, in KiB as a negative `cache_size` (SQLite's convention): large enough to
/// hold the hot B-tree pages of a batch, small enough for a flat 64 MB process.
const PAGE_CACHE_KIB: i64 = -16_384;

const SELECT_CONTEXT_ID: &str = "SELECT id FROM contexts WHERE key = ?1";

/// The page cache of a store in memory (see [`Sqlite::in_memory`]).
const IN_MEMORY_PAGE_CACHE_KIB: i64 = -256;

/// Rows per INSERT statement when writing many: a statement's fixed cost is several times that
/// of inserting one small row, so batching rows is most of the speed of batch evaluation.
const ROWS_PER_INSERT: usize = 64;

/// The newest schema version, a constant because building refinery's runner parses every
/// migration's name with a regex: most of a short process's start-up. A test keeps it equal to
/// the embedded migrations.
const LATEST_SCHEMA_VERSION: i64 = 16;

/// The number of each context key a step names.
type ContextIds<'k> = HashMap<&'k str, i64>;

pub(super) struct Sqlite {
    /// Declared first, so dropped first: its connection closes before `conn`, whose close, the
    /// last, moves the WAL into the database file and removes it.
    checkpoints: Checkpoints,
    conn: Connection,
    /// Whether `conn` checks foreign keys (see [`References`]).
    foreign_keys: Cell<bool>,
    /// The flags as last read, with the `data_version` they were read at: while no other
    /// connection has committed, only this one can have changed them, and its writes to them
    /// (and its rollbacks) clear this. Reading them again was a sixth of an in-memory
    /// evaluation.
    flags_read: RefCell<Option<(i64, FlagSet)>>,
    /// The id of each set of flags (its JSON) this connection has written a range for. A set
    /// is never changed or removed (triggers refuse it), so an id once read stays true; the
    /// map is forgotten with a transaction that did not commit, which may have added a set.
    /// Looking the set up again was two statements of every in-process evaluation.
    flag_sets: RefCell<HashMap<String, i64>>,
    /// The number of each actor this connection has written a row for, kept and forgotten
    /// as `flag_sets` is (`actors` is append-only too).
    actors: RefCell<HashMap<String, i64>>,
    path: String,
    /// The database file as an absolute path, for another connection to open; `None` where
    /// none can (in memory, an immutable snapshot).
    file: Option<PathBuf>,
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Sqlite> {
        Sqlite::open_with(path, OpenFlags::SQLITE_OPEN_CREATE)
    }

    pub(super) fn open_existing(path: &Path) -> Result<Sqlite> {
        if !path.exists() {
            return Err(Error::NoDatabase {
                path: path.display().to_string(),
            });
        }
        match Sqlite::open_with(path, OpenFlags::empty()) {
            Err(Error::ReadOnly { .. }) if Sqlite::is_snapshot_only(path) => {
                Sqlite::open_immutable(path)
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

    fn open_immutable(path: &Path) -> Result<Sqlite> {
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
        Sqlite::connect(&uri, None, display, flags)
    }

    fn open_with(path: &Path, create: OpenFlags) -> Result<Sqlite> {
        let display = path.display().to_string();
        if let Some(kind) = crate::file::not_a_file(path) {
            return Err(Error::NotAFile {
                path: display,
                kind,
            });
        }
        // Without CREATE, SQLite opens a file it may not write read-only.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | create;
        // Absolute, so that a process that changes directory still reaches the same file.
        let file = std::path::absolute(path).ok();
        Sqlite::connect(path, file.as_deref(), display, flags)
    }

    /// Opens `target` (a path or URI) with `flags` and initialises the store; errors name
    /// the database as `display`. `file` is where other connections may open it too.
    fn connect(
        target: impl AsRef<Path>,
        file: Option<&Path>,
        display: String,
        flags: OpenFlags,
    ) -> Result<Sqlite> {
        let conn = Connection::open_with_flags(target, flags).map_err(|source| Error::Open {
            path: display.clone(),
            source: source.into(),
        })?;
        Sqlite::init(conn, file, display.clone()).map_err(|e| e.at_database(&display))
    }

    /// A store in this connection's memory, in SQLite's memdb VFS: `:memory:` keeps every
    /// page in its page cache and walks the cache at each commit, so a long-lived in-memory
    /// manager got slower with every decision it recorded (the Python manager's evaluate_all
    /// took 72 us at first, 250 us after 160,000 calls); memdb holds the database as a file in
    /// memory and stays flat (59 to 73 us). Without a leading `/` in its name, no other
    /// connection can open it.
    pub(super) fn in_memory() -> Result<Sqlite> {
        let conn = Connection::open("file:flagstore?vfs=memdb")?;
        // There is no file to survive a crash, and no other connection to read a WAL: the
        // rollback journal stays in memory too.
        conn.pragma_update_and_check(None, "journal_mode", "memory", |_| Ok(()))?;
        let store = Sqlite::init(conn, None, crate::error::IN_MEMORY.to_string())?;
        // memdb holds every page already, and a page the cache lacks is a copy away. A cache of
        // a file's size only grew the scans SQLite makes of it: the Python manager's
        // evaluate_all took 27 us a call with it after 100,000 calls, 25 us with this one.
        store
            .conn
            .pragma_update(None, "cache_size", IN_MEMORY_PAGE_CACHE_KIB)?;
        // A store in memory writes no file, its sorts' included. A file's store lets a sort
        // larger than its page cache spill to files (`check` sorts the whole log by context).
        store.conn.pragma_update(None, "temp_store", "memory")?;
        Ok(store)
    }

    fn init(mut conn: Connection, file: Option<&Path>, path: String) -> Result<Sqlite> {
        conn.busy_handler(Some(wait_for_lock))?;
        // The first read is what fails on a file that is not a database; nothing has been
        // written yet at that point, so the file is left exactly as it was.
        let schema = schema_state(&conn).map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Error::NotADatabase {
                path: path.clone(),
                detail: e.to_string(),
            },
            _ => Error::from(e),
        })?;
        schema.check(&path, SQLITE_KIND)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Multi-row inserts use one statement per row count; keep them all prepared.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
        // While connections are open the WAL is checkpointed as it grows (see WAL_PAGES). The
        // last connection to close checkpoints the rest and removes the WAL (SQLite's
        // default), so that when no flagstore runs, all state is in the one database file and
        // a plain copy of it is complete.
        limit_wal(&conn, super::WAL_PAGES)?;
        // Asked first, because setting it, even to what it is, is a write, which a reviewer
        // with read-only access to the file cannot make.
        let journal: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if journal != "wal" && file.is_some() {
            retry_while_busy(super::BUSY_RETRY_BUDGET, || {
                conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
            })?;
        }
        if schema != SchemaState::Current {
            migrate(&mut conn, &path)?;
        }
        Ok(Sqlite {
            checkpoints: Checkpoints::default(),
            conn,
            foreign_keys: Cell::new(true),
            flags_read: RefCell::default(),
            flag_sets: RefCell::default(),
            actors: RefCell::default(),
            path,
            file: file.map(Path::to_path_buf),
        })
    }

    /// Forgets the flags as last read: this connection is changing them, or has rolled back
    /// a transaction that may have.
    fn flags_changed(&self) {
        self.flags_read.take();
    }

    /// Forgets the numbers of flag sets and actors read or made in a transaction that did not
    /// commit: it may have made them.
    fn forget_numbered(&self) {
        self.flag_sets.take();
        self.actors.take();
    }

    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        Ok(self.conn.prepare_cached(sql)?.execute(params)?)
    }

    /// Inserts `values` (row-major, `columns` per row) with as few statements as possible.
    /// `insert` is a constant `INSERT INTO table (columns)` prefix, never user input.
    fn insert_rows(&self, insert: &str, columns: usize, values: &[&dyn ToSql]) -> Result<()> {
        for group in values.chunks(ROWS_PER_INSERT * columns) {
            let row = format!("({})", vec!["?"; columns].join(", "));
            let rows = vec![row; group.len() / columns].join(", ");
            self.conn
                .prepare_cached(&format!("{insert} VALUES {rows}"))?
                .execute(rusqlite::params_from_iter(group))?;
        }
        Ok(())
    }

    /// The number of each of `keys` in contexts, numbering the keys it lacks.
    fn context_ids<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Result<ContextIds<'k>> {
        let mut distinct: Vec<&str> = Vec::new();
        let mut ids: HashMap<&str, Option<i64>> = HashMap::new();
        for key in keys {
            if ids.insert(key, None).is_none() {
                distinct.push(key);
            }
        }
        // One key, as an in-process caller asks: RETURNING would build a table to return
        // one row in, a few percent of such a call.
        if let [key] = distinct[..] {
            let numbered = self
                .conn
                .prepare_cached(
                    "INSERT INTO contexts (key) VALUES (?1) ON CONFLICT (key) DO NOTHING",
                )?
                .execute([key])?;
            let id = match numbered {
                1 => self.conn.last_insert_rowid(),
                _ => self
                    .conn
                    .prepare_cached(SELECT_CONTEXT_ID)?
                    .query_row([key], |row| row.get(0))?,
            };
            return Ok(HashMap::from([(key, id)]));
        }
        // New keys are numbered with one statement per ROWS_PER_INSERT of them; RETURNING
        // names only the keys it numbered, so the others are looked up one by one.
        for group in distinct.chunks(ROWS_PER_INSERT) {
            let mut insert = self.conn.prepare_cached(&format!(
                "INSERT INTO contexts (key) VALUES {} ON CONFLICT (key) DO NOTHING RETURNING id, key",
                vec!["(?)"; group.len()].join(", ")
            ))?;
            let mut numbered = insert.query(rusqlite::params_from_iter(group))?;
            while let Some(row) = numbered.next()? {
                if let Some(id) =
                    ids.get_mut(row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?)
                {
                    *id = Some(row.get(0)?);
                }
            }
        }
        let mut lookup = self.conn.prepare_cached(SELECT_CONTEXT_ID)?;
        ids.into_iter()
            .map(|(key, id)| match id {
                Some(id) => Ok((key, id)),
                None => Ok((key, lookup.query_row([key], |row| row.get(0))?)),
            })
            .collect()
    }

    /// Inserts audit rows, each with the number of its context key in `ids`, into
    /// `audit_rows` in its compact form (schema 14): the time in milliseconds, the actor by
    /// number, the hash as its 32 bytes, and no `prev_hash` where it is the
    /// previous row's hash (every row the chain links; not every row a copy of a store edited
    /// by hand brings).
    fn insert_numbered_audit(&self, rows: &[ChainedEntry], ids: &ContextIds) -> Result<()> {
        let times = StoredTime::of_each(rows.iter().map(|row| row.entry.ts));
        let mut stored: Vec<StoredRow> = Vec::with_capacity(rows.len());
        for (row, ts) in rows.iter().zip(times) {
            stored.push(StoredRow {
                ts,
                actor_id: self.actor_id(row.entry.actor)?,
                prev_hash: (!row.follows_previous).then_some(row.prev_hash),
                hash: StoredHash::of(row.hash),
                context_id: row.entry.context_key.map(|key| ids[key]),
            });
        }
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 13);
        for (row, stored) in rows.iter().zip(&stored) {
            let entry = &row.entry;
            values.extend([
                &row.id as &dyn ToSql,
                &stored.ts,
                &stored.actor_id,
                &entry.action,
                &entry.flag,
                &entry.context_key,
                &entry.result,
                &entry.source,
                &entry.reason,
                &entry.detail,
                &stored.prev_hash,
                &stored.hash,
                &stored.context_id,
            ]);
        }
        self.insert_rows(
            // OR ROLLBACK: a failed audit insert aborts the whole transaction anyway, and
            // saying so spares SQLite the statement journal it keeps for a multi-row insert
            // that may abort.
            "INSERT OR ROLLBACK INTO audit_rows (id, ts_ms, actor_id, action, flag, context_key, \
             result, source, reason, detail, prev_hash, hash, context_id)",
            13,
            &values,
        )
    }

    /// The number of `actor` in `actors`, numbering a new one.
    fn actor_id(&self, actor: &str) -> Result<i64> {
        self.numbered(
            &self.actors,
            "INSERT INTO actors (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
            "SELECT id FROM actors WHERE name = ?1",
            actor,
        )
    }

    /// The number of `value` in an append-only table that numbers each of its values once:
    /// remembered in `numbers`, else found by `select`, once `insert` has numbered it if it
    /// was new (see [`Sqlite::forget_numbered`]).
    fn numbered(
        &self,
        numbers: &RefCell<HashMap<String, i64>>,
        insert: &str,
        select: &str,
        value: &str,
    ) -> Result<i64> {
        if let Some(id) = numbers.borrow().get(value) {
            return Ok(*id);
        }
        self.execute(insert, [value])?;
        let id: i64 = self
            .conn
            .prepare_cached(select)?
            .query_row([value], |row| row.get(0))?;
        numbers.borrow_mut().insert(value.to_string(), id);
        Ok(id)
    }

    /// Inserts assignments, each with the number of its context key in `ids`, their times in
    /// milliseconds (schema 15).
    fn insert_numbered_assignments(&self, rows: &[AssignmentRef], ids: &ContextIds) -> Result<()> {
        let times = StoredTime::of_each(rows.iter().map(|row| row.assigned_at));
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(rows.len() * 6);
        for (row, time) in rows.iter().zip(&times) {
            values.extend([
                &ids[row.context_key] as &dyn ToSql,
                &row.flag,
                &row.decision,
                &row.bucket,
                &row.rollout_pct,
                time,
            ]);
        }
        self.insert_rows(
            "INSERT INTO assignment_rows \
             (context_id, flag, decision, bucket, rollout_pct, assigned_at)",
            6,
            &values,
        )
    }
}

impl Backend for Sqlite {
    fn steps(&self) -> &dyn Steps {
        self
    }

    fn name(&self) -> &str {
        &self.path
    }

    fn begin_write(&self, lock_wait: &LockWait, references: References) -> Result<()> {
        // A connection's setting, which SQLite ignores inside a transaction: set before BEGIN,
        // and only when it changes, which a run of evaluations or of changes never does.
        let checked = references == References::Checked;
        if self.foreign_keys.get() != checked {
            self.conn.pragma_update(None, "foreign_keys", checked)?;
            self.foreign_keys.set(checked);
        }
        let begin = || self.conn.execute_batch("BEGIN IMMEDIATE");
        if lock_wait.keep_waiting.is_none() {
            return Ok(retry_while_busy(lock_wait.budget, begin)?);
        }
        // Polled in short turns, asking between them, with nothing written until it begins.
        self.conn.busy_handler(Some(wait_briefly_for_lock))?;
        let deadline = Instant::now() + lock_wait.budget;
        let begun = loop {
            match begin() {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    if let Err(interrupted) = lock_wait.go_on() {
                        break Err(interrupted);
                    }
                }
                outcome => break outcome.map_err(Error::from),
            }
        };
        self.conn.busy_handler(Some(wait_for_lock))?;
        begun
    }

    fn begin_read(&self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN")?)
    }

    fn commit(&self) -> Result<()> {
        if let Err(failed) = self.conn.execute_batch("COMMIT") {
            self.forget_numbered();
            return Err(failed.into());
        }
        if let Some(file) = &self.file {
            self.checkpoints.committed(file);
        }
        Ok(())
    }

    fn rollback(&self) {
        self.flags_changed();
        self.forget_numbered();
        // Nothing useful can be done with a failed rollback: SQLite rolls back an unfinished
        // transaction itself when the connection closes.
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn insert_audit(&self, rows: &[ChainedEntry]) -> Result<()> {
        let ids = self.context_ids(rows.iter().filter_map(|row| row.entry.context_key))?;
        self.insert_numbered_audit(rows, &ids)
    }

    /// The contexts of a step's assignments and records are numbered together: a key's
    /// number is looked up once, where inserting each kind of row on its own would look it up
    /// twice.
    fn insert_step(
        &self,
        assignments: &[AssignmentRef],
        records: &[ChainedEntry],
        range: Option<(&str, i64, i64)>,
    ) -> Result<()> {
        let keys = assignments.iter().map(|row| row.context_key);
        let ids =
            self.context_ids(keys.chain(records.iter().filter_map(|row| row.entry.context_key)))?;
        self.insert_numbered_assignments(assignments, &ids)?;
        self.insert_numbered_audit(records, &ids)?;
        if let Some((flags, first_id, last_id)) = range {
            self.insert_record_range(flags, first_id, last_id)?;
        }
        Ok(())
    }

    fn limit_wal(&self, pages: i64) -> Result<()> {
        limit_wal(&self.conn, pages)
    }

    fn checkpoint(&self) -> Result<()> {
        // A reader's snapshot can keep the checkpoint from reaching the end of the WAL:
        // SQLite then reports it busy in the row, not as an error, and the rest waits for the
        // next checkpoint.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| Error::from(e).at_database(&self.path))
    }

    fn schema_objects(&self) -> Result<SchemaObjects> {
        Ok(SchemaObjects {
            live: schema_objects(&self.conn)?,
            made: Ok(schema_objects(&Sqlite::in_memory()?.conn)?),
        })
    }

    fn reconnect_if_lost(&self, _ask_server: bool) -> Result<bool> {
        Ok(false)
    }

    fn rewrite_power(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// SQLite's online backup API: every page in one step, so from one read snapshot while
    /// writers carry on. The copy is left in rollback-journal mode: one self-contained file.
    fn backup_to(&self, destination: &Path) -> Option<Result<()>> {
        Some((|| {
            let pending = PendingFile::create(destination)?;
            let copied = (|| -> rusqlite::Result<()> {
                let mut copy = Connection::open(pending.path())?;
                Backup::new(&self.conn, &mut copy)?.step(-1)?;
                copy.pragma_update_and_check(None, "journal_mode", "delete", |_| Ok(()))?;
                copy.close().map_err(|(_, e)| e)
            })();
            copied?;
            pending.persist()
        })())
    }
}

fn schema_state(conn: &Connection) -> rusqlite::Result<SchemaState> {
    let (tables, has_history): (i64, bool) = conn.query_row(
        "SELECT count(*), coalesce(max(name = 'refinery_schema_history'), 0) \
           FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let history = if has_history {
        Some(conn.query_row(sql::SCHEMA_VERSION, [], |row| row.get(0))?)
    } else {
        None
    };
    Ok(SchemaState::from_tables(
        tables,
        history,
        LATEST_SCHEMA_VERSION,
    ))
}

const SQLITE_KIND: &str = "an SQLite database";

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
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            outcome => return outcome,
        }
    }
}

/// Every object of the schema but SQLite's own (`sqlite_*`, which have no text), with the
/// text SQLite keeps of it: a table's holds its columns and constraints, a trigger's its body.
fn schema_objects(conn: &Connection) -> Result<Vec<SchemaObject>> {
    let mut statement = conn.prepare(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_schema \
          WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name",
    )?;
    let objects = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(objects)
}

/// Where SQLite's unix VFS puts temporary files (`unixTempFileDir`): the first of
/// `$SQLITE_TMPDIR`, `$TMPDIR`, `/var/tmp`, `/usr/tmp` and `/tmp` that is a directory it may
/// write, else the working directory. "May write" is judged by the permission bits, where
/// SQLite asks `access(2)`: they differ only for a directory writable by its owner alone,
/// owned by another user, named in one of the variables.
fn temporary_directory() -> PathBuf {
    let named = ["SQLITE_TMPDIR", "TMPDIR"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from);
    let usual = ["/var/tmp", "/usr/tmp", "/tmp"]
        .into_iter()
        .map(PathBuf::from);
    named
        .chain(usual)
        .find(|dir| {
            std::fs::metadata(dir)
                .is_ok_and(|found| found.is_dir() && !found.permissions().readonly())
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Brings the schema up to date. refinery's transactions take the write lock as they begin
/// (IMMEDIATE), so concurrent first openers queue for it instead of failing on a lock upgrade,
/// and all migrations apply in one transaction with their history rows (grouped), so a kill
/// leaves the old schema or the new one. An opener that lost the race finds the schema current
/// when it gets the lock, and refinery then has nothing to do.
fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let deadline = Instant::now() + super::BUSY_RETRY_BUDGET;
    let outcome = loop {
        let state = schema_state(conn)?;
        state.check(path, SQLITE_KIND)?;
        if state == SchemaState::Current {
            break Ok(());
        }
        let Err(refused) = embedded::migrations::runner().set_grouped(true).run(conn) else {
            break Ok(());
        };
        let cause = match refused.kind() {
            refinery::error::Kind::Connection(_, cause) => cause.downcast_ref::<rusqlite::Error>(),
            _ => None,
        };
        // Busy past the timeout, or beaten to it by another opener (the schema moved while
        // this one tried): look again. Anything else fails now: waiting would not change it.
        let wait = cause.is_some_and(is_busy) || schema_state(conn)? != state;
        if !wait || Instant::now() >= deadline {
            break Err(Error::Migration {
                path: path.to_string(),
                source: DatabaseError::from_migration(&refused, |cause| {
                    match cause.downcast_ref::<rusqlite::Error>()? {
                        rusqlite::Error::SqlInputError { msg, .. } => Some(msg.clone()),
                        other => Some(other.to_string()),
                    }
                }),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    outcome
}

/// See [`Backend::limit_wal`].
fn limit_wal(conn: &Connection, pages: i64) -> Result<()> {
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", pages)?;
    conn.pragma_update(None, "journal_size_limit", pages * page_size)?;
    Ok(())
}

impl From<rusqlite::Error> for DatabaseError {
    fn from(error: rusqlite::Error) -> DatabaseError {
        DatabaseError {
            read_only: error.sqlite_error_code() == Some(ErrorCode::ReadOnly),
            full: error.sqlite_error_code() == Some(ErrorCode::DiskFull),
            message: error.to_string(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Error {
        Error::Database(error.into())
    }
}

/// An audit row's columns as `audit_rows` stores them where they differ from the row's own.
struct StoredRow<'a> {
    ts: StoredTime<'a>,
    actor_id: i64,
    prev_hash: Option<&'a str>,
    hash: StoredHash<'a>,
    context_id: Option<i64>,
}

impl ToSql for StoredTime<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            StoredTime::Millis(ms) => ms.to_sql(),
            StoredTime::Text(text) => text.to_sql(),
        }
    }
}

impl ToSql for StoredHash<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            StoredHash::Bytes(bytes) => bytes.to_sql(),
            StoredHash::Text(text) => text.to_sql(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditQuery;
    use crate::store::backend::{AssignmentRef, Writes};
    use crate::store::{Scan, Scope, Selection, Store, query};

    #[test]
    fn latest_schema_version_matches_the_embedded_migrations() {
        let newest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max();
        assert_eq!(newest, Some(LATEST_SCHEMA_VERSION));
    }

    /// Evaluating transactions skip SQLite's per-row reference checks; every other write
    /// transaction after them, on the same connection, has them back.
    #[test]
    fn references_are_checked_again_after_an_evaluating_transaction() {
        let store = Sqlite::in_memory().unwrap();
        let orphan = AssignmentRef {
            flag: "no_such_flag",
            context_key: "tenant-1",
            decision: true,
            bucket: 7,
            rollout_pct: 50.0,
            assigned_at: "2026-11-29T00:00:00.000Z",
        };
        let lock_wait = LockWait {
            budget: std::time::Duration::from_secs(1),
            keep_waiting: None,
        };
        for references in [
            References::Checked,
            References::EstablishedByTheTransaction,
            References::Checked,
        ] {
            store.begin_write(&lock_wait, references).unwrap();
            let written = store.insert_assignments(std::slice::from_ref(&orphan));
            store.rollback();
            assert_eq!(
                written.is_ok(),
                references == References::EstablishedByTheTransaction,
                "{references:?}: {written:?}"
            );
        }
    }

    /// A set of flags numbered in a transaction that rolled back is not remembered: another
    /// connection may give its number to another set, and a range written under the old
    /// number would name that set's flags for its records.
    #[test]
    fn a_flag_set_numbered_in_a_rolled_back_transaction_is_numbered_again() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sets.db");
        let (mine, other) = (Sqlite::open(&path).unwrap(), Sqlite::open(&path).unwrap());
        let lock_wait = LockWait {
            budget: std::time::Duration::from_secs(1),
            keep_waiting: None,
        };
        let range = |store: &Sqlite, flags: &str, id: i64, commit: bool| {
            store
                .begin_write(&lock_wait, References::EstablishedByTheTransaction)
                .unwrap();
            store.insert_record_range(flags, id, id).unwrap();
            match commit {
                true => store.commit().unwrap(),
                false => store.rollback(),
            }
        };
        range(&mine, r#"["a","b"]"#, 1, false);
        range(&other, r#"["c"]"#, 1, true);
        range(&mine, r#"["a","b"]"#, 2, true);
        range(&mine, r#"["a","b"]"#, 3, true);
        let named: Vec<(i64, String)> = mine
            .conn
            .prepare(
                "SELECT r.first_id, s.flags FROM audit_ranges r \
                 JOIN audit_flag_sets s ON s.id = r.flag_set ORDER BY r.first_id",
            )
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected = [(1, r#"["c"]"#), (2, r#"["a","b"]"#), (3, r#"["a","b"]"#)];
        assert_eq!(
            named,
            expected.map(|(id, flags)| (id, flags.to_string())).to_vec()
        );
    }

    /// An in-memory store is a memdb file, which SQLite caps at 1 GiB unless built otherwise:
    /// an in-process manager stopped with "database or disk is full" after about a million
    /// calls. It now holds as much as SQLite allocates at once (2 GiB less 257 bytes), and
    /// when that is full it says so in words that send no one to look for a full disk, having
    /// recorded nothing of the call that found it full.
    #[test]
    fn a_store_in_memory_holds_two_gibibytes_then_says_it_is_full() {
        let backend = Sqlite::in_memory().unwrap();
        let conn = &backend.conn;
        conn.execute_batch("CREATE TABLE filler (b BLOB)").unwrap();
        // Filled to its end, then 256 KB of its pages freed for the store's own rows.
        for chunk in [100 << 20, 256 << 10] {
            while conn
                .execute("INSERT INTO filler VALUES (zeroblob(?1))", [chunk])
                .is_ok()
            {}
        }
        conn.execute(
            "DELETE FROM filler WHERE rowid = (SELECT max(rowid) FROM filler)",
            [],
        )
        .unwrap();
        let bytes: i64 = conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(bytes > (2 << 30) - (4 << 20), "{bytes} bytes");

        let mut store = Store::with_backend(Box::new(backend));
        store
            .modify("test", "import", false, |_| {
                let ingest = crate::Flag::new("ingest");
                let enrich = crate::Flag {
                    rollout_pct: 50.0,
                    requires: vec!["ingest".to_string()],
                    ..crate::Flag::new("enrich")
                };
                Ok([ingest, enrich].into_iter().collect())
            })
            .unwrap();
        let full = (0..10_000)
            .find_map(|n| {
                let recorded = store.audit_len().unwrap();
                let evaluated = store.evaluate(&Selection::All, &format!("tenant-{n}"), "test");
                evaluated.err().map(|e| (e, recorded))
            })
            .expect("256 KB holds fewer than 10,000 decision records");
        let (error, recorded_before) = full;
        assert_eq!(
            error.at_database(store.path()).to_string(),
            ":memory:: the store is full: one kept in memory holds at most 2 GiB (the most \
             SQLite allocates at once), and the write that found it full recorded nothing; keep \
             the store in a file to record more"
        );
        assert_eq!(store.audit_len().unwrap(), recorded_before);
        assert_eq!(store.verify_audit(None).unwrap().rows, recorded_before);
    }

    /// A reviewer's list of changes, and every replay of the flags' history (`check`,
    /// `explain --at`), asks for the change rows of the whole log, a few among millions of
    /// decision records: the scan reads them through their partial index, not the table.
    #[test]
    fn change_rows_are_read_through_their_index() {
        let store = Sqlite::in_memory().unwrap();
        let changes = AuditQuery::changes(None);
        for (ascending, cursor) in [(false, None), (true, Some(5)), (false, Some(500))] {
            let query = AuditQuery {
                ascending,
                ..changes.clone()
            };
            let plan = scan_plan(&store, &query, cursor);
            assert!(
                plan.len() == 1 && plan[0].starts_with("SEARCH r USING INDEX audit_log_changes"),
                "{plan:?}"
            );
        }
    }

    /// A page of a context's rows (`audit --context`, `explain`, the UI's context page) reads
    /// the index partition by partition, in id order: no scan of the log, and no sort of
    /// every row of a context that has millions for the page's hundred. The statistics that
    /// let the planner skip through the partitions are the migration's, in force at once.
    #[test]
    fn a_contexts_rows_are_read_in_order_through_the_partitioned_index() {
        let store = Sqlite::in_memory().unwrap();
        for kind in [None, Some("evaluation"), Some("change")] {
            for (ascending, cursor) in [(false, None), (true, Some(5)), (false, Some(500))] {
                let query = AuditQuery {
                    context: Some("tenant:acme".to_string()),
                    kind: kind.map(str::to_string),
                    ascending,
                    ..AuditQuery::default()
                };
                let plan = scan_plan(&store, &query, cursor);
                assert!(
                    plan[0].starts_with(
                        "SEARCH r USING INDEX audit_log_context (ANY(<expr>) AND context_id=?"
                    ) && plan[1..].iter().all(|step| {
                        step.starts_with("SCALAR SUBQUERY")
                            || step.starts_with("SEARCH contexts USING COVERING INDEX")
                    }),
                    "{kind:?} {ascending} {cursor:?}: {plan:?}"
                );
            }
        }
    }

    /// The README's reviewer queries by context, in plain SQL on the view, are planned the same
    /// way: a seek per partition, not a scan of every record.
    #[test]
    fn a_reviewers_query_by_context_reads_the_partitioned_index() {
        let store = Sqlite::in_memory().unwrap();
        let plan: Vec<String> = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT audit_id, ts, result, reason FROM audit_evaluations \
                  WHERE flag = 'enrich' AND context_key = 'tenant:acme' \
                    AND ts <= '2026-11-20T09:30:00.000Z' ORDER BY audit_id DESC LIMIT 1",
            )
            .unwrap()
            .query_map([], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // `r` is also the alias of a requirement list's `json_each` in the view.
        let scans_the_log = plan
            .iter()
            .any(|step| step.starts_with("SCAN r") && !step.contains("VIRTUAL TABLE"));
        assert!(
            !scans_the_log
                && plan.iter().any(|step| {
                    step.starts_with(
                        "SEARCH r USING INDEX audit_log_context (ANY(<expr>) AND context_id=?",
                    )
                }),
            "{plan:#?}"
        );
    }

    /// The query plan of one page of `query` after `cursor`, a line per step.
    fn scan_plan(store: &Sqlite, query: &AuditQuery, cursor: Option<i64>) -> Vec<String> {
        let scan = Scan {
            query,
            scope: Scope::Everything,
            cursor,
            through: Some(1_000),
            limit: 100,
        };
        let (sql, params) = query::scan_sql(
            &scan,
            |_| "?".to_string(),
            reads::BY_CONTEXT,
            reads::SELECT_AUDIT_ROWS,
        );
        let values = params.iter().map(|p| match p {
            query::Param::Int(v) => rusqlite::types::Value::Integer(*v),
            query::Param::Text(v) => rusqlite::types::Value::Text(v.to_string()),
        });
        store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// `.cargo/config.toml` sets it through `LIBSQLITE3_FLAGS`; a build that lost it still
    /// works, only slower, so nothing else would notice.
    #[test]
    fn bundled_sqlite_has_the_lookaside_its_build_flags_give() {
        assert_compiled_with("DEFAULT_LOOKASIDE=1200,300");
    }

    /// With memory statistics on, every SQLite malloc takes one process-wide mutex. A Python
    /// program that forks while a store's checkpointer thread allocates hands the child that
    /// mutex locked, and the child's first SQLite call (its own in-memory manager's) waits on
    /// it for ever: python/tests' forked-child test hung 5 runs in 1,000 so.
    #[test]
    fn bundled_sqlite_keeps_no_memory_statistics() {
        assert_compiled_with("DEFAULT_MEMSTATUS=0");
    }

    /// A multi-row insert keeps a statement journal, which SQLite spills to a file past 64 KiB
    /// unless temporary storage is in memory: as a file it cost a tenth of batch time, and a
    /// file's store keeps temporary storage in files since schema 16 (for `check`'s sort).
    #[test]
    fn bundled_sqlite_keeps_statement_journals_in_memory() {
        assert_compiled_with("STMTJRNL_SPILL=-1");
    }

    fn assert_compiled_with(option: &str) {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(options.iter().any(|o| o == option), "{options:?}");
    }
}
