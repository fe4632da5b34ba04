//! A store written by schema 1 (one audit row per flag evaluation), opened by this flagstore:
//! migrated to decision records with every row and the head hash kept.

use crate::common::{Backend, Env};
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
        env.latest_schema()
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

/// Schema 10 files each audit row under its context's number instead of indexing the key: a
/// store written by schema 9 (keys without assignments unnumbered, a per-context reset, a key
/// evaluated again later) reads exactly as before, by context and in the reviewers' view, and
/// its chain and check still pass.
#[test]
fn a_schema_9_store_files_every_row_under_its_contexts_number() {
    let env = Env::new();
    env.import_json(
        r#"{"flags": [{"name": "ingest"}, {"name": "off", "enabled": false},
                      {"name": "enrich", "rollout_pct": 50, "requires": ["ingest"],
                       "sticky": "all"}]}"#,
    );
    env.ok(&["eval", "--all", "--context", "tenant:acme"]);
    env.ok(&["eval", "off", "--context", "never-assigned"]);
    env.ok(&["eval", "off", "--context", ""]);
    env.ok(&[
        "assignments",
        "reset",
        "--flag",
        "enrich",
        "--context",
        "tenant:acme",
    ]);
    env.ok(&["eval", "enrich", "--context", "tenant:acme"]);
    let view = "SELECT audit_id || ' ' || flag || ' ' || quote(context_key) || ' ' || result \
                || ' ' || reason FROM audit_evaluations ORDER BY audit_id, flag";
    // Read before going back: schema 3's view does not read the records as schema 13 writes
    // them, and schema 9 showed its own records as this view shows these.
    let before = env.texts(view);
    env.as_sqlite_schema_9();
    assert_eq!(
        env.count("SELECT count(*) FROM contexts WHERE key IN ('never-assigned', '')"),
        0,
        "schema 9 numbered only keys with assignments"
    );
    let by_context = |key: &str| env.ok(&["audit", "--context", key, "--format", "jsonl"]);
    let acme = by_context("tenant:acme");
    assert_eq!(acme.lines().count(), 5, "{acme}");

    let verified = env.ok(&["audit", "verify"]);
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        env.latest_schema()
    );
    assert_eq!(env.texts(view), before);
    assert_eq!(by_context("tenant:acme"), acme);
    assert_eq!(by_context("never-assigned").lines().count(), 1);
    assert_eq!(by_context("").lines().count(), 1);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log l LEFT JOIN contexts c ON c.id = l.context_id \
              WHERE c.key IS NOT l.context_key"
        ),
        0
    );
    env.ok(&["check"]);
    assert_eq!(python_verify(&env), verified);
}

/// The reviewers' query by context finds the key in contexts' index and its rows in
/// audit_log's index by context number: it reads no more than that context's rows, however
/// long the log.
#[test]
fn the_reviewers_query_by_context_reads_through_the_indexes() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "enrich"}]}"#);
    env.ok(&["eval", "enrich", "--context", "tenant:acme"]);
    let sql = env.sql();
    let mut explain = sql
        .prepare(
            "EXPLAIN QUERY PLAN SELECT ts, result, source, reason FROM audit_evaluations \
              WHERE flag = 'enrich' AND context_key = 'tenant:acme' ORDER BY audit_id",
        )
        .unwrap();
    let plan: Vec<String> = explain
        .query_map([], |row| row.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().all(|step| !step.starts_with("SCAN l")
            && !step.starts_with("SCAN c")
            && !step.starts_with("SCAN audit_log")),
        "{plan:#?}"
    );
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX audit_log_context")),
        "{plan:#?}"
    );
}

