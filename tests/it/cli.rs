//! The CLI contract, driven through the real binary.

use crate::common::{Env, LATEST_SQLITE_SCHEMA, PIPELINE, succeeded};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// ---- import and export ----------------------------------------------------------------------

fn import_reports_changes_and_is_idempotent() {
    let env = Env::new();
    let report = env.import_json(PIPELINE);
    assert!(report.contains("dedupe: created enabled true, rollout_pct 100, requires [ingest]"));
    assert!(
        report.ends_with("4 created, 0 updated, 0 deleted, 0 unchanged\n"),
        "{report}"
    );
    assert_eq!(
        env.import_json(PIPELINE),
        "0 created, 0 updated, 0 deleted, 4 unchanged\n"
    );
    let changed = env.import_json(
        r#"{"flags": [{"name": "enrich", "rollout_pct": 75, "requires": ["dedupe"]}]}"#,
    );
    assert_eq!(
        changed,
        "enrich: updated rollout_pct 50 -> 75\n0 created, 1 updated, 0 deleted, 0 unchanged\n"
    );
}

fn import_writes_one_audited_change_per_flag_with_before_and_after() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.import_json(r#"{"flags": [{"name": "legacy", "enabled": true}]}"#);
    let newest = env.text(
        "SELECT actor || '|' || action || '|' || reason || '|' || detail FROM audit_log \
         WHERE kind = 'change' ORDER BY id DESC LIMIT 1",
    );
    let [actor, action, reason, detail]: [&str; 4] = newest
        .splitn(4, '|')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    assert_eq!(actor, "tester");
    assert_eq!(action, "update");
    assert_eq!(reason, "import: updated enabled false -> true");
    let detail = json(detail);
    assert_eq!(detail["before"]["enabled"], false);
    assert_eq!(detail["after"]["enabled"], true);
    assert_eq!(detail["after"]["sticky"], "on_only");
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'change'"),
        5
    );
}

fn dry_run_reports_but_writes_nothing() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    let file = env.write(
        "more.json",
        r#"{"flags": [{"name": "new"}, {"name": "ingest", "rollout_pct": 10}]}"#,
    );
    let report = env.ok(&["import", "--dry-run", file.to_str().unwrap()]);
    assert!(report.contains("new: created"), "{report}");
    assert!(
        report.contains("ingest: updated rollout_pct 100 -> 10"),
        "{report}"
    );
    assert!(report.ends_with("(dry run: nothing written)\n"), "{report}");
    assert_eq!(env.snapshot(), before);
}

fn replace_deletes_flags_missing_from_the_file_with_their_assignments() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["eval", "legacy", "ingest", "--context", "k"]);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE flag = 'ingest'"),
        1
    );
    let file = env.write("only.json", r#"{"flags": [{"name": "legacy"}]}"#);
    let report = env.ok(&["import", "--replace", file.to_str().unwrap()]);
    assert!(
        report.ends_with("0 created, 1 updated, 3 deleted, 0 unchanged\n"),
        "{report}"
    );
    assert_eq!(env.count("SELECT count(*) FROM flags"), 1);
    assert_eq!(env.count("SELECT count(*) FROM assignments"), 0);
    let deleted =
        env.text("SELECT detail FROM audit_log WHERE action = 'delete' AND flag = 'ingest'");
    assert_eq!(json(&deleted)["assignments_deleted"], 1);
}

fn import_reads_stdin() {
    let env = Env::new();
    env.cmd()
        .args(["import", "-"])
        .write_stdin(PIPELINE)
        .assert()
        .success();
    assert_eq!(env.count("SELECT count(*) FROM flags"), 4);
}

