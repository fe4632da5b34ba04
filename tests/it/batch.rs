//! Batch evaluation through `--contexts-file`: streaming edge cases, transaction boundaries,
//! and agreement with single evaluations.

use crate::common::{Env, PIPELINE};
use serde_json::Value;

fn batch(env: &Env, input: impl Into<Vec<u8>>, flags: &[&str]) -> Vec<Value> {
    let mut args = vec!["eval"];
    if flags.is_empty() {
        args.push("--all");
    } else {
        args.extend(flags);
    }
    args.extend(["--contexts-file", "-"]);
    let output = env.cmd().args(&args).write_stdin(input).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn empty_input_evaluates_nothing() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert!(batch(&env, "", &[]).is_empty());
    assert!(batch(&env, "\n\r\n\n", &[]).is_empty());
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        0
    );
}

/// The longest key taken, 1,024 bytes ending in a two-byte character, is kept whole.
fn the_longest_key_is_kept_whole() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let key = "k".repeat(1_022) + "é";
    let lines = batch(&env, format!("{key}\r\n"), &["ingest"]);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["context"].as_str().unwrap(), key);
    let stored = env.text("SELECT context_key FROM assignments WHERE flag = 'ingest'");
    assert_eq!(stored, key);
}

fn batch_results_equal_single_evaluations_on_a_separate_store() {
    let batch_env = Env::new();
    let single_env = Env::new();
    for env in [&batch_env, &single_env] {
        env.import_json(
            r#"{"flags": [{"name": "a", "rollout_pct": 50}, {"name": "b", "rollout_pct": 25.5, "requires": ["a"], "sticky": "all"},
                          {"name": "c", "enabled": false}, {"name": "d", "rollout_pct": 80, "sticky": "none", "requires": ["b"]}]}"#,
        );
    }
    let keys: Vec<String> = (0..40).map(|i| format!("tenant-{i}")).collect();
    let lines = batch(&batch_env, keys.join("\n"), &[]);
    assert_eq!(lines.len(), keys.len());
    for (line, key) in lines.iter().zip(&keys) {
        assert_eq!(line["context"], key.as_str());
        let single: Value =
            serde_json::from_str(&single_env.ok(&["eval", "--all", "--context", key])).unwrap();
        assert_eq!(line["flags"], single, "{key}");
    }
}

fn keys_spanning_several_transactions_stay_in_order_and_are_all_audited() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys: Vec<String> = (0..4_500).map(|i| format!("k{i:05}")).collect();
    let lines = batch(&env, keys.join("\n") + "\n", &["enrich", "legacy"]);
    let contexts: Vec<&str> = lines
        .iter()
        .map(|l| l["context"].as_str().unwrap())
        .collect();
    assert_eq!(contexts, keys);
    // One decision record per key, showing both decisions in the reviewers' view.
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        4_500
    );
    assert_eq!(env.count("SELECT count(*) FROM audit_evaluations"), 9_000);
    // Every ON decision of enrich (on_only) is stored, and its dependencies with it.
    let on = lines
        .iter()
        .filter(|l| l["flags"]["enrich"] == true)
        .count() as i64;
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE flag = 'enrich'"),
        on
    );
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE flag = 'ingest'"),
        4_500
    );
}

fn a_key_repeated_within_one_transaction_is_served_its_stored_decision() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f", "rollout_pct": 50, "sticky": "all"}]}"#);
    let lines = batch(&env, "same\nother\nsame\n", &[]);
    assert_eq!(lines[0]["flags"], lines[2]["flags"]);
    let sources = env
        .texts("SELECT source FROM audit_evaluations WHERE context_key = 'same' ORDER BY audit_id");
    assert_eq!(sources, ["rollout", "sticky"]);
}

/// Far enough apart that a batch transaction reads and evaluates them in different steps
/// (SQLite's `keys_per_step`): the later one is still served what the earlier one stored.
fn a_key_repeated_far_apart_within_one_transaction_is_served_its_stored_decision() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f", "rollout_pct": 50, "sticky": "all"}]}"#);
    let others: String = (0..300).map(|i| format!("other-{i}\n")).collect();
    let lines = batch(&env, format!("same\n{others}same\n"), &[]);
    assert_eq!(lines.len(), 302);
    assert_eq!(lines[0]["flags"], lines[301]["flags"]);
    let sources = env
        .texts("SELECT source FROM audit_evaluations WHERE context_key = 'same' ORDER BY audit_id");
    assert_eq!(sources, ["rollout", "sticky"]);
    assert_eq!(env.count("SELECT count(*) FROM assignments"), 301);
    env.ok(&["audit", "verify"]);
}

