//! Helpers for driving the real `flagstore` binary against a throw-away database.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};

use assert_cmd::Command;
use proptest::test_runner::{
    Config as ProptestConfig, FailurePersistence, FileFailurePersistence, PersistedSeed,
};
use rusqlite::Connection;
use rusqlite::types::Value;
use tempfile::TempDir;

pub struct Env {
    pub dir: TempDir,
    pub db: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("flags.db");
        Env { dir, db }
    }

    /// `flagstore --db <this env's db>` acting as "tester" (through $FLAGSTORE_ACTOR, so that
    /// `audit` queries are not filtered by actor), isolated from the caller's environment.
    pub fn std_cmd(&self) -> StdCommand {
        let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("flagstore"));
        cmd.env_remove("FLAGSTORE_DB")
            .env("FLAGSTORE_ACTOR", "tester")
            .current_dir(self.dir.path())
            .arg("--db")
            .arg(&self.db);
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
        let output = self.cmd().args(args).output().expect("runs");
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
        snapshot(&self.db)
    }

    pub fn sql(&self) -> Connection {
        Connection::open(&self.db).expect("open db")
    }

    /// The single integer `sql` selects, read with plain SQL.
    pub fn count(&self, sql: &str) -> i64 {
        self.sql()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
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

pub fn snapshot(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).expect("open db");
    let mut rows = Vec::new();
    for table in [
        "flags",
        "flag_dependencies",
        "assignments",
        "audit_log",
        "refinery_schema_history",
    ] {
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
