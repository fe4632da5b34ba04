//! Concurrency, crashes, a full disk, damaged files and a clock that goes backwards.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Backend, Env, succeeded};
use flagstore::store::keys_per_transaction;
use serde_json::Value;

const FLAGS: &str = r#"{"flags": [
    {"name": "ingest"},
    {"name": "dedupe", "rollout_pct": 70, "requires": ["ingest"]},
    {"name": "enrich", "rollout_pct": 50, "requires": ["dedupe"], "sticky": "all"},
    {"name": "shadow", "rollout_pct": 30, "sticky": "none"}
]}"#;

fn binary() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("flagstore")
}

fn keys_file(env: &Env, name: &str, count: usize) -> std::path::PathBuf {
    let keys: String = (0..count).map(|i| format!("key-{i}\n")).collect();
    env.write(name, keys)
}

/// Every assignment was written together with the decision record that made it, and the
/// rest of what `flagstore check` proves.
fn every_assignment_is_audited(env: &Env) {
    env.ok(&["check"]);
}

fn integrity_ok(env: &Env) {
    let result: String = env
        .sql()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok");
}

#[test]
fn concurrent_batches_and_rollout_changes_never_split_a_decision() {
    let env = Env::new();
    env.import_json(FLAGS);
    // The workers read their keys from stdin, which this test feeds a transaction's worth at
    // a time: each rollout change is made while the workers evaluate the keys just fed, and
    // the last keys are fed only once it has committed, so the changes land in the middle of
    // the run on every machine (timing alone let a fast run finish before the last change).
    let per_transaction = keys_per_transaction(4);
    let workers: Vec<_> = (1..=4)
        .map(|worker| {
            let mut child = Command::new(binary())
                .args([
                    "--db",
                    env.db.to_str().unwrap(),
                    "--actor",
                    &format!("worker-{worker}"),
                ])
                .args(["eval", "--all", "--contexts-file", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            // Collected on a thread of its own, so that a full stdout pipe never stalls it.
            (
                stdin,
                std::thread::spawn(move || child.wait_with_output().unwrap()),
            )
        })
        .collect();
    let (mut inputs, outputs): (Vec<_>, Vec<_>) = workers.into_iter().unzip();
    let mut fed = 0;
    let mut feed = |inputs: &mut Vec<std::process::ChildStdin>, transactions: usize| {
        let keys: String = (fed..fed + transactions * per_transaction)
            .map(|i| format!("key-{i}\n"))
            .collect();
        for input in inputs.iter_mut() {
            input.write_all(keys.as_bytes()).unwrap();
        }
        fed += transactions * per_transaction;
        fed
    };
    // Some decisions are stored before the first change.
    let first = feed(&mut inputs, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'") < 4 * first as i64 {
        assert!(Instant::now() < deadline, "the workers made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The changes are made in this process, through the library, so that they contend for
    // the write lock with the workers' transactions rather than wait for a process start.
    let mut operator = env.open_store();
    for rollout in [20.0, 90.0] {
        feed(&mut inputs, 1);
        for flag in ["enrich", "dedupe"] {
            operator
                .modify("tester", "flag set", false, |current| {
                    let mut next = current.clone();
                    let mut changed = current.get(flag).unwrap().clone();
                    changed.rollout_pct = rollout;
                    next.insert(changed);
                    Ok(next)
                })
                .unwrap();
        }
    }
    drop(operator);
    let keys = feed(&mut inputs, 1);
    drop(inputs);
    for output in outputs {
        let output = output.join().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8(output.stdout).unwrap().lines().count(),
            keys
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        4 * keys as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_evaluations"),
        4 * keys as i64 * 4
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log c WHERE c.kind = 'change' AND c.action = 'update'
                AND EXISTS (SELECT 1 FROM audit_log e WHERE e.kind = 'evaluation' AND e.id > c.id)"
        ),
        4,
        "a rollout change landed after the workers had finished"
    );
    for worker in 1..=4 {
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM audit_evaluations WHERE actor = 'worker-{worker}'"
            )),
            keys as i64 * 4
        );
    }
    // Once an assignment was stored, every later evaluation of that flag and key gave its
    // decision (unless a requirement was off by then).
    assert_eq!(
        env.count("WITH stored AS (
                 SELECT a.flag, a.context_key, a.decision,
                        (SELECT min(l.id) FROM audit_log l
                          WHERE l.kind = 'evaluation' AND l.context_key = a.context_key
                            AND EXISTS (SELECT 1 FROM json_each(l.detail, '$.decisions') d
                                         WHERE json_extract(d.value, '$.flag') = a.flag
                                           AND json_extract(d.value, '$.assigned') = 1)) AS stored_at
                   FROM assignments a),
             seen AS (SELECT * FROM audit_evaluations)
             SELECT count(*) FROM stored s JOIN seen e
                 ON e.flag = s.flag AND e.context_key = s.context_key
              WHERE e.audit_id > s.stored_at AND e.result <> s.decision AND e.source <> 'dependency'"
        ),
        0,
        "a process saw a different decision than the stored assignment"
    );
    every_assignment_is_audited(&env);
    env.ok(&["audit", "verify"]);
}

