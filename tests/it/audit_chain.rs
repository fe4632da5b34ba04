//! Tamper evidence, tested by tampering for real: plain SQL against the database file, with the
//! append-only triggers dropped as an attacker with file access would.

use crate::common::{Backend, Env, PIPELINE, directory_nobody_reaches, running_as_root};

/// A store with some history: changes, evaluations, a reset.
fn store_with_history() -> Env {
    let env = Env::new();
    env.import_json(PIPELINE);
    env.ok(&["flag", "set", "enrich", "--rollout", "25"]);
    env.ok(&["eval", "--all", "--context", "tenant:ü"]);
    env.ok(&["eval", "enrich", "--context", "other"]);
    env.ok(&["assignments", "reset", "--flag", "ingest"]);
    env
}

fn rows(env: &Env) -> i64 {
    env.count("SELECT count(*) FROM audit_log")
}

fn tamper(env: &Env, sql: &str) {
    env.tamper(sql);
}

/// SQLite only: the Python script reads SQLite files.
#[test]
fn an_untouched_log_verifies_and_python_agrees() {
    let env = store_with_history();
    let count = rows(&env);
    // 4 creations, 1 change, a decision record per evaluation request, 1 reset.
    assert_eq!(count, 4 + 1 + 1 + 1 + 1);
    let verified = env.ok(&["audit", "verify"]);
    assert!(
        verified.starts_with(&format!("audit log verified: {count} rows, head ")),
        "{verified}"
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_audit_chain.py");
    let python = std::process::Command::new("python3")
        .arg(script)
        .arg(&env.db)
        .output()
        .expect("python3 runs (it is on every machine of this project's kind)");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(String::from_utf8(python.stdout).unwrap(), verified);
}

fn the_triggers_refuse_update_and_delete() {
    let env = store_with_history();
    let before = env.snapshot();
    let mut refused = vec![
        "UPDATE audit_log SET actor = 'mallory' WHERE id = 5",
        "DELETE FROM audit_log WHERE id = 5",
        "DELETE FROM audit_log",
    ];
    if env.backend == Backend::Postgres {
        // The rows are in `audit_rows` (schema 16); a view cannot be truncated at all.
        refused.extend(["TRUNCATE audit_rows", "TRUNCATE actors"]);
    }
    // The index of which records each flag's queries read is append-only too: deleting a
    // range, or a flag from a set, hid that flag's decisions from `audit --flag`.
    refused.extend([
        "UPDATE audit_ranges SET last_id = last_id + 1",
        "DELETE FROM audit_ranges",
        "UPDATE audit_flag_sets SET flags = '[]'",
        "DELETE FROM audit_flag_sets",
    ]);
    if env.backend == Backend::Postgres {
        // The sets are referenced by the ranges: CASCADE is what would empty them.
        refused.extend(["TRUNCATE audit_ranges", "TRUNCATE audit_flag_sets CASCADE"]);
    }
    for sql in refused {
        let error = env.execute(sql).unwrap_err();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(env.snapshot(), before);
}

/// A reviewer's own SQLite (Debian 12's sqlite3, Python's sqlite3: 3.40) finds a healthy
/// store sound: before schema 6 it reported "NULL value in audit_flag_ranges.first_id" on
/// every store, a false alarm of SQLite < 3.41 about the table's column order.
#[test]
fn the_systems_own_sqlite_finds_a_healthy_store_sound() {
    let env = store_with_history();
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchall())",
        ])
        .arg(&env.db)
        .output()
        .expect("python3 runs");
    assert_eq!(String::from_utf8_lossy(&python.stdout), "[('ok',)]\n");
    match std::process::Command::new("sqlite3")
        .arg(&env.db)
        .arg("PRAGMA integrity_check")
        .output()
    {
        Ok(shell) => assert_eq!(String::from_utf8_lossy(&shell.stdout), "ok\n"),
        Err(_) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"skipped: the sqlite3 shell is not installed; Python's sqlite3 was checked\n",
            );
        }
    }
}

/// SQLite only: the Python script reads SQLite files.
#[test]
fn an_edited_row_is_named_by_flagstore_and_by_the_script() {
    let env = store_with_history();
    // Row 6 is the decision record of `eval --all`: turn one of its decisions around.
    tamper(
        &env,
        "UPDATE audit_log SET detail = replace(detail, '\",1,\"', '\",0,\"') WHERE id = 6;",
    );
    assert_eq!(
        env.fails(&["audit", "verify"]),
        "flagstore: audit log does not verify at row 6: hash does not match the row's contents (the row was edited)"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_audit_chain.py");
    // Under -O too: a verifier built on assert would print "verified" there.
    for optimize in [None, Some("-O")] {
        let python = std::process::Command::new("python3")
            .args(optimize)
            .arg(script)
            .arg(&env.db)
            .output()
            .unwrap();
        assert_eq!(python.status.code(), Some(2), "{optimize:?}");
        assert!(python.stdout.is_empty(), "{optimize:?}");
        assert_eq!(
            String::from_utf8_lossy(&python.stderr),
            "audit log does not verify: row 6: hash does not match the row's contents\n"
        );
    }
}

/// Runs the README's verifier on `db`, as this process's user or as nobody (with Debian's
/// `/usr/bin/python3`: a pyenv shim under root's home is out of nobody's reach), and returns
/// its exit code, stdout and stderr.
fn script_on(db: &std::path::Path, as_nobody: bool) -> (Option<i32>, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_audit_chain.py");
    let mut command = if as_nobody {
        let mut setpriv = std::process::Command::new("setpriv");
        setpriv.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ]);
        setpriv
    } else {
        std::process::Command::new("python3")
    };
    let output = command.arg(script).arg(db).output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A reviewer may only read the file: the script opens it read-only, `immutable=1` where it
