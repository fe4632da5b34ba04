//! What is particular to PostgreSQL: connection errors, schemas flagstore must not touch,
//! copies to and from SQLite, and many processes sharing one store. Skipped, saying so, when
//! `$FLAGSTORE_TEST_POSTGRES` is unset (the contract suite covers every command on both).

use crate::common::{Env, LATEST_POSTGRES_SCHEMA, PIPELINE, Server, succeeded, use_postgres};

/// `flagstore ARGS --db URL` in a scratch directory, expected to fail with one line.
fn fails_with(url: &str, args: &[&str]) -> String {
    let env = Env::new();
    let output = env.cmd().args(args).arg("--db").arg(url).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn connection_errors_name_the_server_and_database_never_the_password() {
    if !use_postgres() {
        return;
    }
    let refused = fails_with(
        "postgres://alice:hunter2@127.0.0.1:1/flags",
        &["flag", "list"],
    );
    assert!(
        refused.starts_with(
            "flagstore: postgres://alice@127.0.0.1:1/flags: error connecting to server: "
        ),
        "{refused}"
    );
    let base = std::env::var(crate::common::POSTGRES_VARIABLE).unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let missing = fails_with(
        &format!("{server}/no_such_database_here"),
        &["flag", "list"],
    );
    assert!(
        missing
            .contains("/no_such_database_here: database \"no_such_database_here\" does not exist"),
        "{missing}"
    );
    let bad = fails_with(
        "postgres://alice:hunter2@127.0.0.1:notaport/x",
        &["flag", "list"],
    );
    assert!(bad.contains("not a PostgreSQL URL"), "{bad}");
    // This server trusts local connections, so an unknown role is the credential it refuses.
    let host = server.rsplit_once('@').map_or(server, |(_, host)| host);
    let stranger = fails_with(
        &format!("postgres://no_such_role:hunter2@{host}/test"),
        &["flag", "list"],
    );
    assert!(
        stranger.contains(": role \"no_such_role\" does not exist"),
        "{stranger}"
    );
    for message in [refused, missing, bad, stranger] {
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn a_schema_with_other_tables_or_a_newer_flagstores_is_refused_untouched() {
    if !use_postgres() {
        return;
    }
    let foreign = Env::new();
    foreign.execute("CREATE TABLE invoices (id int)").unwrap();
    let message = foreign.fails(&["flag", "list"]);
    assert_eq!(
        message,
        format!(
            "flagstore: {} is not a flagstore database: it is a PostgreSQL schema with tables of its own",
            foreign.shown()
        )
    );
    assert_eq!(foreign.count("SELECT count(*) FROM invoices"), 0);
    assert_eq!(
        foreign.count(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ),
        1
    );

    let newer = Env::new();
    newer.import_json(PIPELINE);
    newer
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
        )
        .unwrap();
    let before = newer.snapshot();
    assert_eq!(
        newer.fails(&["eval", "ingest", "--context", "k"]),
        format!(
            "flagstore: {} was migrated by a newer flagstore (schema version 99; this flagstore knows up to {LATEST_POSTGRES_SCHEMA})",
            newer.shown()
        )
    );
    assert_eq!(newer.snapshot(), before);
}

/// `flagstore ARGS --db SQLITE` in `env`'s directory, expected to succeed: an SQLite store
/// beside the PostgreSQL one, to copy from.
fn on_sqlite_file(env: &Env, sqlite: &std::path::Path, args: &[&str]) -> String {
    let mut full = vec!["--db", sqlite.to_str().unwrap()];
    full.extend(args);
    env.ok(&full)
}

#[test]
fn a_store_copied_to_postgres_and_back_keeps_every_row_and_its_head() {
    if !use_postgres() {
        return;
    }
    let postgres = Env::new();
    let sqlite = postgres.dir.path().join("original.db");
    let original = |args: &[&str]| on_sqlite_file(&postgres, &sqlite, args);
    original(&[
        "import",
        postgres.write("flags.json", PIPELINE).to_str().unwrap(),
    ]);
    original(&["eval", "--all", "--context", "tenant:ü"]);
    original(&["flag", "set", "enrich", "--rollout", "25"]);
    original(&["eval", "enrich", "legacy", "--context", "other"]);
    let head = original(&["audit", "verify"]);

    let copied = original(&["copy", "--to", postgres.location.to_str().unwrap()]);
    assert!(copied.contains(": 4 flags, "), "{copied}");
    assert_eq!(postgres.ok(&["audit", "verify"]), head);
    for listing in [
        &["export"][..],
        &["assignments", "list"],
        &["audit", "--format", "jsonl"],
    ] {
        assert_eq!(postgres.ok(listing), original(listing), "{listing:?}");
    }

    let back = postgres.dir.path().join("back.db");
    postgres.ok(&["copy", "--to", back.to_str().unwrap()]);
    let mut verify = vec!["--db", back.to_str().unwrap(), "check"];
    let checked = postgres.ok(&verify);
    assert!(
        checked.ends_with(&head["audit log verified: ".len()..]),
        "{checked}"
    );
    verify[2] = "export";
    assert_eq!(postgres.ok(&verify), original(&["export"]));

    // A store that is not empty is refused, and left as it was.
    let before = postgres.snapshot();
    let message = postgres.fails(&[
        "copy",
        "--from",
        sqlite.to_str().unwrap(),
        "--to",
        postgres.location.to_str().unwrap(),
    ]);
    assert!(message.contains("is not empty (4 flags, "), "{message}");
    assert_eq!(postgres.snapshot(), before);
}

/// Four batch workers on the same keys, as on four machines, while an operator moves the
/// rollouts: every worker succeeds, all print the same decisions (the first stored one wins),
/// one assignment per (flag, key), and one unbroken chain.
#[test]
fn concurrent_batches_and_rollout_changes_share_one_store() {
    if !use_postgres() {
        return;
    }
    const KEYS: usize = 20_000;
    let env = Env::new();
    env.import_json(
        r#"{"flags": [{"name": "a", "rollout_pct": 50, "sticky": "all"},
                      {"name": "b", "rollout_pct": 30, "sticky": "all", "requires": ["a"]}]}"#,
    );
    let keys: String = (0..KEYS).map(|i| format!("tenant-{i}\n")).collect();
    let keys_file = env.write("keys.txt", keys);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            env.spawn(&[
                "eval",
                "--all",
                "--contexts-file",
                keys_file.to_str().unwrap(),
            ])
        })
        .collect();
    for rollout in ["10", "90", "40", "60"] {
        env.ok(&["flag", "set", "a", "--rollout", rollout]);
    }
    let outputs: Vec<String> = workers.into_iter().map(succeeded).collect();
    for output in &outputs[1..] {
        assert!(output == &outputs[0], "workers disagree");
    }
    assert_eq!(outputs[0].lines().count(), KEYS);
    // Every key has a's decision stored once; b's where a was on.
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE flag = 'a'"),
        KEYS as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        4 * KEYS as i64
    );
    // Ids are gapless: taken from the chain's head under the writer lock.
    assert_eq!(env.count("SELECT max(id) - count(*) FROM audit_log"), 0);
    env.ok(&["audit", "verify"]);
}

