//! The PostgreSQL backend: one store shared by workers on many machines.
//!
//! Writers serialize on one transaction-scoped advisory lock per store (the key covers the
//! schema, so stores in different schemas of one database do not wait for each other). That is
//! the same writer lock SQLite's `BEGIN IMMEDIATE` gives, so both backends decide and record
//! exactly alike: under it a key's assignments are read, decided and inserted with nothing in
//! between, audit ids are taken from the chain's head (no sequence, so no gaps) and the chain
//! never forks. Transactions run at READ COMMITTED, so every statement after the lock sees
//! everything committed before it. Reads take a REPEATABLE READ snapshot and no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use postgres::types::ToSql;
use postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use super::backend::{
    AssignmentRef, Backend, ChainedEntry, LockWait, References, SchemaObject, SchemaObjects, Steps,
};
use super::schema::SchemaState;
use crate::audit::AuditRow;
use crate::error::{DatabaseError, Error, Result};
use crate::flag::{Flag, FlagSet};
use crate::store::sql;
use crate::store::stored::{ShownTime, StoredHash, StoredTime, shown_hash};

mod reads;
mod writes;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// The newest schema version (see the SQLite backend's). PostgreSQL has no version 7 or 10: it
/// never had SQLite's version 5 (how SQLite keys assignments; its own are keyed by a hash of
/// the context key), so its 5 and 6 are SQLite's 6 and 7, and SQLite's 10 files audit rows
/// under a context's number, which PostgreSQL does not give; the others are the same.
const LATEST_SCHEMA_VERSION: i64 = 16;

/// First half of flagstore's advisory lock keys: "flag" in ASCII, so a DBA reading `pg_locks`
/// can tell whose locks these are. The second half is a hash of the schema's name for the
/// writer lock, and of it prefixed with [`MIGRATION_LOCK_SALT`] for the migration lock.
const LOCK_CLASS: i32 = 0x666c_6167;
const MIGRATION_LOCK_SALT: &str = "migration:";

/// `url` without its password or query parameters, as every message shows it.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let Ok(config) = postgres::Config::from_str(url) else {
        // Nothing can be trusted to be free of the password but the host after the last '@'.
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split(['/', '?', '#', ':']).next().unwrap_or_default();
        return format!("{scheme}://{host}");
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => {
                // An '@' left unencoded in a password makes the rest of it look like a host.
                name.rsplit_once('@')
                    .map_or(name.as_str(), |(_, h)| h)
                    .to_string()
            }
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut shown = format!("{scheme}://");
    if let Some(user) = config.get_user() {
        shown.push_str(user);
        shown.push('@');
    }
    shown.push_str(&hosts.join(","));
    if let Some(port) = config.get_ports().first() {
        shown.push_str(&format!(":{port}"));
    }
    if let Some(dbname) = config.get_dbname() {
        shown.push('/');
        shown.push_str(dbname);
    }
    shown
}

/// `url` without its password, as a command line may repeat it: [`redacted_url`] with the
/// connection's `options` kept (a `search_path` picks the store), so that only the password
/// has to be given again.
pub fn url_to_repeat(url: &str) -> String {
    let shown = redacted_url(url);
    match postgres::Config::from_str(url)
        .ok()
        .and_then(|c| c.get_options().map(str::to_string))
    {
        Some(options) => {
            let encoded: String = options
                .bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        char::from(byte).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect();
            format!("{shown}?options={encoded}")
        }
        None => shown,
    }
}

/// A PostgreSQL error as one line: the server's message without its DETAIL/HINT lines, or the
/// client's reason and its cause.
pub fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
    .replace('\n', " ")
}

/// How long a connection that seems open may take to answer a no-op query before it is
/// taken for lost.
const IDLE_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) struct Postgres {
    client: RefCell<Client>,
    /// The server said it is ending this connection (a terminated backend, a shutdown): its
    /// FATAL message can come before the client sees the socket close.
    ending: Cell<bool>,
    name: String,
    /// The URL as given, password included, to connect again after a lost connection.
    url: String,
    /// Statements prepared on this connection, by their SQL: preparing is a round trip of its
    /// own, which the writer of `serve` would otherwise pay for every statement of every group.
    statements: RefCell<HashMap<String, Statement>>,
    /// The newest audit row as the write transaction in progress sees it: read in BEGIN's
    /// round trip, under the writer lock, and moved on by each insert, so that linking the
    /// chain costs no round trip of its own. `None` outside a write transaction.
    tail: RefCell<Option<Option<(i64, String)>>>,
    /// The flags as the write transaction in progress read them in BEGIN's round trip, under
    /// the writer lock, for its first `load_flags`: every evaluating transaction reads them, and
    /// their own round trip was one of the five a serve group made. Dropped by any write to the
    /// flags and as the transaction ends.
    flags: RefCell<Option<FlagSet>>,
    /// The numbers of actors in `actors` (append-only) read or made on this connection, as
    /// SQLite's writer keeps them: a statement that numbered the actors of each insert made
    /// a serve group a tenth slower. Forgotten with a transaction that did not commit, which
    /// may have made them.
    actors: RefCell<HashMap<String, i32>>,
}