/// cannot write beside it (SQLite otherwise needs to make its shared-memory file), and says
/// so; a path holding URI characters is read as the path it is.
#[test]
fn the_script_verifies_a_file_the_reviewer_may_only_read() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: reading as an unprivileged user needs /usr/bin/python3");
        return;
    }
    if !running_as_root("reading as an unprivileged user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let env = store_with_history();
    let verified = env.ok(&["audit", "verify"]);
    let home = directory_nobody_reaches("flagstore-review-");
    let db = home.path().join("a?b#c%20.db");
    std::fs::copy(&env.db, &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let (code, stdout, stderr) = script_on(&db, true);
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        verified.replace(
            " rows, head ",
            " rows (read-only, immutable: no writer's WAL read), head "
        )
    );
    assert_eq!(
        script_on(&db, false).1,
        verified,
        "root may write beside it"
    );
}

/// A process that may start no thread (as nobody, at `prlimit --nproc=1`) still verifies and
/// evaluates a batch of several steps: what it would hash or evaluate on a second thread it
/// does between reads instead, and the answers and records are the same.
#[test]
fn verify_and_a_batch_need_no_second_thread() {
    if !running_as_root("running as an unprivileged user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let env = store_with_history();
    let verified = env.ok(&["audit", "verify"]);
    let home = directory_nobody_reaches("flagstore-threadless-");
    let db = home.path().join("s.db");
    std::fs::copy(&env.db, &db).unwrap();
    for path in [home.path(), db.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let threadless = |args: &[&str]| {
        let output = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["prlimit", "--nproc=1"])
            .arg(assert_cmd::cargo::cargo_bin("flagstore"))
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(threadless(&["audit", "verify"]), verified);
    let keys: String = (0..1_000).map(|i| format!("tenant-{i}\n")).collect();
    let contexts = home.path().join("contexts.txt");
    std::fs::write(&contexts, &keys).unwrap();
    std::fs::set_permissions(&contexts, std::fs::Permissions::from_mode(0o444)).unwrap();
    let batch = [
        "eval",
        "--all",
        "--contexts-file",
        contexts.to_str().unwrap(),
    ];
    let answered = threadless(&batch);
    assert_eq!(answered, env.ok(&batch), "the same answers as with threads");
    assert_eq!(answered.lines().count(), 1_000);
    threadless(&["check"]);
}

/// A BLOB where the chain hashes text (any column takes one, whatever its declared type; a
/// REAL, past a CHECK turned off, is named the same way) is named with its row and column,
/// not a traceback.
#[test]
fn the_script_names_a_row_whose_column_has_the_wrong_type() {
    for (sql, named) in [
        (
            "UPDATE audit_log SET detail = CAST(detail AS BLOB) WHERE id = 2",
            "row 2: detail holds a BLOB, not text, an integer or NULL",
        ),
        (
            "UPDATE audit_log SET actor = CAST(actor AS BLOB) WHERE id = 6",
            "row 6: actor holds a BLOB, not text, an integer or NULL",
        ),
        (
            "UPDATE audit_log SET actor = CAST(X'FF41' AS TEXT) WHERE id = 4",
            "row 4: actor holds text that is not UTF-8",
        ),
    ] {
        let env = store_with_history();
        tamper(&env, sql);
        let (code, stdout, stderr) = script_on(&env.db, false);
        assert_eq!(code, Some(2), "{sql}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(
            stderr,
            format!("audit log does not verify: {named}\n"),
            "{sql}"
        );
    }
}

/// The same edits, read by flagstore's own readers: each names the row and column it cannot
/// take, where they said only "Invalid column type Blob at index: 10, name: detail".
#[test]
fn a_row_whose_column_has_the_wrong_type_is_named_by_every_reader() {
    for (sql, named, readers) in [
        (
            "UPDATE audit_log SET detail = CAST(detail AS BLOB) WHERE id = 6",
            "audit row 6 cannot be read: detail holds a BLOB of ",
            &[
                &["audit", "verify"][..],
                &["check"],
                &["audit", "--limit", "5"],
                &["audit", "--context", "tenant:ü"],
            ][..],
        ),
        (
            "UPDATE audit_log SET actor = CAST(actor AS BLOB) WHERE id = 3",
            "audit row 3 cannot be read: actor holds a BLOB of ",
            &[&["audit", "verify"][..], &["check"], &["history", "enrich"]][..],
        ),
        (
            "UPDATE audit_log SET actor = CAST(X'FF41' AS TEXT) WHERE id = 4",
            "audit row 4 cannot be read: actor holds bytes that are not UTF-8, not text",
            &[
                &["audit", "verify"][..],
                &["check"],
                &["audit", "--limit", "8"],
            ][..],
        ),
        (
            "UPDATE audit_log SET hash = CAST(hash AS BLOB) WHERE id = 8",
            "audit row 8 cannot be read: hash holds a BLOB of 64 bytes, not text",
            &[
                &["audit", "verify"][..],
                &["eval", "--all", "--context", "k"],
            ][..],
        ),
        (
            // Schema 14 stores the time in milliseconds: one no time has.
            "UPDATE audit_rows SET ts_ms = 9223372036854775807 WHERE id = 6",
            "audit row 6 cannot be read: ts holds 9223372036854775807 milliseconds, not text",
            &[
                &["audit", "verify"][..],
                &["check"],
                &["audit", "--limit", "5"],
            ][..],
        ),
        (
            // ... and the actor by number: one `actors` does not name.
            "PRAGMA foreign_keys = OFF; UPDATE audit_rows SET actor_id = 999 WHERE id = 3",
            "audit row 3 cannot be read: actor holds NULL, not text",
            &[&["audit", "verify"][..], &["history", "enrich"]][..],
        ),
        (
            "UPDATE assignment_rows SET assigned_at = 9223372036854775807 \
              WHERE flag = 'dedupe' AND context_id = 1",
            "assignment_rows: the assignment (context_id 1, flag \"dedupe\") cannot be read: \
             assigned_at holds 9223372036854775807 milliseconds, not text",
            &[
                &["check"][..],
                &["assignments", "list"],
                &["eval", "dedupe", "--context", "tenant:ü"],
            ][..],
        ),
        (
            "UPDATE contexts SET key = CAST(key AS BLOB) WHERE key = 'tenant:ü'",
            "contexts: context 1 cannot be read: key holds a BLOB of 9 bytes, not text",
            &[&["check"][..], &["assignments", "list"]][..],
        ),
        (
            "UPDATE flags SET name = CAST(name AS BLOB) WHERE name = 'legacy'",
            "flags: the flag named \"legacy\" cannot be read: name holds a BLOB of 6 bytes, \
             not text",
            &[
                &["check"][..],
                &["flag", "list"],
                &["eval", "ingest", "--context", "k"],
            ][..],
        ),
        (
            // Past the reference to flags, which the BLOB no longer meets (check names that).
            "PRAGMA foreign_keys = OFF; \
             UPDATE flag_dependencies SET requires = CAST(requires AS BLOB) WHERE flag = 'dedupe'",
            "flag_dependencies: a requirement of \"dedupe\" cannot be read: requires holds a \
             BLOB of 6 bytes, not text",
            &[&["flag", "list"][..], &["eval", "ingest", "--context", "k"]][..],
        ),
        (
            "UPDATE assignment_rows SET rollout_pct = 'abc' WHERE flag = 'dedupe' AND context_id = 1",
            "assignment_rows: the assignment (context_id 1, flag \"dedupe\") cannot be read: \
             rollout_pct holds text, not a number",
            &[
                &["check"][..],
                &["assignments", "list"],
                &["eval", "--all", "--context", "tenant:ü"],
                &["explain", "dedupe", "--context", "tenant:ü"],
            ][..],
        ),
        (
            "UPDATE assignment_rows SET assigned_at = X'0102030405' \
              WHERE flag = 'dedupe' AND context_id = 1",
            "assignment_rows: the assignment (context_id 1, flag \"dedupe\") cannot be read: \
             assigned_at holds a BLOB of 5 bytes, not text",
            &[
                &["check"][..],
                &["assignments", "list"],
                &["eval", "dedupe", "--context", "tenant:ü"],
            ][..],
        ),
        (
            // Past the reference to flags, which the BLOB no longer meets (check names that).
            "PRAGMA foreign_keys = OFF; \
             UPDATE assignment_rows SET flag = CAST(flag AS BLOB) \
              WHERE flag = 'dedupe' AND context_id = 1",
            "assignment_rows: the assignment (context_id 1, flag \"dedupe\") cannot be read: \
             flag holds a BLOB of 6 bytes, not text",
            &[
                &["eval", "dedupe", "--context", "tenant:ü"][..],
                &["explain", "enrich", "--context", "tenant:ü"],
            ][..],
        ),
        (
            "INSERT INTO api_tokens (name, token_sha256, created_at, role) \
             VALUES ('ci', hex(randomblob(32)), X'41', 'viewer')",
            "api_tokens: the token named \"ci\" cannot be read: created_at holds a BLOB of 1 \
             byte, not text",
            &[&["check"][..], &["token", "list"]][..],
        ),
        (
            "INSERT INTO api_tokens (name, token_sha256, created_at, role) \
             VALUES (CAST('ci' AS BLOB), hex(randomblob(32)), '2026-12-07T00:00:00.000Z', 'viewer')",
            "api_tokens: the token named \"ci\" cannot be read: name holds a BLOB of 2 bytes, \
             not text",
            &[&["check"][..], &["token", "list"]][..],
        ),
    ] {
        let env = store_with_history();
        tamper(&env, sql);
        for args in readers {
            let stderr = env.fails(args);
            assert!(
                stderr.starts_with(&format!("flagstore: {named}")) && stderr.lines().count() == 1,
                "{sql}, {args:?}: {stderr}"
            );
        }
    }
}

/// The verifier printed in the README for reviewers is the script the tests run.
#[test]
fn the_readme_verifier_is_the_tested_script() {
    let readme = include_str!("../../README.md");
    let script = include_str!("../../scripts/verify_audit_chain.py");
    let start = readme
        .find("```python\n#!/usr/bin/env python3")
        .expect("the README shows the verifier")
        + "```python\n".len();
    let end = start + readme[start..].find("```\n").unwrap();
    assert_eq!(&readme[start..end], script);
}

/// The script re-hashes an export as it does the database: the export carries exactly what
/// each hash covers, `detail` as the text hashed (numbers such as 1e-7 spelt as stored).
fn an_export_is_rehashed_by_the_script_as_the_database_is() {
    let env = store_with_history();
    env.ok(&["flag", "set", "enrich", "--rollout", "0.0000001"]);
    env.ok(&["flag", "set", "ingest", "--rollout", "0.00001"]);
    env.ok(&["eval", "--all", "--context", "tiny rollouts"]);
    let verified = env.ok(&["audit", "verify"]);
    let export = env.write("audit.jsonl", env.ok(&["audit", "export"]));
    assert_eq!(
        script_on(&export, false),
        (Some(0), verified, String::new())
    );

    let rows = rows(&env);
    let tail = env.write("tail.jsonl", env.ok(&["audit", "export", "--after", "3"]));
    let (code, said, stderr) = script_on(&tail, false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        said.starts_with(&format!(
            "audit log verified: {} rows (rows 4..{rows} of an export, row 4's prev_hash as given)",
            rows - 3
        )),
        "{said}"
    );

    let text = std::fs::read_to_string(&export).unwrap();
    let edited = text.replacen("\"actor\":\"tester\"", "\"actor\":\"mallory\"", 1);
    let first_edited = text[..text.find("\"actor\":\"tester\"").unwrap()]
        .lines()
        .count();
    let export = env.write("edited.jsonl", edited);
    assert_eq!(
        script_on(&export, false),
        (
            Some(2),
            String::new(),
            format!(
                "audit log does not verify: row {first_edited}: hash does not match the row's \
                 contents\n"
            )
        )
    );
}

/// A move row whose order is not a list of names (rewritten, its hash recomputed, as the last
/// row of the chain) cannot be replayed: check names the row instead of guessing an order.
#[test]
fn a_move_row_without_an_order_is_named_by_check() {
    let env = store_with_history();
    let mut file: serde_json::Value = serde_json::from_str(PIPELINE).unwrap();
    file["flags"].as_array_mut().unwrap().reverse();
    let reordered = env.write("reordered.json", file.to_string());
    env.ok(&["import", "--replace", reordered.to_str().unwrap()]);
    env.ok(&["check"]);
    let store = env.open_store();
    let last = rows(&env);
    let mut row = store.stored_audit_rows(last, last).unwrap().remove(0);
    drop(store);
    assert_eq!(row.action.as_deref(), Some("move"));
    row.detail = r#"{"order":5}"#.into();
    let hash = row.expected_hash(&row.prev_hash);
    tamper(
        &env,
        &format!(
            "UPDATE audit_log SET detail = '{{\"order\":5}}', hash = '{hash}' WHERE id = {last}"
        ),
    );
    env.ok(&["audit", "verify"]);
    assert_eq!(
        env.fails(&["check"]),
        format!("flagstore: audit row {last} cannot be read: detail.order: not a list of names")
    );
}

/// SQLite only: reads the row to forge with rusqlite.
#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let env = store_with_history();
    let conn = env.sql();
    let row6 = {
        let mut statement = conn
            .prepare("SELECT id, ts, kind, actor, action, flag, context_key, result, source, reason, detail, prev_hash FROM audit_log WHERE id = 6")
            .unwrap();
        statement
            .query_row([], |r| {
                Ok(flagstore::audit::AuditRow {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    kind: r.get(2)?,
                    actor: r.get(3)?,
                    action: r.get(4)?,
                    flag: r.get(5)?,
                    context_key: r.get(6)?,
                    result: r.get(7)?,
                    source: r.get(8)?,
                    reason: Some("forged".to_string()),
                    detail: r.get(10)?,
                    prev_hash: r.get(11)?,
                    hash: String::new(),
                })
            })
            .unwrap()
    };
    let forged_hash = row6.expected_hash(&row6.prev_hash);
    tamper(
        &env,
        &format!("UPDATE audit_log SET reason = 'forged', hash = '{forged_hash}' WHERE id = 6;"),
    );
    let message = env.fails(&["audit", "verify"]);
    assert!(
        message.starts_with("flagstore: audit log does not verify at row 7: prev_hash"),
        "{message}"
    );
    assert!(message.ends_with("(broken link)"), "{message}");
}

fn a_deleted_middle_row_is_named() {
    let env = store_with_history();
    tamper(&env, "DELETE FROM audit_log WHERE id = 4;");
    assert_eq!(
        env.fails(&["audit", "verify"]),
        "flagstore: audit log does not verify at row 5: expected row 4 next: rows 4..4 are missing"
    );
}

fn deleted_last_rows_are_caught_by_a_checkpoint_or_expected_head() {
    let env = store_with_history();
    let checkpoint = env.dir.path().join("checkpoint.json");
    env.ok(&["audit", "checkpoint", "-o", checkpoint.to_str().unwrap()]);
    let head = env
        .ok(&["audit", "verify"])
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    // The log may grow after a checkpoint: that still verifies.
    env.ok(&["eval", "ingest", "--context", "later"]);
    env.ok(&[
        "audit",
        "verify",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    env.ok(&["audit", "verify", "--expect-head", &head]);

    let total = rows(&env);
    tamper(
        &env,
        &format!("DELETE FROM audit_log WHERE id >= {};", total - 2),
    );
    // The chain that is left is sound, so only the anchor can tell.
    env.ok(&["audit", "verify"]);
    let message = env.fails(&[
        "audit",
        "verify",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    assert_eq!(
        message,
        format!(
            "flagstore: audit log does not contain checkpoint {head} at row {}: it has {} rows that verify (rows deleted from the end, or the chain rewritten)",
            total - 1,
            total - 3
        )
    );
    let message = env.fails(&["audit", "verify", "--expect-head", &head]);
    assert!(
        message.contains(&format!("does not contain checkpoint {head}: it has")),
        "{message}"
    );
}

fn a_bad_checkpoint_file_is_named() {
    let env = store_with_history();
    let shape =
        r#"expected {"id": N, "hash": "64 hex digits"} as written by `flagstore audit checkpoint`"#;
    for (contents, why) in [
        (
            "not json",
            format!("expected ident at line 1 column 2; {shape}"),
        ),
        (r#"[1, "abc"]"#, format!(r#"got [1,"abc"]; {shape}"#)),
        (
            r#"{"id": 3, "hash": "abc"}"#,
            format!(r#"got {{"id":3,"hash":"abc"}}; {shape}"#),
        ),
    ] {
        let bad = env.write("checkpoint.json", contents);
        assert_eq!(
            env.fails(&["audit", "verify", "--checkpoint", bad.to_str().unwrap()]),
            format!("flagstore: {}: not a checkpoint file: {why}", bad.display())
        );
    }
}

/// The lines `check` prints on stderr, after asserting that it failed (exit 2, nothing on
/// stdout), each without the store's name before it.
fn check_failures(env: &Env) -> Vec<String> {
    let output = env.cmd().arg("check").output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty());
    let prefix = format!("flagstore: {}: ", env.shown());
    stderr
        .lines()
        .map(|line| line.strip_prefix(&prefix).unwrap_or(line).to_string())
        .collect()
}

/// The chain holds rows, not the schema that guards them: a dropped (or, on PostgreSQL,
/// disabled or emptied) trigger, a redefined view and an added index leave no row, and
/// `check` names each against the schema the migrations make.
fn check_names_schema_objects_dropped_altered_or_added() {
    let env = store_with_history();
    env.ok(&["check"]);
    // Each change lets rows be rewritten or reviewers' SQL answer otherwise, with no row in
    // the chain: the view now answers nothing.
    let (tampered, found) = match env.backend {
        Backend::Sqlite => (
            "DROP TRIGGER audit_log_no_delete; \
             DROP VIEW audit_evaluations; \
             CREATE VIEW audit_evaluations AS SELECT id AS audit_id FROM audit_log WHERE 0; \
             CREATE INDEX by_actor ON audit_rows (actor_id)",
            vec![
                "schema: trigger audit_log_no_delete is missing (the migrations made it)",
                "schema: view audit_evaluations is not the one the migrations made",
                "schema: index by_actor was added (the migrations made no such index)",
            ],
        ),
        Backend::Postgres => (
            "ALTER TABLE audit_rows DISABLE TRIGGER audit_log_no_update; \
             CREATE OR REPLACE FUNCTION audit_ranges_refuse_change() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$; \
             DROP TRIGGER audit_log_no_truncate ON audit_rows; \
             DROP VIEW audit_evaluations; \
             CREATE VIEW audit_evaluations AS SELECT id AS audit_id FROM audit_log WHERE false; \
             CREATE INDEX by_actor ON audit_rows (actor_id)",
            vec![
                "schema: function audit_ranges_refuse_change is not the one the migrations made",
                "schema: trigger audit_log_no_truncate on audit_rows is missing (the migrations made it)",
                "schema: trigger audit_log_no_update on audit_rows is not the one the migrations made",
                "schema: view audit_evaluations is not the one the migrations made",
                "schema: index by_actor was added (the migrations made no such index)",
            ],
        ),
    };
    env.execute(tampered).unwrap();
    let mut expected: Vec<String> = found.iter().map(|line| line.to_string()).collect();
    expected.push(format!(
        "{} difference(s) between the live state and the audit chain (listed above)",
        found.len()
    ));
    assert_eq!(check_failures(&env), expected);
}

/// Every `api_tokens` row is explained by the token change rows: an admin token inserted by
/// SQL (which serve would accept), a role raised and a revocation undone are each named.
fn check_names_token_rows_the_chain_does_not_explain() {
    let env = store_with_history();
    env.ok(&["token", "create", "worker"]);
    env.ok(&["token", "create", "retired", "--role", "operator"]);
    env.ok(&["token", "revoke", "retired"]);
    env.ok(&["token", "create", "swapped", "--role", "admin"]);
    env.ok(&["check"]);
    let sha256 = |text: &str| -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let bound = sha256(&env.text("SELECT token_sha256 FROM api_tokens WHERE name = 'swapped'"));
    // The digest of a token the writer knows, under the name of an admin token.
    let forged = sha256("fst_chosen_by_the_writer");
    env.execute(&format!(
        "INSERT INTO api_tokens (name, token_sha256, role, created_at) VALUES \
             ('mallory', '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef', \
              'admin', '2026-12-06T00:00:00.000Z'); \
         UPDATE api_tokens SET role = 'admin' WHERE name = 'worker'; \
         UPDATE api_tokens SET revoked_at = NULL WHERE name = 'retired'; \
         UPDATE api_tokens SET token_sha256 = '{forged}' WHERE name = 'swapped'"
    ))
    .unwrap();
    let lines = check_failures(&env);
    let retired_at =
        env.text("SELECT ts FROM audit_log WHERE action = 'token_revoke' ORDER BY id DESC LIMIT 1");
    assert_eq!(
        lines,
        [
            "api_tokens: token \"mallory\" is stored, but no change row created it".to_string(),
            format!(
                "api_tokens: token \"retired\": revoked_at is (none) in the table, {retired_at} \
                 by its change rows"
            ),
            format!(
                "api_tokens: token \"swapped\": the SHA-256 of token_sha256 is {} in the table, \
                 {bound} by its change rows",
                sha256(&forged)
            ),
            "api_tokens: token \"worker\": role is admin in the table, viewer by its change rows"
                .to_string(),
            "4 difference(s) between the live state and the audit chain (listed above)".to_string(),
        ]
    );
}

/// The chain protects the log, not the table beside it: a writer with SQL access who turns a
/// flag off (or changes its rollout, requirements or policy) without a change row is named
/// by `check`, one line per field with both values, and check exits 2.
fn check_names_flags_edited_without_a_change_row() {
    let env = store_with_history();
    env.ok(&["check"]);
    env.execute(
        "UPDATE flags SET enabled = 0 WHERE name = 'ingest'; \
         UPDATE flags SET rollout_pct = 90, sticky = 'all' WHERE name = 'enrich'; \
         DELETE FROM flag_dependencies WHERE flag = 'dedupe'",
    )
    .unwrap();
    let output = env.cmd().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let shown = env.shown();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "flagstore: {shown}: flags: flag \"ingest\": enabled is false in the table, true by its change rows"
            ),
            format!(
                "flagstore: {shown}: flags: flag \"dedupe\": requires is [] in the table, [ingest] by its change rows"
            ),
            format!(
                "flagstore: {shown}: flags: flag \"enrich\": rollout_pct is 90 in the table, 25 by its change rows"
            ),
            format!(
                "flagstore: {shown}: flags: flag \"enrich\": sticky is all in the table, on_only by its change rows"
            ),
            format!(
                "flagstore: {shown}: 4 difference(s) between the live state and the audit chain (listed above)"
            ),
        ]
    );
}

/// A flag served from a definition no change row made, then put back: the table and its
/// change rows agree again, but the record written meanwhile says what was served, and check
/// names it against the definitions in force then.
fn check_names_a_record_decided_by_a_definition_no_change_row_made() {
    let env = store_with_history();
    env.execute("UPDATE flags SET rollout_pct = 100 WHERE name = 'enrich'")
        .unwrap();
    env.ok(&["eval", "--all", "--context", "served-while-edited"]);
    env.execute("UPDATE flags SET rollout_pct = 25 WHERE name = 'enrich'")
        .unwrap();
    let record = env.count("SELECT max(id) FROM audit_log");
    let bucket = flagstore::bucket("enrich", "served-while-edited");
    assert!(
        bucket >= 25,
        "the key must be one the real rollout leaves out"
    );
    assert_eq!(
        check_failures(&env),
        [
            format!(
                "audit_log: record {record}, context \"served-while-edited\": flag \"enrich\" is \
                 recorded on (rollout: bucket {bucket} < 100), but its rollout was 25 in the \
                 definitions in force then"
            ),
            "1 difference(s) between the live state and the audit chain (listed above)".into(),
        ]
    );
}

/// Flipping a stored sticky decision changes what is served while the record that stored it
/// says the opposite: check names the assignment, both values and the record.
fn check_names_an_assignment_that_differs_from_its_record() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "enrich", "rollout_pct": 30}]}"#);
    // Python: int(hashlib.md5(b"enrich:k14").hexdigest(), 16) % 100 == 12, under 30: on.
    env.ok(&["eval", "enrich", "--context", "k14"]);
    env.ok(&["check"]);
    let record = env.count("SELECT max(id) FROM audit_log");
    let flip = match env.backend {
        Backend::Sqlite => "UPDATE assignment_rows SET decision = 0",
        Backend::Postgres => "UPDATE assignments SET decision = 0",
    };
    env.execute(flip).unwrap();
    let output = env.cmd().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.lines().next().unwrap(),
        format!(
            "flagstore: {}: assignments: flag \"enrich\", context \"k14\": decision false, \
             bucket 12, rollout 30 in the table, decision true, bucket 12, rollout 30 in record \
             {record} that stored it",
            env.shown()
        )
    );
}