#[test]
fn a_writer_held_up_past_the_busy_timeout_retries_and_succeeds() {
    let env = Env::new();
    env.import_json(FLAGS);
    let holder = env.sql();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(3_000));
        holder.execute_batch("COMMIT").unwrap();
    });
    let output = Command::new(binary())
        .args([
            "--db",
            env.db.to_str().unwrap(),
            "eval",
            "ingest",
            "--context",
            "k",
        ])
        .output()
        .unwrap();
    // Measured before joining the releaser, which itself takes 3 s.
    let waited = started.elapsed();
    releaser.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "true\n");
    assert!(
        waited >= Duration::from_millis(2_900),
        "it answered after {waited:?}, before the lock was released"
    );
}

/// Another connection holding the store's write lock: SQLite's, or on PostgreSQL flagstore's
/// advisory lock ("flag" in ASCII and a hash of the schema's name).
enum LockHolder {
    Sqlite(rusqlite::Connection),
    Postgres(::postgres::Client),
}

impl LockHolder {
    fn take(env: &Env) -> LockHolder {
        match env.backend {
            Backend::Sqlite => {
                let holder = env.sql();
                holder.execute_batch("BEGIN IMMEDIATE").unwrap();
                LockHolder::Sqlite(holder)
            }
            Backend::Postgres => {
                let mut holder = env.postgres();
                holder
                    .batch_execute(
                        "BEGIN; SELECT pg_advisory_xact_lock(1718378855, hashtext(current_schema()))",
                    )
                    .unwrap();
                LockHolder::Postgres(holder)
            }
        }
    }

    fn release(self) {
        match self {
            LockHolder::Sqlite(holder) => holder.execute_batch("COMMIT").unwrap(),
            LockHolder::Postgres(mut holder) => holder.batch_execute("COMMIT").unwrap(),
        }
    }
}

/// A writer told to stop waiting for the lock another connection holds (the Python package's
/// Ctrl-C) stops within a turn (SQLite's busy handler, PostgreSQL's lock_timeout) and writes
/// nothing; one told to go on waits across its turns and gets the lock once it is free.
fn a_writer_asked_to_stop_waiting_stops_having_written_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = Env::new();
    env.import_json(FLAGS);
    let rows = env.count("SELECT count(*) FROM audit_log");
    let holder = LockHolder::take(&env);
    let mut store = env.open_store();
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::clone(&stop);
    store.set_keep_waiting(Arc::new(move || !asked.load(Ordering::SeqCst)));
    let selection = flagstore::Selection::Flags(vec!["ingest".to_string()]);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        Instant::now()
    });
    let outcome = store.evaluate(&selection, "k", "tester");
    let returned = Instant::now();
    let stopped = stopper.join().unwrap();
    assert!(
        matches!(outcome, Err(flagstore::Error::Interrupted)),
        "{outcome:?}"
    );
    let late = returned - stopped;
    assert!(
        late < Duration::from_millis(150),
        "it stopped {late:?} after being asked"
    );
    holder.release();
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), rows);

    let holder = LockHolder::take(&env);
    let mut store = env.open_store();
    store.set_keep_waiting(Arc::new(|| true));
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        holder.release();
    });
    let evaluated = store.evaluate(&selection, "k", "tester").unwrap();
    releaser.join().unwrap();
    assert!(evaluated[0].decision.enabled);
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), rows + 1);
}

#[test]
fn readers_do_not_block_writers_and_keep_their_snapshot() {
    let env = Env::new();
    env.import_json(FLAGS);
    let reader = env.sql();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader
        .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    // The reader's transaction stays open until after the write: a writer blocked by readers
    // could only fail here (after its retry budget), never succeed.
    env.ok(&["eval", "--all", "--context", "k"]);
    let during: i64 = reader
        .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(during, before, "the reader's snapshot moved");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), before + 1);
}