/// In schema 1 a row lists every assignment its request stored, a requirement's too (dedupe's
/// row lists ingest), while the requirement's rollout is in its own row of the request:
/// `explain --at` pairs them as `check` does. Replayed just after the fixture's last row, every
/// flag and context gets the assignment the table holds, and none where it holds none.
#[test]
fn explain_at_replays_the_assignments_schema_1_rows_stored() {
    let env = v1_store();
    let after_the_last_row = "2026-11-25T18:55:01.788Z";
    assert_eq!(
        env.texts("SELECT max(ts) FROM audit_log"),
        ["2026-11-25T18:55:01.787Z"]
    );
    // (decision, bucket, rollout, assigned_at); the rollout as a number, 100 and 100.0 alike.
    let fields = |assignment: &Value| {
        assignment.as_object().map(|_| {
            (
                assignment["decision"].as_bool().unwrap(),
                assignment["bucket"].as_i64().unwrap(),
                assignment["rollout_pct"].as_f64().unwrap(),
                assignment["assigned_at"].as_str().unwrap().to_string(),
            )
        })
    };
    let in_table = |flag: &str, context: &str| {
        let rows = env.texts(&format!(
            "SELECT json_object('decision', json(iif(decision, 'true', 'false')), \
                    'bucket', bucket, 'rollout_pct', rollout_pct, 'assigned_at', assigned_at) \
               FROM assignments WHERE flag = '{flag}' AND context_key = '{context}'"
        ));
        rows.first()
            .and_then(|row| fields(&serde_json::from_str(row).unwrap()))
    };
    let mut replayed = 0;
    for flag in env.texts("SELECT name FROM flags ORDER BY name") {
        for context in env.texts(
            "SELECT DISTINCT context_key FROM audit_log WHERE context_key IS NOT NULL \
              ORDER BY context_key",
        ) {
            let explained: Value = serde_json::from_str(&env.ok(&[
                "explain",
                &flag,
                "--context",
                &context,
                "--at",
                after_the_last_row,
                "--json",
            ]))
            .unwrap();
            let assignment = fields(&explained["assignment"]);
            replayed += usize::from(assignment.is_some());
            assert_eq!(
                assignment,
                in_table(&flag, &context),
                "{flag} for {context}"
            );
        }
    }
    assert_eq!(
        replayed, 15,
        "the fixture's assignments, one per row of the table"
    );
}

/// Schema 12 keeps one range per write transaction, naming its set of flags, instead of a row
/// per transaction and flag. A schema-11 store (writes asked for different flags, a write of
/// several records, and a run `check --repair-index` added for one flag across three writes)
/// reads the same afterwards: every flag's records, the reviewers' `audit_flag_ranges`, a
/// sound index for `check`, and the chain.
fn a_schema_11_stores_ranges_become_one_per_write_and_read_the_same() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    env.ok(&["eval", "--all", "--context", "tenant:a"]);
    env.ok(&["eval", "enrich", "dedupe", "--context", "tenant:b"]);
    let keys = env.dir.path().join("keys.txt");
    std::fs::write(&keys, "k1\nk2\nk3\n").unwrap();
    env.ok(&[
        "eval",
        "enrich",
        "ingest",
        "--contexts-file",
        keys.to_str().unwrap(),
    ]);
    let (first, last) = (
        env.count("SELECT min(id) FROM audit_log WHERE kind = 'evaluation'"),
        env.count("SELECT max(id) FROM audit_log WHERE kind = 'evaluation'"),
    );
    assert_eq!(last - first, 4, "five records in three writes");
    // A name JSON escapes: the set's text the migration writes must be the one a writer
    // looks up afterwards.
    let odd = "q\"uote\\ü";
    env.import_json(r#"{"flags": [{"name": "q\"uote\\ü"}]}"#);
    env.ok(&["eval", odd, "ingest", "--context", "tenant:e"]);
    let odd_record = env.count("SELECT max(id) FROM audit_log WHERE kind = 'evaluation'");
    let flags = ["ingest", "dedupe", "enrich", "legacy", odd];
    let by_flag = |env: &Env| -> Vec<String> {
        flags
            .iter()
            .map(|flag| env.ok(&["audit", "--flag", flag, "--asc", "--format", "jsonl"]))
            .collect()
    };
    let before = by_flag(&env);

    env.as_schema_11(&format!(
        "DELETE FROM audit_flag_ranges WHERE flag = 'enrich'; \
         INSERT INTO audit_flag_ranges (flag, first_id, last_id) \
         VALUES ('enrich', {first}, {last})"
    ));
    let listed = "SELECT flag || ' ' || first_id || '-' || last_id FROM audit_flag_ranges \
                  ORDER BY flag, first_id";
    let legacy = env.texts(listed);
    // Three flags of tenant:a's write, dedupe of tenant:b's, ingest of the keys', enrich's run,
    // two of tenant:e's.
    assert_eq!(legacy.len(), 3 + 1 + 1 + 1 + 2, "{legacy:?}");

    assert_eq!(by_flag(&env), before);
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        env.latest_schema()
    );
    assert_eq!(env.texts(listed), legacy);
    // One range per write, enrich's run one of its own.
    assert_eq!(
        env.texts(
            "SELECT s.flags || ' ' || r.first_id || '-' || r.last_id FROM audit_ranges r \
               JOIN audit_flag_sets s ON s.id = r.flag_set ORDER BY r.first_id, r.last_id"
        ),
        [
            format!("[\"dedupe\",\"ingest\",\"legacy\"] {first}-{first}"),
            format!("[\"enrich\"] {first}-{last}"),
            format!("[\"dedupe\"] {}-{}", first + 1, first + 1),
            format!("[\"ingest\"] {}-{last}", first + 2),
            format!("[\"ingest\",\"q\\\"uote\\\\ü\"] {odd_record}-{odd_record}"),
        ]
    );
    env.ok(&["check"]);

    // New writes add one range each, to the sets already there (tenant:c's new, tenant:d's
    // and tenant:f's found).
    env.ok(&["eval", "enrich", "dedupe", "--context", "tenant:c"]);
    env.ok(&["eval", "dedupe", "enrich", "--context", "tenant:d"]);
    env.ok(&["eval", "ingest", odd, "--context", "tenant:f"]);
    assert_eq!(env.count("SELECT count(*) FROM audit_flag_sets"), 6);
    assert_eq!(env.count("SELECT count(*) FROM audit_ranges"), 8);
    let tenant_d = env.ok(&["audit", "--flag", "enrich", "--context", "tenant:d"]);
    assert_eq!(tenant_d.lines().count(), 2, "{tenant_d}");
    env.ok(&["check"]);
}