/// A sticky assignment deleted by SQL flips its context silently (on to a fresh rollout): the
/// record that stored it is named, while assignments an audited reset or a flag's deletion
/// removed are not.
fn check_names_an_assignment_deleted_without_a_reset() {
    let env = Env::new();
    env.import_json(
        r#"{"flags": [{"name": "enrich", "rollout_pct": 30}, {"name": "gone"},
                      {"name": "score", "sticky": "all"}]}"#,
    );
    // Python: int(hashlib.md5(b"enrich:k14").hexdigest(), 16) % 100 == 12, under 30: on.
    env.ok(&["eval", "enrich", "gone", "score", "--context", "k14"]);
    env.ok(&["eval", "score", "--context", "k15"]);
    let record = env.count("SELECT min(id) FROM audit_log WHERE kind = 'evaluation'");
    // Removed on the record: score's for k15 by a reset, gone's with the flag.
    env.ok(&[
        "assignments",
        "reset",
        "--flag",
        "score",
        "--context",
        "k15",
    ]);
    env.ok(&["flag", "delete", "gone"]);
    env.ok(&["check"]);
    let delete = match env.backend {
        Backend::Sqlite => {
            "DELETE FROM assignment_rows WHERE flag = 'enrich' \
               AND context_id = (SELECT id FROM contexts WHERE key = 'k14')"
        }
        Backend::Postgres => "DELETE FROM assignments WHERE flag = 'enrich'",
    };
    env.execute(delete).unwrap();
    assert_eq!(
        check_failures(&env),
        [
            format!(
                "assignments: flag \"enrich\", context \"k14\": stored by record {record}, \
                 missing from the table, and no audited reset or deletion removed it"
            ),
            "1 difference(s) between the live state and the audit chain (listed above)".to_string(),
        ]
    );
}