fn export_import_export_is_byte_identical() {
    let env = Env::new();
    env.import_json(
        r#"{"flags": [
        {"name": "z", "rollout_pct": 33.3, "requires": ["b", "a"], "sticky": "all"},
        {"name": "a", "enabled": false}, {"name": "b", "sticky": "none"},
        {"name": "ü-名前"}]}"#,
    );
    let exported = env.ok(&["export"]);
    let names: Vec<String> = json(&exported)["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["z", "a", "b", "ü-名前"], "the file's order");
    let z = &json(&exported)["flags"][0];
    assert_eq!(z["requires"], serde_json::json!(["b", "a"]), "as listed");
    assert_eq!(z["rollout_pct"], 33.3);
    for field in ["name", "enabled", "rollout_pct", "requires", "sticky"] {
        assert!(
            json(&exported)["flags"][0].get(field).is_some(),
            "{field} missing"
        );
    }

    let other = Env::new();
    let file = other.write("export.json", &exported);
    other.ok(&["import", file.to_str().unwrap()]);
    assert_eq!(other.ok(&["export"]), exported);
    let out = other.dir.path().join("again.json");
    other.ok(&["export", "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out).unwrap(), exported);
}

// ---- refused input: a clear message, exit 2, the store as it was ----------------------------

/// Imports `contents` into a store holding PIPELINE and checks it is refused with `expected`
/// (the message after "flagstore: ") and that nothing changed.
fn refused_import(contents: &str, expected: &str) {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    let file = env.write("bad.json", contents);
    let message = env.fails(&["import", file.to_str().unwrap()]);
    let path = file.to_str().unwrap();
    assert_eq!(
        message,
        format!("flagstore: {}", expected.replace("FILE", path))
    );
    assert_eq!(
        env.snapshot(),
        before,
        "store changed after a refused import"
    );
}

fn malformed_json_is_refused_with_line_and_column() {
    refused_import(
        "{\"flags\": [\n  {\"name\": \"a\"\n  {\"name\": \"b\"}\n]}",
        "FILE: line 3, column 3: expected `,` or `}`",
    );
    refused_import("", "FILE: line 1, column 0: EOF while parsing a value");
}

fn missing_and_empty_names_are_refused() {
    refused_import(
        r#"{"flags": [{"enabled": true}]}"#,
        "FILE: flags[0]: has no name",
    );
    refused_import(
        r#"{"flags": [{"name": "ok"}, {"name": ""}]}"#,
        "FILE: flags[1]: invalid flag name \"\": it is empty",
    );
    refused_import(
        r#"{"flags": [{"name": "tab\there"}]}"#,
        "FILE: flags[0]: invalid flag name \"tab\\there\": it contains the control character U+0009",
    );
}

fn duplicate_names_are_refused() {
    refused_import(
        r#"{"flags": [{"name": "x"}, {"name": "x", "enabled": false}]}"#,
        "FILE: flag \"x\" appears twice (flags[0] and flags[1])",
    );
}

fn bad_rollouts_are_refused() {
    refused_import(
        r#"{"flags": [{"name": "x", "rollout_pct": 100.5}]}"#,
        "FILE: flags[0] (\"x\"): rollout_pct must be a number from 0 to 100, got the number 100.5",
    );
    refused_import(
        r#"{"flags": [{"name": "x", "rollout_pct": -1}]}"#,
        "FILE: flags[0] (\"x\"): rollout_pct must be a number from 0 to 100, got the number -1",
    );
    refused_import(
        r#"{"flags": [{"name": "x", "rollout_pct": "50"}]}"#,
        "FILE: flags[0] (\"x\"): rollout_pct must be a number from 0 to 100, got the string \"50\"",
    );
}

fn unknown_requirements_suggest_the_nearest_name() {
    refused_import(
        r#"{"flags": [{"name": "export", "requires": ["dedup"]}]}"#,
        "FILE: flag \"export\" requires unknown flag \"dedup\" (did you mean \"dedupe\"?)",
    );
}

fn self_dependencies_and_cycles_are_refused() {
    refused_import(
        r#"{"flags": [{"name": "x", "requires": ["x"]}]}"#,
        "FILE: flag \"x\" requires itself",
    );
    // The cycle closes through a flag already in the store.
    refused_import(
        r#"{"flags": [{"name": "ingest", "requires": ["enrich"]}]}"#,
        "FILE: dependency cycle: ingest -> enrich -> dedupe -> ingest",
    );
}

fn unknown_fields_and_sticky_policies_are_refused() {
    refused_import(
        r#"{"flags": [{"name": "x", "sticky": "forever"}]}"#,
        "FILE: flags[0] (\"x\"): sticky must be one of \"on_only\", \"all\" or \"none\", got the string \"forever\"",
    );
    refused_import(
        r#"{"flags": [{"name": "x", "rollout": 5}]}"#,
        "FILE: flags[0] (\"x\"): \"rollout\" is not a field of a flag (expected name, enabled, rollout_pct, requires, sticky and stale_exempt)",
    );
}

fn an_import_with_one_bad_flag_applies_none_of_them() {
    refused_import(
        r#"{"flags": [{"name": "fine"}, {"name": "ingest", "rollout_pct": 5}, {"name": "bad", "requires": ["nothing-like-it"]}]}"#,
        "FILE: flag \"bad\" requires unknown flag \"nothing-like-it\"",
    );
}

fn unreadable_file_is_named() {
    let env = Env::new();
    let message = env.fails(&["import", "no-such.json"]);
    assert_eq!(
        message,
        "flagstore: cannot read no-such.json: No such file or directory (os error 2)"
    );
}

/// SQLite only: what a non-SQLite file does is particular to SQLite.
#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let env = Env::new();
    let garbage = "this is a text file, not a database\n".repeat(200);
    env.write("flags.db", &garbage);
    let message = env.fails(&["flag", "list"]);
    assert!(
        message.starts_with(&format!(
            "flagstore: {} is not a flagstore database: file is not a database",
            env.db.display()
        )),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&env.db).unwrap(), garbage);
}