/// A migration the database refuses is named in one line with the database's own words (not
/// the migration's whole SQL, nor PostgreSQL's client's bare "db error"), at once (it is not a
/// lock to wait out), and leaves the schema as it was.
fn a_migration_the_database_refuses_says_why_at_once() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    env.as_schema_11("");
    // Someone's table where schema 12 makes one.
    env.execute("CREATE TABLE audit_ranges (note TEXT)")
        .unwrap();
    let started = std::time::Instant::now();
    let refused = env.fails(&["flag", "list"]);
    let waited = started.elapsed();
    let words = match env.backend {
        crate::common::Backend::Sqlite => "table audit_ranges already exists",
        crate::common::Backend::Postgres => "relation \"audit_ranges\" already exists",
    };
    assert_eq!(
        refused,
        format!(
            "flagstore: migrating {} failed: error applying migrations: {words}",
            env.shown()
        )
    );
    assert!(
        waited < std::time::Duration::from_secs(20),
        "refused after {waited:?}: the busy budget is 60 s"
    );
    // Schema 12's migration is where it stopped.
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        11
    );
}

contract_tests! {
    a_schema_11_stores_ranges_become_one_per_write_and_read_the_same,
    a_store_edited_before_compact_rows_keeps_its_edits,
    a_store_before_compact_rows_reads_the_same_from_fewer_bytes,
    a_migration_the_database_refuses_says_why_at_once,
}

const V12_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v12-store");

/// The reviewers' view of every decision, one line each, in the order of the fixture's
/// `.view.txt` (written by schema 12's flagstore and its view, from its own records).
const VIEW_LINES: &str = "SELECT audit_id || ' ' || flag || ' ' || context_key || ' ' || result \
                          || ' ' || source || ' ' || reason FROM audit_evaluations \
                          ORDER BY audit_id, flag";