/// An assignment an audited reset removed, put back by SQL, sends its context the old answer
/// again: each row is still one some record stored, so check names the reset after it.
fn check_names_an_assignment_put_back_after_its_reset() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "enrich", "rollout_pct": 30}]}"#);
    // Python: int(hashlib.md5(b"enrich:k14").hexdigest(), 16) % 100 == 12, under 30: on.
    env.ok(&["eval", "enrich", "--context", "k14"]);
    let record = env.count("SELECT max(id) FROM audit_log");
    env.ok(&[
        "assignments",
        "reset",
        "--flag",
        "enrich",
        "--context",
        "k14",
    ]);
    let reset = env.count("SELECT max(id) FROM audit_log");
    env.ok(&["check"]);
    env.execute(&format!(
        "INSERT INTO assignments (flag, context_key, decision, bucket, rollout_pct, assigned_at) \
         SELECT 'enrich', 'k14', 1, 12, 30, ts FROM audit_log WHERE id = {record}"
    ))
    .unwrap();
    assert_eq!(
        check_failures(&env),
        [
            format!(
                "assignments: flag \"enrich\", context \"k14\": in the table, but change row \
                 {reset} removed what record {record} stored"
            ),
            "1 difference(s) between the live state and the audit chain (listed above)".to_string(),
        ]
    );
}

