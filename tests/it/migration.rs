//! A store written by schema 1 (one audit row per flag evaluation), opened by this flagstore:
//! migrated to decision records with every row and the head hash kept.

use crate::common::Env;
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-store");

fn fixture(suffix: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURE}{suffix}")).unwrap()
}

/// A copy of the schema-1 fixture as this test's database.
fn v1_store() -> Env {
    let env = Env::new();
    std::fs::copy(format!("{FIXTURE}.db"), &env.db).unwrap();
    env
}

/// Runs `python3 ARGS`, asserts that it succeeded and returns its stdout.
fn python(args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new("python3")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn python_verify(env: &Env) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_audit_chain.py");
    python(&[script.as_ref(), env.db.as_os_str()])
}

/// Every stored assignment, as reviewers select them.
fn assignments(env: &Env) -> Vec<String> {
    env.texts(
        "SELECT flag || ' ' || context_key || ' ' || decision || ' ' || bucket || ' ' || \
                rollout_pct || ' ' || assigned_at \
           FROM assignments ORDER BY flag, context_key",
    )
}

#[test]
fn a_schema_1_store_migrates_keeping_every_row_and_the_head() {
    let env = v1_store();
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        1
    );
    let stored = assignments(&env);
    assert!(
        stored.len() > 10,
        "the fixture stores assignments: {stored:?}"
    );
    let verified = env.ok(&["audit", "verify"]);
    assert_eq!(verified, fixture(".verify.txt"));
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        9
    );
    assert_eq!(assignments(&env), stored);
    assert_eq!(
        env.ok(&["audit", "--asc", "--limit", "0", "--format", "jsonl"]),
        fixture(".audit.jsonl")
    );
    env.ok(&["check"]);
    assert_eq!(python_verify(&env), verified);
}

#[test]
fn the_chain_continues_across_the_migration_and_old_and_new_rows_read_alike() {
    let env = v1_store();
    let old_rows = fixture(".audit.jsonl").lines().count() as i64;
    env.ok(&["eval", "enrich", "export_v2", "--context", "k1"]);
    env.ok(&["eval", "--all", "--context", "fresh"]);
    let verified = env.ok(&["audit", "verify"]);
    assert!(
        verified.starts_with(&format!("audit log verified: {} rows, head ", old_rows + 2)),
        "{verified}"
    );
    assert_eq!(python_verify(&env), verified);
    env.ok(&["check"]);

    // The reviewers' view holds the schema-1 rows as they were and the new decisions.
    let old_evaluations =
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation' AND flag IS NOT NULL");
    assert_eq!(
        env.count("SELECT count(*) FROM audit_evaluations"),
        old_evaluations + 2 + 6
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_evaluations v JOIN audit_log l ON l.id = v.audit_id
              WHERE l.flag IS NOT NULL AND (v.flag, v.result, v.source, v.reason)
                    IS NOT (l.flag, l.result, l.source, l.reason)"
        ),
        0
    );
    // A flag's decisions, old and new, newest first, as one list.
    let enrich: Vec<Value> = env
        .ok(&[
            "audit",
            "--flag",
            "enrich",
            "--kind",
            "evaluation",
            "--format",
            "jsonl",
            "--limit",
            "0",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let contexts: Vec<&str> = enrich
        .iter()
        .map(|row| row["context_key"].as_str().unwrap())
        .collect();
    assert_eq!(contexts[..2], ["fresh", "k1"]);
    let schema_1: Vec<&Value> = enrich
        .iter()
        .filter(|r| r["id"].as_i64().unwrap() <= old_rows)
        .collect();
    assert_eq!(
        schema_1.len() as i64,
        env.count("SELECT count(*) FROM audit_log WHERE flag = 'enrich' AND kind = 'evaluation'")
    );
    // dedupe was disabled in the fixture, so enrich is off for a new context, by dependency.
    assert_eq!(enrich[0]["reason"], "requires dedupe: disabled");
}

/// The reviewer queries the README prints, run by Python's own sqlite3 module (no flagstore
/// code) on a log holding schema-1 rows and decision records.
#[test]
fn the_readmes_reviewer_queries_run_with_stock_sqlite() {
    let env = v1_store();
    env.ok(&["eval", "enrich", "--context", "tenant:acme"]);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("Every query\nbelow runs with a stock `sqlite3`")
        .nth(1)
        .expect("the README's reviewer queries");
    let queries: Vec<String> = section
        .lines()
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .collect::<Vec<_>>()
        .split(|line| line.is_empty())
        .map(|block| {
            block
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|query| !query.is_empty())
        .collect();
    assert_eq!(queries.len(), 4, "{queries:#?}");
    let script = "import json, sqlite3, sys\n\
                  db = sqlite3.connect(sys.argv[1])\n\
                  print(json.dumps([db.execute(q).fetchall() for q in json.loads(sys.argv[2])]))";
    let queries = serde_json::to_string(&queries).unwrap();
    let output = python(&[
        "-c".as_ref(),
        script.as_ref(),
        env.db.as_os_str(),
        queries.as_ref(),
    ]);
    let results: Vec<Vec<Value>> = serde_json::from_str(&output).unwrap();
    assert!(!results[0].is_empty(), "changes of enrich: {results:?}");
    // tenant:acme got enrich in the schema-1 fixture and again now, in a decision record.
    let decisions = &results[1];
    assert!(decisions.len() >= 2, "{results:?}");
    assert_eq!(
        decisions.last().unwrap()[3],
        "requires dedupe: disabled",
        "{results:?}"
    );
}