/// The server ends a batch's connection mid-run, twice: the transaction cut off is run again
/// on a new connection (or found committed, when the cut came during COMMIT), so the batch
/// finishes with every key answered and recorded exactly once.
#[test]
fn a_batch_whose_connection_is_cut_goes_on_and_records_every_key_once() {
    if !use_postgres() {
        return;
    }
    const KEYS: usize = 40_000;
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "a", "rollout_pct": 50, "sticky": "all"}]}"#);
    let keys: String = (0..KEYS).map(|i| format!("k{i}\n")).collect();
    let keys_file = env.write("keys.txt", keys);
    let name = format!("flagstore_lost_{}", std::process::id());
    let url = format!("{}&application_name={name}", env.location.to_str().unwrap());
    // The last --db given wins.
    let mut batch = env.spawn(&[
        "--db",
        &url,
        "eval",
        "a",
        "--contexts-file",
        keys_file.to_str().unwrap(),
    ]);
    // Read as it is written, or the batch stops on a full pipe.
    let mut stdout = batch.stdout.take().unwrap();
    let printed = std::thread::spawn(move || {
        let mut printed = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
        printed
    });
    for recorded in [1, 15_000] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'") < recorded {
            if let Some(status) = batch.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(batch.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("{status}: {stderr}");
            }
            assert!(std::time::Instant::now() < deadline, "no progress");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        env.execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{name}'"
        ))
        .unwrap();
    }
    let status = batch.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(printed.join().unwrap().lines().count(), KEYS);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        KEYS as i64
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT context_key) FROM audit_log WHERE kind = 'evaluation'"),
        KEYS as i64
    );
    assert_eq!(env.count("SELECT count(*) FROM assignments"), KEYS as i64);
    env.ok(&["check"]);
}