/// Schema 13 writes each decision of a record as an array of its facts. A schema-12 store
/// (records of every source: rollouts that stored assignments, sticky decisions on and off,
/// requirements off by rollout, by a sticky decision and by a disabled flag, an unknown flag)
/// keeps its records as hashed, and its view, `audit`, `verify`, `check` and the README's
/// script read them as schema 12 did; a record written afterwards reads alike, on SQLite and
/// copied to PostgreSQL.
#[test]
fn a_schema_12_stores_records_read_as_before_beside_the_compact_ones() {
    let env = Env::new();
    std::fs::copy(format!("{V12_FIXTURE}.db"), &env.db).unwrap();
    let v12 = |suffix: &str| std::fs::read_to_string(format!("{V12_FIXTURE}{suffix}")).unwrap();
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        12
    );
    let old_details =
        env.texts("SELECT detail FROM audit_log WHERE kind = 'evaluation' ORDER BY id");
    assert!(
        old_details.iter().all(|d| d.contains("{\"flag\":")),
        "{old_details:?}"
    );

    let verified = env.ok(&["audit", "verify"]);
    assert_eq!(verified, v12(".verify.txt"));
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        env.latest_schema()
    );
    assert_eq!(
        env.texts("SELECT detail FROM audit_log WHERE kind = 'evaluation' ORDER BY id"),
        old_details
    );
    assert_eq!(env.texts(VIEW_LINES).join("\n") + "\n", v12(".view.txt"));
    assert_eq!(
        env.ok(&["audit", "--asc", "--limit", "0", "--format", "jsonl"]),
        v12(".audit.jsonl")
    );
    env.ok(&["check"]);
    assert_eq!(python_verify(&env), verified);

    // tenant:2 again: the same decisions as its last record, now as arrays.
    env.ok(&["eval", "ship", "publish", "ghost", "--context", "tenant:2"]);
    let compact = env.text("SELECT detail FROM audit_log ORDER BY id DESC LIMIT 1");
    assert!(
        compact.starts_with(
            "{\"requested\":3,\"decisions\":[[\"ship\",0,\"dependency\",[\"export_v2\"]],"
        ),
        "{compact}"
    );
    let lines = env.texts(VIEW_LINES);
    let decisions_of = |id: i64| -> Vec<&str> {
        let prefix = format!("{id} ");
        lines
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix))
            .collect()
    };
    let newest = env.count("SELECT max(id) FROM audit_log");
    let (old, new) = (decisions_of(newest - 1), decisions_of(newest));
    assert_eq!(new, old, "the compact record reads as the named one did");
    assert!(
        new[2].starts_with("ship tenant:2 0 dependency requires export_v2: sticky: off since "),
        "{new:?}"
    );
    env.ok(&["check"]);
    let verified = env.ok(&["audit", "verify"]);
    assert_eq!(python_verify(&env), verified);

    if crate::common::use_postgres() {
        let postgres = Env::new();
        env.ok(&["copy", "--to", postgres.location.to_str().unwrap()]);
        assert_eq!(postgres.texts(VIEW_LINES), env.texts(VIEW_LINES));
        assert_eq!(
            postgres.ok(&["audit", "--asc", "--limit", "0", "--format", "jsonl"]),
            env.ok(&["audit", "--asc", "--limit", "0", "--format", "jsonl"])
        );
        postgres.ok(&["check"]);
    }
}

/// Every row of `audit_log`, each column with its SQLite type, as a reviewer's SQL reads it.
fn audit_log_as_read(env: &Env) -> Vec<String> {
    let columns = flagstore::audit::COLUMNS
        .iter()
        .chain(&["context_id"])
        .map(|column| format!("typeof({column}) || ':' || quote({column})"))
        .collect::<Vec<_>>()
        .join(" || ' ' || ");
    env.texts(&format!("SELECT {columns} FROM audit_log ORDER BY id"))
}

/// The bytes of the pages holding `object` (a table or an index).
fn pages_of(env: &Env, object: &str) -> i64 {
    env.count(&format!(
        "SELECT sum(pgsize) FROM dbstat WHERE name = '{object}'"
    ))
}

