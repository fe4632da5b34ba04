//! Hostile names and keys: refused by the documented name rules, or stored and returned
//! verbatim through bound parameters. Every table survives.

use crate::common::Env;
use serde_json::{Value, json};

const INJECTION: &str = "x'); DROP TABLE audit_log;--";

/// Every table is still there and holds exactly the rows the test's commands wrote.
fn tables_hold(env: &Env, expected: [i64; 4]) {
    let tables = ["flags", "flag_dependencies", "assignments", "audit_log"];
    let counts: Vec<i64> = tables
        .iter()
        .map(|table| env.count(&format!("SELECT count(*) FROM {table}")))
        .collect();
    assert_eq!(counts, expected, "rows in {tables:?}");
}

fn sql_in_flag_names_is_stored_verbatim() {
    let env = Env::new();
    let doc =
        json!({"flags": [{"name": INJECTION}, {"name": "100%_off", "requires": [INJECTION]}]});
    env.import_json(&doc.to_string());
    let exported: Value = serde_json::from_str(&env.ok(&["export"])).unwrap();
    let names: Vec<&str> = exported["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [INJECTION, "100%_off"]);
    assert_eq!(
        env.ok(&["eval", "100%_off", "--context", INJECTION]),
        "true\n"
    );
    env.ok(&["flag", "disable", INJECTION]);
    assert_eq!(env.ok(&["eval", "100%_off", "--context", "k"]), "false\n");
    // 2 flags, 1 edge, the 2 assignments of the first evaluation; 2 + 1 changes, 2 evaluations.
    tables_hold(&env, [2, 1, 2, 5]);
}

fn like_wildcards_in_filters_match_only_themselves() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    for key in ["%", "_", "a%b", "ab"] {
        env.ok(&["eval", "f", "--context", key]);
    }
    let listed = env.ok(&["assignments", "list", "--context", "%", "--format", "jsonl"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(
        serde_json::from_str::<Value>(listed.trim()).unwrap()["context"],
        "%"
    );
    assert_eq!(
        env.ok(&["assignments", "reset", "--flag", "f", "--context", "_"]),
        "cleared 1 assignment of flag f\n"
    );
    assert_eq!(
        env.ok(&["assignments", "list", "--format", "jsonl"])
            .lines()
            .count(),
        3
    );
}

/// PostgreSQL text cannot hold a NUL byte, and no real context key has one: both backends
/// refuse it, naming the line, before anything is written.
fn a_nul_byte_in_a_context_key_is_refused_naming_its_line() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let before = env.snapshot();
    let output = env
        .cmd()
        .args(["eval", "f", "--contexts-file", "-"])
        .write_stdin("ok\nnul\0inside\n")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "flagstore: stdin: line 2: contains a NUL byte (byte 4)\n"
    );
    assert!(output.stdout.is_empty());
    assert_eq!(env.snapshot(), before);
}

