//! What a new user trips over: a copy that holds nothing, silent overrides, silent empty
//! stores, half-done failures and errors that do not say what to do.

use crate::common::{Env, PIPELINE, snapshot};
use serde_json::Value;

fn pipeline_example() -> String {
    format!("{}/examples/pipeline.json", env!("CARGO_MANIFEST_DIR"))
}

fn verified_rows(message: &str) -> &str {
    message
        .strip_prefix("audit log verified: ")
        .and_then(|rest| rest.split(" rows").next())
        .unwrap_or_else(|| panic!("{message}"))
}

#[test]
fn a_plain_copy_of_the_database_file_holds_everything_once_flagstore_exits() {
    let env = Env::new();
    let out = env.dir.path().join("out.json");
    env.ok(&[
        "run",
        "--input",
        &pipeline_example(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let original = env.ok(&["audit", "verify"]);
    let copy = env.dir.path().join("copy.db");
    std::fs::copy(&env.db, &copy).unwrap();
    let copied = env.ok(&["--db", copy.to_str().unwrap(), "audit", "verify"]);
    assert_ne!(verified_rows(&original), "0");
    assert_eq!(copied, original);
}

#[test]
fn backup_writes_a_consistent_single_file_copy() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["eval", "--all", "--context", "k"]);
    let target = env.dir.path().join("backup.db");
    let message = env.ok(&["backup", "-o", target.to_str().unwrap()]);
    assert_eq!(
        message,
        format!("backed up {} to {}\n", env.db.display(), target.display())
    );
    assert_eq!(snapshot(&target), env.snapshot());
    for suffix in ["-wal", "-shm"] {
        assert!(!env.dir.path().join(format!("backup.db{suffix}")).exists());
    }
    let missing_dir = env.dir.path().join("no/such/dir/b.db");
    let refused = env.fails(&["backup", "-o", missing_dir.to_str().unwrap()]);
    assert!(
        refused.starts_with(&format!(
            "flagstore: cannot write {}",
            missing_dir.display()
        )),
        "{refused}"
    );
}

#[test]
fn run_creates_missing_flags_but_never_overrides_the_store() {
    let env = Env::new();
    let out = env.dir.path().join("out.json");
    let run = || {
        env.cmd()
            .args([
                "run",
                "--input",
                &pipeline_example(),
                "--output",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    env.ok(&["flag", "disable", "enrich"]);
    let output = run();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "flagstore: warning: flag \"enrich\": {} says enabled true, the store has false; \
             the store's definition was used (apply the file with: flagstore import {})\n",
            pipeline_example(),
            pipeline_example()
        )
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["evaluations"]["enrich"], false);
    let now =
        serde_json::from_str::<Value>(&env.ok(&["eval", "enrich", "--context", "x", "--json"]))
            .unwrap();
    assert_eq!(now["source"], "disabled");
}

#[test]
fn run_stats_are_the_prototypes() {
    let env = Env::new();
    let out = env.dir.path().join("out.json");
    let result: Value = serde_json::from_str(&env.ok(&[
        "run",
        "--input",
        &pipeline_example(),
        "--output",
        out.to_str().unwrap(),
    ]))
    .unwrap();
    // The Python prototype prints these for examples/pipeline.json.
    assert_eq!(
        result["stats"],
        serde_json::json!({"total": 6, "enabled": 5, "disabled": 1})
    );
}

#[test]
fn a_failed_run_leaves_the_store_unchanged() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    let input = env.write("pipeline.json", PIPELINE);
    let nowhere = env.dir.path().join("missing-dir/out.json");
    let message = env.fails(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        nowhere.to_str().unwrap(),
    ]);
    assert!(
        message.starts_with(&format!("flagstore: cannot write {}", nowhere.display())),
        "{message}"
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn reading_commands_refuse_a_database_that_does_not_exist() {
    let env = Env::new();
    for command in [
        &["eval", "f", "--context", "k"][..],
        &["export"],
        &["flag", "list"],
        &["flag", "show", "f"],
        &["audit"],
        &["audit", "verify"],
        &["explain", "f", "--context", "k"],
        &["history", "f"],
        &["assignments", "list"],
        &["check"],
        &["token", "create", "worker"],
        &["token", "list"],
        &["token", "revoke", "worker"],
        &["serve", "--listen", "127.0.0.1:0"],
    ] {
        assert_eq!(
            env.fails(command),
            format!(
                "flagstore: {}: no such database (create one with `flagstore init` or \
                 `flagstore import FILE`, or name another with --db)",
                env.db.display()
            ),
            "{command:?}"
        );
        assert!(!env.db.exists(), "{command:?} created the file");
    }
    let flags = env.write("flags.json", PIPELINE);
    let dry = env.ok(&["import", "--dry-run", flags.to_str().unwrap()]);
    assert_eq!(
        dry.lines().last(),
        Some("4 created, 0 updated, 0 deleted, 0 unchanged (dry run: nothing written)")
    );
    assert!(!env.db.exists(), "a dry run created the file");
    assert_eq!(env.ok(&["init"]), format!("created {}\n", env.db.display()));
    assert_eq!(env.ok(&["flag", "list", "--json"]), "[]\n");
    assert_eq!(
        env.fails(&["init"]),
        format!("flagstore: {} already exists", env.db.display())
    );
}

/// Anything but a file given as the database is named for what it is, and nothing is written
/// beside it: SQLite would take a FIFO or a device for a file, and then fail with "disk I/O
/// error", fail to migrate `/dev/null` (leaving `/dev/null-journal` behind, as root), or read
/// `/dev/zero` for ever.
#[test]
fn a_directory_or_device_given_as_the_database_is_named_as_one() {
    let env = Env::new();
    let dir = env.dir.path().to_str().unwrap().to_string();
    let fifo = env.fifo("fifo").to_str().unwrap().to_string();
    let flags = env.write("flags.json", PIPELINE);
    let flags = flags.to_str().unwrap();
    for (db, kind) in [
        (dir.as_str(), "a directory"),
        (fifo.as_str(), "a FIFO"),
        ("/dev/null", "a character device"),
        ("/dev/zero", "a character device"),
    ] {
        for command in [
            &["--db", db, "flag", "list"][..],
            &["--db", db, "import", flags],
        ] {
            assert_eq!(
                env.fails(command),
                format!("flagstore: {db} is {kind}, not a database file"),
            );
        }
        assert!(!std::path::Path::new(&format!("{db}-journal")).exists());
        assert!(!std::path::Path::new(&format!("{db}-wal")).exists());
    }
}

/// An output file is written beside its destination and renamed into place, so a reader never
/// sees half of it. That must not replace what the destination is: a FIFO (or, as root, a
/// device such as /dev/full, which `export --output /dev/full` turned into a regular file)
/// is written to as it is (or refused where a file is needed), and a symbolic link keeps
/// pointing where it did, at the new file.
#[test]
fn an_output_that_is_a_fifo_or_a_link_stays_one() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    env.import_json(PIPELINE);
    let expected = env.ok(&["export"]);

    let fifo = env.fifo("flags.fifo");
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::read_to_string(fifo).unwrap()
    });
    env.ok(&["export", "--output", fifo.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(reader.join().unwrap().trim_end(), expected.trim_end());
    // Those that need a file to rename into place refuse it, before writing anything.
    let flags = env.write("flags.json", PIPELINE);
    let fifo = fifo.to_str().unwrap();
    let before = env.snapshot();
    for command in [
        &["run", "--input", flags.to_str().unwrap(), "--output", fifo][..],
        &["backup", "--output", fifo],
    ] {
        assert_eq!(
            env.fails(command),
            format!("flagstore: cannot write {fifo}: it is a FIFO, not a file"),
            "{command:?}"
        );
    }
    assert_eq!(
        env.fails(&["copy", "--to", fifo]),
        format!("flagstore: {fifo} is a FIFO, not a database file")
    );
    assert_eq!(env.snapshot(), before);

    let target = env.write("real.json", "old");
    let link = env.dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    env.ok(&["export", "--output", link.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap().trim_end(),
        expected.trim_end()
    );
}

#[test]
fn eval_of_an_unknown_flag_answers_false_and_warns() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let output = env
        .cmd()
        .args(["eval", "enrch", "--context", "k"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "false\n");
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "flagstore: warning: unknown flag \"enrch\" (did you mean \"enrich\"?)\n"
    );
}

/// An empty context key (an unset $TENANT) is answered, as the prototype's default key, with
/// a warning that every such caller shares one decision.
#[test]
fn an_empty_context_key_is_answered_with_a_warning() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let output = env
        .cmd()
        .args(["eval", "ingest", "--context", ""])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "true\n");
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "flagstore: warning: the context key is empty: every caller with an empty key shares \
         one sticky decision\n"
    );
}