/// Schema 14 stores SQLite's audit rows in `audit_rows` (times in milliseconds, actors by
/// number, hashes as bytes, no `prev_hash`) behind the view `audit_log`, and schema 15 an
/// assignment's time in milliseconds behind the view `assignments`. A schema-13 store with
/// every kind of row (the schema-12 fixture's, and changes, a reset and a token made since)
/// shows every value of every row and assignment as it did, type and all, verifies with the
/// same head by flagstore and by the README's script, and both take a fifth fewer pages or
/// better.
#[test]
fn a_schema_13_stores_rows_read_the_same_from_fewer_bytes() {
    let env = Env::new();
    std::fs::copy(format!("{V12_FIXTURE}.db"), &env.db).unwrap();
    env.ok(&["flag", "set", "ship", "--rollout", "12.5"]);
    env.ok(&[
        "assignments",
        "reset",
        "--flag",
        "publish",
        "--context",
        "tenant:2",
    ]);
    env.ok(&["token", "create", "worker"]);
    let keys: String = (0..400).map(|i| format!("{i:08x}-tenant\n")).collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    env.as_sqlite_schema_13();
    let before = audit_log_as_read(&env);
    let table_bytes = pages_of(&env, "audit_log");
    assert!(before.len() > 400, "{before:?}");
    let assignments_before = assignments(&env);
    let assignment_bytes = pages_of(&env, "assignment_rows");
    assert!(assignments_before.len() > 400, "{assignments_before:?}");

    let verified = env.ok(&["audit", "verify"]);
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        env.latest_schema()
    );
    assert_eq!(audit_log_as_read(&env), before);
    assert_eq!(assignments(&env), assignments_before);
    assert_eq!(python_verify(&env), verified);
    env.ok(&["check"]);
    // Schema 15: an assignment's time in milliseconds, 24 bytes of 49 down to 6.
    assert!(
        pages_of(&env, "assignment_rows") * 10 < assignment_bytes * 8,
        "{} bytes against {assignment_bytes}",
        pages_of(&env, "assignment_rows")
    );
    let compact_bytes = pages_of(&env, "audit_rows");
    assert!(
        compact_bytes * 5 < table_bytes * 4,
        "{compact_bytes} bytes against {table_bytes}"
    );
    // As flagstore now writes them: nothing the views derive is stored.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_rows WHERE typeof(ts_ms) <> 'integer' \
             OR prev_hash IS NOT NULL OR typeof(hash) <> 'blob' OR length(hash) <> 32"
        ),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM assignment_rows WHERE typeof(assigned_at) <> 'integer'"),
        0
    );
}

/// What a store edited by hand before its audit rows were compact (SQLite's schema 14,
/// PostgreSQL's 16) held stays visible after them: a link that is not the previous row's
/// hash, a time and a hash flagstore does not write, a key edited. The view shows each as it
/// was and `audit verify` names the first, as before; only those rows store what the view
/// would otherwise derive.
fn a_store_edited_before_compact_rows_keeps_its_edits() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    for key in ["tenant:a", "tenant:b", "tenant:c"] {
        env.ok(&["eval", "--all", "--context", key]);
    }
    let last = env.count("SELECT max(id) FROM audit_log");
    let forged = "ab".repeat(32);
    env.tamper(&format!(
        "UPDATE audit_log SET prev_hash = '{forged}' WHERE id = {last}; \
         UPDATE audit_log SET ts = '2026-11-23 20:45:37' WHERE id = 2; \
         UPDATE audit_log SET hash = upper(hash) WHERE id = 3; \
         UPDATE audit_log SET context_key = 'tenant:z' WHERE id = {};",
        last - 1
    ));
    let before = audit_log_as_text(&env);
    let refused = env.fails(&["audit", "verify"]);
    assert!(refused.contains("row 2: "), "{refused}");
    env.as_schema_before_compact_rows();
    assert_eq!(audit_log_as_text(&env), before);
    assert_eq!(env.fails(&["audit", "verify"]), refused);
    assert_eq!(
        env.count("SELECT max(version) FROM refinery_schema_history"),
        env.latest_schema()
    );
    assert_eq!(audit_log_as_text(&env), before);
    let (kept_times, kept_links, kept_hashes) = match env.backend {
        Backend::Sqlite => (
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE typeof(ts_ms) <> 'integer'",
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE prev_hash IS NOT NULL ORDER BY id",
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE typeof(hash) <> 'blob'",
        ),
        Backend::Postgres => (
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE ts_ms IS NULL",
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE prev_hash IS NOT NULL ORDER BY id",
            "SELECT CAST(id AS TEXT) FROM audit_rows WHERE length(hash) <> 32",
        ),
    };
    assert_eq!(env.texts(kept_times), ["2"]);
    // Row 4 keeps the link to row 3's hash as it was before row 3's was edited.
    assert_eq!(env.texts(kept_links), ["4".to_string(), last.to_string()]);
    assert_eq!(env.texts(kept_hashes), ["3"]);
    // Put right in the order found, each of the others is then named in turn.
    let ts = env.text("SELECT ts FROM audit_log WHERE id = 1");
    env.tamper(&format!("UPDATE audit_log SET ts = '{ts}' WHERE id = 2"));
    let hash = env.text("SELECT lower(hash) FROM audit_log WHERE id = 3");
    assert!(env.fails(&["audit", "verify"]).contains("row 3: "));
    env.tamper(&format!(
        "UPDATE audit_log SET hash = '{hash}' WHERE id = 3"
    ));
    let misfiled = env.fails(&["audit", "verify"]);
    assert!(
        misfiled.contains(&format!("row {}: ", last - 1)),
        "{misfiled}"
    );
    env.tamper(&format!(
        "UPDATE audit_log SET context_key = 'tenant:b' WHERE id = {}",
        last - 1
    ));
    let unlinked = env.fails(&["audit", "verify"]);
    assert!(
        unlinked.contains(&format!("row {last}: ")) && unlinked.contains("broken link"),
        "{unlinked}"
    );
}

