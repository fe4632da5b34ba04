//! Conformance with a real OpenFeature client: the Python SDK (`openfeature-sdk`) and its OFREP
//! provider (`openfeature-provider-ofrep`) against `flagstore serve`. Needs a Python with both
//! installed, named by `$FLAGSTORE_TEST_OFREP_PYTHON` (`.ci/run` makes a venv and sets it); skipped,
//! saying so, without it.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use crate::common::{Env, PIPELINE, Server};
use serde_json::Value;

const PYTHON_VARIABLE: &str = "FLAGSTORE_TEST_OFREP_PYTHON";

#[test]
fn the_openfeature_python_sdk_gets_what_flagstore_eval_gives() {
    let Some(python) = std::env::var_os(PYTHON_VARIABLE).filter(|p| !p.is_empty()) else {
        let _ = writeln!(
            std::io::stderr(),
            "note: {PYTHON_VARIABLE} is unset: the OpenFeature Python SDK conformance test is \
             skipped; .ci/run sets it"
        );
        return;
    };
    let served = Env::new();
    served.import_json(PIPELINE);
    let token = served
        .ok(&["token", "create", "python-sdk"])
        .trim()
        .to_string();
    let keys: String = (0..100).map(|i| format!("user-{i}\n")).collect();
    let keys_file = served.write("keys.txt", &keys);
    let server = Server::start(&served, &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ofrep/conformance.py");
    let output = Command::new(python)
        .arg(script)
        .args([&server.url, &token, "enrich"])
        .arg(&keys_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 102);

    // The same decisions made by the CLI on a store of its own: the SDK saw flagstore's own
    // hashing, not an echo of what the server had stored.
    let separate = Env::new();
    separate.import_json(PIPELINE);
    let cli = separate.ok(&[
        "eval",
        "enrich",
        "--contexts-file",
        keys_file.to_str().unwrap(),
    ]);
    let expected: Vec<(String, bool)> = cli
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            (
                line["context"].as_str().unwrap().to_string(),
                line["flags"]["enrich"].as_bool().unwrap(),
            )
        })
        .collect();
    let got: Vec<(String, bool)> = lines[..100]
        .iter()
        .map(|line| {
            (
                line["key"].as_str().unwrap().to_string(),
                line["value"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(got.iter().any(|(_, on)| *on) && got.iter().any(|(_, on)| !on));
    for line in &lines[..100] {
        assert_eq!(line["reason"], "SPLIT");
        let on = line["value"].as_bool().unwrap();
        assert_eq!(line["variant"], if on { "on" } else { "off" });
    }
    assert_eq!(lines[100]["missing_flag"], "FLAG_NOT_FOUND");
    assert_eq!(lines[100]["value"], false);
    // A wrong token is an error; the SDK falls back to the caller's default.
    assert_eq!(lines[101]["wrong_token"], "GENERAL");
    assert_eq!(lines[101]["value"], true);
    assert_eq!(
        served.count(
            "SELECT count(*) FROM audit_log WHERE kind = 'evaluation' AND actor = 'python-sdk'"
        ),
        100
    );
}