/// `serve` outlives its database connection: after the server ends it (a restart, an
/// administrator), the next request is answered on a new connection.
#[test]
fn serve_reconnects_after_postgres_drops_its_connection() {
    if !use_postgres() {
        return;
    }
    let env = Env::new();
    env.import_json(PIPELINE);
    let token = env.ok(&["token", "create", "worker"]).trim().to_string();
    let name = format!("flagstore_serve_{}", std::process::id());
    let url = format!("{}&application_name={name}", env.location.to_str().unwrap());
    let server = Server::start(&env, &["--db", &url]);
    let ask = |key: &str| {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("{}/ofrep/v1/evaluate/flags/ingest", server.url))
            .args(["-H", &format!("X-API-Key: {token}")])
            .args([
                "-d",
                &format!(r#"{{"context": {{"targetingKey": "{key}"}}}}"#),
            ])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    // Cut before the first request: its token is read on a new connection (a refusal as
    // unauthorized reached no evaluation that would reconnect, so every request was a 401).
    env.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    ))
    .unwrap();
    assert_eq!(ask("before"), "200");
    env.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    ))
    .unwrap();
    assert_eq!(ask("after"), "200");
    // And /healthz, the first thing to ask after a restart.
    env.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    ))
    .unwrap();
    let health = std::process::Command::new("curl")
        .args(["-s", &format!("{}/healthz", server.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'"),
        2
    );
    // The readers' pooled connections are ended too: the next reads open new ones.
    let read = || {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}/api/admin/v1/flags", server.url))
            .args(["-H", &format!("X-API-Key: {token}")])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(read(), "200");
    env.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    ))
    .unwrap();
    assert_eq!((read(), read()), ("200".to_string(), "200".to_string()));
}