/// Every read of one `Store::read` sees one state: a change and an evaluation committed by
/// another process after the view's first read are in none of its later reads (so a page's
/// version names the definition it shows), and in the next view.
fn a_view_reads_one_state_while_another_process_writes() {
    let env = Env::new();
    env.import_json(FLAGS);
    let store = env.open_store();
    let first_version = store.flag_version("dedupe").unwrap();
    let (version, rollout, tally, history) = store
        .read(|view| -> flagstore::Result<_> {
            let version = view.flag_version("dedupe")?;
            env.ok(&["flag", "set", "dedupe", "--rollout", "100"]);
            env.ok(&["eval", "dedupe", "--context", "k"]);
            let record = view.flag("dedupe")?.expect("dedupe exists");
            let tally = view.assignment_tally("dedupe", 100.0)?;
            let changes = flagstore::audit::AuditQuery {
                flag: Some("dedupe".to_string()),
                kind: Some("change".to_string()),
                ..Default::default()
            };
            let mut history = 0;
            view.query_audit(&changes, |_| {
                history += 1;
                Ok::<(), flagstore::Error>(())
            })?;
            Ok((
                version,
                record.flag.rollout_pct,
                tally.on + tally.off,
                history,
            ))
        })
        .unwrap();
    assert_eq!(version, first_version);
    assert_eq!(rollout, 70.0, "the view saw a later definition");
    assert_eq!(tally, 0, "the view saw a later assignment");
    assert_eq!(history, 1, "the view saw a later change row");
    store
        .read(|view| -> flagstore::Result<()> {
            assert!(view.flag_version("dedupe")? > version);
            assert_eq!(
                view.flag("dedupe")?
                    .expect("dedupe exists")
                    .flag
                    .rollout_pct,
                100.0
            );
            let tally = view.assignment_tally("dedupe", 100.0)?;
            assert_eq!(tally.on + tally.off, 1);
            Ok(())
        })
        .unwrap();
}

contract_tests! {
    a_view_reads_one_state_while_another_process_writes,
    a_writer_asked_to_stop_waiting_stops_having_written_nothing,
    check_names_an_assignment_whose_flag_is_gone,
}

/// A flag deleted by SQL leaves its assignments behind (on SQLite with foreign keys off; on
/// PostgreSQL, whose schema 15 leaves an assignment's flag to the writer, as SQLite's writer
/// does, instead of a check per inserted row): `check` names the first such assignment.
fn check_names_an_assignment_whose_flag_is_gone() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "ingest", "rollout_pct": 100}]}"#);
    env.ok(&["eval", "ingest", "--context", "tenant:a"]);
    env.ok(&["check"]);
    let delete = "DELETE FROM flags WHERE name = 'ingest'";
    match env.backend {
        Backend::Sqlite => env.execute(&format!("PRAGMA foreign_keys = OFF; {delete}")),
        Backend::Postgres => env.execute(delete),
    }
    .unwrap();
    let row = match env.backend {
        Backend::Sqlite => r#"assignment_rows row (context_id 1, flag "ingest")"#,
        Backend::Postgres => r#"assignments row (flag "ingest", context_key "tenant:a")"#,
    };
    let refused = env.fails(&["check"]);
    assert!(
        refused.contains(&format!("{row} refers to a missing row of flags")),
        "{refused}"
    );
}

/// A small deterministic generator, so a failing crash iteration can be replayed by seed.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// A number from the environment, for running the crash loops longer or replaying one.
fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn crash_iterations() -> usize {
    from_env("FLAGSTORE_CRASH_ITERATIONS", 20)
}

#[test]
fn a_batch_killed_at_random_moments_leaves_a_sound_store() {
    let seed = from_env("FLAGSTORE_CRASH_SEED", 0x5eed);
    let mut random = Random(seed);
    let reference = Env::new();
    reference.import_json(FLAGS);
    let keys = keys_file(&reference, "keys.txt", 20_000);
    let started = Instant::now();
    let expected = reference.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    // Kill moments are scaled to what a whole run takes on this machine now, so they land
    // mid-batch on a fast machine and on a loaded one alike.
    let whole_run = started.elapsed().as_millis() as u64;

    let env = Env::new();
    env.import_json(FLAGS);
    let mut interrupted = 0;
    for iteration in 0..crash_iterations() {
        let mut child = Command::new(binary())
            .args([
                "--db",
                env.db.to_str().unwrap(),
                "eval",
                "--all",
                "--contexts-file",
            ])
            .arg(&keys)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // The run commits 20 transactions; this lands in the first few.
        std::thread::sleep(Duration::from_millis(
            whole_run / 40 + random.below(whole_run / 4),
        ));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        integrity_ok(&env);
        every_assignment_is_audited(&env);
        let evaluations = env.count("SELECT count(*) FROM audit_evaluations");
        assert_eq!(
            evaluations % 4,
            0,
            "seed {seed} iteration {iteration}: half an evaluation"
        );
    }
    let evaluated =
        env.count("SELECT count(DISTINCT context_key) FROM audit_log WHERE kind = 'evaluation'");
    assert!(
        evaluated > 0 && interrupted > 0,
        "the kills did not land mid-batch: {interrupted} runs interrupted, {evaluated} keys done"
    );
    env.ok(&["audit", "verify"]);
    let rerun = env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    assert_eq!(
        rerun, expected,
        "answers changed after crashes (seed {seed})"
    );
}