/// A store written before its audit rows were compact (SQLite's schema 14, PostgreSQL's 16)
/// reads the same afterwards, row for row, verifies with the same head, and keeps its rows
/// in a fifth fewer bytes or better, none of them storing what the view derives.
fn a_store_before_compact_rows_reads_the_same_from_fewer_bytes() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    env.ok(&["flag", "set", "enrich", "--rollout", "12.5"]);
    let keys: String = (0..400).map(|i| format!("{i:08x}-tenant\n")).collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    env.ok(&[
        "assignments",
        "reset",
        "--flag",
        "enrich",
        "--context",
        "00000001-tenant",
    ]);
    env.ok(&["token", "create", "worker"]);
    let verified = env.ok(&["audit", "verify"]);
    env.as_schema_before_compact_rows();
    let before = audit_log_as_text(&env);
    assert!(before.len() > 400, "{before:?}");
    let (size_of, derived) = match env.backend {
        Backend::Sqlite => (
            "SELECT sum(pgsize) FROM dbstat WHERE name = ",
            "SELECT count(*) FROM audit_rows WHERE typeof(ts_ms) <> 'integer' \
             OR prev_hash IS NOT NULL OR typeof(hash) <> 'blob' OR length(hash) <> 32",
        ),
        Backend::Postgres => (
            "SELECT pg_relation_size",
            "SELECT count(*) FROM audit_rows WHERE ts_text IS NOT NULL \
             OR prev_hash IS NOT NULL OR length(hash) <> 32",
        ),
    };
    let bytes_of = |table: &str| env.count(&format!("{size_of}('{table}')"));
    let table_bytes = bytes_of("audit_log");
    assert_eq!(env.ok(&["audit", "verify"]), verified);
    assert_eq!(audit_log_as_text(&env), before);
    env.ok(&["check"]);
    assert_eq!(env.count(derived), 0);
    let compact_bytes = bytes_of("audit_rows");
    assert!(
        compact_bytes * 5 < table_bytes * 4,
        "{compact_bytes} bytes against {table_bytes}"
    );
}

/// Every row of `audit_log` as text, NULL spelled out, as a reviewer's SQL reads it on either
/// backend.
fn audit_log_as_text(env: &Env) -> Vec<String> {
    let columns = flagstore::audit::COLUMNS
        .iter()
        .map(|column| format!("coalesce(CAST({column} AS TEXT), 'NULL')"))
        .collect::<Vec<_>>()
        .join(" || ' ' || ");
    env.texts(&format!("SELECT {columns} FROM audit_log ORDER BY id"))
}