/// A connection to `url`, and the URL as messages show it (without its password).
fn connect(url: &str) -> Result<(Client, String)> {
    let name = redacted_url(url);
    let mut config = postgres::Config::from_str(url).map_err(|source| Error::BadUrl {
        url: name.clone(),
        why: describe(&source),
    })?;
    // So a DBA can tell flagstore's sessions apart in pg_stat_activity.
    if config.get_application_name().is_none() {
        config.application_name("flagstore");
    }
    match config.connect(NoTls) {
        Ok(client) => Ok((client, name)),
        Err(source) => Err(Error::Postgres {
            server: name,
            source: source.into(),
        }),
    }
}

impl Postgres {
    /// Connects to `url`. With `create`, an empty schema is given flagstore's tables; without,
    /// it is refused as holding no store.
    pub(super) fn open(url: &str, create: bool) -> Result<Postgres> {
        let (mut client, name) = connect(url)?;
        let fail = |source: postgres::Error| Error::Postgres {
            server: name.clone(),
            source: source.into(),
        };
        // Statements are prepared once per connection (see `statements`), and a plan made once
        // for any parameters goes stale as tables grow: a generic plan chosen while
        // `assignments` was empty scans it whole ever after. Planned per execution instead, as
        // unprepared statements are.
        client
            .batch_execute("SET plan_cache_mode = force_custom_plan")
            .map_err(fail)?;
        let state = schema_state(&mut client).map_err(fail)?;
        state.check(&name, "a PostgreSQL schema")?;
        if state == SchemaState::Empty && !create {
            return Err(Error::NoDatabase { path: name });
        }
        if state != SchemaState::Current {
            migrate(&mut client, &name)?;
        }
        Ok(Postgres {
            client: RefCell::new(client),
            ending: Cell::new(false),
            name,
            url: url.to_string(),
            statements: RefCell::default(),
            tail: RefCell::default(),
            flags: RefCell::default(),
            actors: RefCell::default(),
        })
    }

    /// Connects to `url` and creates a store there, refusing a schema that holds one already.
    pub(super) fn create(url: &str) -> Result<Postgres> {
        let (mut client, name) = connect(url)?;
        let state = schema_state(&mut client).map_err(|source| Error::Postgres {
            server: name.clone(),
            source: source.into(),
        })?;
        drop(client);
        state.check(&name, "a PostgreSQL schema")?;
        if state != SchemaState::Empty {
            return Err(Error::AlreadyExists { path: name });
        }
        Postgres::open(url, true)
    }

    fn fail(&self, source: postgres::Error) -> Error {
        if source
            .as_db_error()
            .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"))
        {
            self.ending.set(true);
        }
        Error::Postgres {
            server: self.name.clone(),
            source: source.into(),
        }
    }

    /// `sql` prepared on this connection, once.
    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .borrow_mut()
            .prepare(&numbered_for_postgres(sql))
            .map_err(|e| self.fail(e))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.statement(sql)?;
        self.client
            .borrow_mut()
            .execute(&statement, params)
            .map_err(|e| self.fail(e))
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        self.client
            .borrow_mut()
            .query(&statement, params)
            .map_err(|e| self.fail(e))
    }

    /// Calls `each` with every row of `sql` as the server sends it: a long result is read
    /// while the server still produces the rest, not after.
    fn query_each(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        mut each: impl FnMut(&postgres::Row) -> Result<()>,
    ) -> Result<()> {
        use postgres::fallible_iterator::FallibleIterator;
        let statement = self.statement(sql)?;
        let mut client = self.client.borrow_mut();
        let mut rows = client
            .query_raw(&statement, params.iter().copied())
            .map_err(|e| self.fail(e))?;
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            each(&row)?;
        }
        Ok(())
    }

    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>> {
        let statement = self.statement(sql)?;
        self.client
            .borrow_mut()
            .query_opt(&statement, params)
            .map_err(|e| self.fail(e))
    }

    /// The number of each row's actor in `actors`, numbering an actor named for the first
    /// time: the next after the largest, as writers hold the audit lock (no sequence, so the
    /// README's writer role needs only INSERT).
    fn actor_ids(&self, rows: &[ChainedEntry]) -> Result<Vec<i32>> {
        rows.iter()
            .map(|row| {
                let actor = row.entry.actor;
                if let Some(id) = self.actors.borrow().get(actor) {
                    return Ok(*id);
                }
                let id: i32 = self
                    .query_opt(
                        "WITH numbered AS ( \
                           INSERT INTO actors (id, name) \
                           SELECT (SELECT coalesce(max(id), 0) + 1 FROM actors), $1::text \
                            WHERE NOT EXISTS (SELECT 1 FROM actors WHERE name = $1::text) \
                           RETURNING id) \
                         SELECT id FROM numbered UNION ALL SELECT id FROM actors WHERE name = $1",
                        &[&actor],
                    )?
                    .map(|found| found.get(0))
                    .ok_or_else(|| Error::Inconsistent {
                        path: self.name.clone(),
                        problem: format!("actors: {actor:?} was neither found nor numbered"),
                    })?;
                self.actors.borrow_mut().insert(actor.to_string(), id);
                Ok(id)
            })
            .collect()
    }

    /// Moves the kept tail on past `rows`, just stored, in a write transaction.
    fn moved_tail(&self, rows: &[ChainedEntry]) {
        if let (Some(tail), Some(last)) = (self.tail.borrow_mut().as_mut(), rows.last()) {
            *tail = Some((last.id, last.hash.to_string()));
        }
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.client
            .borrow_mut()
            .batch_execute(sql)
            .map_err(|e| self.fail(e))
    }
}