/// Creates the tables of `schema` in a new file and checks that flagstore refuses it as
/// another application's database, leaving it byte for byte as it was.
fn refused_as_foreign(schema: &str) {
    let env = Env::new();
    env.sql().execute_batch(schema).unwrap();
    let before = std::fs::read(&env.db).unwrap();
    assert_eq!(
        env.fails(&["flag", "list"]),
        format!(
            "flagstore: {} is not a flagstore database: it is an SQLite database with tables of its own",
            env.db.display()
        )
    );
    assert_eq!(std::fs::read(&env.db).unwrap(), before);
}

/// SQLite only: another application's SQLite file (tests/postgres.rs has PostgreSQL's).
#[test]
fn another_applications_sqlite_database_is_refused_untouched() {
    refused_as_foreign(
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY); INSERT INTO invoices VALUES (7);",
    );
}

/// Another application migrated by refinery, with an empty history: not a half-created
/// store of ours, since it has tables of its own.
/// SQLite only: another refinery user's SQLite file (tests/postgres.rs has PostgreSQL's).
#[test]
fn another_refinery_users_database_is_refused_untouched() {
    refused_as_foreign(
        "CREATE TABLE refinery_schema_history (version INT4 PRIMARY KEY, name VARCHAR(255),
             applied_on VARCHAR(255), checksum VARCHAR(255));
         CREATE TABLE invoices (id INTEGER PRIMARY KEY);",
    );
}

/// SQLite only: edits refinery's history in the file (tests/postgres.rs has PostgreSQL's).
#[test]
fn a_database_from_a_newer_flagstore_is_refused() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.sql()
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
            [],
        )
        .unwrap();
    let before = env.snapshot();
    let message = env.fails(&["eval", "ingest", "--context", "k"]);
    assert_eq!(
        message,
        format!(
            "flagstore: {} was migrated by a newer flagstore (schema version 99; this flagstore knows up to {LATEST_SQLITE_SCHEMA})",
            env.db.display()
        )
    );
    assert_eq!(env.snapshot(), before);
}

fn unwritable_paths_are_named() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let missing_dir = env.dir.path().join("no-such-dir");
    let message = env.fails(&[
        "export",
        "-o",
        missing_dir.join("out.json").to_str().unwrap(),
    ]);
    assert!(
        message.starts_with(&format!(
            "flagstore: cannot write {}",
            missing_dir.join("out.json").display()
        )),
        "{message}"
    );
    let message = env
        .cmd()
        .args([
            "--db",
            missing_dir.join("flags.db").to_str().unwrap(),
            "init",
        ])
        .output()
        .unwrap();
    assert_eq!(message.status.code(), Some(2));
    let stderr = String::from_utf8(message.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "flagstore: cannot open database {}",
            missing_dir.join("flags.db").display()
        )),
        "{stderr}"
    );
}

fn usage_errors_exit_2() {
    let env = Env::new();
    env.cmd().args(["eval", "x"]).assert().code(2);
    env.cmd().args(["frobnicate"]).assert().code(2);
    env.cmd()
        .args(["eval", "x", "--context", "k", "--contexts-file", "f"])
        .assert()
        .code(2);
}

// ---- flag commands ---------------------------------------------------------------------------

fn flag_list_and_show() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.ok(&["flag", "list"]),
        "name    enabled  rollout_pct  sticky   requires\n\
         ingest  true     100          on_only\n\
         dedupe  true     100          on_only  ingest\n\
         enrich  true     50           on_only  dedupe\n\
         legacy  false    100          on_only\n"
    );
    let list = json(&env.ok(&["flag", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert_eq!(
        env.ok(&["flag", "show", "legacy"])
            .lines()
            .take(6)
            .collect::<Vec<_>>(),
        [
            "name:         legacy",
            "enabled:      false",
            "rollout_pct:  100",
            "requires:",
            "required_by:",
            "sticky:       on_only"
        ]
    );
    let shown = json(&env.ok(&["flag", "show", "dedupe", "--json"]));
    assert_eq!(shown["requires"], serde_json::json!(["ingest"]));
    assert_eq!(shown["required_by"], serde_json::json!(["enrich"]));
    assert!(shown["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        env.fails(&["flag", "show", "dedup"]),
        "flagstore: unknown flag \"dedup\" (did you mean \"dedupe\"?)"
    );
}

fn flag_create_creates_and_flag_set_updates() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.ok(&[
            "flag",
            "create",
            "new",
            "--rollout",
            "12.5",
            "--requires",
            "ingest, dedupe",
            "--sticky",
            "all"
        ]),
        "new: created enabled true, rollout_pct 12.5, requires [ingest, dedupe], sticky all\n"
    );
    assert_eq!(
        env.ok(&["flag", "set", "new", "--enabled", "false", "--requires", ""]),
        "new: updated enabled true -> false, requires [ingest, dedupe] -> []\n"
    );
    assert_eq!(
        env.ok(&["flag", "set", "new", "--enabled", "false"]),
        "new: unchanged\n"
    );
}

fn flag_set_refuses_bad_values_and_leaves_the_store_alone() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    for (args, expected) in [
        (
            vec!["--rollout", "150"],
            "flag \"ingest\": rollout_pct 150 is outside 0-100",
        ),
        (
            vec!["--rollout", "-3"],
            "flag \"ingest\": rollout_pct -3 is outside 0-100",
        ),
        (
            vec!["--rollout", "NaN"],
            "invalid value 'NaN' for '--rollout <PCT>': must be a number from 0 to 100 (see --help)",
        ),
        (
            vec!["--sticky", "sometimes"],
            "unknown sticky policy \"sometimes\" (expected on_only, all or none)",
        ),
        (
            vec!["--requires", "enrich"],
            "dependency cycle: ingest -> enrich -> dedupe -> ingest",
        ),
        (
            vec!["--requires", "ingest"],
            "flag \"ingest\" requires itself",
        ),
        (
            vec!["--requires", "legasy"],
            "flag \"ingest\" requires unknown flag \"legasy\" (did you mean \"legacy\"?)",
        ),
    ] {
        let mut full = vec!["flag", "set", "ingest"];
        full.extend(args);
        assert_eq!(env.fails(&full), format!("flagstore: {expected}"));
    }
    assert_eq!(
        env.fails(&["flag", "create", "bad\u{1b}name"]),
        "flagstore: invalid flag name \"bad\\u{1b}name\": it contains the control character U+001B"
    );
    env.cmd()
        .args(["flag", "set", "ingest", "--rollout", "lots"])
        .assert()
        .code(2);
    assert_eq!(env.snapshot(), before);
}