/// On SQLite a context's audit rows are found by its number (schema 10), which the hash does
/// not cover: a row refiled under another context would vanish from `audit --context` and from
/// the reviewers' view by context. check names it.
#[test]
fn check_names_an_audit_row_filed_under_another_context() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "enrich", "rollout_pct": 30}]}"#);
    env.ok(&["eval", "enrich", "--context", "k14"]);
    env.ok(&["eval", "enrich", "--context", "k15"]);
    env.ok(&["check"]);
    let record = env.count("SELECT max(id) FROM audit_log");
    let by_context = ["audit", "--context", "k15", "--format", "jsonl"];
    assert_eq!(env.ok(&by_context).lines().count(), 1);
    env.tamper(&format!(
        "UPDATE audit_log SET context_id = (SELECT id FROM contexts WHERE key = 'k14') \
          WHERE id = {record}"
    ));
    assert_eq!(env.ok(&by_context), "", "the record is hidden");
    assert_eq!(
        check_failures(&env),
        [
            format!(
                "audit_log: row {record}, of context \"k15\", is filed under another context \
                 number: queries by context do not find it"
            ),
            "1 difference(s) between the live state and the audit chain (listed above)".to_string(),
        ]
    );
}

/// Deleting a flag's ranges hides its decision records from `audit --flag`: check names the
/// flag and the records, and exits 2; `check --repair-index` adds them back as one audited
/// change row, after which the flag's audit reads as before and the whole store checks out.
/// A range listing records that do not decide its flag cannot be removed (the table is
/// append-only): check names it and keeps exiting 2.
fn check_finds_and_repairs_a_flags_missing_decision_index() {
    let env = store_with_history();
    let audit_enrich = [
        "audit",
        "--flag",
        "enrich",
        "--kind",
        "evaluation",
        "--asc",
        "--format",
        "jsonl",
    ];
    let before = env.ok(&audit_enrich);
    let records = env.count("SELECT count(*) FROM audit_evaluations WHERE flag = 'enrich'");
    assert_eq!(records, 2);
    let first = env.count("SELECT min(audit_id) FROM audit_evaluations WHERE flag = 'enrich'");
    let last = env.count("SELECT max(audit_id) FROM audit_evaluations WHERE flag = 'enrich'");
    // enrich taken out of every set that lists it, wherever it stands in the list.
    env.tamper(
        "UPDATE audit_flag_sets SET flags = replace(replace(replace(flags, \
         ',\"enrich\"', ''), '\"enrich\",', ''), '\"enrich\"', '')",
    );
    assert_eq!(env.ok(&audit_enrich), "", "the records are hidden");
    let shown = env.shown();
    let missing = format!(
        "flagstore: {shown}: audit_flag_ranges: flag \"enrich\": 2 decision records missing \
         from its ranges (records {first}-{last}), so audit --flag does not show them; \
         check --repair-index adds them"
    );
    let output = env.cmd().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8(output.stderr)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            missing.as_str(),
            &format!(
                "flagstore: {shown}: 1 difference(s) between the live state and the audit chain \
                 (listed above)"
            ),
        ]
    );

    let rows_before_repair = rows(&env);
    let repaired = env.ok(&["check", "--repair-index"]);
    assert!(
        repaired.starts_with(&format!(
            "audit_flag_ranges: flag \"enrich\": 2 decision records added back (records \
             {first}-{last}), recorded as change row {}\nstore checked: ",
            rows_before_repair + 1
        )),
        "{repaired}"
    );
    assert_eq!(env.ok(&audit_enrich), before);
    env.ok(&["check"]);
    let history = env.ok(&["history", "enrich"]);
    assert!(
        history.contains("index repaired: 2 decision records"),
        "{history}"
    );

    // A range that lists a change row for ingest: harmless to queries, but not what the
    // records imply, and not removable by flagstore.
    let change = env.count("SELECT max(id) FROM audit_log WHERE kind = 'change'");
    env.tamper(&format!(
        "INSERT INTO audit_flag_sets (id, flags) VALUES (100, '[\"ingest\"]'); \
         INSERT INTO audit_ranges (first_id, last_id, flag_set) VALUES ({change}, {change}, 100)"
    ));
    let output = env
        .cmd()
        .args(["check", "--repair-index"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
        format!(
            "flagstore: {shown}: audit_flag_ranges: flag \"ingest\": 1 id in its ranges \
             beyond its records, each once (record {change}: change rows, records not asked for \
             it, ids past the log's end, or records listed twice); only the table's owner can \
             remove the range"
        )
    );
}