impl Postgres {
    /// Begins a write transaction, waiting up to `wait` for the store's lock, and reads the
    /// chain's tail and the flags in the same round trip. Rows come back as text here:
    /// extra_float_digits = 3 has every server print a rollout in digits that read back as
    /// the same f64 (the default before PostgreSQL 12 rounded to 15). Tagged, so that no row
    /// is taken for another's.
    fn begin_locked(
        &self,
        wait: Duration,
    ) -> std::result::Result<Vec<SimpleQueryMessage>, postgres::Error> {
        self.client.borrow_mut().simple_query(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; \
                 SET LOCAL lock_timeout = {}; \
                 SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext(current_schema())); \
                 {}; \
                 SET LOCAL extra_float_digits = 3; \
                 SELECT 'flag', name, enabled, rollout_pct, sticky, stale_exempt FROM flags \
                  ORDER BY position, name COLLATE \"C\"; \
                 SELECT 'requires', flag, requires FROM flag_dependencies ORDER BY position",
            wait.as_millis().max(1),
            sql::SELECT_AUDIT_TAIL
        ))
    }

    /// Keeps the tail and the flags [`Postgres::begin_locked`] read, for the transaction's
    /// first `audit_tail` and `load_flags`.
    fn keep_what_begin_read(&self, begun: &[SimpleQueryMessage]) {
        let tail = begun.iter().find_map(|message| match message {
            // The tail's row; the lock's has one column.
            SimpleQueryMessage::Row(row) if row.len() == 2 => Some(row),
            _ => None,
        });
        // Text that does not read as a row (the columns forbid it) is not kept: audit_tail then
        // asks with a typed query, whose errors say what is wrong.
        let kept = match tail {
            None => Some(None),
            Some(row) => match (row.get(0).map(str::parse::<i64>), row.get(1)) {
                (Some(Ok(id)), Some(hash)) => Some(Some((id, hash.to_string()))),
                _ => None,
            },
        };
        self.tail.replace(kept);
        self.flags.replace(flags_of_rows(begun));
    }

    /// In the open transaction: the migrations run in a new schema `scratch`, and what they
    /// made there; `Err` saying so for a role that may not create it.
    fn made_in(&self, scratch: &str) -> Result<std::result::Result<Vec<SchemaObject>, String>> {
        let created = self.client.borrow_mut().batch_execute(&format!(
            "CREATE SCHEMA {scratch}; SET LOCAL search_path TO {scratch}"
        ));
        match created {
            Err(e) if e.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Ok(Err(
                    "this role may not create the scratch schema they are made in".to_string(),
                ));
            }
            created => created.map_err(|e| self.fail(e))?,
        }
        // In version order: the runner lists them as their files sort, V11 before V2.
        let runner = embedded::migrations::runner();
        let mut migrations: Vec<_> = runner.get_migrations().iter().collect();
        migrations.sort_by_key(|migration| migration.version());
        for migration in migrations {
            self.batch(migration.sql().unwrap_or_default())?;
        }
        Ok(Ok(self.schema_objects_in(&format!("'{scratch}'"))?))
    }

    /// The triggers (with whether they are enabled), the functions they call, the views and
    /// the indexes of `schema` (an SQL expression naming it), each definition as the server
    /// prints it with the schema's own name taken out, so two schemas' objects compare.
    fn schema_objects_in(&self, schema: &str) -> Result<Vec<SchemaObject>> {
        // Each branch filters by the schema itself, before the definition is printed: printed
        // first, an object another session drops meanwhile fails the whole query.
        let rows = self.query(
            &format!(
                "WITH s AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = {schema}) \
                 SELECT kind, name, replace(replace(definition, quote_ident(s.nspname) || '.', ''), \
                                            s.nspname || '.', '') \
                   FROM s, ( \
                     SELECT 'function' AS kind, p.proname::text AS name, \
                            pg_get_functiondef(p.oid) AS definition \
                       FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM s) \
                     UNION ALL \
                     SELECT 'index', c.relname::text, pg_get_indexdef(c.oid) \
                       FROM pg_class c \
                      WHERE c.relnamespace = (SELECT oid FROM s) AND c.relkind IN ('i', 'I') \
                        AND c.relname NOT LIKE 'refinery\\_schema\\_history%' \
                     UNION ALL \
                     SELECT 'trigger', t.tgname || ' on ' || c.relname, \
                            pg_get_triggerdef(t.oid) \
                              || CASE t.tgenabled WHEN 'D' THEN ' (disabled)' ELSE '' END \
                       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                      WHERE c.relnamespace = (SELECT oid FROM s) AND NOT t.tgisinternal \
                     UNION ALL \
                     SELECT 'view', c.relname::text, pg_get_viewdef(c.oid) \
                       FROM pg_class c \
                      WHERE c.relnamespace = (SELECT oid FROM s) AND c.relkind IN ('v', 'm') \
                   ) o \
                  ORDER BY kind, name"
            ),
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }
}