#[test]
fn flag_set_changes_only_existing_flags_and_flag_create_creates() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let before = env.snapshot();
    assert_eq!(
        env.fails(&["flag", "set", "enrch", "--rollout", "5"]),
        "flagstore: unknown flag \"enrch\" (did you mean \"enrich\"?); create a flag with `flagstore flag create`"
    );
    assert_eq!(env.snapshot(), before);
    assert_eq!(
        env.ok(&[
            "flag",
            "create",
            "shadow",
            "--rollout",
            "5",
            "--requires",
            "ingest"
        ]),
        "shadow: created enabled true, rollout_pct 5, requires [ingest], sticky on_only\n"
    );
    assert_eq!(
        env.fails(&["flag", "create", "shadow"]),
        "flagstore: flag \"shadow\" already exists; change it with `flagstore flag set`"
    );
}

#[test]
fn bad_option_values_are_named() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let message = env.fails(&["flag", "set", "enrich", "--rollout", "50%"]);
    assert!(
        message
            .contains("invalid value '50%' for '--rollout <PCT>': must be a number from 0 to 100"),
        "{message}"
    );
    let message = env.fails(&["audit", "--limit", "-1"]);
    assert!(
        message.contains("invalid value '-1' for '--limit <N>'"),
        "{message}"
    );
    let message = env.fails(&["--actor", "", "flag", "disable", "enrich"]);
    assert!(
        message.contains("invalid value '' for '--actor <NAME>': must not be empty"),
        "{message}"
    );
    let keys = env.write("keys.txt", "a\n");
    let message = env.fails(&["eval", "--contexts-file", keys.to_str().unwrap()]);
    assert!(
        message.contains("name the flags to evaluate, or use --all"),
        "{message}"
    );
}