/// Ranges name their flags through a set, and a set's text is only JSON to the database: one
/// that is not a list of names, which a role that may append to the index can write, lists no
/// flag. `check` names it; queries by flag read past it.
fn check_names_a_flag_set_that_lists_no_flags() {
    let env = store_with_history();
    let audit_enrich = ["audit", "--flag", "enrich", "--format", "jsonl"];
    let before = env.ok(&audit_enrich);
    let record = env.count("SELECT max(id) FROM audit_log WHERE kind = 'evaluation'");
    env.execute(&format!(
        "INSERT INTO audit_flag_sets (id, flags) VALUES (100, '{{\"enrich\": 1}}'); \
         INSERT INTO audit_ranges (first_id, last_id, flag_set) VALUES ({record}, {record}, 100)"
    ))
    .unwrap();
    assert_eq!(
        check_failures(&env),
        [
            "audit_flag_sets: set 100 is not a JSON list of flag names ({\"enrich\": 1}), so the \
             ranges naming it list no flag",
            "1 difference(s) between the live state and the audit chain (listed above)",
        ]
    );
    assert_eq!(env.ok(&audit_enrich), before);
    // SQLite keeps a value of any type in a TEXT column: a BLOB is named the same way, not
    // an error that stops every query by flag and check itself.
    if env.backend == Backend::Sqlite {
        env.execute(&format!(
            "INSERT INTO audit_flag_sets (id, flags) VALUES (101, X'5b5d'); \
             INSERT INTO audit_ranges (first_id, last_id, flag_set) VALUES ({record}, {record}, 101)"
        ))
        .unwrap();
        assert_eq!(
            check_failures(&env)[1],
            "audit_flag_sets: set 101 is not a JSON list of flag names (a BLOB of 2 bytes), so \
             the ranges naming it list no flag"
        );
        assert_eq!(env.ok(&audit_enrich), before);
    }
}