/// `sql` with SQLite's numbered placeholders (`?1`, as the statements in `sql.rs` are
/// written) as PostgreSQL's (`$1`); statements written for PostgreSQL pass unchanged.
fn numbered_for_postgres(sql: &str) -> std::borrow::Cow<'_, str> {
    let mut chars = sql.char_indices().peekable();
    let mut rewritten: Option<String> = None;
    while let Some((i, c)) = chars.next() {
        let numbered = c == '?' && chars.peek().is_some_and(|(_, next)| next.is_ascii_digit());
        match (&mut rewritten, numbered) {
            (None, false) => {}
            (None, true) => rewritten = Some(format!("{}$", &sql[..i])),
            (Some(out), true) => out.push('$'),
            (Some(out), false) => out.push(c),
        }
    }
    rewritten.map_or(std::borrow::Cow::Borrowed(sql), std::borrow::Cow::Owned)
}

/// The insert of [`AssignmentColumns`], bound as `$1`..`$6`: alone, or within a step's
/// statement.
macro_rules! insert_assignments {
    () => {
        "INSERT INTO assignments (flag, context_key, decision, bucket, rollout_pct, assigned_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::float8[], \
         $6::text[])"
    };
}
use insert_assignments;

/// The inserts of a range of decision records (and of its flag set, when new), with the set's
/// JSON text, the first and the last record id bound at the placeholders given: nothing at
/// all when the JSON is NULL. A set's id is the next after the largest, as writers hold the
/// audit lock: no sequence, so the README's writer role needs only INSERT.
macro_rules! record_range {
    ($flags:literal, $first:literal, $last:literal) => {
        concat!(
            "new_set AS (INSERT INTO audit_flag_sets (id, flags) \
               SELECT coalesce(max(id), 0) + 1, ",
            $flags,
            "::text FROM audit_flag_sets HAVING ",
            $flags,
            "::text IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM audit_flag_sets WHERE flags = ",
            $flags,
            "::text) RETURNING id), \
             ranged AS (INSERT INTO audit_ranges (first_id, last_id, flag_set) \
               SELECT ",
            $first,
            "::bigint, ",
            $last,
            "::bigint, id FROM new_set \
               UNION ALL SELECT ",
            $first,
            ", ",
            $last,
            ", id FROM audit_flag_sets WHERE flags = ",
            $flags,
            "::text)"
        )
    };
}
use record_range;

/// The insert of audit rows into `audit_rows` (schema 16), with the column arrays of
/// [`AuditColumns`] bound at the placeholders given.
macro_rules! insert_audit_rows {
    ($arrays:literal) => {
        concat!(
            "INSERT INTO audit_rows (id, ts_ms, ts_text, actor_id, action, flag, context_key, \
               result, source, reason, detail, prev_hash, hash) SELECT * FROM unnest(",
            $arrays,
            ")"
        )
    };
}

/// Assignments as the column arrays an `unnest` insert binds.
struct AssignmentColumns<'a> {
    flags: Vec<&'a str>,
    keys: Vec<&'a str>,
    decisions: Vec<i32>,
    buckets: Vec<i32>,
    rollouts: Vec<f64>,
    times: Vec<&'a str>,
}