#[test]
fn an_import_killed_at_random_moments_is_all_or_nothing() {
    let seed = from_env("FLAGSTORE_CRASH_SEED", 0x1e5);
    let mut random = Random(seed);
    let env = Env::new();
    let flags: Vec<Value> = (0..3_000)
        .map(|i| {
            let requires: Vec<String> = if i > 0 { vec![format!("f{:04}", i - 1)] } else { vec![] };
            serde_json::json!({"name": format!("f{i:04}"), "rollout_pct": i % 101, "requires": requires})
        })
        .collect();
    let file = env.write(
        "big.json",
        serde_json::json!({ "flags": flags }).to_string(),
    );
    let mut interrupted = 0;
    for iteration in 0..crash_iterations() {
        let mut child = Command::new(binary())
            .args(["--db", env.db.to_str().unwrap(), "import", "--replace"])
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(random.below(150)));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reopened through flagstore, as a user would: a kill before the schema committed
        // must leave a store that opens, not a file it refuses.
        let (stored, changes) = if env.db.exists() {
            let export: Value = serde_json::from_str(&env.ok(&["export"])).unwrap();
            let changes = env.ok(&[
                "audit", "--kind", "change", "--limit", "0", "--format", "jsonl",
            ]);
            (
                export["flags"].as_array().unwrap().len(),
                changes.lines().count(),
            )
        } else {
            (0, 0)
        };
        integrity_ok(&env);
        assert!(
            stored == 0 || stored == 3_000,
            "seed {seed} iteration {iteration}: {stored} flags"
        );
        assert!(
            changes == 0 || changes == 3_000,
            "seed {seed} iteration {iteration}: {changes} change rows"
        );
        if stored == 0 {
            interrupted += 1;
        }
        if stored == 3_000 {
            // Start again from an empty store so the next kill lands on a real import.
            std::fs::remove_file(&env.db).unwrap();
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", env.db.display()));
            }
        }
    }
    assert!(
        interrupted > 0,
        "no kill landed before the import committed: the test proved nothing"
    );
}

/// A tiny tmpfs mounted for one test and unmounted when dropped. Needs root, as CI has.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(kib: u32) -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs for the disk-full test needs root (CI runs as root)"
        );
        TinyDisk { dir }
    }

    fn resize(&self, kib: u32) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_works_again_with_space() {
    let disk = TinyDisk::mount(12 * 1024);
    let env = Env::new();
    let db = disk.dir.path().join("flags.db");
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(binary())
            .arg("--db")
            .arg(&db)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_string();
        // The command may stop reading early (that is the point of a full disk).
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(stdin.as_bytes());
        });
        let output = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        output
    };
    let flags = env.write("flags.json", FLAGS);
    assert!(
        run(&["import", flags.to_str().unwrap()], "")
            .status
            .success()
    );
    let keys: String = (0..50_000).map(|i| format!("key-{i}\n")).collect();
    let full = run(&["eval", "--all", "--contexts-file", "-"], &keys);
    assert_eq!(full.status.code(), Some(2));
    let stderr = String::from_utf8(full.stderr).unwrap();
    assert_eq!(
        stderr,
        format!("flagstore: {}: database or disk is full\n", db.display())
    );
    let written = String::from_utf8(full.stdout).unwrap().lines().count();
    assert!(
        written > 0
            && written < 50_000
            && written.is_multiple_of(flagstore::store::keys_per_transaction(4)),
        "{written} lines"
    );

    // What was acknowledged is all there, and only that: whole transactions.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let evaluations: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE kind = 'evaluation'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(evaluations, written as i64);
    // Take whatever room the failed batch left, so the next write cannot fit either.
    let filler = disk.dir.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0u8; 4096]).is_ok() {}
    drop(file);
    let before = crate::common::snapshot(&db);
    // Far larger than any room SQLite kept in its files: a small write may still fit there.
    let many: Vec<Value> = (0..20_000)
        .map(|i| serde_json::json!({"name": format!("bulk-{i:05}"), "rollout_pct": 5}))
        .collect();
    let many = env.write(
        "many.json",
        serde_json::json!({ "flags": many }).to_string(),
    );
    let refused = run(&["import", many.to_str().unwrap()], "");
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a write on a full disk: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(conn);
    assert_eq!(
        crate::common::snapshot(&db),
        before,
        "a refused write changed the store"
    );
    std::fs::remove_file(&filler).unwrap();

    disk.resize(64 * 1024);
    let some_keys: String = keys.lines().take(3_000).map(|k| format!("{k}\n")).collect();
    let again = run(&["eval", "--all", "--contexts-file", "-"], &some_keys);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let verify = run(&["audit", "verify"], "");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

