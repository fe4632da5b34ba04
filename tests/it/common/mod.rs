//! Helpers for driving the real `flagstore` binary against a throw-away database.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Once;

use assert_cmd::Command;
use flagstore::store::{Location, ScratchSchema};
use proptest::test_runner::{
    Config as ProptestConfig, FailurePersistence, FileFailurePersistence, PersistedSeed,
};
use rusqlite::Connection;
use rusqlite::types::Value;
use tempfile::TempDir;

/// Which backend the tests of this thread run against (see [`contract_tests!`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

thread_local! {
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Sqlite) };
}

/// The variable holding the URL of a PostgreSQL database the tests may create schemas in.
pub const POSTGRES_VARIABLE: &str = "FLAGSTORE_TEST_POSTGRES";

/// Whether this thread's test runs on PostgreSQL: when `$FLAGSTORE_TEST_POSTGRES` holds a URL
/// it does (every [`Env`] this thread makes gets a schema of its own there). When it is unset
/// the test is skipped, and the first skip in a test binary says so on the terminal (written
/// past the test harness's capture, which would hide it for a passing test).
pub fn use_postgres() -> bool {
    if postgres_url().is_some() {
        BACKEND.with(|backend| backend.set(Backend::Postgres));
        return true;
    }
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "note: {POSTGRES_VARIABLE} is unset: the PostgreSQL runs of the contract tests are \
             skipped (they pass without checking anything); .ci/run sets it"
        );
    });
    false
}

/// Whether the tests run as root, which switching to the unprivileged user `nobody` takes (CI
/// runs as root); when not, says on stderr that `skipped` is skipped.
pub fn running_as_root(skipped: &str) -> bool {
    let uid = StdCommand::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    if !root {
        eprintln!("skipped: {skipped} needs root");
    }
    root
}

/// A directory `nobody` may reach: not under a test's temporary directory, whose parent only
/// root may enter.
pub fn directory_nobody_reaches(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Generates, for each named test function, a test running it on SQLite (`sqlite::name`) and
/// one running it on PostgreSQL (`postgres::name`, skipped without a server): the contract
/// suite both backends must pass.
#[macro_export]
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name()
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if $crate::common::use_postgres() {
                        super::$name()
                    }
                }
            )*
        }
    };
}

pub struct Env {
    pub dir: TempDir,
    /// The SQLite file; on PostgreSQL, a path nothing is written to.
    pub db: PathBuf,
    /// What `--db` is given: the SQLite file's path or the scratch schema's URL.
    pub location: OsString,
    pub backend: Backend,
    schema: Option<ScratchSchema>,
}

impl Env {
    /// The newest schema version of this store's backend.
    pub fn latest_schema(&self) -> i64 {
        match self.backend {
            Backend::Sqlite => LATEST_SQLITE_SCHEMA,
            Backend::Postgres => LATEST_POSTGRES_SCHEMA,
        }
    }