/// A role that may append to the index can add a range that overlaps a flag's own (ranges as
/// flagstore writes them never do): `audit --flag` showed each record it repeats twice. Newest
/// first every record shows once; oldest first the query is refused, naming both ranges, since
/// records may be owed before those already shown; check names the ids the range adds.
fn a_range_that_repeats_records_shows_each_once_or_is_named() {
    let env = store_with_history();
    let newest_first = ["audit", "--flag", "enrich", "--format", "jsonl"];
    let oldest_first = ["audit", "--flag", "enrich", "--asc", "--format", "jsonl"];
    let before = env.ok(&newest_first);
    let before_oldest_first = env.ok(&oldest_first);
    let first = env.count("SELECT min(audit_id) FROM audit_evaluations WHERE flag = 'enrich'");
    let last = env.count("SELECT max(audit_id) FROM audit_evaluations WHERE flag = 'enrich'");
    env.execute(&format!(
        "INSERT INTO audit_ranges (first_id, last_id, flag_set) \
           SELECT 1, {last}, id FROM audit_flag_sets WHERE flags = '[\"enrich\"]'; \
         INSERT INTO audit_ranges (first_id, last_id, flag_set) \
           SELECT {last}, 1, id FROM audit_flag_sets WHERE flags = '[\"enrich\"]'"
    ))
    .unwrap();
    assert_eq!(env.ok(&newest_first), before);
    // The rows streamed before the range is met stand: each once, in order.
    let refused = env.cmd().args(oldest_first).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(refused.stderr).unwrap(),
        format!(
            "flagstore: audit_ranges: ranges 1-{last} and {first}-{first} of flag \"enrich\" \
             overlap, so records oldest first cannot be shown once each and in order; check \
             names the ids the wrong one lists; newest first they show once each\n"
        )
    );
    let shown = String::from_utf8(refused.stdout).unwrap();
    assert!(before_oldest_first.starts_with(&shown), "{shown}");
    assert_eq!(
        check_failures(&env),
        [
            format!(
                "audit_flag_ranges: flag \"enrich\": {last} ids in its ranges beyond its \
                 records, each once (records 1-{last}: change rows, records not asked for it, \
                 ids past the log's end, or records listed twice); only the table's owner can \
                 remove the range"
            )
            .as_str(),
            "1 difference(s) between the live state and the audit chain (listed above)",
        ]
    );
}