fn enable_disable_and_delete() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.ok(&["flag", "enable", "legacy"]),
        "legacy: updated enabled false -> true\n"
    );
    assert_eq!(
        env.ok(&["flag", "disable", "legacy"]),
        "legacy: updated enabled true -> false\n"
    );
    assert_eq!(
        env.ok(&["flag", "disable", "legacy"]),
        "legacy: unchanged\n"
    );
    let before = env.snapshot();
    assert_eq!(
        env.fails(&["flag", "delete", "ingest"]),
        "flagstore: cannot delete flag \"ingest\": required by dedupe"
    );
    assert_eq!(
        env.fails(&["flag", "enable", "legac"]),
        "flagstore: unknown flag \"legac\" (did you mean \"legacy\"?)"
    );
    assert_eq!(env.snapshot(), before);
    assert!(
        env.ok(&["flag", "delete", "legacy"])
            .starts_with("legacy: deleted")
    );
    assert_eq!(
        env.count("SELECT count(*) FROM flags WHERE name = 'legacy'"),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE action = 'delete' AND flag = 'legacy' AND actor = 'tester'"
        ),
        1
    );
}

// ---- evaluation ------------------------------------------------------------------------------

fn eval_prints_true_or_false_and_json_on_request() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(env.ok(&["eval", "ingest", "--context", "k"]), "true\n");
    assert_eq!(env.ok(&["eval", "legacy", "--context", "k"]), "false\n");
    let detailed = json(&env.ok(&["eval", "legacy", "--context", "tenant:acme", "--json"]));
    assert_eq!(
        detailed,
        serde_json::json!({"flag": "legacy", "context": "tenant:acme", "enabled": false,
                           "reason": "disabled", "source": "disabled"})
    );
    let unknown = json(&env.ok(&["eval", "nope", "--context", "k", "--json"]));
    assert_eq!(unknown["reason"], "unknown flag");
    assert_eq!(unknown["source"], "unknown");
}

fn quiet_eval_speaks_through_the_exit_status() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.cmd()
        .args(["eval", "ingest", "--context", "k", "-q"])
        .assert()
        .code(0)
        .stdout("");
    env.cmd()
        .args(["eval", "legacy", "--context", "k", "-q"])
        .assert()
        .code(1)
        .stdout("");
    env.cmd()
        .args(["eval", "nope", "--context", "k", "-q"])
        .assert()
        .code(1)
        .stdout("");
}

fn eval_all_prints_every_flag() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "a"}, {"name": "b", "enabled": false}, {"name": "c", "rollout_pct": 0}]}"#);
    assert_eq!(
        env.ok(&["eval", "--all", "--context", "k"]),
        "{\"a\":true,\"b\":false,\"c\":false}\n"
    );
    assert_eq!(
        env.ok(&["eval", "a", "b", "--context", "k"]),
        "{\"a\":true,\"b\":false}\n"
    );
}