/// The server ends serve's connection over and over while 8 clients send one-key requests:
/// some of the cuts land during COMMIT, where the group may or may not have committed. Every
/// request answered 200 has exactly one decision record, and one answered otherwise has none:
/// a group whose COMMIT landed is not evaluated a second time.
#[test]
fn connections_cut_during_commits_record_each_answered_request_once() {
    if !use_postgres() {
        return;
    }
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 300;
    const CUTS: usize = 30;
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "a", "rollout_pct": 50}]}"#);
    let token = env.ok(&["token", "create", "worker"]).trim().to_string();
    let name = format!("flagstore_cut_{}", std::process::id());
    let url = format!("{}&application_name={name}", env.location.to_str().unwrap());
    let server = Server::start(&env, &["--db", &url]);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let statuses: Vec<(String, u16)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (server, token, done) = (&server, &token, &done);
                scope.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let answered: Vec<(String, u16)> = (0..REQUESTS)
                        .map(|i| {
                            let key = format!("c{client}-{i}");
                            let status = agent
                                .post(format!("{}/ofrep/v1/evaluate/flags/a", server.url))
                                .header("X-API-Key", token)
                                .send(format!(r#"{{"context": {{"targetingKey": "{key}"}}}}"#))
                                .map_or(0, |response| response.status().as_u16());
                            (key, status)
                        })
                        .collect();
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    answered
                })
            })
            .collect();
        for _ in 0..CUTS {
            if done.load(std::sync::atomic::Ordering::SeqCst) == CLIENTS {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(15));
            env.execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{name}'"
            ))
            .unwrap();
        }
        clients
            .into_iter()
            .flat_map(|client| client.join().unwrap())
            .collect()
    });
    let mut records: std::collections::HashMap<String, i64> = Default::default();
    for key in env.texts("SELECT context_key FROM audit_log WHERE kind = 'evaluation'") {
        *records.entry(key).or_default() += 1;
    }
    let answered = statuses.iter().filter(|(_, status)| *status == 200).count();
    assert!(answered > CLIENTS * REQUESTS / 2, "{answered} answered");
    let wrong: Vec<String> = statuses
        .iter()
        .filter_map(|(key, status)| {
            let found = records.get(key).copied().unwrap_or(0);
            let expected = i64::from(*status == 200);
            (found != expected).then(|| format!("{key}: answered {status}, {found} records"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} wrong: {wrong:?}", wrong.len());
    env.ok(&["check"]);
}

/// The roles of the README's "PostgreSQL roles" section, made from its own SQL with names of
/// this run's own (roles belong to the whole server), dropped with everything granted to them.
struct ReadmeRoles {
    admin: postgres::Client,
    prefix: String,
}

impl ReadmeRoles {
    fn role(&self, readme_name: &str) -> String {
        readme_name.replace("flagstore_", &self.prefix)
    }

    /// The README's SQL block `block`, for this run's roles and for `schema` in place of public.
    fn sql(&self, block: &str, schema: &str) -> String {
        block
            .replace("flagstore_", &self.prefix)
            .replace("SCHEMA public", &format!("SCHEMA \"{schema}\""))
    }
}

impl Drop for ReadmeRoles {
    fn drop(&mut self) {
        let roles = ["owner", "writer", "reviewer"].map(|r| format!("{}{r}", self.prefix));
        let _ = self.admin.batch_execute(&format!(
            "DROP OWNED BY {0}; DROP ROLE {0}",
            roles.join(", ")
        ));
    }
}

/// The indented block that follows the README line containing `after`, unindented, with a
/// shell here-document's body taken from between its `<<'SQL'` and `SQL` lines.
fn readme_block(after: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut lines = readme.lines().skip_while(|line| !line.contains(after));
    lines
        .next()
        .unwrap_or_else(|| panic!("README: no line with {after:?}"));
    let block: Vec<&str> = lines
        .skip_while(|line| line.is_empty())
        .take_while(|line| line.starts_with("    "))
        .map(|line| &line[4..])
        .collect();
    match block.iter().position(|line| line.ends_with("<<'SQL'")) {
        Some(start) => block[start + 1..]
            .iter()
            .take_while(|line| **line != "SQL")
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
        None => block.join("\n"),
    }
}

/// What the server said, without the client's "db error" wrapping.
fn server_message(error: postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_string())
}

/// `url` connecting as `role` instead of its user.
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host_onwards = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host_onwards}")
}