fn rtl_overrides_injection_and_the_longest_keys_round_trip_through_batch() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let huge = "k".repeat(1_024);
    let keys = ["rtl\u{202E}txt.exe", INJECTION, huge.as_str()];
    let output = env
        .cmd()
        .args(["eval", "f", "--contexts-file", "-"])
        .write_stdin(keys.join("\n"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let contexts: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["context"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(contexts, keys);
    let mut stored: Vec<String> = env
        .ok(&["assignments", "list", "--format", "jsonl"])
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["context"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    stored.sort();
    let mut expected = keys.map(str::to_string);
    expected.sort();
    assert_eq!(stored, expected);
    tables_hold(&env, [1, 0, 3, 4]);
}

/// A context key over 1,024 bytes is refused wherever it enters, naming the limit, and
/// nothing is written: each request would otherwise add it to the append-only log for good.
fn context_keys_over_1024_bytes_are_refused_and_write_nothing() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let before = env.snapshot();
    let long = "é".repeat(513);
    assert_eq!(
        env.fails(&["eval", "f", "--context", &long]),
        format!(
            "flagstore: context key {:?}: 1026 bytes, over the limit of 1024 bytes for a \
             context key",
            format!("{}…", "é".repeat(40))
        )
    );
    let output = env
        .cmd()
        .args(["eval", "f", "--contexts-file", "-"])
        .write_stdin(format!("ok\n{long}\n"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "flagstore: stdin: line 2: 1026 bytes, over the limit of 1024 bytes for a context key\n"
    );
    assert!(output.stdout.is_empty());
    assert_eq!(env.snapshot(), before);
}

/// Context keys and actors that a spreadsheet would run as formulas come out of a CSV export
/// as text (a leading `'`), and verbatim in JSON Lines, which re-hash.
fn csv_cells_a_spreadsheet_would_run_are_made_text() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let keys = [
        "=HYPERLINK(\"http://evil\")",
        "+SUM(1,2)",
        "-2+3",
        "@foo",
        "\tx",
        "plain",
    ];
    for key in keys {
        let context = format!("--context={key}");
        env.ok(&["eval", "f", &context, "--actor", "=cmd|' /C calc'!A0"]);
    }
    let csv = env.ok(&["audit", "--kind", "evaluation", "--asc", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let cells: Vec<(String, String)> = reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            (record[3].to_string(), record[6].to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = keys
        .iter()
        .map(|key| {
            let shown = if *key == "plain" {
                key.to_string()
            } else {
                format!("'{key}")
            };
            ("'=cmd|' /C calc'!A0".to_string(), shown)
        })
        .collect();
    assert_eq!(cells, expected);
    let jsonl = env.ok(&[
        "audit",
        "--kind",
        "evaluation",
        "--asc",
        "--format",
        "jsonl",
    ]);
    let stored: Vec<String> = jsonl
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["context_key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(stored, keys);
    env.ok(&["audit", "verify"]);
}

/// A chain of requirements `f0 -> f1 -> ... -> f{n-1}`, as an import document.
fn chain_document(length: usize) -> String {
    let flags: Vec<Value> = (0..length)
        .map(|i| match i + 1 < length {
            true => json!({"name": format!("f{i:04}"), "requires": [format!("f{:04}", i + 1)]}),
            false => json!({"name": format!("f{i:04}")}),
        })
        .collect();
    json!({ "flags": flags }).to_string()
}

/// A chain longer than 64 flags is refused at write time, naming it (a chain of 3,000 once
/// overflowed the stack of serve's writer and killed the server); 64 are taken and evaluate.
fn dependency_chains_longer_than_64_flags_are_refused_naming_the_chain() {
    let env = Env::new();
    env.ok(&["init"]);
    let before = env.snapshot();
    for length in [65, 3_000] {
        let file = env.write("chain.json", chain_document(length));
        let refused = env.fails(&["import", file.to_str().unwrap()]);
        assert!(
            refused.ends_with(&format!(
                "a dependency chain of {length} flags is longer than the limit of 64: \
                 f0000 -> f0001 -> f0002 -> … -> f{:04} -> f{:04}",
                length - 2,
                length - 1
            )),
            "{refused}"
        );
        assert_eq!(env.snapshot(), before);
    }
    env.import_json(&chain_document(64));
    assert_eq!(env.ok(&["eval", "f0000", "--context", "k"]), "true\n");
    env.ok(&["flag", "create", "extra"]);
    let refused = env.fails(&["flag", "set", "f0063", "--requires", "extra"]);
    assert_eq!(
        refused,
        "flagstore: a dependency chain of 65 flags is longer than the limit of 64: \
         f0000 -> f0001 -> f0002 -> … -> f0063 -> extra"
    );
}

fn names_outside_the_rules_are_refused() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let before = env.snapshot();
    let nul = json!({"flags": [{"name": "a\u{0}b"}]}).to_string();
    let file = env.write("nul.json", &nul);
    let message = env.fails(&["import", file.to_str().unwrap()]);
    assert!(
        message.ends_with("it contains the control character U+0000"),
        "{message}"
    );
    let long = json!({"flags": [{"name": "n".repeat(1 << 20)}]}).to_string();
    let file = env.write("long.json", &long);
    let message = env.fails(&["import", file.to_str().unwrap()]);
    assert_eq!(
        message,
        format!(
            "flagstore: {}: flags[0]: invalid flag name \"{}…\": it has 1048576 characters, more than 128",
            file.display(),
            "n".repeat(40)
        )
    );
    assert_eq!(env.snapshot(), before);
}

/// A flags file is at most megabytes (a name is at most 128 characters, a chain 64 flags).
/// A path given by mistake (the database, a device) is refused for its size, not read into
/// memory whole first: `/dev/zero` would never end.
#[test]
fn a_flags_file_larger_than_any_flag_set_is_refused_unread() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f"}]}"#);
    let before = env.snapshot();
    let large = env.write("large.json", vec![b' '; (64 << 20) + 1]);
    for path in [large.to_str().unwrap(), "/dev/zero"] {
        for command in [
            vec!["import", path],
            vec!["run", "--input", path, "--output", "-"],
        ] {
            let message = env.fails(&command);
            assert_eq!(
                message,
                format!("flagstore: cannot read {path}: larger than 64 MiB: not a flags file")
            );
        }
    }
    assert_eq!(env.snapshot(), before);
}

/// Requests answered together (serve's and the Python package's group commit): one request's
/// bad key is answered with its own error and the others are evaluated and recorded as if it
/// had not been sent.
fn a_bad_request_in_a_group_is_refused_alone() {
    use flagstore::store::Request;
    use flagstore::{Error, Selection};

    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    let mut store = env.open_store();
    let all = Selection::All;
    let enrich = Selection::Flags(vec!["enrich".to_string()]);
    let ghost = Selection::Flags(vec!["ghost".to_string()]);
    let nothing = Selection::Flags(Vec::new());
    let long = "k".repeat(2000);
    let asked = [
        (&all, "tenant:1"),
        (&enrich, long.as_str()),
        (&enrich, "tenant:2"),
        (&all, "nul\0key"),
        (&ghost, "tenant:3"),
        (&nothing, "tenant:4"),
        (&enrich, "tenant:1"),
    ];
    let requests: Vec<Request> = asked
        .iter()
        .map(|(selection, context)| Request {
            selection,
            context,
            actor: "tester",
        })
        .collect();
    let (_, results) = store.evaluate_requests(&requests).unwrap();
    let answered: Vec<Option<usize>> = results
        .iter()
        .map(|result| match result {
            Ok(evaluated) => evaluated.as_ref().map(|e| e.evaluations.len()),
            Err(Error::InvalidContextKey { .. }) => None,
            Err(other) => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        answered,
        [Some(4), None, Some(1), None, None, Some(0), Some(1)]
    );
    assert!(
        matches!(results[5], Ok(Some(_))),
        "an empty selection is answered"
    );
    assert!(
        matches!(results[4], Ok(None)),
        "an unknown flag is not evaluated"
    );
    let long_refused = results[1].as_ref().unwrap_err().to_string();
    assert!(long_refused.contains("2000 bytes"), "{long_refused}");
    // The three requests that asked for flags are recorded; nothing of the refused two.
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        3
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE kind = 'evaluation' \
              AND context_key IN ('tenant:1', 'tenant:2')"
        ),
        3
    );
}

contract_tests! {
    a_bad_request_in_a_group_is_refused_alone,
    sql_in_flag_names_is_stored_verbatim,
    like_wildcards_in_filters_match_only_themselves,
    a_nul_byte_in_a_context_key_is_refused_naming_its_line,
    rtl_overrides_injection_and_the_longest_keys_round_trip_through_batch,
    context_keys_over_1024_bytes_are_refused_and_write_nothing,
    csv_cells_a_spreadsheet_would_run_are_made_text,
    dependency_chains_longer_than_64_flags_are_refused_naming_the_chain,
    names_outside_the_rules_are_refused,
}