#[test]
fn a_contexts_line_of_only_whitespace_is_skipped() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys = env.write("keys.txt", "a\n \t \nb\n");
    let output = env.ok(&["eval", "ingest", "--contexts-file", keys.to_str().unwrap()]);
    let contexts: Vec<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["context"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(contexts, ["a", "b"]);
}

/// Runs the binary as the unprivileged user `nobody` (needs root, as CI has).
fn as_nobody(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(assert_cmd::cargo::cargo_bin("flagstore"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("FLAGSTORE_ACTOR", "reviewer")
        .output()
        .expect("setpriv runs")
}

#[test]
fn a_reviewer_who_can_only_read_the_file_runs_every_read_command() {
    if !crate::common::running_as_root("switching to an unprivileged user") {
        return;
    }
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["eval", "--all", "--context", "k"]);
    let checkpoint = env.dir.path().join("anchor.json");
    env.ok(&["audit", "checkpoint", "-o", checkpoint.to_str().unwrap()]);
    // The reviewer may read the directory and the files, and write neither.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in [&env.db, &checkpoint] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let before = env.snapshot();
    let verified = env.ok(&["audit", "verify"]);
    for command in [
        &["audit", "verify"][..],
        &[
            "audit",
            "verify",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ],
        &["audit", "--limit", "0"],
        &["export"],
        &["flag", "list"],
        &["flag", "show", "enrich"],
        &["explain", "enrich", "--context", "k"],
        &["history", "enrich"],
        &["assignments", "list"],
        &["check"],
    ] {
        let output = as_nobody(&env.db, command);
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if command == ["audit", "verify"] {
            assert_eq!(String::from_utf8(output.stdout).unwrap(), verified);
        }
    }
    for command in [
        &["eval", "enrich", "--context", "k"][..],
        &["flag", "disable", "enrich"],
    ] {
        let output = as_nobody(&env.db, command);
        assert_eq!(output.status.code(), Some(2), "{command:?}");
        assert_eq!(
            String::from_utf8(output.stderr).unwrap(),
            format!(
                "flagstore: {}: the database is read-only for this user (attempt to write a \
                 readonly database)\n",
                env.db.display()
            )
        );
    }
    assert_eq!(env.snapshot(), before);
}

#[test]
fn explain_history_and_run_print_json_on_request() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["flag", "set", "enrich", "--rollout", "10"]);
    env.ok(&["eval", "enrich", "--context", "a"]);
    let explained: Value =
        serde_json::from_str(&env.ok(&["explain", "enrich", "--context", "a", "--json"])).unwrap();
    // Python: int(hashlib.md5(b"enrich:a").hexdigest(), 16) % 100 == 45.
    assert_eq!(explained["bucket"], 45);
    assert_eq!(explained["in_rollout"], false);
    assert_eq!(explained["assignment"], Value::Null);
    assert_eq!(explained["requirements"][0]["flag"], "dedupe");
    assert_eq!(
        explained["answer"],
        serde_json::json!({"enabled": false, "reason": "rollout: bucket 45 >= 10", "source": "rollout"})
    );
    let history: Value = serde_json::from_str(&env.ok(&["history", "enrich", "--json"])).unwrap();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["action"], "update");
    assert_eq!(history[1]["before"]["rollout_pct"], 50);
    assert_eq!(history[1]["after"]["rollout_pct"], 10);

    let input = env.write("pipeline.json", PIPELINE);
    let printed = env.ok(&["run", "--input", input.to_str().unwrap(), "--output", "-"]);
    let result: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(result["stats"]["total"], 4);
    assert!(!env.dir.path().join("-").exists());
}