fn kill_switch_and_dependencies_beat_sticky_assignments() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(env.ok(&["eval", "dedupe", "--context", "k"]), "true\n");
    env.ok(&["flag", "disable", "ingest"]);
    let off = json(&env.ok(&["eval", "dedupe", "--context", "k", "--json"]));
    assert_eq!(off["enabled"], false);
    assert_eq!(off["source"], "dependency");
    assert_eq!(off["reason"], "requires ingest: disabled");
    env.ok(&["flag", "enable", "ingest"]);
    let back = json(&env.ok(&["eval", "dedupe", "--context", "k", "--json"]));
    assert_eq!(back["source"], "sticky");
    env.ok(&["flag", "disable", "dedupe"]);
    assert_eq!(
        json(&env.ok(&["eval", "dedupe", "--context", "k", "--json"]))["source"],
        "disabled"
    );
}

fn sticky_on_survives_a_lowered_rollout() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f", "rollout_pct": 100}]}"#);
    env.ok(&["eval", "f", "--context", "early"]);
    env.ok(&["flag", "set", "f", "--rollout", "0"]);
    let kept = json(&env.ok(&["eval", "f", "--context", "early", "--json"]));
    assert_eq!(kept["enabled"], true);
    assert!(
        kept["reason"]
            .as_str()
            .unwrap()
            .starts_with("sticky: on since 20"),
        "{kept}"
    );
    assert_eq!(env.ok(&["eval", "f", "--context", "late"]), "false\n");
}

fn each_request_writes_one_decision_record_and_reviewers_see_each_decision() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let changes = env.count("SELECT count(*) FROM audit_log");
    env.ok(&["eval", "enrich", "--context", "k"]);
    env.ok(&["eval", "--all", "--context", "k"]);
    assert_eq!(env.count("SELECT count(*) FROM audit_log") - changes, 2);
    assert_eq!(env.count("SELECT count(*) FROM audit_evaluations"), 1 + 4);
    let first = env.text(
        "SELECT flag || '|' || context_key || '|' || result || '|' || source \
         FROM audit_evaluations ORDER BY audit_id LIMIT 1",
    );
    // Python: int(hashlib.md5(b"enrich:k").hexdigest(), 16) % 100 == 87, not below 50.
    assert_eq!(first, "enrich|k|0|rollout");
}

fn contexts_file_streams_json_lines_in_input_order() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys = env.write("keys.txt", "\u{feff}zeta\r\nalpha\n\n  \nbeta");
    let output = env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    let lines: Vec<Value> = output.lines().map(json).collect();
    let contexts: Vec<&str> = lines
        .iter()
        .map(|l| l["context"].as_str().unwrap())
        .collect();
    assert_eq!(contexts, ["zeta", "alpha", "beta"]);
    for line in &lines {
        let key = line["context"].as_str().unwrap();
        let single = env.ok(&["eval", "enrich", "--context", key]);
        assert_eq!(format!("{}\n", line["flags"]["enrich"]), single, "{key}");
        assert_eq!(line["flags"].as_object().unwrap().len(), 4);
    }
    let from_stdin = env
        .cmd()
        .args(["eval", "ingest", "legacy", "--contexts-file", "-"])
        .write_stdin("a\nb\n")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(from_stdin.stdout).unwrap(),
        "{\"context\":\"a\",\"flags\":{\"ingest\":true,\"legacy\":false}}\n\
         {\"context\":\"b\",\"flags\":{\"ingest\":true,\"legacy\":false}}\n"
    );
}

fn contexts_file_with_invalid_utf8_names_the_line() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys = env.write("keys.txt", b"good\nbad\xC3\x28\n");
    let output = env
        .cmd()
        .args(["eval", "ingest", "--contexts-file", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "flagstore: {}: line 2: not valid UTF-8 (byte 4)\n",
            keys.display()
        )
    );
}

// ---- assignments -----------------------------------------------------------------------------

