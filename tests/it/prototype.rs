//! The prototype's own output, byte for byte: `flagstore run` writes the file the prototype's
//! `run` wrote, for the team's shared vectors (computed with the prototype itself) and for
//! random configurations checked against a reference written from the prototype's rules; and
//! the definition order those rest on is kept by every command that lists or evaluates flags.

use crate::common::{Backend, Env};

use md5::{Digest, Md5};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct RunVector {
    config: Value,
    run_output: String,
}

fn shared_vectors() -> Vec<RunVector> {
    serde_json::from_str(include_str!("../fixtures/prototype_run_vectors.json"))
        .expect("fixture parses")
}

/// `flagstore run` on `config`, returning the output file's bytes (stdout must be the same
/// and a newline).
pub fn run(env: &Env, config: &str) -> String {
    let input = env.write("flags.json", config);
    let output = env.dir.path().join("summary.json");
    let printed = env.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(
        printed,
        format!("{written}\n"),
        "stdout is the file and a newline"
    );
    written
}

pub fn run_writes_the_prototypes_bytes_for_every_shared_vector() {
    let vectors = shared_vectors();
    assert_eq!(vectors.len(), 30);
    for (index, vector) in vectors.iter().enumerate() {
        let env = Env::new();
        let config = vector.config.to_string();
        assert_eq!(
            run(&env, &config),
            vector.run_output,
            "vector {index}: {config}"
        );
        // Stored assignments change no count: the same file again gives the same bytes.
        assert_eq!(
            run(&env, &config),
            vector.run_output,
            "vector {index}, run again"
        );
    }
}

pub fn requirements_are_checked_in_the_order_listed() {
    let env = Env::new();
    // The issue's example: c lists b before a; a is off. The prototype checks b (on), then
    // a, and stops there: 5 entries, evaluations in the file's order.
    let config = r#"{"flags": [
        {"name": "c", "requires": ["b", "a"]},
        {"name": "a", "enabled": false},
        {"name": "b"}], "context_key": "k"}"#;
    assert_eq!(
        run(&env, config),
        "{\n  \"evaluations\": {\n    \"c\": false,\n    \"a\": false,\n    \"b\": true\n  },\n  \
         \"stats\": {\n    \"total\": 3,\n    \"enabled\": 2,\n    \"disabled\": 1\n  },\n  \
         \"audit_entries\": 5\n}"
    );
    assert_eq!(
        env.flag("c").requires,
        ["b", "a"],
        "stored in the order listed"
    );
    let explained = env.ok(&["eval", "c", "--context", "k", "--json"]);
    assert!(
        explained.contains("\"reason\":\"requires a: disabled\""),
        "{explained}"
    );
    // Both off: the first listed is the one named.
    env.ok(&["flag", "disable", "b"]);
    let explained = env.ok(&["eval", "c", "--context", "k", "--json"]);
    assert!(
        explained.contains("\"reason\":\"requires b: disabled\""),
        "{explained}"
    );
    // A new order is an audited change of c's definition.
    env.ok(&["flag", "set", "c", "--requires", "a,b"]);
    assert_eq!(env.flag("c").requires, ["a", "b"]);
    let history = env.ok(&["history", "c"]);
    assert!(history.contains("requires [b, a] -> [a, b]"), "{history}");
    let explained = env.ok(&["eval", "c", "--context", "k", "--json"]);
    assert!(
        explained.contains("\"reason\":\"requires a: disabled\""),
        "{explained}"
    );
}

pub fn a_requirement_listed_twice_is_refused_naming_it() {
    let env = Env::new();
    env.write(
        "twice.json",
        r#"{"flags": [{"name": "a"}, {"name": "b", "requires": ["a", "a"]}]}"#,
    );
    assert_eq!(
        env.fails(&["import", "twice.json"]),
        "flagstore: twice.json: flag \"b\" lists requirement \"a\" twice"
    );
    assert_eq!(env.count("SELECT count(*) FROM flags"), 0);
}