#[test]
fn the_readme_roles_serve_and_review_and_the_writer_cannot_rewrite_history() {
    if !use_postgres() {
        return;
    }
    let base = std::env::var(crate::common::POSTGRES_VARIABLE).unwrap();
    let env = Env::new();
    let scratch = env.location.to_str().unwrap().to_string();
    let schema = scratch.rsplit_once("search_path%3D").unwrap().1.to_string();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let roles = ReadmeRoles {
        admin: postgres::Client::connect(&base, postgres::NoTls).unwrap(),
        prefix: format!("fs{}_{nanos}_", std::process::id()),
    };
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&roles.sql(&readme_block("As a superuser, once:"), &schema))
        .expect("the README's role block runs as written");
    let url = |role: &str| as_role(&scratch, &roles.role(role));
    // Each role's commands, without the harness's silencing of the owner warning.
    let run = |role: &str, args: &[&str]| {
        let output = env
            .std_cmd()
            .env_remove("FLAGSTORE_NO_OWNER_WARNING")
            .args(args)
            .arg("--db")
            .arg(url(role))
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };

    let (code, _, stderr) = run("flagstore_owner", &["init"]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let mut owner = postgres::Client::connect(&url("flagstore_owner"), postgres::NoTls).unwrap();
    owner
        .batch_execute(&roles.sql(&readme_block("creates the store and grants"), &schema))
        .expect("the README's grants run as the owner");

    let flags = env.dir.path().join("pipeline.json");
    std::fs::write(&flags, PIPELINE).unwrap();
    let writer_runs = [
        vec!["import", flags.to_str().unwrap()],
        vec!["eval", "--all", "--context", "tenant:1"],
        vec!["flag", "set", "enrich", "--rollout", "30"],
        vec!["assignments", "reset", "--flag", "enrich"],
        vec!["token", "create", "worker"],
        vec!["token", "list"],
        vec!["token", "revoke", "worker"],
    ];
    for args in &writer_runs {
        let (code, _, stderr) = run("flagstore_writer", args);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "writer: {args:?}");
    }
    let (_, token, _) = run("flagstore_writer", &["token", "create", "service"]);
    let server = {
        let mut cmd = env.std_cmd();
        cmd.env_remove("FLAGSTORE_NO_OWNER_WARNING");
        crate::common::Server::start_with(cmd, &["--db", &url("flagstore_writer")])
    };
    let answer = std::process::Command::new("curl")
        .args(["-s", "-X", "POST"])
        .arg(format!("{}/ofrep/v1/evaluate/flags/enrich", server.url))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["-d", r#"{"context": {"targetingKey": "tenant:2"}}"#])
        .output()
        .unwrap();
    let answer = String::from_utf8(answer.stdout).unwrap();
    assert!(answer.contains(r#""key":"enrich""#), "{answer}");
    drop(server);

    for args in [
        vec!["audit", "verify"],
        vec!["audit", "--flag", "enrich"],
        vec!["explain", "enrich", "--context", "tenant:1"],
        vec!["check"],
    ] {
        let (code, _, stderr) = run("flagstore_reviewer", &args);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "reviewer: {args:?}");
    }
    // A role may be allowed one connection: `check`, which reads on a second one beside its
    // walk where it can, then reads on the one it has.
    admin
        .batch_execute(&format!(
            "ALTER ROLE {} CONNECTION LIMIT 1",
            roles.role("flagstore_reviewer")
        ))
        .unwrap();
    let (code, _, stderr) = run("flagstore_reviewer", &["check"]);
    assert_eq!(
        (code, stderr.as_str()),
        (Some(0), ""),
        "one connection: check"
    );
    // The server frees the slot of `check`'s connection once its backend process has ended,
    // which can be just after `check` has: a busy machine refused this connection (53300).
    let mut reviewer = (0..100)
        .find_map(|_| {
            match postgres::Client::connect(&url("flagstore_reviewer"), postgres::NoTls) {
                Ok(client) => Some(client),
                Err(e) if e.code() == Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    None
                }
                Err(e) => panic!("the reviewer connects: {e}"),
            }
        })
        .expect("check's connection is let go within 5 s");
    let decisions: i64 = reviewer
        .query_one("SELECT count(*) FROM audit_evaluations", &[])
        .unwrap()
        .get(0);
    assert_eq!(decisions, 5, "every flag for tenant:1, enrich for tenant:2");
    for refused in [
        "INSERT INTO flags (name, enabled, rollout_pct, sticky) VALUES ('x', 1, 100, 'on_only')",
        "SELECT * FROM api_tokens",
    ] {
        let said = server_message(reviewer.batch_execute(refused).unwrap_err());
        assert!(said.contains("permission denied"), "{refused}: {said}");
    }

    let mut writer = postgres::Client::connect(&url("flagstore_writer"), postgres::NoTls).unwrap();
    for (table, column) in [
        ("audit_rows", "flag"),
        ("actors", "name"),
        ("audit_ranges", "last_id"),
        ("audit_flag_sets", "flags"),
    ] {
        for rewrite in [
            format!("ALTER TABLE {table} DISABLE TRIGGER USER"),
            format!("DELETE FROM {table}"),
            format!("UPDATE {table} SET {column} = {column}"),
            format!("TRUNCATE {table}"),
            format!("DROP TABLE {table}"),
        ] {
            let said = server_message(writer.batch_execute(&rewrite).unwrap_err());
            assert!(
                said.contains("permission denied") || said.contains("must be owner"),
                "writer: {rewrite}: {said}"
            );
        }
    }

    // A store made before schema 16: its writer was granted the old log, not the tables the
    // migration made, and is refused until the owner grants them as the README says.
    let writer_role = roles.role("flagstore_writer");
    owner
        .batch_execute(&format!(
            "REVOKE ALL ON audit_rows, actors FROM {writer_role}"
        ))
        .unwrap();
    let (code, _, refused) = run("flagstore_writer", &["eval", "--all", "--context", "t:9"]);
    assert_eq!(code, Some(2), "{refused}");
    assert!(
        refused.contains("permission denied for table actors"),
        "{refused}"
    );
    owner
        .batch_execute(&roles.sql(&readme_block("creates the store and grants"), &schema))
        .expect("the README's grants run again as the owner");
    let (code, _, stderr) = run("flagstore_writer", &["eval", "--all", "--context", "t:9"]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));

    let (code, _, warned) = run("flagstore_owner", &["flag", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        warned.trim_end(),
        format!(
            "flagstore: warning: role {} owns audit_log, so it can disable the triggers that keep \
             the audit trail append-only: run flagstore as a role that cannot (README: PostgreSQL \
             roles)",
            roles.role("flagstore_owner")
        )
    );
    let mut served_by_owner = {
        let mut cmd = env.std_cmd();
        cmd.env_remove("FLAGSTORE_NO_OWNER_WARNING");
        crate::common::Server::start_with(cmd, &["--db", &url("flagstore_owner")])
    };
    served_by_owner.signal("TERM");
    let (code, logged) = served_by_owner.exit();
    assert_eq!(code, Some(0));
    assert!(logged.starts_with(warned.trim_end()), "{logged}");
    let superuser = env
        .std_cmd()
        .env_remove("FLAGSTORE_NO_OWNER_WARNING")
        .args(["flag", "list", "--db", &scratch])
        .output()
        .unwrap();
    let warned = String::from_utf8(superuser.stderr).unwrap();
    assert!(
        warned.contains("is a superuser, so it can disable the triggers"),
        "{warned}"
    );
}