/// Verification reads the log a page of 5,000 rows at a time and hashes each page on another
/// thread while the next is read: an edit is named at its row in a later page too, and a
/// checkpoint there is found; an untouched log of several pages verifies to its head.
fn an_edit_deep_in_a_long_log_is_named_at_its_row() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let keys: String = (0..12_000).map(|i| format!("tenant-{i}\n")).collect();
    let contexts = env.dir.path().join("contexts.txt");
    std::fs::write(&contexts, keys).unwrap();
    env.ok(&[
        "eval",
        "ingest",
        "--contexts-file",
        contexts.to_str().unwrap(),
    ]);
    let total = rows(&env);
    assert!(total > 12_000, "{total}");
    let head = env.ok(&["audit", "verify"]);
    assert!(
        head.starts_with(&format!("audit log verified: {total} rows, head ")),
        "{head}"
    );
    let checkpoint = env.dir.path().join("checkpoint.json");
    std::fs::write(
        &checkpoint,
        format!(
            r#"{{"id": 11000, "hash": "{}"}}"#,
            env.texts("SELECT hash FROM audit_log WHERE id = 11000")[0]
        ),
    )
    .unwrap();
    let with_checkpoint = [
        "audit",
        "verify",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ];
    assert_eq!(env.ok(&with_checkpoint), head);
    tamper(
        &env,
        "UPDATE audit_log SET actor = 'someone else' WHERE id = 11000",
    );
    let broken = "audit log does not verify at row 11000: hash does not match the row's \
                  contents (the row was edited)";
    assert_eq!(
        env.fails(&["audit", "verify"]),
        format!("flagstore: {broken}")
    );
    assert_eq!(env.fails(&with_checkpoint), format!("flagstore: {broken}"));
}

contract_tests! {
    an_edit_deep_in_a_long_log_is_named_at_its_row,
    an_export_is_rehashed_by_the_script_as_the_database_is,
    check_names_a_record_decided_by_a_definition_no_change_row_made,
    check_names_an_assignment_deleted_without_a_reset,
    check_names_an_assignment_put_back_after_its_reset,
    check_names_token_rows_the_chain_does_not_explain,
    check_names_schema_objects_dropped_altered_or_added,
    check_finds_and_repairs_a_flags_missing_decision_index,
    check_names_a_flag_set_that_lists_no_flags,
    a_range_that_repeats_records_shows_each_once_or_is_named,
    check_names_an_assignment_that_differs_from_its_record,
    check_names_flags_edited_without_a_change_row,
    the_triggers_refuse_update_and_delete,
    a_deleted_middle_row_is_named,
    deleted_last_rows_are_caught_by_a_checkpoint_or_expected_head,
    a_bad_checkpoint_file_is_named,
}