pub fn every_listing_follows_definition_order() {
    let env = Env::new();
    env.import_json(
        r#"{"flags": [{"name": "zeta"}, {"name": "alpha", "requires": ["zeta"]},
                      {"name": "mid", "enabled": false}]}"#,
    );
    env.ok(&["flag", "create", "beta"]);
    let order = ["zeta", "alpha", "mid", "beta"];
    let names = |text: &str| -> Vec<String> {
        let value: Value = serde_json::from_str(text).unwrap();
        match value {
            Value::Object(map) if map.contains_key("flags") => map["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("{other}"),
        }
    };
    assert_eq!(names(&env.ok(&["export"])), order);
    assert_eq!(names(&env.ok(&["eval", "--all", "--context", "k"])), order);
    let keys = env.write("keys.txt", "k1\nk2\n");
    let batch = env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    for line in batch.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        let flags: Vec<&String> = value["flags"].as_object().unwrap().keys().collect();
        assert_eq!(flags, order, "{line}");
    }
    let listed = env.ok(&["flag", "list"]);
    let positions: Vec<usize> = order.iter().map(|n| listed.find(n).unwrap()).collect();
    assert!(positions.is_sorted(), "{listed}");

    // import --replace sets the file's order, even when no definition changes, and the chain
    // says so: a change row per flag that moved, holding the whole new order.
    let replaced = env.write(
        "replace.json",
        r#"{"flags": [{"name": "beta"}, {"name": "mid", "enabled": false},
                      {"name": "zeta"}, {"name": "alpha", "requires": ["zeta"]}]}"#,
    );
    let report = env.ok(&["import", "--replace", replaced.to_str().unwrap()]);
    assert_eq!(
        report,
        "beta: moved to place 1 of 4\nmid: moved to place 2 of 4\nzeta: moved to place 3 of \
         4\nalpha: moved to place 4 of 4\n0 created, 0 updated, 0 deleted, 4 unchanged, 4 moved\n"
    );
    let new_order = ["beta", "mid", "zeta", "alpha"];
    assert_eq!(names(&env.ok(&["export"])), new_order);
    let moves = env.ok(&[
        "audit", "--kind", "change", "--limit", "4", "--format", "jsonl",
    ]);
    for row in moves.lines() {
        let row: Value = serde_json::from_str(row).unwrap();
        assert_eq!(row["action"], "move", "{row}");
        assert_eq!(
            row["detail"]["order"],
            serde_json::json!(new_order),
            "{row}"
        );
    }
    assert!(
        env.ok(&["history", "zeta"])
            .contains("import --replace: moved to place 3 of 4"),
    );
    env.ok(&["check"]);
    // The same file again moves nothing and writes nothing.
    let rows = env.count("SELECT count(*) FROM audit_log");
    let again = env.ok(&["import", "--replace", replaced.to_str().unwrap()]);
    assert_eq!(again, "0 created, 0 updated, 0 deleted, 4 unchanged\n");
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), rows);

    // A deleted flag leaves the others' order; created again, it goes last.
    env.ok(&["flag", "delete", "mid"]);
    env.ok(&["flag", "create", "mid"]);
    assert_eq!(
        names(&env.ok(&["export"])),
        ["beta", "zeta", "alpha", "mid"]
    );
    // And `--help` says so: it once said "sorted by name", as export wrote before schema 8.
    let help = env.ok(&["--help"]);
    let export = help
        .lines()
        .find(|line| line.trim_start().starts_with("export"));
    assert!(
        export.is_some_and(|line| line.contains("in definition order")),
        "{help}"
    );
}

/// The names `flagstore export` lists, in its order.
fn exported_names(env: &Env) -> Vec<String> {
    let exported: Value = serde_json::from_str(&env.ok(&["export"])).unwrap();
    exported["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// Schema 8 gives a store written before it the order it showed until then: names in byte
/// order (not the database's collation), requirements too, as its change rows hold them.
pub fn a_store_from_before_definition_order_keeps_the_order_it_showed() {
    let env = Env::new();
    env.import_json(
        r#"{"flags": [{"name": "b"}, {"name": "a"}, {"name": "ü"},
                      {"name": "Z", "requires": ["a", "b", "ü"]}]}"#,
    );
    assert_eq!(exported_names(&env), ["b", "a", "ü", "Z"]);
    // The store as schema 7 (6 on PostgreSQL) left it, its requirement rows written in
    // another order than their names'.
    match env.backend {
        Backend::Sqlite => env.as_sqlite_schema_9(),
        Backend::Postgres => env.as_schema_11(""),
    }
    env.execute(
        "DROP INDEX IF EXISTS audit_log_changes; \
         DROP INDEX audit_log_token_changes; \
         ALTER TABLE flag_dependencies DROP COLUMN position; \
         ALTER TABLE flags DROP COLUMN position; \
         DELETE FROM refinery_schema_history WHERE version >= 8; \
         DELETE FROM flag_dependencies; \
         INSERT INTO flag_dependencies (flag, requires) VALUES ('Z', 'ü'), ('Z', 'b'), ('Z', 'a')",
    )
    .unwrap();
    assert_eq!(exported_names(&env), ["Z", "a", "b", "ü"]);
    assert_eq!(env.flag("Z").requires, ["a", "b", "ü"]);
    env.ok(&["check"]);
}

/// The result README.md shows under `run` is what `run` writes for the example it names.
pub fn the_readmes_run_example_is_what_run_writes() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("\n### run\n").unwrap()..];
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap();
    let env = Env::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.json");
    let config = std::fs::read_to_string(example).unwrap();
    assert!(section.contains("For `examples/pipeline.json`, on a new store:"));
    assert_eq!(run(&env, &config), block);
}

contract_tests!(
    a_store_from_before_definition_order_keeps_the_order_it_showed,
    the_readmes_run_example_is_what_run_writes,
    run_writes_the_prototypes_bytes_for_every_shared_vector,
    requirements_are_checked_in_the_order_listed,
    a_requirement_listed_twice_is_refused_naming_it,
    every_listing_follows_definition_order,
);