/// What schema 16 stores in a form of its own (a time in milliseconds, an actor by number, a
/// hash as bytes): a value flagstore never writes there is named with its row by every reader
/// of the log, as on SQLite, not taken for another or left to panic.
#[test]
fn a_compact_row_holding_what_flagstore_never_writes_is_named() {
    if !use_postgres() {
        return;
    }
    for (sql, named) in [
        (
            "UPDATE audit_rows SET ts_ms = 9223372036854775807 WHERE id = 6",
            "audit row 6 cannot be read: ts holds 9223372036854775807 milliseconds, not text",
        ),
        (
            "UPDATE audit_rows SET actor_id = 999 WHERE id = 3",
            "audit row 3 cannot be read: actor holds NULL, not text",
        ),
        (
            "UPDATE audit_rows SET hash = '\\xff'::bytea || substr(hash, 2) || hash WHERE id = 4",
            "audit row 4 cannot be read: hash holds bytes that are neither a hash nor UTF-8, \
             not text",
        ),
    ] {
        let env = Env::new();
        env.import_json(PIPELINE);
        for key in ["tenant:a", "tenant:b"] {
            env.ok(&["eval", "--all", "--context", key]);
        }
        env.tamper(sql);
        for reader in [&["audit", "verify"][..], &["audit", "--limit", "0"]] {
            let refused = env.fails(reader);
            assert!(refused.contains(named), "{sql}: {reader:?}: {refused}");
        }
    }
}