fn checkpointed_store() -> (Env, Vec<u8>) {
    let env = Env::new();
    env.import_json(FLAGS);
    let keys = keys_file(&env, "keys.txt", 3_000);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    env.sql()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let bytes = std::fs::read(&env.db).unwrap();
    (env, bytes)
}

/// Writes `damaged` over the database and checks that a command reading all of it fails
/// with one line naming the file, and leaves the file exactly as damaged.
fn refused_untouched(env: &Env, damaged: &[u8]) {
    std::fs::write(&env.db, damaged).unwrap();
    let message = env.fails(&["audit", "verify"]);
    let named = format!("flagstore: {}: ", env.db.display());
    assert!(message.starts_with(&named), "{message}");
    assert!(message.contains("malformed"), "{message}");
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        damaged,
        "the file was modified"
    );
}

#[test]
fn a_truncated_database_is_refused_untouched() {
    let (env, bytes) = checkpointed_store();
    refused_untouched(&env, &bytes[..bytes.len() / 2]);
}

/// Every table and index of the schema (and the schema itself, page 1) by its root page, with
/// the table it belongs to.
fn btree_roots(env: &Env) -> Vec<(String, String, usize)> {
    let conn = env.sql();
    let mut statement = conn
        .prepare(
            "SELECT name, tbl_name, rootpage FROM sqlite_master WHERE rootpage > 0 \
             ORDER BY rootpage",
        )
        .unwrap();
    let mut roots: Vec<(String, String, usize)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as usize))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    roots.insert(0, ("sqlite_master".into(), "sqlite_master".into(), 1));
    roots
}

/// `check` names a damaged page of any B-tree, and `audit verify` one of the audit trail's
/// (the schema, the rows, the actors their hashes name, and their indexes). Verify reads no
/// page of the contexts' and assignments' B-trees, so that its time grows with the trail
/// alone: those it passes over, whatever else opening the store reads it names.
#[test]
fn a_damaged_page_of_any_table_or_index_is_reported_not_repaired() {
    let (env, bytes) = checkpointed_store();
    let roots = btree_roots(&env);
    assert!(roots.len() >= 11, "{roots:?}");
    let page = 4096;
    let mut passed_by_verify = Vec::new();
    for (name, table, root) in roots {
        let mut damaged = bytes.clone();
        let start = (root - 1) * page;
        // Page 1 starts with the file header; damage its B-tree part only.
        let start = if root == 1 { start + 100 } else { start };
        damaged[start..root * page].fill(0xA5);
        let audit_trail = ["sqlite_master", "audit_rows", "actors"].contains(&table.as_str());
        for command in [&["audit", "verify"][..], &["check"][..]] {
            std::fs::write(&env.db, &damaged).unwrap();
            let out = env.std_cmd().args(command).output().unwrap();
            let message = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                assert!(
                    command[0] == "audit" && !audit_trail,
                    "{name} {command:?} passed"
                );
                passed_by_verify.push(table.clone());
                continue;
            }
            assert!(
                message.starts_with(&format!("flagstore: {}", env.db.display())),
                "{name} {command:?}: {message}"
            );
            assert!(
                message.contains("malformed") || message.contains("not a database"),
                "{name} {command:?}: {message}"
            );
            assert_eq!(
                std::fs::read(&env.db).unwrap(),
                damaged,
                "{name} {command:?}: the file was modified"
            );
        }
    }
    for outside in ["contexts", "assignment_rows"] {
        assert!(
            passed_by_verify.iter().any(|table| table == outside),
            "{passed_by_verify:?}"
        );
    }
}

#[test]
fn ids_order_the_log_when_the_clock_goes_backwards() {
    use chrono::{TimeZone, Utc};
    use flagstore::audit::{AuditQuery, parse_time_bound};
    use flagstore::{Flag, FlagSet, Selection, Store};

    let mut store = Store::open_in_memory().unwrap();
    let later = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let earlier = Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap();
    store.set_clock(move || later);
    store
        .modify("ops", "import", false, |_| {
            Ok([Flag::new("f")].into_iter().collect::<FlagSet>())
        })
        .unwrap();
    store.set_clock(move || earlier);
    store.evaluate(&Selection::All, "k", "ops").unwrap();

    let mut rows = Vec::new();
    let all = AuditQuery {
        ascending: true,
        ..AuditQuery::default()
    };
    store
        .query_audit(&all, |row| {
            rows.push((row.id, row.ts.to_string()));
            Ok::<(), flagstore::Error>(())
        })
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, "2026-11-23T12:00:00.000Z".to_string()),
            (2, "2026-11-23T11:00:00.000Z".to_string())
        ]
    );
    let window = AuditQuery {
        since: Some(parse_time_bound("2026-11-23T11:00:00Z", false).unwrap()),
        until: Some(parse_time_bound("2026-11-23T12:00:00Z", true).unwrap()),
        ..all.clone()
    };
    let mut in_window = 0;
    store
        .query_audit(&window, |_| {
            in_window += 1;
            Ok::<(), flagstore::Error>(())
        })
        .unwrap();
    assert_eq!(
        in_window, 2,
        "a range query lost a row written while the clock was back"
    );
    assert_eq!(store.verify_audit(None).unwrap().rows, 2);
}