/// One batch storing assignments for keys with stored assignments of other flags (or reset
/// ones) and for keys never seen: each key's assignments, old and new, list together.
fn keys_seen_before_and_new_keys_store_assignments_in_one_batch() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}, {"name": "g"}]}"#);
    batch(&env, "old-1\nold-2\n", &["f", "g"]);
    env.ok(&["assignments", "reset", "--flag", "g", "--context", "old-2"]);
    env.ok(&["flag", "create", "h"]);
    let lines = batch(&env, "new-1\nold-1\nold-2\nnew-2\n", &[]);
    assert_eq!(lines.len(), 4);
    let listed: Vec<String> = env
        .ok(&["assignments", "list", "--format", "jsonl"])
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            format!(
                "{} {}",
                row["flag"].as_str().unwrap(),
                row["context"].as_str().unwrap()
            )
        })
        .collect();
    let expected: Vec<String> = ["f", "g", "h"]
        .iter()
        .flat_map(|flag| {
            ["new-1", "new-2", "old-1", "old-2"]
                .iter()
                .map(move |key| format!("{flag} {key}"))
        })
        .collect();
    assert_eq!(listed, expected);
    for key in ["old-1", "old-2", "new-1"] {
        let of_key = env.ok(&["assignments", "list", "--context", key, "--format", "jsonl"]);
        assert_eq!(of_key.lines().count(), 3, "{key}: {of_key}");
    }
    env.ok(&["check"]);
}

fn no_progress_is_accepted_and_output_is_unchanged() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let output = env
        .cmd()
        .args(["eval", "ingest", "--contexts-file", "-", "--no-progress"])
        .write_stdin("a\n")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "{\"context\":\"a\",\"flags\":{\"ingest\":true}}\n"
    );
    assert!(output.stderr.is_empty());
}

fn a_missing_contexts_file_is_named() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.fails(&["eval", "--all", "--contexts-file", "nope.txt"]),
        "flagstore: cannot read nope.txt: No such file or directory (os error 2)"
    );
}

/// What a benchmark reports as the cost of each kind of row: the space of every table and
/// index by name, which grows where a batch writes (its records, its assignments) and nowhere
/// a batch does not (the flags).
fn the_space_of_each_table_and_index_grows_where_a_batch_writes() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let store = env.open_store();
    let before: std::collections::BTreeMap<String, i64> =
        store.space_by_object().unwrap().into_iter().collect();
    // The log's rows are in `audit_rows` (SQLite's schema 14, PostgreSQL's 16), shown by the
    // view `audit_log`.
    let (log, assignments) = match env.backend {
        crate::common::Backend::Sqlite => ("audit_rows", "assignment_rows"),
        crate::common::Backend::Postgres => ("audit_rows", "assignments"),
    };
    for object in [log, "flags"] {
        assert!(before.contains_key(object), "{object} in {before:?}");
    }
    let keys: String = (0..3_000).map(|i| format!("tenant-{i}\n")).collect();
    batch(&env, keys, &[]);
    let after: std::collections::BTreeMap<String, i64> =
        store.space_by_object().unwrap().into_iter().collect();
    for object in [log, assignments] {
        assert!(
            after[object] > before[object],
            "{object}: {before:?} -> {after:?}"
        );
    }
    assert_eq!(after["flags"], before["flags"]);
}

contract_tests! {
    the_space_of_each_table_and_index_grows_where_a_batch_writes,
    empty_input_evaluates_nothing,
    the_longest_key_is_kept_whole,
    batch_results_equal_single_evaluations_on_a_separate_store,
    keys_spanning_several_transactions_stay_in_order_and_are_all_audited,
    a_key_repeated_within_one_transaction_is_served_its_stored_decision,
    keys_seen_before_and_new_keys_store_assignments_in_one_batch,
    a_key_repeated_far_apart_within_one_transaction_is_served_its_stored_decision,
    no_progress_is_accepted_and_output_is_unchanged,
    a_missing_contexts_file_is_named,
}