    /// A throw-away store on this thread's backend: an SQLite file in a temporary directory,
    /// or a new schema on the PostgreSQL server, dropped with the `Env`.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("flags.db");
        let backend = BACKEND.with(Cell::get);
        let schema = (backend == Backend::Postgres).then(|| {
            let url = postgres_url().expect("use_postgres checked the variable");
            ScratchSchema::create(&url, "flagstore_test")
                .unwrap_or_else(|e| panic!("scratch schema on {POSTGRES_VARIABLE}: {e}"))
        });
        let location = match &schema {
            Some(schema) => OsString::from(schema.url()),
            None => db.clone().into_os_string(),
        };
        Env {
            dir,
            db,
            location,
            backend,
            schema,
        }
    }

    /// The store, opened in this process through the library.
    pub fn open_store(&self) -> flagstore::Store {
        flagstore::Store::open(&Location::parse(&self.location)).expect("store opens")
    }

    /// The stored definition of flag `name`, which must exist.
    pub fn flag(&self, name: &str) -> flagstore::Flag {
        let flags = self.open_store().flags().expect("flags read");
        flags
            .get(name)
            .unwrap_or_else(|| panic!("no flag {name:?}"))
            .clone()
    }

    /// The store's name as flagstore prints it: the path, or the URL without password or
    /// parameters.
    pub fn shown(&self) -> String {
        match &self.schema {
            Some(schema) => flagstore::store::redacted_url(schema.url()),
            None => self.db.display().to_string(),
        }
    }

    /// `flagstore --db <this env's store>` acting as "tester" (through $FLAGSTORE_ACTOR, so
    /// that `audit` queries are not filtered by actor), isolated from the caller's environment.
    pub fn std_cmd(&self) -> StdCommand {
        let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("flagstore"));
        // The scratch schemas belong to the superuser the tests connect as, so the warning
        // about roles that can rewrite history would be on every PostgreSQL command.
        cmd.env_remove("FLAGSTORE_DB")
            .env("FLAGSTORE_ACTOR", "tester")
            .env("FLAGSTORE_NO_OWNER_WARNING", "1")
            .current_dir(self.dir.path())
            .arg("--db")
            .arg(&self.location);
        cmd
    }

    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// Runs `flagstore ARGS`, asserting success, and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cmd().args(args).output().expect("runs");
        assert!(
            output.status.success(),
            "flagstore {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs `flagstore ARGS`, asserting exit status 2, one line on stderr and no stdout, and
    /// returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with(&[], args)
    }

    /// [`Env::fails`] with `variables` set in flagstore's environment.
    pub fn fails_with(&self, variables: &[(&str, &std::path::Path)], args: &[&str]) -> String {
        let output = self
            .cmd()
            .envs(variables.iter().copied())
            .args(args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
        assert_eq!(
            output.status.code(),
            Some(2),
            "flagstore {args:?}: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "flagstore {args:?} printed to stdout"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr.trim_end().to_string()
    }

    /// A FIFO named `name` in the test's directory.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let made = StdCommand::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo {}", path.display());
        path
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write fixture");
        path
    }

    pub fn import_json(&self, json: &str) -> String {
        let path = self.write("import.json", json);
        self.ok(&["import", path.to_str().unwrap()])
    }

    /// Every row of every table, to prove a refused write changed nothing.
    pub fn snapshot(&self) -> Vec<String> {
        match &self.schema {
            None => snapshot(&self.db),
            Some(_) => {
                let mut client = self.postgres();
                let mut rows = Vec::new();
                for table in TABLES {
                    for row in client
                        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
                        .expect("table exists")
                    {
                        rows.push(format!("{table}: {}", row.get::<_, String>(0)));
                    }
                }
                rows
            }
        }
    }

    /// A plain SQLite connection to the store, for tests of what is particular to SQLite.
    pub fn sql(&self) -> Connection {
        assert_eq!(
            self.backend,
            Backend::Sqlite,
            "this test reads SQLite directly: it belongs outside contract_tests!"
        );
        Connection::open(&self.db).expect("open db")
    }

    /// A plain PostgreSQL connection to the store's schema.
    pub fn postgres(&self) -> postgres::Client {
        let schema = self.schema.as_ref().expect("a PostgreSQL env");
        postgres::Client::connect(schema.url(), postgres::NoTls).expect("connect")
    }

    /// The single integer `sql` selects, read with plain SQL on either backend.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.schema {
            None => self
                .sql()
                .query_row(sql, [], |row| row.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Some(_) => {
                let row = self
                    .postgres()
                    .query_one(sql, &[])
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                row.try_get::<_, i64>(0)
                    .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// The single text value `sql` selects, on either backend.
    pub fn text(&self, sql: &str) -> String {
        let mut values = self.texts(sql);
        assert_eq!(values.len(), 1, "{sql}: {values:?}");
        values.remove(0)
    }

    /// The text values of the first column of every row `sql` selects, on either backend.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        match &self.schema {
            None => self
                .sql()
                .prepare(sql)
                .and_then(|mut statement| {
                    statement
                        .query_map([], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Some(_) => self
                .postgres()
                .query(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|row| row.get(0))
                .collect(),
        }
    }

    /// Runs `sql` (statements separated by `;`) as plain SQL on either backend; the error is
    /// the database's message.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        match &self.schema {
            None => self.sql().execute_batch(sql).map_err(|e| e.to_string()),
            Some(_) => self
                .postgres()
                .batch_execute(sql)
                .map_err(|e| format!("{e}: {}", e.as_db_error().map_or("", |d| d.message()))),
        }
    }

    /// Takes an SQLite store back to schema 9, as the flagstore before schema 10 left it:
    /// audit rows indexed by their key, not by their context's number, and keys without
    /// assignments unnumbered; the view as schema 3 defined it; no index of change rows. The
    /// records stay as schema 13 writes them, which schema 3's view does not read.
    pub fn as_sqlite_schema_9(&self) {
        assert_eq!(self.backend, Backend::Sqlite);
        self.as_schema_11("");
        let schema_3 = include_str!("../../../migrations/sqlite/V3__api_tokens.sql");
        let view = &schema_3[schema_3.find("CREATE VIEW audit_evaluations").unwrap()..];
        self.execute(&format!(
            "DROP VIEW audit_evaluations; \
             DROP INDEX audit_log_changes; \
             DROP INDEX audit_log_context; \
             ALTER TABLE audit_log DROP COLUMN context_id; \
             CREATE INDEX audit_log_context ON audit_log (context_key, id); \
             DELETE FROM contexts WHERE id NOT IN (SELECT context_id FROM assignment_rows); \
             DELETE FROM refinery_schema_history WHERE version >= 10; \
             {view}"
        ))
        .unwrap();
    }

    /// Takes an SQLite store back to schema 13: `audit_log` a table holding every column as
    /// its view shows it, as schema 13 made it, its indexes, triggers and views, and
    /// `assignment_rows` holding times as text (schema 5's table, view and triggers); the next
    /// command migrates it again.
    pub fn as_sqlite_schema_13(&self) {
        assert_eq!(self.backend, Backend::Sqlite);
        let schema_5 = include_str!("../../../migrations/sqlite/V5__context_ids.sql");
        let table = &schema_5[schema_5.find("CREATE TABLE assignment_rows").unwrap()..];
        let table = &table[..=table.find(';').unwrap()];
        let assignments = &schema_5[schema_5.find("CREATE VIEW assignments").unwrap()..];
        self.execute(&format!(
            "CREATE TABLE legacy_assignments AS \
                 SELECT a.context_id, a.flag, a.decision, a.bucket, a.rollout_pct, v.assigned_at \
                   FROM assignment_rows a JOIN contexts c ON c.id = a.context_id \
                   JOIN assignments v ON v.flag = a.flag AND v.context_key = c.key; \
             DROP VIEW assignments; DROP TABLE assignment_rows; {table} \
             INSERT INTO assignment_rows SELECT * FROM legacy_assignments; \
             DROP TABLE legacy_assignments; {assignments}"
        ))
        .unwrap();
        let schema_13 = include_str!("../../../migrations/sqlite/V13__compact_decisions.sql");
        let view = &schema_13[schema_13.find("CREATE VIEW audit_evaluations").unwrap()..];
        self.execute(&format!(
            "CREATE TABLE legacy_rows AS SELECT * FROM audit_log; \
             DROP VIEW audit_evaluations; DROP VIEW audit_log; \
             DROP TABLE audit_rows; DROP TABLE actors; \
             CREATE TABLE audit_log ( \
                 id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, \
                 kind TEXT NOT NULL CHECK (kind = 'evaluation' OR kind = 'change'), \
                 actor TEXT NOT NULL, \
                 action TEXT CHECK ((kind = 'change') = (action IS NOT NULL)), \
                 flag TEXT CHECK (flag IS NOT NULL OR kind = 'evaluation' \
                                  OR action = 'token_create' OR action = 'token_revoke'), \
                 context_key TEXT, result INTEGER CHECK (result = 0 OR result = 1), \
                 source TEXT, reason TEXT CHECK (reason IS NOT NULL OR kind = 'evaluation'), \
                 detail TEXT NOT NULL DEFAULT '{{}}', \
                 prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64), \
                 hash TEXT NOT NULL CHECK (length(hash) = 64), context_id INTEGER); \
             INSERT INTO audit_log SELECT * FROM legacy_rows; DROP TABLE legacy_rows; \
             CREATE INDEX audit_log_flag ON audit_log (flag, id) WHERE flag IS NOT NULL; \
             CREATE INDEX audit_log_context ON audit_log (context_id, id); \
             CREATE INDEX audit_log_changes ON audit_log (id) WHERE kind = 'change'; \
             CREATE INDEX audit_log_token_changes ON audit_log (id) \
                 WHERE action = 'token_create' OR action = 'token_revoke'; \
             CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END; \
             CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END; \
             DELETE FROM refinery_schema_history WHERE version >= 14; \
             {view}"
        ))
        .unwrap();
    }

    /// Takes a PostgreSQL store back to schema 15: `audit_log` a table holding every column
    /// as its view shows it, with schema 15's constraints, indexes, triggers and views; the
    /// next command migrates it again.
    pub fn as_postgres_schema_15(&self) {
        assert_eq!(self.backend, Backend::Postgres);
        let schema_13 = include_str!("../../../migrations/postgres/V13__compact_decisions.sql");
        let view = &schema_13[schema_13.find("CREATE VIEW audit_evaluations").unwrap()..];
        self.execute(&format!(
            "CREATE TABLE legacy_rows AS SELECT * FROM audit_log; \
             DROP VIEW audit_evaluations; DROP VIEW audit_log; \
             DROP TABLE audit_rows; DROP TABLE actors; \
             DROP FUNCTION audit_log_write(); DROP FUNCTION actors_refuse_change(); \
             DROP FUNCTION audit_time(bigint); DROP FUNCTION audit_hash_text(bytea); \
             DROP FUNCTION audit_hash_bytes(text); \
             CREATE TABLE audit_log ( \
                 id BIGINT PRIMARY KEY CHECK (id > 0), ts TEXT NOT NULL, \
                 kind TEXT NOT NULL CHECK (kind IN ('evaluation', 'change')), \
                 actor TEXT NOT NULL, \
                 action TEXT CHECK ((kind = 'change') = (action IS NOT NULL)), \
                 flag TEXT CONSTRAINT audit_log_flag_check CHECK (flag IS NOT NULL \
                     OR kind = 'evaluation' OR action IN ('token_create', 'token_revoke')), \
                 context_key TEXT, result INTEGER CHECK (result IN (0, 1)), \
                 source TEXT CHECK (source IN ('sticky', 'rollout', 'disabled', 'dependency', \
                                               'unknown', 'cycle')), \
                 reason TEXT CONSTRAINT audit_log_reason_check \
                     CHECK (reason IS NOT NULL OR kind = 'evaluation'), \
                 detail TEXT NOT NULL DEFAULT '{{}}', \
                 prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64), \
                 hash TEXT NOT NULL CHECK (length(hash) = 64)); \
             INSERT INTO audit_log SELECT * FROM legacy_rows ORDER BY id; DROP TABLE legacy_rows; \
             CREATE INDEX audit_log_flag ON audit_log (flag, id) WHERE flag IS NOT NULL; \
             CREATE INDEX audit_log_context ON audit_log USING hash (context_key); \
             CREATE INDEX audit_log_changes ON audit_log (id) WHERE action IS NOT NULL; \
             CREATE INDEX audit_log_token_changes ON audit_log (id) \
                 WHERE action = 'token_create' OR action = 'token_revoke'; \
             CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change(); \
             CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log \
                 FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change(); \
             DELETE FROM refinery_schema_history WHERE version >= 16; \
             {view}"
        ))
        .unwrap();
    }

    /// Takes this store back to the schema before its audit rows were compact (SQLite's 13,
    /// PostgreSQL's 15): `audit_log` a table of the columns as hashed.
    pub fn as_schema_before_compact_rows(&self) {
        match self.backend {
            Backend::Sqlite => self.as_sqlite_schema_13(),
            Backend::Postgres => self.as_postgres_schema_15(),
        }
    }

    /// Turns this store back into what schema 11 wrote: `audit_flag_ranges` a table with a
    /// row per write transaction and flag (the rows the view of schema 12 shows), edited by
    /// `legacy_edit` before its append-only triggers are made; the next command migrates it.
    pub fn as_schema_11(&self, legacy_edit: &str) {
        self.as_schema_before_compact_rows();
        let (integer, append_only, legacy_drops) = match self.backend {
            Backend::Sqlite => (
                "INTEGER",
                [
                    include_str!("../../../migrations/sqlite/V6__append_only_ranges.sql"),
                    include_str!("../../../migrations/sqlite/V7__ranges_by_first_id.sql"),
                ],
                "",
            ),
            Backend::Postgres => (
                "BIGINT",
                [
                    include_str!("../../../migrations/postgres/V5__append_only_ranges.sql"),
                    include_str!("../../../migrations/postgres/V6__ranges_by_first_id.sql"),
                ],
                "DROP FUNCTION audit_ranges_refuse_change();",
            ),
        };
        let table = format!(
            "CREATE TABLE audit_flag_ranges (flag TEXT NOT NULL, first_id {integer} NOT NULL, \
             last_id {integer} NOT NULL, PRIMARY KEY (flag, last_id))"
        );
        self.execute(&format!(
            "CREATE TABLE legacy_ranges AS SELECT flag, first_id, last_id FROM audit_flag_ranges; \
             DROP VIEW audit_flag_ranges; DROP TABLE audit_ranges; DROP TABLE audit_flag_sets; \
             {legacy_drops} {table}; \
             INSERT INTO audit_flag_ranges SELECT * FROM legacy_ranges; DROP TABLE legacy_ranges; \
             {legacy_edit}; {} {} \
             DELETE FROM refinery_schema_history WHERE version >= 12;",
            // SQLite's schema 6 rebuilds the table with its key first, as every store has it.
            append_only[0],
            append_only[1]
        ))
        .unwrap();
    }

    /// Runs `sql` with the append-only triggers of `audit_log` and of the index of records by
    /// flag (`audit_ranges`, `audit_flag_sets`) out of the way, as an attacker with direct
    /// access to the database would: dropped from an SQLite file, disabled by PostgreSQL's
    /// table owner; and put back afterwards, as a careful attacker would (`check` names a
    /// missing one).
    pub fn tamper(&self, sql: &str) {
        const APPEND_ONLY: [&str; 3] = ["audit_log", "audit_ranges", "audit_flag_sets"];
        let bypassed = match self.backend {
            Backend::Sqlite => {
                // Since schema 14 the rows are in `audit_rows` (and their actors' names in
                // `actors`); the triggers on the view `audit_log` only pass edits on to them,
                // and stay.
                let listed = ["audit_rows", "actors"]
                    .iter()
                    .chain(&APPEND_ONLY)
                    .map(|table| format!("'{table}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let triggers = format!(
                    "FROM sqlite_schema WHERE type = 'trigger' AND tbl_name IN ({listed}) \
                     AND sql NOT LIKE '%INSTEAD OF%'"
                );
                let made = self.texts(&format!("SELECT sql {triggers}"));
                let dropped = self.texts(&format!("SELECT 'DROP TRIGGER ' || name {triggers}"));
                format!("{}; {sql}; {};", dropped.join("; "), made.join("; "))
            }
            Backend::Postgres => {
                // Since schema 16 the rows are in `audit_rows` and `actors`, as on SQLite.
                let toggled = |verb: &str| {
                    ["audit_rows", "actors", "audit_ranges", "audit_flag_sets"]
                        .map(|table| format!("ALTER TABLE {table} {verb} TRIGGER USER"))
                        .join("; ")
                };
                format!("{}; {sql}; {}", toggled("DISABLE"), toggled("ENABLE"))
            }
        };
        self.execute(&bypassed)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A key for signing tree heads, made by `flagstore keys generate` in this env's
    /// directory, and the heads file beside it.
    pub fn signing(&self) -> Signing {
        let key = self.dir.path().join("heads.key");
        let said = self.ok(&["keys", "generate", key.to_str().unwrap()]);
        assert!(said.contains("key id "), "{said}");
        Signing {
            public_key: self.dir.path().join("heads.key.pub"),
            heads: self.dir.path().join("heads.jsonl"),
            key,
        }
    }

    /// [`Env::std_cmd`] signing heads as `signing` says, through the environment.
    pub fn signing_cmd(&self, signing: &Signing) -> StdCommand {
        let mut cmd = self.std_cmd();
        cmd.env("FLAGSTORE_SIGNING_KEY", &signing.key)
            .env("FLAGSTORE_HEADS", &signing.heads);
        cmd
    }

    /// Starts `flagstore ARGS` without waiting for it, stdout and stderr captured.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.std_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flagstore starts")
    }
}

/// Where an [`Env`]'s signed heads go, and the key that signs them.
pub struct Signing {
    pub key: PathBuf,
    pub public_key: PathBuf,
    pub heads: PathBuf,
}

/// A witness for signed heads on a loopback port: it answers every POST with `status` and
/// keeps the bodies it was sent.
pub struct FakeWitness {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeWitness {
    pub fn start(status: u16) -> FakeWitness {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/heads", listener.local_addr().unwrap());
        let bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let kept = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                kept.lock().unwrap().push(String::from_utf8(body).unwrap());
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Witness\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        FakeWitness { url, bodies }
    }

    /// The bodies it was sent, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A running `flagstore serve` on a free loopback port, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(env: &Env, extra: &[&str]) -> Server {
        Server::start_with(env.std_cmd(), extra)
    }

    /// Starts `serve` from `cmd`, a flagstore command its caller has prepared.
    pub fn start_with(mut cmd: StdCommand, extra: &[&str]) -> Server {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url }
    }

    /// Waits for the server to exit (after a signal); its exit code and everything it wrote
    /// to stderr.
    pub fn exit(&mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status.code(), stderr)
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a spawned command, asserts that it succeeded and returns its stdout.
pub fn succeeded(child: Child) -> String {
    let output = child.wait_with_output().expect("waits");
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// The newest schema version this build's SQLite migrations make.
pub const LATEST_SQLITE_SCHEMA: i64 = 16;

/// The newest schema version this build's PostgreSQL migrations make (SQLite's 15 changed
/// only how SQLite stores a time).
pub const LATEST_POSTGRES_SCHEMA: i64 = 16;

const TABLES: [&str; 6] = [
    "flags",
    "flag_dependencies",
    "assignments",
    "audit_log",
    "audit_flag_ranges",
    "refinery_schema_history",
];

pub fn snapshot(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).expect("open db");
    let mut rows = Vec::new();
    // SQLite numbers context keys in a table of its own (schema 5), which a refused write must
    // not touch either.
    let numbered: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'contexts'",
            [],
            |row| row.get(0),
        )
        .expect("read the schema");
    let contexts = numbered.then_some("contexts");
    for table in TABLES.into_iter().chain(contexts) {
        let mut statement = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .expect("table exists");
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<Value> = (0..columns).map(|i| row.get(i).unwrap()).collect();
            rows.push(format!("{table}: {values:?}"));
        }
    }
    rows
}

pub const PIPELINE: &str = r#"{
  "flags": [
    {"name": "ingest"},
    {"name": "dedupe", "requires": ["ingest"]},
    {"name": "enrich", "rollout_pct": 50, "requires": ["dedupe"]},
    {"name": "legacy", "enabled": false}
  ]
}"#;

/// proptest's configuration for this suite. Saved failure seeds (`tests/*.proptest-regressions`)
/// are always replayed; under CI (`$CI` set) a new failure is reported but not written back, so
/// a CI run never rewrites a tracked file.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(cases);
    if std::env::var_os("CI").is_some() {
        config.failure_persistence = Some(Box::new(ReplayOnly(FileFailurePersistence::default())));
    }
    config
}

#[derive(Debug, Clone, PartialEq)]
struct ReplayOnly(FileFailurePersistence);

impl FailurePersistence for ReplayOnly {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        self.0.load_persisted_failures2(source_file)
    }

    fn save_persisted_failure2(
        &mut self,
        _source_file: Option<&'static str>,
        _seed: PersistedSeed,
        _shrunken_value: &dyn std::fmt::Debug,
    ) {
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<ReplayOnly>() == Some(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