#[test]
fn completions_are_generated_for_each_shell_and_an_unknown_one_is_refused() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef flagstore"),
        ("fish", "complete -c flagstore"),
    ] {
        let script = env.ok(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("backup"), "{shell} lacks a subcommand");
    }
    let message = env.fails(&["completions", "tcsh"]);
    assert!(
        message.starts_with("flagstore: invalid value 'tcsh' for '<SHELL>'"),
        "{message}"
    );
    assert!(!env.db.exists());
}

/// Every command that prints exits quietly when its reader has gone (`| head` that stopped
/// reading): no panic, no error line, the exit code it would have had.
#[test]
fn commands_whose_reader_has_gone_exit_quietly() {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["eval", "--all", "--context", "k"]);
    let keys = env.write("keys.txt", "a\nb\nc\n");
    for command in [
        &["completions", "bash"][..],
        &["--help"],
        &["export"],
        &["flag", "list"],
        &["flag", "show", "enrich"],
        &["eval", "--all", "--context", "k"],
        &["eval", "--all", "--contexts-file", keys.to_str().unwrap()],
        &["explain", "enrich", "--context", "k"],
        &["history", "enrich"],
        &["audit"],
        &["audit", "--format", "csv"],
        &["audit", "verify"],
        &["assignments", "list"],
        &["check"],
        &["token", "list"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = env
            .std_cmd()
            .args(command)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.is_empty(), "{command:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{command:?}");
    }
}

/// What a backup or copy killed mid-way leaves (`NEW.tmp-PID` and its SQLite `-wal`/`-shm`)
/// is removed by the next run to the same destination, once that process is gone; the files
/// of a process still running are left alone.
#[test]
fn a_killed_backups_leftovers_are_removed_by_the_next_run() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let target = env.dir.path().join("backup.db");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let leftover =
        |pid: u32, suffix: &str| env.dir.path().join(format!("backup.db.tmp-{pid}{suffix}"));
    for suffix in ["", "-wal", "-shm"] {
        std::fs::write(leftover(dead, suffix), vec![0u8; 4096]).unwrap();
    }
    let running = std::process::id();
    std::fs::write(leftover(running, ""), b"in use").unwrap();
    for (command, destination) in [
        (&["backup", "-o"][..], target.clone()),
        (&["copy", "--to"], env.dir.path().join("copy.db")),
    ] {
        env.ok(&[command, &[destination.to_str().unwrap()]].concat());
    }
    for suffix in ["", "-wal", "-shm"] {
        assert!(!leftover(dead, suffix).exists(), "{suffix}");
    }
    assert!(leftover(running, "").exists());
    assert_eq!(snapshot(&target), env.snapshot());
}