#[test]
fn concurrent_first_opens_of_a_new_database_all_succeed() {
    for round in 0..25 {
        let env = Env::new();
        let flags = env.write("flags.json", FLAGS);
        let openers: Vec<_> = (0..6)
            .map(|_| env.spawn(&["import", flags.to_str().unwrap()]))
            .collect();
        for opener in openers {
            succeeded(opener);
        }
        assert_eq!(env.count("SELECT count(*) FROM flags"), 4, "round {round}");
        assert_eq!(
            env.count("SELECT count(*) FROM audit_log WHERE kind = 'change'"),
            4,
            "round {round}: the flags were created more than once"
        );
    }
}

/// A first migration killed after refinery created its history table but before the schema
/// committed left a file holding only that empty table.
#[test]
fn a_store_whose_first_migration_was_interrupted_is_finished_not_refused() {
    let env = Env::new();
    env.sql()
        .execute_batch(
            "CREATE TABLE refinery_schema_history (version INT4 PRIMARY KEY, name VARCHAR(255),
                 applied_on VARCHAR(255), checksum VARCHAR(255));",
        )
        .unwrap();
    env.import_json(FLAGS);
    assert_eq!(env.count("SELECT count(*) FROM flags"), 4);
}

#[test]
fn a_writer_busy_past_its_retry_budget_reports_the_lock_and_writes_nothing() {
    use flagstore::{Flag, FlagSet, Selection};

    let env = Env::new();
    let mut store = env.open_store();
    store
        .modify("ops", "import", false, |_| {
            Ok([Flag::new("f")].into_iter().collect::<FlagSet>())
        })
        .unwrap();
    let holder = env.sql();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    store.set_lock_wait(Duration::from_millis(300));
    let started = Instant::now();
    let error = store.evaluate(&Selection::All, "k", "ops").unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "gave up before its budget"
    );
    assert_eq!(
        error.at_database(store.path()).to_string(),
        format!("{}: database is locked", env.db.display())
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(env.count("SELECT count(*) FROM audit_log"), 1);
}

#[test]
fn check_passes_a_sound_store_and_names_broken_references() {
    let (env, _) = checkpointed_store();
    let report = env.ok(&["check"]);
    assert!(
        report.starts_with("store checked: pages and indexes sound, foreign keys hold, "),
        "{report}"
    );
    let assignments = env.count("SELECT count(*) FROM assignments");
    assert!(
        report.contains(&format!(" {assignments} assignments ")),
        "{report}"
    );

    env.sql()
        .execute(
            "INSERT INTO assignments VALUES ('ingest', 'forged', 1, 3, 100, '2026-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
    assert_eq!(
        env.fails(&["check"]),
        format!(
            "flagstore: {0}: assignments: flag \"ingest\", context \"forged\": in the table, \
             but no evaluation record stored it\n\
             flagstore: {0}: 1 difference(s) between the live state and the audit chain (listed \
             above)",
            env.db.display()
        )
    );
    env.sql()
        .execute_batch(
            "DELETE FROM assignments WHERE context_key = 'forged';
             PRAGMA foreign_keys = OFF; DELETE FROM flags WHERE name = 'ingest';",
        )
        .unwrap();
    // assignment_rows has no rowid for SQLite to name its row by: its key names it.
    let message = env.fails(&["check"]);
    assert!(
        message.contains(
            "assignment_rows row (context_id 1, flag \"ingest\") refers to a missing row of flags"
        ),
        "{message}"
    );
}

#[test]
fn an_export_that_cannot_be_written_keeps_the_old_file() {
    let disk = TinyDisk::mount(1024);
    let env = Env::new();
    env.import_json(FLAGS);
    let target = disk.dir.path().join("flags.json");
    std::fs::write(&target, "the previous export\n").unwrap();
    let filler = disk.dir.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0u8; 4096]).is_ok() {}
    drop(file);
    let message = env.fails(&["export", "-o", target.to_str().unwrap()]);
    assert_eq!(
        message,
        format!(
            "flagstore: cannot write {}: No space left on device (os error 28)",
            target.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "the previous export\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(disk.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "a temporary file was left: {leftovers:?}"
    );
}