impl<'a> AssignmentColumns<'a> {
    fn of(rows: &[AssignmentRef<'a>]) -> AssignmentColumns<'a> {
        AssignmentColumns {
            flags: rows.iter().map(|a| a.flag).collect(),
            keys: rows.iter().map(|a| a.context_key).collect(),
            decisions: rows.iter().map(|a| i32::from(a.decision)).collect(),
            buckets: rows.iter().map(|a| i32::from(a.bucket)).collect(),
            rollouts: rows.iter().map(|a| a.rollout_pct).collect(),
            times: rows.iter().map(|a| a.assigned_at).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.flags,
            &self.keys,
            &self.decisions,
            &self.buckets,
            &self.rollouts,
            &self.times,
        ]
    }
}

/// Audit rows as the column arrays [`insert_audit_rows!`] binds, in its order: as
/// `audit_rows` stores them (schema 16).
struct AuditColumns<'a> {
    ids: Vec<i64>,
    ts_ms: Vec<Option<i64>>,
    ts_text: Vec<Option<&'a str>>,
    actor_id: Vec<i32>,
    action: Vec<Option<&'a str>>,
    flag: Vec<Option<&'a str>>,
    context_key: Vec<Option<&'a str>>,
    result: Vec<Option<i32>>,
    source: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    detail: Vec<Option<&'a str>>,
    prev_hash: Vec<Option<&'a str>>,
    hash: Vec<Vec<u8>>,
}

impl<'a> AuditColumns<'a> {
    /// `rows`, each by its actor's number in `actor_id`. A hash in text (a store edited by
    /// hand, copied) is kept as its bytes only at 64 characters, as the column held it
    /// before schema 16: other text could be 32 bytes long and read back as a hash.
    fn of(rows: &[ChainedEntry<'a>], actor_id: Vec<i32>) -> Result<AuditColumns<'a>> {
        let hash = rows
            .iter()
            .map(|r| match StoredHash::of(r.hash) {
                StoredHash::Text(text) if text.chars().count() != 64 => {
                    Err(Error::UnreadableAuditRow {
                        id: r.id,
                        why: format!(
                            "hash holds {} characters of text, where PostgreSQL keeps a hash \
                             as 32 bytes or 64 characters",
                            text.chars().count()
                        ),
                    })
                }
                stored => Ok(stored.into_bytes()),
            })
            .collect::<Result<_>>()?;
        let column = |f: fn(&ChainedEntry<'a>) -> Option<&'a str>| rows.iter().map(f).collect();
        let times = StoredTime::of_each(rows.iter().map(|r| r.entry.ts));
        Ok(AuditColumns {
            ids: rows.iter().map(|r| r.id).collect(),
            ts_ms: times.iter().map(StoredTime::millis).collect(),
            ts_text: times.iter().map(StoredTime::text).collect(),
            actor_id,
            action: column(|r| r.entry.action),
            flag: column(|r| r.entry.flag),
            context_key: column(|r| r.entry.context_key),
            result: rows
                .iter()
                .map(|r| r.entry.result.map(|v| i32::from(v == 1)))
                .collect(),
            source: column(|r| r.entry.source),
            reason: column(|r| r.entry.reason),
            detail: column(|r| Some(r.entry.detail)),
            prev_hash: column(|r| (!r.follows_previous).then_some(r.prev_hash)),
            hash,
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.ids,
            &self.ts_ms,
            &self.ts_text,
            &self.actor_id,
            &self.action,
            &self.flag,
            &self.context_key,
            &self.result,
            &self.source,
            &self.reason,
            &self.detail,
            &self.prev_hash,
            &self.hash,
        ]
    }
}

fn schema_state(client: &mut Client) -> std::result::Result<SchemaState, postgres::Error> {
    let row = client.query_one(
        "SELECT count(*), coalesce(bool_or(table_name = 'refinery_schema_history'), false) \
           FROM information_schema.tables \
          WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        &[],
    )?;
    let (tables, has_history): (i64, bool) = (row.get(0), row.get(1));
    let history = if has_history {
        let version: Option<i32> = client.query_one(sql::SCHEMA_VERSION, &[])?.get(0);
        Some(version.map(i64::from))
    } else {
        None
    };
    Ok(SchemaState::from_tables(
        tables,
        history,
        LATEST_SCHEMA_VERSION,
    ))
}

/// Brings the schema up to date under a session advisory lock, so that of several processes
/// opening a new store at once one migrates and the others find the schema current. refinery
/// applies every migration and its history rows in one transaction (grouped).
fn migrate(client: &mut Client, name: &str) -> Result<()> {
    let fail = |source: postgres::Error| Error::Postgres {
        server: name.to_string(),
        source: source.into(),
    };
    let lock = format!(
        "SELECT pg_advisory_lock({LOCK_CLASS}, hashtext('{MIGRATION_LOCK_SALT}' || current_schema()))"
    );
    client.batch_execute(&lock).map_err(fail)?;
    let outcome = (|| {
        let state = schema_state(client).map_err(fail)?;
        state.check(name, "a PostgreSQL schema")?;
        if state == SchemaState::Current {
            return Ok(());
        }
        embedded::migrations::runner()
            .set_grouped(true)
            .run(client)
            .map(|_| ())
            .map_err(|source| Error::Migration {
                path: name.to_string(),
                source: DatabaseError::from_migration(&source, |cause| {
                    let error = cause.downcast_ref::<postgres::Error>()?;
                    Some(error.as_db_error()?.message().to_string())
                }),
            })
    })();
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock({LOCK_CLASS}, hashtext('{MIGRATION_LOCK_SALT}' || current_schema()))"
        ))
        .map_err(fail)?;
    outcome
}

/// A row of `reads::SELECT_AUDIT_ROWS` as the view `audit_log` shows it but for its actor,
/// with the number of its actor and the link it stores (`None` where it is the hash of row
/// id - 1): the caller fills in both.
fn read_audit_row(
    row: &postgres::Row,
    times: &mut ShownTime,
) -> Result<(AuditRow, i32, Option<String>)> {
    let id: i64 = row.get(0);
    let unreadable = |column: &str, held: &str| Error::UnreadableAuditRow {
        id,
        why: format!("{column} holds {held}, not text"),
    };
    let ts = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<&str>>(2)) {
        (Some(ms), _) => times
            .text(ms)
            .cloned()
            .ok_or_else(|| unreadable("ts", &format!("{ms} milliseconds")))?,
        (None, Some(text)) => text.into(),
        (None, None) => return Err(unreadable("ts", "NULL")),
    };
    let action: Option<String> = row.get(4);
    let audit_row = AuditRow {
        id,
        ts,
        kind: if action.is_some() {
            "change"
        } else {
            "evaluation"
        }
        .into(),
        actor: "".into(),
        action,
        flag: row.get(5),
        context_key: row.get(6),
        result: row.get::<_, Option<i32>>(7).map(i64::from),
        source: row.get(8),
        reason: row.get(9),
        detail: row.get::<_, &str>(10).into(),
        prev_hash: String::new(),
        hash: shown_hash(id, row.get(12))?,
    };
    Ok((audit_row, row.get(3), row.get(11)))
}

fn bucket_of(value: i32) -> u8 {
    // The column's CHECK keeps it within 0-99.
    u8::try_from(value).unwrap_or(u8::MAX)
}

/// The flags in BEGIN's rows (see [`Postgres::begin_write`]), or `None` if a row does not read
/// as a flag: `load_flags` then asks with its typed query, whose errors say what is wrong.
fn flags_of_rows(messages: &[SimpleQueryMessage]) -> Option<FlagSet> {
    // In the store's order, as the statement sorted them; requirements in each flag's order.
    let mut flags: IndexMap<&str, Flag> = IndexMap::new();
    let mut requirements = Vec::new();
    for message in messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        match (row.get(0), row.len()) {
            (Some("flag"), 6) => {
                let name = row.get(1)?;
                let flag = Flag {
                    name: name.to_string(),
                    enabled: row.get(2)?.parse::<i32>().ok()? == 1,
                    rollout_pct: row.get(3)?.parse().ok()?,
                    sticky: row.get(4)?.parse().ok()?,
                    stale_exempt: row.get(5)?.parse::<i32>().ok()? == 1,
                    requires: Vec::new(),
                };
                flags.insert(name, flag);
            }
            (Some("requires"), 3) => requirements.push((row.get(1)?, row.get(2)?)),
            _ => {}
        }
    }
    for (flag, requires) in requirements {
        flags.get_mut(flag)?.requires.push(requires.to_string());
    }
    Some(flags.into_values().collect())
}

impl Backend for Postgres {
    fn steps(&self) -> &dyn Steps {
        self
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn begin_write(&self, lock_wait: &LockWait, _: References) -> Result<()> {
        // A writer asked whether to go on waiting (see `LockWait::keep_waiting`) waits in
        // turns of `LockWait::ASKED_EVERY`, asking between them: the server's wait cannot be
        // interrupted from here, so each turn ends with a lock timeout, rolled back (nothing
        // was written), and the next queues for the lock again.
        let deadline = Instant::now() + lock_wait.budget;
        loop {
            let turn = match lock_wait.keep_waiting {
                Some(_) => {
                    LockWait::ASKED_EVERY.min(deadline.saturating_duration_since(Instant::now()))
                }
                None => lock_wait.budget,
            };
            match self.begin_locked(turn) {
                Err(e)
                    if lock_wait.keep_waiting.is_some()
                        && e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                        && Instant::now() < deadline =>
                {
                    self.rollback();
                    lock_wait.go_on()?;
                }
                // A lock timeout leaves the transaction aborted; end it so the connection is
                // usable.
                begun => {
                    let begun = begun
                        .map_err(|e| self.fail(e))
                        .inspect_err(|_| self.rollback())?;
                    self.keep_what_begin_read(&begun);
                    return Ok(());
                }
            }
        }
    }

    fn begin_read(&self) -> Result<()> {
        self.tail.take();
        self.flags.take();
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }

    fn commit(&self) -> Result<()> {
        self.tail.take();
        self.flags.take();
        self.batch("COMMIT")
    }

    fn rollback(&self) {
        self.tail.take();
        self.flags.take();
        self.actors.take();
        // A failed rollback means the connection is gone, and the server has rolled back.
        let _ = self
            .client
            .borrow_mut()
            .batch_execute("ROLLBACK")
            .map_err(|e| self.fail(e));
    }

    fn insert_audit(&self, rows: &[ChainedEntry]) -> Result<()> {
        let audit = AuditColumns::of(rows, self.actor_ids(rows)?)?;
        self.execute(
            insert_audit_rows!(
                "$1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], \
                 $7::text[], $8::int[], $9::text[], $10::text[], $11::text[], $12::text[], \
                 $13::bytea[]"
            ),
            &audit.params(),
        )?;
        self.moved_tail(rows);
        Ok(())
    }

    /// One statement for the three inserts: serve's writer pays a round trip per statement,
    /// and every group is one step.
    fn insert_step(
        &self,
        assignments: &[AssignmentRef],
        records: &[ChainedEntry],
        range: Option<(&str, i64, i64)>,
    ) -> Result<()> {
        let assigned = AssignmentColumns::of(assignments);
        let audit = AuditColumns::of(records, self.actor_ids(records)?)?;
        let (range_flags, first_id, last_id) = match range {
            Some((flags, first_id, last_id)) => (Some(flags), first_id, last_id),
            None => (None, 0, 0),
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(22);
        params.extend(assigned.params());
        params.extend(audit.params());
        params.extend([&range_flags as &(dyn ToSql + Sync), &first_id, &last_id]);
        self.execute(
            concat!(
                "WITH assigned AS (",
                insert_assignments!(),
                "), ",
                record_range!("$20", "$21", "$22"),
                " ",
                insert_audit_rows!(
                    "$7::bigint[], $8::bigint[], $9::text[], $10::int[], $11::text[], \
                     $12::text[], $13::text[], $14::int[], $15::text[], $16::text[], \
                     $17::text[], $18::text[], $19::bytea[]"
                )
            ),
            &params,
        )?;
        self.moved_tail(records);
        Ok(())
    }

    fn limit_wal(&self, _pages: i64) -> Result<()> {
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    fn reconnect_if_lost(&self, ask_server: bool) -> Result<bool> {
        let open = !self.ending.get() && !self.client.borrow().is_closed();
        if open && (!ask_server || self.client.borrow_mut().is_valid(IDLE_PROBE).is_ok()) {
            return Ok(false);
        }
        let fresh = Postgres::open(&self.url, false)?;
        self.client.replace(fresh.client.into_inner());
        // Statements prepared on the lost connection do not exist on the new one, nor does
        // its transaction.
        self.statements.borrow_mut().clear();
        self.tail.take();
        self.flags.take();
        self.actors.take();
        self.ending.set(false);
        Ok(true)
    }

    fn rewrite_power(&self) -> Result<Option<String>> {
        // Membership counts: a member of the owning role can SET ROLE to it.
        let row = self.query(
            "SELECT current_user::text, r.rolsuper, \
                    coalesce(pg_has_role(current_user, c.relowner, 'MEMBER'), false) \
               FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('audit_log') \
              WHERE r.rolname = current_user",
            &[],
        )?;
        Ok(row.first().and_then(|row| {
            let (role, superuser, owner): (String, bool, bool) =
                (row.get(0), row.get(1), row.get(2));
            if superuser {
                Some(format!("role {role} is a superuser"))
            } else if owner {
                Some(format!("role {role} owns audit_log"))
            } else {
                None
            }
        }))
    }

    fn backup_to(&self, _destination: &Path) -> Option<Result<()>> {
        None
    }

    /// The migrations are run in a scratch schema inside a transaction that is rolled back,
    /// so nothing of them stays; a role that may not create a schema cannot compare.
    fn schema_objects(&self) -> Result<SchemaObjects> {
        let live = self.schema_objects_in("current_schema()")?;
        let scratch = format!(
            "flagstore_made_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        self.batch("BEGIN")?;
        let made = self.made_in(&scratch);
        self.rollback();
        Ok(SchemaObjects { live, made: made? })
    }
}

/// A schema of its own on a PostgreSQL server, for one bench run or one test, dropped with
/// everything in it when this is dropped.
pub struct ScratchSchema {
    admin: Client,
    schema: String,
    url: String,
}

impl ScratchSchema {
    /// Creates a new schema named `prefix` plus a unique suffix in the database `url` names.
    pub fn create(url: &str, prefix: &str) -> Result<ScratchSchema> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let (mut admin, name) = connect(url)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "{prefix}_{}_{}_{nanos}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .map_err(|source| Error::Postgres {
                server: name.clone(),
                source: source.into(),
            })?;
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
        Ok(ScratchSchema { admin, schema, url })
    }

    /// The URL of the scratch schema (the given URL with its `search_path`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        // Best effort: a leftover schema is visible by its prefix and harmless.
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema));
    }
}