fn assignments_list_and_reset() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}, {"name": "g"}]}"#);
    for key in ["k1", "k2"] {
        env.ok(&["eval", "--all", "--context", key]);
    }
    let table = env.ok(&["assignments", "list", "--flag", "f"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("flag  context_key  decision  bucket  rollout_pct  assigned_at"),
        "{table}"
    );
    // Python: int(hashlib.md5(b"f:k1").hexdigest(), 16) % 100 == 29.
    assert!(
        lines[1].starts_with("f     k1           true      29      100"),
        "{table}"
    );
    let listed = json(&env.ok(&["assignments", "list", "--context", "k2", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["flag"], "f");
    assert_eq!(listed[0]["decision"], true);
    assert_eq!(listed[0]["rollout_pct"].to_string(), "100");
    let lines = env.ok(&[
        "assignments",
        "list",
        "--context",
        "k2",
        "--format",
        "jsonl",
    ]);
    let lines: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(lines, listed.as_array().unwrap().clone());

    assert_eq!(
        env.ok(&["assignments", "reset", "--flag", "f", "--context", "k1"]),
        "cleared 1 assignment of flag f\n"
    );
    assert_eq!(
        env.ok(&["assignments", "reset", "--flag", "g"]),
        "cleared 2 assignments of flag g\n"
    );
    assert_eq!(
        json(&env.ok(&["assignments", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let reason = env.text(
        "SELECT reason FROM audit_log WHERE action = 'reset_assignments' ORDER BY id LIMIT 1",
    );
    assert_eq!(reason, "assignments reset: cleared 1 for context \"k1\"");
    let before = env.snapshot();
    assert_eq!(
        env.fails(&["assignments", "reset", "--flag", "ff"]),
        "flagstore: unknown flag \"ff\" (did you mean \"f\"?)"
    );
    assert_eq!(env.snapshot(), before);
}

// ---- the prototype's job ---------------------------------------------------------------------

fn run_imports_evaluates_and_writes_the_result() {
    let env = Env::new();
    let job = r#"{"context_key": "batch-7", "flags": [{"name": "a"}, {"name": "b", "requires": ["a"], "enabled": false}]}"#;
    let written = crate::prototype::run(&env, job);
    assert_eq!(
        json(&written),
        serde_json::json!({
            "evaluations": {"a": true, "b": false},
            "stats": {"total": 2, "enabled": 1, "disabled": 1},
            "audit_entries": 2
        })
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_evaluations WHERE context_key = 'batch-7'"),
        2
    );
    // audit_entries is the prototype's count (its evaluate_all's entries: a ok, b disabled),
    // not the rows appended: 2 change rows and one decision record.
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), 3);
    // A second run changes no flag and writes the same count.
    assert_eq!(json(&crate::prototype::run(&env, job))["audit_entries"], 2);
}

fn run_uses_the_default_context_and_the_shipped_example_works() {
    let env = Env::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.json");
    let output = env.dir.path().join("out.json");
    let result = json(&env.ok(&[
        "run",
        "--input",
        example,
        "--output",
        output.to_str().unwrap(),
    ]));
    assert_eq!(result["stats"]["total"], 6);

    let input = env.write("job.json", r#"{"flags": [{"name": "x"}]}"#);
    env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_evaluations WHERE flag = 'x' AND context_key = 'default'"
        ),
        1
    );
}

// ---- concurrency -----------------------------------------------------------------------------

/// SQLite only: holds SQLite's write lock by hand (tests/postgres.rs races processes on PostgreSQL).
#[test]
fn concurrent_first_evaluations_agree_and_store_one_assignment() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f", "rollout_pct": 50, "sticky": "all"}]}"#);
    for round in 0..5 {
        let context = format!("race-{round}");
        // Hold the write lock while the evaluators start, so they all wait for it and then
        // contend at once, instead of running one after another.
        let holder = env.sql();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let children: Vec<_> = (0..6)
            .map(|_| env.spawn(&["eval", "f", "--context", &context]))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        holder.execute_batch("ROLLBACK").unwrap();
        let answers: Vec<String> = children.into_iter().map(succeeded).collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM assignments WHERE context_key = '{context}'"
            )),
            1
        );
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM audit_log WHERE context_key = '{context}'"
            )),
            6
        );
    }
}

// ---- behaviour pinned after mutants survived ---------------------------------------------

fn a_two_flag_cycle_is_refused() {
    let env = Env::new();
    let file = env.write(
        "cycle.json",
        r#"{"flags": [{"name": "a", "requires": ["b"]}, {"name": "b", "requires": ["a"]}]}"#,
    );
    assert_eq!(
        env.fails(&["import", file.to_str().unwrap()]),
        format!(
            "flagstore: {}: dependency cycle: a -> b -> a",
            file.display()
        )
    );
}

fn quiet_eval_of_several_flags_is_on_only_when_every_flag_is() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let code = |flags: &[&str]| {
        let mut args = vec!["eval"];
        args.extend(flags);
        args.extend(["--context", "k", "-q"]);
        env.cmd().args(&args).output().unwrap().status.code()
    };
    assert_eq!(code(&["ingest", "dedupe"]), Some(0));
    assert_eq!(code(&["ingest", "legacy"]), Some(1));
    assert_eq!(code(&["legacy", "ingest"]), Some(1));
}

fn json_for_several_flags_is_an_array_of_every_decision() {
    // Python: int(hashlib.md5(b"ingest:k").hexdigest(), 16) % 100 == 15.
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        json(&env.ok(&["eval", "ingest", "legacy", "--context", "k", "--json"])),
        serde_json::json!([
            {"flag": "ingest", "context": "k", "enabled": true,
             "reason": "rollout: bucket 15 < 100", "source": "rollout"},
            {"flag": "legacy", "context": "k", "enabled": false,
             "reason": "disabled", "source": "disabled"}
        ])
    );
}