/// What one request to `serve` got: its HTTP status and body (status 0: no answer).
fn ask_serve(agent: &ureq::Agent, url: &str, token: &str, key: &str) -> (u16, String) {
    match agent
        .post(format!("{url}/ofrep/v1/evaluate/flags/enrich"))
        .header("X-API-Key", token)
        .send(format!(r#"{{"context": {{"targetingKey": "{key}"}}}}"#))
    {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

fn health(agent: &ureq::Agent, url: &str) -> u16 {
    agent
        .get(format!("{url}/healthz"))
        .call()
        .map_or(0, |response| response.status().as_u16())
}

/// `serve` on a 32 MB volume: the WAL stays bounded, so 4,000 requests all succeed; when a
/// filler takes the rest of the volume, requests fail naming the database and /healthz says
/// 503; within 10 s of the filler going, /healthz says 200 by itself and requests succeed;
/// every request answered 200 has its decision record, and the chain verifies.
#[test]
fn serve_on_a_small_volume_bounds_its_wal_and_recovers_from_a_full_disk() {
    let disk = TinyDisk::mount(32 * 1024);
    let env = Env::new();
    let db = disk.dir.path().join("flags.db");
    let db_arg = db.to_str().unwrap();
    let flags = env.write("flags.json", FLAGS);
    env.ok(&["--db", db_arg, "import", flags.to_str().unwrap()]);
    let token = env.ok(&["--db", db_arg, "token", "create", "worker"]);
    let token = token.trim();
    let server = crate::common::Server::start(&env, &["--db", db_arg]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answered: Vec<String> = Vec::new();
    let wal = disk.dir.path().join("flags.db-wal");
    let mut wal_peak = 0;
    let statuses: Vec<(String, u16, String)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let (agent, url) = (agent.clone(), &server.url);
                scope.spawn(move || {
                    (0..500)
                        .map(|i| {
                            let key = format!("before-{client}-{i}");
                            let (status, body) = ask_serve(&agent, url, token, &key);
                            (key, status, body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        while !clients.iter().all(|c| c.is_finished()) {
            wal_peak = wal_peak.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(Duration::from_millis(2));
        }
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let failed: Vec<_> = statuses.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(wal_peak < 16 << 20, "the WAL grew to {wal_peak} bytes");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size < 4 << 20, "the database is {size} bytes");
    answered.extend(statuses.into_iter().map(|(key, _, _)| key));

    // Fill the volume, then ask until a write needs room it cannot get.
    let filler = disk.dir.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0u8; 65536]).is_ok() {}
    drop(file);
    let mut failure = None;
    for i in 0..20_000 {
        let key = format!("full-{i}");
        match ask_serve(&agent, &server.url, token, &key) {
            (200, _) => answered.push(key),
            (status, body) => {
                failure = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = failure.expect("a request failed on the full volume");
    assert_eq!(status, 500, "{body}");
    // The client gets an id; the server's log has the detail, naming the file.
    let id = body
        .split("internal error ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    assert_eq!(health(&agent, &server.url), 503);

    // Space returns. No evaluation is sent until /healthz, trying a write of its own once its
    // hold after the failure is over, says the store takes writes again.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while health(&agent, &server.url) != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "/healthz still 503 10 s after space returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "small volume: WAL peak {wal_peak} bytes over 4,000 requests, database {size} bytes, \
         /healthz 200 again {:?} after space returned",
        freed.elapsed()
    );
    let key = "after".to_string();
    assert_eq!(ask_serve(&agent, &server.url, token, &key).0, 200);
    answered.push(key);
    let mut server = server;
    server.signal("TERM");
    let (_, log) = server.exit();
    assert!(
        log.contains(&format!(
            "flagstore serve: internal error {id}: {}: database or disk is full",
            db.display()
        )),
        "{log}"
    );
    let recorded: std::collections::HashSet<String> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT context_key FROM audit_log WHERE kind = 'evaluation'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let lost: Vec<&String> = answered.iter().filter(|k| !recorded.contains(*k)).collect();
    assert!(lost.is_empty(), "answered but not recorded: {lost:?}");
    env.ok(&["--db", db_arg, "audit", "verify"]);
}

/// A whole-log export whose reader stops reading (a slow client, a pipe nobody drains) holds
/// no snapshot while it waits: serve's writes meanwhile keep the WAL bounded, where one read
/// transaction for the whole export kept SQLite from ever restarting the WAL. The export still
/// shows the log as it was when it began.
#[test]
fn a_stalled_export_does_not_pin_the_wal_while_serve_writes() {
    let env = Env::new();
    env.import_json(FLAGS);
    let token = env.ok(&["token", "create", "worker"]);
    let token = token.trim();
    let keys = keys_file(&env, "keys.txt", 3_000);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    let mut export = env.spawn(&["audit", "--asc", "--limit", "0", "--format", "jsonl"]);
    let mut stdout = std::io::BufReader::new(export.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    // The export is now blocked on its full pipe, part-way through the log.
    let server = crate::common::Server::start(&env, &[]);
    let wal = env.db.with_extension("db-wal");
    let mut wal_peak = 0;
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let url = &server.url;
                scope.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    for i in 0..250 {
                        let key = format!("during-{client}-{i}");
                        assert_eq!(ask_serve(&agent, url, token, &key).0, 200);
                    }
                })
            })
            .collect();
        while !clients.iter().all(|c| c.is_finished()) {
            wal_peak = wal_peak.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(Duration::from_millis(2));
        }
        for client in clients {
            client.join().unwrap();
        }
    });
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(export.wait().unwrap().success());
    // 4 flags created and a token: 5 change rows; then 3,000 keys' decisions on 4 flags.
    assert_eq!(
        1 + rest.lines().count(),
        5 + 3_000 * 4,
        "rows as the export began"
    );
    eprintln!("stalled export: WAL peak {wal_peak} bytes over 2,000 requests");
    assert!(wal_peak < 12 << 20, "the WAL grew to {wal_peak} bytes");
}

/// The sync calls (`fsync`, `fdatasync`) `flagstore ARGS` makes on `env`'s store, as strace
/// shows them with the path of the file synced (`fdatasync(5</tmp/.../flags.db-wal>)`); with
/// `variables` in its environment. `None` (saying so) without strace (`.ci/run` installs it).
fn syncs(env: &Env, variables: &[(&str, &std::path::Path)], args: &[&str]) -> Option<Vec<String>> {
    let strace = std::path::Path::new("/usr/bin/strace");
    if !strace.exists() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: a sync test: no /usr/bin/strace (apt-get install strace, as .ci/run does)"
        );
        return None;
    }
    let log = env.dir.path().join("syncs.txt");
    let command = env.std_cmd();
    let mut traced = Command::new(strace);
    traced
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&log)
        .arg(command.get_program())
        .args(command.get_args())
        .args(args)
        .current_dir(env.dir.path());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => traced.env(name, value),
            None => traced.env_remove(name),
        };
    }
    for (name, value) in variables {
        traced.env(name, value);
    }
    let traced = traced.output().unwrap();
    assert!(traced.status.success(), "{traced:?}");
    Some(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
            .collect(),
    )
}

