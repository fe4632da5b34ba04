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
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use super::sqlite::SchemaState;
use super::{
    AssignmentRef, AssignmentRow, AssignmentTally, Backend, ChainedEntry, Scan, TokenRecord,
};
use crate::audit::AuditRow;
use crate::error::{DatabaseError, Error, Result};
use crate::eval::StoredAssignment;
use crate::flag::{Flag, FlagSet};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// The newest schema version (see the SQLite backend's). PostgreSQL skipped version 5, which
/// only changed how SQLite keys assignments: its own are keyed by a hash of the context key.
const LATEST_SCHEMA_VERSION: i64 = 6;

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
}

impl Postgres {
    /// Connects to `url`. With `create`, an empty schema is given flagstore's tables; without,
    /// it is refused as holding no store.
    pub(super) fn open(url: &str, create: bool) -> Result<Postgres> {
        let name = redacted_url(url);
        let fail = |source: postgres::Error| Error::Postgres {
            server: name.clone(),
            source: source.into(),
        };
        let mut config = postgres::Config::from_str(url).map_err(|source| Error::BadUrl {
            url: name.clone(),
            why: describe(&source),
        })?;
        // So a DBA can tell flagstore's sessions apart in pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name("flagstore");
        }
        let mut client = config.connect(NoTls).map_err(fail)?;
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
        })
    }

    /// Connects to `url` and creates a store there, refusing a schema that holds one already.
    pub(super) fn create(url: &str) -> Result<Postgres> {
        let name = redacted_url(url);
        let mut client = postgres::Config::from_str(url)
            .map_err(|source| Error::BadUrl {
                url: name.clone(),
                why: describe(&source),
            })?
            .connect(NoTls)
            .map_err(|source| Error::Postgres {
                server: name.clone(),
                source: source.into(),
            })?;
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
            .prepare(sql)
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

    fn batch(&self, sql: &str) -> Result<()> {
        self.client
            .borrow_mut()
            .batch_execute(sql)
            .map_err(|e| self.fail(e))
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
        let version: Option<i32> = client
            .query_one("SELECT max(version) FROM refinery_schema_history", &[])?
            .get(0);
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
                source: DatabaseError::from_migration(&source),
            })
    })();
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock({LOCK_CLASS}, hashtext('{MIGRATION_LOCK_SALT}' || current_schema()))"
        ))
        .map_err(fail)?;
    outcome
}

fn read_audit_row(row: &postgres::Row) -> AuditRow {
    AuditRow {
        id: row.get(0),
        ts: row.get(1),
        kind: row.get(2),
        actor: row.get(3),
        action: row.get(4),
        flag: row.get(5),
        context_key: row.get(6),
        result: row.get::<_, Option<i32>>(7).map(i64::from),
        source: row.get(8),
        reason: row.get(9),
        detail: row.get::<_, String>(10).into(),
        prev_hash: row.get(11),
        hash: row.get(12),
    }
}

fn bucket_of(value: i32) -> u8 {
    // The column's CHECK keeps it within 0-99.
    u8::try_from(value).unwrap_or(u8::MAX)
}