impl From<postgres::Error> for DatabaseError {
    fn from(error: postgres::Error) -> DatabaseError {
        DatabaseError::new(describe(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::numbered_for_postgres;

    #[test]
    fn numbered_placeholders_become_postgres_ones_and_nothing_else_changes() {
        assert_eq!(
            numbered_for_postgres("UPDATE t SET a = ?2 WHERE b = ?1 AND c ? 'k' AND d = ?10"),
            "UPDATE t SET a = $2 WHERE b = $1 AND c ? 'k' AND d = $10"
        );
        assert!(matches!(
            numbered_for_postgres("SELECT $1"),
            std::borrow::Cow::Borrowed("SELECT $1")
        ));
    }

    use super::*;

    #[test]
    fn urls_are_shown_without_password_or_parameters() {
        assert_eq!(
            redacted_url(
                "postgres://alice:s3cr@t@db.example:5433/flags?sslmode=require&password=x"
            ),
            "postgres://alice@db.example:5433/flags"
        );
        assert_eq!(
            redacted_url("postgresql://db.example/flags"),
            "postgresql://db.example:5432/flags"
        );
        assert_eq!(
            redacted_url("postgres://bob@/flags"),
            "postgres://bob@/flags"
        );
    }

    #[test]
    fn passwords_with_url_characters_are_never_shown() {
        for password in ["Pa?ssw0rd", "Pa#ss", "Pa/ss", "Pa%40ss", "Pa@ss", "Pa:ss"] {
            let url = format!("postgres://alice:{password}@db.example:5433/flags?sslmode=disable");
            let shown = redacted_url(&url);
            assert!(!shown.contains("Pa"), "{url} shown as {shown}");
            assert!(!shown.contains("ss@") && !shown.contains(":ss"), "{shown}");
            assert!(
                shown.starts_with("postgres://alice@"),
                "{url} shown as {shown}"
            );
        }
        assert_eq!(
            redacted_url("postgres://alice:Pa?ssw0rd@db.example:5433/flags"),
            "postgres://alice@db.example:5433/flags"
        );
        assert_eq!(
            redacted_url("postgres://alice:hunter2@127.0.0.1:notaport/x"),
            "postgres://127.0.0.1"
        );
        assert_eq!(
            url_to_repeat(
                "postgres://alice:Pa#ss@db/flags?options=-csearch_path%3Dfs&sslmode=disable"
            ),
            "postgres://alice@db:5432/flags?options=-csearch_path%3Dfs"
        );
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

    /// The flags read as text in BEGIN's round trip are the flags the typed query reads, names
    /// that would need quoting and rollouts that need 17 digits included; a write to the flags
    /// in the transaction drops them.
    #[test]
    fn flags_read_with_begin_equal_the_typed_reading() {
        use crate::flag::{Flag, StickyPolicy};
        use crate::store::backend::{Reads, References, Writes};
        let Some(url) = std::env::var("FLAGSTORE_TEST_POSTGRES")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"skipped: the PostgreSQL flags-in-BEGIN test: FLAGSTORE_TEST_POSTGRES is unset\n",
            );
            return;
        };
        let schema = ScratchSchema::create(&url, "flagstore_unit").unwrap();
        let store = Postgres::open(schema.url(), true).unwrap();
        let flag = |name: &str, rollout_pct: f64, sticky, requires: &[&str]| Flag {
            name: name.to_string(),
            enabled: !name.starts_with('N'),
            rollout_pct,
            requires: requires.iter().map(|r| r.to_string()).collect(),
            sticky,
            stale_exempt: name.contains(' '),
        };
        let flags = [
            flag("a,b", 100.0 / 3.0, StickyPolicy::All, &[]),
            flag("{x}", 0.1 + 0.2, StickyPolicy::None, &["a,b"]),
            flag("q\"uote", 50.0, StickyPolicy::OnOnly, &["{x}", "a,b"]),
            flag(
                "back\\slash sp ace",
                99.99999999999999,
                StickyPolicy::All,
                &["q\"uote"],
            ),
            flag("NULL", 0.0, StickyPolicy::OnOnly, &["back\\slash sp ace"]),
            flag("ünï", 5e-324, StickyPolicy::None, &[]),
        ];
        let lock_wait = LockWait {
            budget: std::time::Duration::from_secs(5),
            keep_waiting: None,
        };
        let ts = "2026-11-30T00:00:00.000Z";
        store.begin_write(&lock_wait, References::Checked).unwrap();
        // Positions out of name order (and requirements too, above): both readings keep them.
        for (position, flag) in flags.iter().enumerate().rev() {
            store
                .insert_flag(flag, flags.len() - position, ts, ts)
                .unwrap();
        }
        for flag in &flags {
            store
                .replace_requirements(&flag.name, &flag.requires)
                .unwrap();
        }
        store.commit().unwrap();

        store.begin_write(&lock_wait, References::Checked).unwrap();
        assert!(store.flags.borrow().is_some(), "BEGIN read no flags");
        let prefetched = store.load_flags().unwrap();
        let typed = store.load_flags().unwrap();
        assert_eq!(prefetched, typed);
        let reversed: Vec<&Flag> = flags.iter().rev().collect();
        assert_eq!(typed.iter().collect::<Vec<_>>(), reversed);
        store.rollback();

        store.begin_write(&lock_wait, References::Checked).unwrap();
        let changed = flag("a,b", 1.0, StickyPolicy::All, &[]);
        store.update_flag(&changed, ts).unwrap();
        let after_write = store.load_flags().unwrap();
        assert_eq!(after_write.get("a,b").map(|f| f.rollout_pct), Some(1.0));
        store.rollback();
    }
}