/// A bench on PostgreSQL reports bytes written per key as its server's write-ahead log grew,
/// and bytes grown as its tables and indexes did, where it said `n/a` for both.
#[cfg(feature = "bench")]
#[test]
fn a_bench_on_postgres_reports_the_wal_it_wrote_and_the_space_it_grew() {
    if !use_postgres() {
        return;
    }
    let base = std::env::var(crate::common::POSTGRES_VARIABLE).unwrap();
    let env = Env::new();
    let report = env.ok(&[
        "bench",
        "eval",
        "--keys",
        "300",
        "--preload",
        "200",
        "--db",
        &base,
    ]);
    let passes: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("fresh (misses)") || line.starts_with("again (hits)"))
        .collect();
    assert_eq!(passes.len(), 2, "{report}");
    for line in passes {
        let per_key = line.split("  ").last().unwrap();
        let numbers: Vec<f64> = per_key
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        assert!(
            per_key.ends_with("grown on disk") && numbers.len() == 2,
            "{line}"
        );
        // A decision record at the least, and its log record.
        assert!(numbers[0] > 100.0, "bytes written: {line}");
        assert!(numbers[1] >= 0.0, "bytes grown: {line}");
    }
}

/// PostgreSQL keeps a hash in text only as 64 characters, as its schema did before it stored
/// hashes as 32 bytes (schema 16): a store edited by hand whose hash is other text is refused
/// by `copy`, naming the row, and nothing is copied, rather than its text taken for bytes.
#[test]
fn a_copy_refuses_a_hash_postgres_cannot_show_as_it_was() {
    if !use_postgres() {
        return;
    }
    let postgres = Env::new();
    let sqlite = postgres.dir.path().join("edited.db");
    on_sqlite_file(
        &postgres,
        &sqlite,
        &[
            "import",
            postgres.write("flags.json", PIPELINE).to_str().unwrap(),
        ],
    );
    on_sqlite_file(
        &postgres,
        &sqlite,
        &["eval", "--all", "--context", "tenant:a"],
    );
    let edited = rusqlite::Connection::open(&sqlite).unwrap();
    edited
        .execute_batch(
            "DROP TRIGGER audit_log_no_update; \
             UPDATE audit_rows SET hash = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' WHERE id = 3;",
        )
        .unwrap();
    drop(edited);
    let refused = postgres.fails(&[
        "--db",
        sqlite.to_str().unwrap(),
        "copy",
        "--to",
        postgres.location.to_str().unwrap(),
    ]);
    assert!(refused.contains("audit row 3"), "{refused}");
    assert!(refused.contains("64 characters"), "{refused}");
    assert_eq!(postgres.count("SELECT count(*) FROM audit_log"), 0);
    assert_eq!(postgres.count("SELECT count(*) FROM flags"), 0);
    // Nor does the view take such a hash from SQL, the table's own triggers aside.
    postgres.import_json(PIPELINE);
    let error = postgres
        .execute(
            "ALTER TABLE audit_rows DISABLE TRIGGER USER; \
             UPDATE audit_log SET hash = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' WHERE id = 1",
        )
        .unwrap_err();
    assert!(error.contains("hash must be 64 characters"), "{error}");
}