/// A flag of a random configuration, as the file gives it: fields left out take the
/// prototype's defaults (enabled, 100%).
#[derive(Debug, Clone)]
struct Given {
    name: String,
    enabled: Option<bool>,
    rollout: Option<Value>,
    requires: Vec<String>,
}

impl Given {
    fn rollout_pct(&self) -> f64 {
        self.rollout.as_ref().map_or(100.0, |v| v.as_f64().unwrap())
    }
}

/// The prototype's `FlagManager`, written from its rules as plainly as possible: flags in the
/// order defined, requirements in the order listed, one entry per decision.
struct Prototype<'a> {
    flags: &'a [Given],
    entries: usize,
}

impl Prototype<'_> {
    fn is_enabled(&mut self, name: &str, key: &str) -> bool {
        self.entries += 1;
        let Some(flag) = self.flags.iter().find(|f| f.name == name) else {
            return false;
        };
        if flag.enabled == Some(false) {
            return false;
        }
        for required in &flag.requires {
            if !self.is_enabled(required, key) {
                return false;
            }
        }
        let digest: [u8; 16] = Md5::digest(format!("{name}:{key}").as_bytes()).into();
        ((u128::from_be_bytes(digest) % 100) as f64) < flag.rollout_pct()
    }

    /// `run`'s file: `json.dumps(summary, indent=2)`, written out by hand.
    fn run(flags: &[Given], key: &str) -> String {
        let mut prototype = Prototype { flags, entries: 0 };
        let decisions: Vec<String> = flags
            .iter()
            .map(|f| {
                let on = prototype.is_enabled(&f.name, key);
                format!("    {}: {on}", python_string(&f.name))
            })
            .collect();
        let evaluations = if decisions.is_empty() {
            "{}".to_string()
        } else {
            format!("{{\n{}\n  }}", decisions.join(",\n"))
        };
        let enabled = flags.iter().filter(|f| f.enabled != Some(false)).count();
        format!(
            "{{\n  \"evaluations\": {evaluations},\n  \"stats\": {{\n    \"total\": {},\n    \
             \"enabled\": {enabled},\n    \"disabled\": {}\n  }},\n  \"audit_entries\": {}\n}}",
            flags.len(),
            flags.len() - enabled,
            prototype.entries
        )
    }
}

/// A string as Python's `json.dumps` writes it by default (`ensure_ascii`).
fn python_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            ' '..='~' => quoted.push(c),
            _ => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    quoted.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    quoted.push('"');
    quoted
}

fn rollout() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        (0u64..=100).prop_map(Value::from),
        (0u32..=10_000).prop_map(|hundredths| Value::from(f64::from(hundredths) / 100.0)),
        Just(json!(50.0)),
    ])
}

/// Up to 7 flags with distinct names (ASCII, quotes, non-ASCII and astral characters), each
/// requiring some of those generated before it in a random order (so there is no cycle),
/// listed in a shuffled order.
fn configuration() -> impl Strategy<Value = Vec<Given>> {
    let name = "[a-z\"\\\\ü日😀_ ]{1,6}";
    prop::collection::vec(
        (
            name,
            prop::option::of(any::<bool>()),
            rollout(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        ),
        0..8,
    )
    .prop_map(|specs| {
        let mut flags: Vec<Given> = Vec::new();
        for (name, enabled, rollout, picks) in specs {
            if flags.iter().any(|f| f.name == name) {
                continue;
            }
            let mut requires: Vec<String> = Vec::new();
            for pick in picks.iter().filter(|_| !flags.is_empty()) {
                let required = &flags[pick.index(flags.len())].name;
                if !requires.contains(required) {
                    requires.push(required.clone());
                }
            }
            flags.push(Given {
                name,
                enabled,
                rollout,
                requires,
            });
        }
        flags
    })
    .prop_shuffle()
}

fn file(flags: &[Given], key: Option<&str>) -> String {
    let listed: Vec<Value> = flags
        .iter()
        .map(|f| {
            let mut entry = json!({ "name": f.name });
            if let Some(enabled) = f.enabled {
                entry["enabled"] = json!(enabled);
            }
            if let Some(rollout) = &f.rollout {
                entry["rollout_pct"] = rollout.clone();
            }
            if !f.requires.is_empty() {
                entry["requires"] = json!(f.requires);
            }
            entry
        })
        .collect();
    let mut config = json!({ "flags": listed });
    if let Some(key) = key {
        config["context_key"] = json!(key);
    }
    config.to_string()
}

proptest! {
    #![proptest_config(crate::common::proptest_config(48))]
    #[test]
    fn run_writes_what_the_prototype_would_for_random_configurations(
        flags in configuration(),
        key in prop::option::of("(|\\PC{0,10}|ü-日本-[0-9]{1,3})"),
    ) {
        let env = Env::new();
        let expected = Prototype::run(&flags, key.as_deref().unwrap_or("default"));
        let config = file(&flags, key.as_deref());
        prop_assert_eq!(run(&env, &config), expected.clone(), "{}", config);
        prop_assert_eq!(run(&env, &config), expected, "again: {}", config);
    }
}