/// The bundled SQLite is built with `HAVE_FDATASYNC` (`.cargo/config.toml`): without it SQLite
/// syncs with `fsync`, which on ext4 also writes the inode for its new times, a second write
/// and wait per commit.
#[test]
fn sqlite_syncs_with_fdatasync() {
    let env = Env::new();
    env.import_json(FLAGS);
    let Some(calls) = syncs(&env, &[], &["eval", "enrich", "--context", "k"]) else {
        return;
    };
    // The commit, and the checkpoint as the process closes the store.
    assert!(
        calls.iter().filter(|c| c.starts_with("fdatasync(")).count() >= 2,
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("fsync(")), "{calls:?}");
}

/// A signed head is published once it is on disk: the heads file is synced after the commit
/// whose rows it covers.
#[test]
fn a_signed_head_is_synced_to_its_file() {
    let env = Env::new();
    env.import_json(FLAGS);
    let signing = env.signing();
    let variables = [
        ("FLAGSTORE_SIGNING_KEY", signing.key.as_path()),
        ("FLAGSTORE_HEADS", signing.heads.as_path()),
    ];
    let Some(calls) = syncs(&env, &variables, &["eval", "enrich", "--context", "k"]) else {
        return;
    };
    let synced = |name: &str| calls.iter().position(|c| c.contains(&format!("{name}>")));
    let commit = synced("flags.db-wal").expect("the commit synced the WAL");
    let head = synced("heads.jsonl").unwrap_or_else(|| panic!("heads file not synced: {calls:?}"));
    assert!(commit < head, "{calls:?}");
    assert_eq!(
        std::fs::read_to_string(&signing.heads)
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// `check` sorts the whole log by context, and a sort larger than the page cache spills to
/// SQLite's temporary directory. Where that is full, check says so and names it, not the
/// database, whose disk it does not write; with room it passes.
#[test]
fn check_names_a_full_temporary_directory_not_the_database() {
    let tiny = TinyDisk::mount(1024);
    let env = Env::new();
    env.ok(&[
        "import",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.json"),
    ]);
    // About 30 MB of records and assignments to sort: more than the 16 MB page cache.
    let keys: String = (0..60_000u64)
        .map(|i| format!("{:032x}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let keys = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    assert_eq!(
        env.fails_with(&[("SQLITE_TMPDIR", tiny.dir.path())], &["check"]),
        format!(
            "flagstore: {}: the temporary directory {} is full: SQLite sorts there what \
             outgrows its memory (check's sort of the log by context takes about half the \
             database's size); set SQLITE_TMPDIR to a directory with room",
            env.db.display(),
            tiny.dir.path().display()
        )
    );
    env.ok(&["check"]);
}