fn sticky_decisions_hold_for_more_flags_than_one_lookup_statement_covers() {
    let env = Env::new();
    let flags: Vec<Value> = (0..70)
        .map(|i| serde_json::json!({"name": format!("f{i:02}")}))
        .collect();
    env.import_json(&serde_json::json!({ "flags": flags }).to_string());
    let first = json(&env.ok(&["eval", "--all", "--context", "k"]));
    assert_eq!(first.as_object().unwrap().len(), 70);
    assert!(first.as_object().unwrap().values().all(|v| v == true));
    let zero: Vec<Value> = (0..70)
        .map(|i| serde_json::json!({"name": format!("f{i:02}"), "rollout_pct": 0}))
        .collect();
    env.import_json(&serde_json::json!({ "flags": zero }).to_string());
    let again = json(&env.ok(&["eval", "--all", "--context", "k", "--json"]));
    let sources: Vec<&str> = again
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["sticky"; 70], "{again}");
}

fn the_database_comes_from_flagstore_db_or_defaults_to_the_working_directory() {
    let env = Env::new();
    let bare = || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("flagstore"));
        cmd.env_remove("FLAGSTORE_DB").current_dir(env.dir.path());
        cmd
    };
    let flags = env.write("flags.json", PIPELINE);
    let from_env = env.dir.path().join("from-env.db");
    let status = bare()
        .env("FLAGSTORE_DB", &from_env)
        .args(["import", flags.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(from_env.exists());
    let default = env.dir.path().join("flagstore.db");
    assert!(!default.exists());
    let status = bare()
        .args(["import", flags.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(default.exists());
}

fn audit_limit_zero_means_every_row() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys: String = (0..150).map(|i| format!("k{i}\n")).collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "ingest", "--contexts-file", keys.to_str().unwrap()]);
    let all = env.ok(&["audit", "--limit", "0", "--format", "jsonl"]);
    assert_eq!(all.lines().count(), 4 + 150);
    let page = env.ok(&["audit", "--format", "jsonl"]);
    assert_eq!(page.lines().count(), 100);
}

fn a_missing_checkpoint_file_is_named() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.fails(&["audit", "verify", "--checkpoint", "nope.json"]),
        "flagstore: cannot read nope.json: No such file or directory (os error 2)"
    );
}

fn a_reader_that_stops_early_is_not_an_error() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys: String = (0..3_000).map(|i| format!("k{i}\n")).collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    let mut child = env.spawn(&["audit", "--limit", "0", "--format", "jsonl"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

/// `explain --at T` answers with the assignments in force at T, rebuilt from the log: a
/// context that got true from a 30% rollout (bucket 10) keeps it after the rollout drops to
/// 10%, and the report names the record that stored it; after a reset there is none.
fn explain_at_answers_with_the_assignment_then_in_force() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "score", "rollout_pct": 30}]}"#);
    // Python: int(hashlib.md5(b"score:k9").hexdigest(), 16) % 100 == 10.
    assert_eq!(env.ok(&["eval", "score", "--context", "k9"]), "true\n");
    let record = env.count("SELECT max(id) FROM audit_log");
    env.ok(&["flag", "set", "score", "--rollout", "10"]);
    let json = |at: &str| -> serde_json::Value {
        serde_json::from_str(&env.ok(&[
            "explain",
            "score",
            "--context",
            "k9",
            "--at",
            at,
            "--json",
        ]))
        .unwrap()
    };
    // Today, as a date: the whole day so far (a time to come is refused).
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let explained = json(&today);
    assert_eq!(explained["answer"]["enabled"], true, "{explained}");
    assert_eq!(explained["answer"]["source"], "sticky");
    assert_eq!(explained["assignment"]["audit_id"], record);
    assert_eq!(explained["assignment"]["bucket"], 10);
    assert_eq!(explained["recorded"]["result"], true);
    let text = env.ok(&["explain", "score", "--context", "k9", "--at", &today]);
    assert!(
        text.contains(&format!("(stored by row {record})"))
            && text.contains("answer:           true"),
        "{text}"
    );
    env.ok(&["assignments", "reset", "--flag", "score"]);
    let reset = json(&today);
    assert_eq!(reset["assignment"], serde_json::Value::Null);
    assert_eq!(reset["answer"]["enabled"], false);
    assert_eq!(reset["answer"]["source"], "rollout");
}