impl Backend for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn begin_write(&self, lock_wait: Duration) -> Result<()> {
        self.batch(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; \
             SET LOCAL lock_timeout = {}; \
             SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext(current_schema()))",
            lock_wait.as_millis().max(1)
        ))
        // A lock timeout leaves the transaction aborted; end it so the connection is usable.
        .inspect_err(|_| self.rollback())
    }

    fn begin_read(&self) -> Result<()> {
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }

    fn commit(&self) -> Result<()> {
        self.batch("COMMIT")
    }

    fn rollback(&self) {
        // A failed rollback means the connection is gone, and the server has rolled back.
        let _ = self
            .client
            .borrow_mut()
            .batch_execute("ROLLBACK")
            .map_err(|e| self.fail(e));
    }

    fn load_flags(&self) -> Result<FlagSet> {
        let mut requires: std::collections::HashMap<String, Vec<String>> = Default::default();
        for edge in self.query(
            "SELECT flag, requires FROM flag_dependencies ORDER BY flag, requires",
            &[],
        )? {
            requires.entry(edge.get(0)).or_default().push(edge.get(1));
        }
        let mut flags = FlagSet::new();
        let sql = "SELECT name, enabled, rollout_pct, sticky, stale_exempt FROM flags";
        for row in self.query(sql, &[])? {
            let name: String = row.get(0);
            let sticky: &str = row.get(3);
            flags.insert(Flag {
                requires: requires.remove(&name).unwrap_or_default(),
                enabled: row.get::<_, i32>(1) == 1,
                rollout_pct: row.get(2),
                sticky: sticky.parse()?,
                stale_exempt: row.get::<_, i32>(4) == 1,
                name,
            });
        }
        Ok(flags)
    }

    fn flag_times(&self, name: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .query_opt(
                "SELECT created_at, updated_at FROM flags WHERE name = $1",
                &[&name],
            )?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn insert_flag(&self, flag: &Flag, created_at: &str, updated_at: &str) -> Result<()> {
        self.execute(
            "INSERT INTO flags \
                 (name, enabled, rollout_pct, sticky, created_at, updated_at, stale_exempt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &flag.name,
                &i32::from(flag.enabled),
                &flag.rollout_pct,
                &flag.sticky.as_str(),
                &created_at,
                &updated_at,
                &i32::from(flag.stale_exempt),
            ],
        )
        .map(|_| ())
    }

    fn update_flag(&self, flag: &Flag, ts: &str) -> Result<()> {
        self.execute(
            "UPDATE flags SET enabled = $2, rollout_pct = $3, sticky = $4, updated_at = $5, \
                 stale_exempt = $6 \
             WHERE name = $1",
            &[
                &flag.name,
                &i32::from(flag.enabled),
                &flag.rollout_pct,
                &flag.sticky.as_str(),
                &ts,
                &i32::from(flag.stale_exempt),
            ],
        )
        .map(|_| ())
    }

    fn replace_requirements(&self, flag: &str, requires: &[String]) -> Result<()> {
        self.execute("DELETE FROM flag_dependencies WHERE flag = $1", &[&flag])?;
        self.execute(
            "INSERT INTO flag_dependencies (flag, requires) SELECT $1, unnest($2::text[])",
            &[&flag, &requires],
        )
        .map(|_| ())
    }

    fn delete_flag(&self, name: &str) -> Result<usize> {
        let cleared = self.execute("DELETE FROM assignments WHERE flag = $1", &[&name])?;
        self.execute("DELETE FROM flags WHERE name = $1", &[&name])?;
        Ok(cleared as usize)
    }

    /// A whole transaction: each read is a round trip, which cost more than evaluating on
    /// another thread meanwhile saved (steps of 128 keys: 12% fewer evaluations/s).
    fn keys_per_step(&self) -> usize {
        usize::MAX
    }

    fn fetch_assignments(
        &self,
        flags: &[&str],
        keys: &[&str],
        found: &mut dyn FnMut(usize, String, StoredAssignment),
    ) -> Result<()> {
        // One statement for the whole chunk: a round trip per key would cost more than the
        // evaluation itself.
        let index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let rows = self.query(
            "SELECT context_key, flag, decision, bucket, rollout_pct, assigned_at \
               FROM assignments \
              WHERE flag = ANY($1) AND context_key = ANY($2) \
                AND context_hash = ANY(ARRAY(SELECT context_hash(k) FROM unnest($2::text[]) k))",
            &[&flags, &keys],
        )?;
        for row in rows {
            let assignment = StoredAssignment {
                decision: row.get::<_, i32>(2) == 1,
                bucket: bucket_of(row.get(3)),
                rollout_pct: row.get(4),
                assigned_at: row.get(5),
            };
            let key: &str = row.get(0);
            if let Some(&i) = index.get(key) {
                found(i, row.get(1), assignment);
            }
        }
        Ok(())
    }

    fn insert_assignments(&self, rows: &[AssignmentRef]) -> Result<()> {
        let flags: Vec<&str> = rows.iter().map(|a| a.flag).collect();
        let keys: Vec<&str> = rows.iter().map(|a| a.context_key).collect();
        let decisions: Vec<i32> = rows.iter().map(|a| i32::from(a.decision)).collect();
        let buckets: Vec<i32> = rows.iter().map(|a| i32::from(a.bucket)).collect();
        let rollouts: Vec<f64> = rows.iter().map(|a| a.rollout_pct).collect();
        let times: Vec<&str> = rows.iter().map(|a| a.assigned_at).collect();
        self.execute(
            "INSERT INTO assignments (flag, context_key, decision, bucket, rollout_pct, assigned_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], \
                                  $5::float8[], $6::text[])",
            &[&flags, &keys, &decisions, &buckets, &rollouts, &times],
        )
        .map(|_| ())
    }

    fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        visit: &mut dyn FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let rows = client
            .query_raw(
                "SELECT flag, context_key, decision, bucket, rollout_pct, assigned_at \
                   FROM assignments \
                  WHERE ($1::text IS NULL OR flag = $1) AND ($2::text IS NULL OR context_key = $2) \
                  ORDER BY flag COLLATE \"C\", context_key COLLATE \"C\"",
                [&flag as &(dyn ToSql + Sync), &context],
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = rows;
        use postgres::fallible_iterator::FallibleIterator;
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            visit(AssignmentRow {
                flag: row.get(0),
                context_key: row.get(1),
                decision: row.get::<_, i32>(2) == 1,
                bucket: bucket_of(row.get(3)),
                rollout_pct: row.get(4),
                assigned_at: row.get(5),
            })?;
        }
        Ok(())
    }

    fn delete_assignments(&self, flag: &str, context: Option<&str>) -> Result<usize> {
        Ok(self.execute(
            "DELETE FROM assignments WHERE flag = $1 AND ($2::text IS NULL OR context_key = $2)",
            &[&flag, &context],
        )? as usize)
    }

    fn audit_tail(&self) -> Result<Option<(i64, String)>> {
        Ok(self
            .query_opt(
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
                &[],
            )?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn audit_hash(&self, id: i64) -> Result<Option<String>> {
        Ok(self
            .query_opt("SELECT hash FROM audit_log WHERE id = $1", &[&id])?
            .map(|row| row.get(0)))
    }

    fn insert_audit(&self, rows: &[ChainedEntry]) -> Result<()> {
        let column = |f: for<'r> fn(&'r ChainedEntry<'r>) -> Option<&'r str>| -> Vec<Option<&str>> {
            rows.iter().map(f).collect()
        };
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let results: Vec<Option<i32>> = rows
            .iter()
            .map(|r| r.entry.result.map(|v| i32::from(v == 1)))
            .collect();
        self.execute(
            "INSERT INTO audit_log (id, ts, kind, actor, action, flag, context_key, result, \
                                    source, reason, detail, prev_hash, hash) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::text[], $8::int[], $9::text[], $10::text[], \
                                  $11::text[], $12::text[], $13::text[])",
            &[
                &ids,
                &column(|r| Some(r.entry.ts)),
                &column(|r| Some(r.entry.kind)),
                &column(|r| Some(r.entry.actor)),
                &column(|r| r.entry.action),
                &column(|r| r.entry.flag),
                &column(|r| r.entry.context_key),
                &results,
                &column(|r| r.entry.source),
                &column(|r| r.entry.reason),
                &column(|r| Some(r.entry.detail)),
                &column(|r| Some(r.prev_hash)),
                &column(|r| Some(r.hash)),
            ],
        )
        .map(|_| ())
    }

    fn insert_flag_ranges(&self, flags: &[&str], first_id: i64, last_id: i64) -> Result<()> {
        self.execute(
            "INSERT INTO audit_flag_ranges (flag, first_id, last_id) \
             SELECT unnest($1::text[]), $2, $3",
            &[&flags, &first_id, &last_id],
        )
        .map(|_| ())
    }

    fn flag_ranges(
        &self,
        flag: &str,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>> {
        let sql = super::query::flag_ranges_sql(ascending, |n| format!("${n}"));
        let bound = super::query::flag_ranges_bound(ascending, cursor);
        Ok(self
            .query(&sql, &[&flag, &bound, &(limit as i64)])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn ranges_by_first_id(
        &self,
        after: (i64, &str),
        limit: usize,
    ) -> Result<Vec<(String, i64, i64)>> {
        let sql = super::query::ranges_by_first_id_sql(|n| format!("${n}"));
        Ok(self
            .query(&sql, &[&after.0, &after.1, &(limit as i64)])?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    fn audit_page(&self, scan: &Scan) -> Result<Vec<AuditRow>> {
        let (sql, params) = super::query::scan_sql(scan, |n| format!("${n}"));
        let values: Vec<Box<dyn ToSql + Sync>> = params
            .iter()
            .map(|p| match p {
                super::query::Param::Int(v) => Box::new(*v) as Box<dyn ToSql + Sync>,
                super::query::Param::Text(v) => Box::new(v.to_string()),
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(AsRef::as_ref).collect();
        Ok(self
            .query(&sql, &refs)?
            .iter()
            .map(read_audit_row)
            .collect())
    }

    fn audit_len(&self) -> Result<i64> {
        Ok(self
            .query("SELECT count(*) FROM audit_log", &[])?
            .first()
            .map_or(0, |row| row.get(0)))
    }

    fn check_storage(&self, _quick: bool) -> Result<&'static str> {
        // PostgreSQL guards its own pages (with data checksums, when the cluster has them);
        // a client cannot check them without the amcheck extension and superuser rights.
        Ok("pages left to PostgreSQL")
    }

    fn broken_reference(&self) -> Result<Option<(String, String, String)>> {
        // PostgreSQL enforces foreign keys on every write; only a superuser disabling its
        // triggers could break one, and the audit chain records no such thing to check.
        Ok(None)
    }

    fn unaudited_assignment(&self) -> Result<Option<(String, String)>> {
        Ok(self
            .query_opt(
                // Every (flag, context, time) a record says it stored, parsed once per record
                // and set-subtracted: as NOT EXISTS the planner looked each assignment up in
                // turn, 7 minutes for 100,000.
                "WITH stored AS (
                     SELECT d ->> 'flag' AS flag, l.context_key, l.ts FROM audit_log l
                      CROSS JOIN LATERAL jsonb_array_elements(
                            CASE jsonb_typeof(l.detail::jsonb -> 'decisions')
                            WHEN 'array' THEN l.detail::jsonb -> 'decisions' END) d
                      WHERE l.kind = 'evaluation' AND l.flag IS NULL AND d ->> 'assigned' = '1'
                     UNION ALL
                     -- a schema-1 evaluation row (copied from SQLite) lists what it stored
                     SELECT s, l.context_key, l.ts FROM audit_log l
                      CROSS JOIN LATERAL jsonb_array_elements_text(
                            CASE jsonb_typeof(l.detail::jsonb -> 'assigned')
                            WHEN 'array' THEN l.detail::jsonb -> 'assigned' END) s
                      WHERE l.kind = 'evaluation' AND l.flag IS NOT NULL)
                 SELECT flag, context_key FROM (
                     SELECT flag, context_key, assigned_at FROM assignments
                     EXCEPT
                     SELECT flag, context_key, ts FROM stored) unaudited
                  LIMIT 1",
                &[],
            )?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn misrecorded_assignment(&self) -> Result<Option<super::Misrecorded>> {
        Ok(self
            .query_opt(
                // As in unaudited_assignment, set operations first: joined directly, the
                // planner looked each assignment up in turn (10 minutes for 40,000). The few
                // assignments that differ are then matched with their records.
                "WITH stored AS MATERIALIZED (
                     SELECT d ->> 'flag' AS flag, l.context_key, l.ts, l.id,
                            (d ->> 'result')::bigint AS decision, (d ->> 'bucket')::bigint AS bucket,
                            (d ->> 'rollout_pct')::double precision AS rollout_pct
                       FROM audit_log l
                      CROSS JOIN LATERAL jsonb_array_elements(
                            CASE jsonb_typeof(l.detail::jsonb -> 'decisions')
                            WHEN 'array' THEN l.detail::jsonb -> 'decisions' END) d
                      WHERE l.kind = 'evaluation' AND l.flag IS NULL AND d ->> 'assigned' = '1'),
                 differing AS (
                     SELECT flag, context_key, assigned_at AS ts, decision::bigint AS decision,
                            bucket::bigint AS bucket, rollout_pct
                       FROM assignments
                     EXCEPT
                     SELECT flag, context_key, ts, decision, bucket, rollout_pct FROM stored)
                 SELECT w.flag, w.context_key, w.decision, w.bucket, w.rollout_pct,
                        s.id, s.decision, s.bucket, s.rollout_pct
                   FROM differing w
                   JOIN stored s ON s.flag = w.flag AND s.context_key = w.context_key
                                AND s.ts = w.ts
                  LIMIT 1",
                &[],
            )?
            .map(|row| super::Misrecorded {
                flag: row.get(0),
                context_key: row.get(1),
                stored: (row.get(2), row.get(3), row.get(4)),
                record_id: row.get(5),
                recorded: (row.get(6), row.get(7), row.get(8)),
            }))
    }

    fn assignment_count(&self) -> Result<i64> {
        Ok(self
            .query("SELECT count(*) FROM assignments", &[])?
            .first()
            .map_or(0, |row| row.get(0)))
    }

    fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally> {
        let rows = self.query(
            &super::query::tally_sql("assignments", |n| format!("${n}")),
            &[&flag, &rollout_pct],
        )?;
        Ok(rows
            .first()
            .map_or_else(AssignmentTally::default, |row| AssignmentTally {
                on: row.get(0),
                off: row.get(1),
                kept_from_rollout: row.get(2),
            }))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.query(
            "SELECT name, token_sha256, created_at, revoked_at, role FROM api_tokens \
             ORDER BY name COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|row| {
            Ok(TokenRecord {
                name: row.get(0),
                sha256: row.get(1),
                role: row.get::<_, &str>(4).parse()?,
                created_at: row.get(2),
                revoked_at: row.get(3),
            })
        })
        .collect()
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.execute(
            "INSERT INTO api_tokens (name, token_sha256, created_at, revoked_at, role) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token.name,
                &token.sha256,
                &token.created_at,
                &token.revoked_at,
                &token.role.as_str(),
            ],
        )
        .map(|_| ())
    }

    fn revoke_token(&self, name: &str, ts: &str) -> Result<bool> {
        Ok(self.execute(
            "UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
            &[&name, &ts],
        )? == 1)
    }

    fn rewrite_header(&self) -> Result<()> {
        // The writer lock taken and released is the write: PostgreSQL's own disk is its own.
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
        // Statements prepared on the lost connection do not exist on the new one.
        self.statements.borrow_mut().clear();
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
        let name = redacted_url(url);
        let config = postgres::Config::from_str(url).map_err(|source| Error::BadUrl {
            url: name.clone(),
            why: describe(&source),
        })?;
        let mut admin = config.connect(NoTls).map_err(|source| Error::Postgres {
            server: name.clone(),
            source: source.into(),
        })?;
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
}