/// `copy` writes every audit row verbatim, and a copy into SQLite stores no `prev_hash` for a
/// row linked to the one before it: a row of an edited store that is not (a forged link, the
/// row after a deleted one) keeps its link as text in the copy, which reads and fails to
/// verify exactly as the original does.
#[test]
fn a_copy_of_an_edited_store_keeps_the_edits() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    for key in ["tenant:a", "tenant:b", "tenant:c", "tenant:d"] {
        env.ok(&["eval", "--all", "--context", key]);
    }
    let last = env.count("SELECT max(id) FROM audit_log");
    let forged = "cd".repeat(32);
    env.tamper(&format!(
        "UPDATE audit_log SET prev_hash = '{forged}' WHERE id = {}; \
         DELETE FROM audit_log WHERE id = {};",
        last - 2,
        last - 1
    ));
    let refused = env.fails(&["audit", "verify"]);
    assert!(
        refused.contains(&format!("row {}: ", last - 2)),
        "{refused}"
    );
    let copy = Env::new();
    env.ok(&["copy", "--to", copy.db.to_str().unwrap()]);
    assert_eq!(audit_log_as_read(&copy), audit_log_as_read(&env));
    assert_eq!(
        copy.fails(&["audit", "verify"]),
        refused.replace(env.db.to_str().unwrap(), copy.db.to_str().unwrap(),)
    );
    assert_eq!(
        copy.texts("SELECT CAST(id AS TEXT) FROM audit_rows WHERE prev_hash IS NOT NULL"),
        [(last - 2).to_string(), last.to_string()]
    );
}

/// Schema 16 leads the index of audit rows by context with a partition of 4,096 ids. A
/// context whose records lie in four partitions is listed in id order, newest or oldest
/// first and page by page, exactly as its rows' own column orders them; so again after a
/// schema-15 store migrates, which brings the planner's statistics for the index with it.
#[test]
fn a_contexts_rows_in_several_partitions_are_listed_in_id_order() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    let returning = "tenant:returning";
    let keys: String = (0..13_000)
        .map(|line| match line % 4_333 {
            0 => format!("{returning}\n"),
            _ => format!("{line:08x}-tenant\n"),
        })
        .collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "ingest", "--contexts-file", keys.to_str().unwrap()]);
    env.ok(&["eval", "ingest", "--context", returning]);
    let newest_first = env.texts(&format!(
        "SELECT CAST(id AS TEXT) FROM audit_rows WHERE context_key = '{returning}' ORDER BY id DESC"
    ));
    let partitions = env.count(&format!(
        "SELECT count(DISTINCT id >> 12) FROM audit_rows WHERE context_key = '{returning}'"
    ));
    assert_eq!((newest_first.len(), partitions), (5, 4), "{newest_first:?}");
    let oldest_first: Vec<String> = newest_first.iter().rev().cloned().collect();
    let listed = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["audit", "--context", returning, "--format", "jsonl"];
        args.extend_from_slice(extra);
        env.ok(&args)
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].to_string())
            .collect()
    };
    let in_pages_of_two = |ascending: bool| -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        loop {
            let mut extra = vec!["--limit", "2"];
            let cursor = ids.last().cloned();
            if ascending {
                extra.push("--asc");
            }
            if let Some(cursor) = &cursor {
                extra.extend(["--cursor", cursor.as_str()]);
            }
            let page = listed(&extra);
            if page.is_empty() {
                return ids;
            }
            ids.extend(page);
        }
    };
    let answers = || {
        (
            listed(&[]),
            listed(&["--asc"]),
            in_pages_of_two(false),
            in_pages_of_two(true),
        )
    };
    let expected = (
        newest_first.clone(),
        oldest_first.clone(),
        newest_first.clone(),
        oldest_first.clone(),
    );
    assert_eq!(answers(), expected);

    env.execute(
        "DROP INDEX audit_log_context; \
         CREATE INDEX audit_log_context ON audit_rows (context_id, id); \
         DELETE FROM sqlite_stat1; \
         DELETE FROM refinery_schema_history WHERE version = 16",
    )
    .unwrap();
    assert_eq!(answers(), expected);
    assert_eq!(
        env.texts("SELECT sql FROM sqlite_schema WHERE name = 'audit_log_context'"),
        ["CREATE INDEX audit_log_context ON audit_rows (id >> 12, context_id, id)"]
    );
    assert_eq!(
        env.texts("SELECT stat FROM sqlite_stat1 WHERE idx = 'audit_log_context'"),
        ["10000000 4096 1 1"]
    );
    env.ok(&["check"]);
}