contract_tests! {
    explain_at_answers_with_the_assignment_then_in_force,
    import_reports_changes_and_is_idempotent,
    import_writes_one_audited_change_per_flag_with_before_and_after,
    dry_run_reports_but_writes_nothing,
    replace_deletes_flags_missing_from_the_file_with_their_assignments,
    import_reads_stdin,
    export_import_export_is_byte_identical,
    malformed_json_is_refused_with_line_and_column,
    missing_and_empty_names_are_refused,
    duplicate_names_are_refused,
    bad_rollouts_are_refused,
    unknown_requirements_suggest_the_nearest_name,
    self_dependencies_and_cycles_are_refused,
    unknown_fields_and_sticky_policies_are_refused,
    an_import_with_one_bad_flag_applies_none_of_them,
    unreadable_file_is_named,
    unwritable_paths_are_named,
    usage_errors_exit_2,
    flag_list_and_show,
    flag_create_creates_and_flag_set_updates,
    flag_set_refuses_bad_values_and_leaves_the_store_alone,
    enable_disable_and_delete,
    eval_prints_true_or_false_and_json_on_request,
    quiet_eval_speaks_through_the_exit_status,
    eval_all_prints_every_flag,
    kill_switch_and_dependencies_beat_sticky_assignments,
    sticky_on_survives_a_lowered_rollout,
    each_request_writes_one_decision_record_and_reviewers_see_each_decision,
    contexts_file_streams_json_lines_in_input_order,
    contexts_file_with_invalid_utf8_names_the_line,
    assignments_list_and_reset,
    run_imports_evaluates_and_writes_the_result,
    run_uses_the_default_context_and_the_shipped_example_works,
    a_two_flag_cycle_is_refused,
    quiet_eval_of_several_flags_is_on_only_when_every_flag_is,
    json_for_several_flags_is_an_array_of_every_decision,
    sticky_decisions_hold_for_more_flags_than_one_lookup_statement_covers,
    the_database_comes_from_flagstore_db_or_defaults_to_the_working_directory,
    audit_limit_zero_means_every_row,
    a_missing_checkpoint_file_is_named,
    a_reader_that_stops_early_is_not_an_error,
}

/// Not a contract test: the bench never touches `--db`'s store.
#[cfg(feature = "bench")]
#[test]
fn bench_db_takes_only_a_postgres_url() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["bench", "eval", "--keys", "10", "--db", "flags.db"]),
        "flagstore: bench --db takes a postgres:// URL, not \"flags.db\"; an SQLite bench uses a temporary file (choose its directory with --dir)"
    );
}

/// A bench runs for minutes: each line is shown as it is written, not held to the end (the
/// first line comes before the preload, the second after it).
#[cfg(feature = "bench")]
#[test]
fn a_bench_shows_each_line_as_it_goes() {
    use std::io::BufRead;
    let env = Env::new();
    let mut child = env
        .std_cmd()
        .args(["bench", "eval", "--keys", "100", "--preload", "30000"])
        .args(["--dir", env.dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let first_at = std::time::Instant::now();
    let second = lines.next().unwrap().unwrap();
    let waited = first_at.elapsed();
    assert!(first.starts_with("100 random keys"), "{first}");
    assert!(second.starts_with("preloaded 30000 contexts"), "{second}");
    assert!(
        waited > std::time::Duration::from_millis(100),
        "the preload's line came {waited:?} after the first: both were held to the end"
    );
    assert!(child.wait().unwrap().success());
}

/// ARCHITECTURE.md names rooms of the tree: each path it names must exist.
#[test]
fn every_path_architecture_md_names_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named: Vec<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            ["src/", "tests/", "migrations/", "python/"]
                .iter()
                .any(|room| quoted.starts_with(room))
        })
        .collect();
    assert!(named.len() > 20, "{named:?}");
    for path in named {
        assert!(
            root.join(path).exists(),
            "ARCHITECTURE.md names {path}, which does not exist"
        );
    }
}

/// Every `.rs` file under `src/`: its path below `src/` and its text.
fn source_files() -> Vec<(std::path::PathBuf, String)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut pending = vec![src.clone()];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.strip_prefix(&src).unwrap().to_path_buf(), text));
            }
        }
    }
    files
}

/// The error boundary: database errors are worded inside `src/store`, so no other module
/// names a database crate.
#[test]
fn nothing_outside_the_store_names_a_database_crate() {
    let outside: Vec<_> = source_files()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("store"))
        .collect();
    for (path, text) in &outside {
        for name in ["rusqlite", "postgres::", "refinery"] {
            assert!(!text.contains(name), "src/{} names {name}", path.display());
        }
    }
    assert!(outside.len() > 30, "{} files", outside.len());
}

/// The library's modules (`src/store`, `src/serve`, `src/flag.rs`, ...) import each other
/// without a cycle, so each can be read, tested and changed from the ones below it. Unit
/// tests may reach anywhere, and the CLI is the binary's.
#[test]
fn the_librarys_modules_import_each_other_without_a_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in source_files() {
        let top = path
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        if ["main", "lib", "cli"].contains(&module.as_str()) {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != module {
                imports.entry(module.clone()).or_default().insert(name);
            }
        }
    }
    for (module, direct) in &imports {
        let mut reached = BTreeSet::new();
        let mut pending: Vec<&String> = direct.iter().collect();
        while let Some(next) = pending.pop() {
            assert_ne!(
                next, module,
                "{module} imports a module that imports it back"
            );
            if reached.insert(next) {
                pending.extend(imports.get(next).into_iter().flatten());
            }
        }
    }
    assert!(imports.len() > 10, "{imports:?}");
}
