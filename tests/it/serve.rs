//! `flagstore serve` over real HTTP on loopback: OFREP's shapes, auth, ETags, agreement with
//! the CLI, concurrency, and stopping (SIGTERM drains; SIGKILL loses only unanswered requests).

use std::time::{Duration, Instant};

use crate::common::{Env, FakeWitness, PIPELINE, Server};
use serde_json::{Value, json};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

struct Reply {
    status: u16,
    content_type: Option<String>,
    etag: Option<String>,
    cache_control: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (content_type, etag) = (header("content-type"), header("etag"));
    let cache_control = header("cache-control");
    Reply {
        status: response.status().as_u16(),
        content_type,
        etag,
        cache_control,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

fn with_body(
    mut request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.send(body).unwrap())
}

fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    with_body(agent().post(url), headers, body)
}

fn patch(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    with_body(agent().patch(url), headers, body)
}

fn get(url: &str, token: &str) -> Reply {
    reply(agent().get(url).header("X-API-Key", token).call().unwrap())
}

fn context(key: &str) -> String {
    json!({ "context": { "targetingKey": key, "plan": "pro" } }).to_string()
}

/// A store holding PIPELINE and a token named "worker"; returns the token.
fn store_with_token(env: &Env) -> String {
    env.import_json(PIPELINE);
    env.ok(&["token", "create", "worker"]).trim().to_string()
}

fn one(server: &Server, flag: &str, token: &str, key: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    post(
        &format!("{}/ofrep/v1/evaluate/flags/{flag}", server.url),
        &[("Authorization", &bearer)],
        &context(key),
    )
}

fn evaluations_recorded(env: &Env) -> i64 {
    env.count("SELECT count(*) FROM audit_log WHERE kind = 'evaluation'")
}

fn single_evaluations_have_ofrep_shapes_and_are_recorded_under_the_token_name() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let reply = one(&server, "enrich", &token, "tenant:acme");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    // Python: int(hashlib.md5(b"enrich:tenant:acme").hexdigest(), 16) % 100 == 20, < 50.
    assert_eq!(
        reply.json(),
        json!({"key": "enrich", "value": true, "variant": "on", "reason": "SPLIT",
               "metadata": {"source": "rollout", "reason": "rollout: bucket 20 < 50"}})
    );
    let again = one(&server, "enrich", &token, "tenant:acme").json();
    assert_eq!(again["metadata"]["source"], "sticky");
    assert_eq!(again["value"], true);
    let disabled = one(&server, "legacy", &token, "tenant:acme").json();
    assert_eq!(
        (
            &disabled["value"],
            &disabled["variant"],
            &disabled["reason"]
        ),
        (&json!(false), &json!("off"), &json!("DISABLED"))
    );
    let audit = env.ok(&["audit", "--format", "jsonl", "--limit", "1"]);
    let newest: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(newest["actor"], "worker");
    assert_eq!(newest["flag"], "legacy");
    assert_eq!(evaluations_recorded(&env), 3);
}

fn bad_requests_get_ofrep_errors_and_record_nothing() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let key = [("X-API-Key", token.as_str())];
    let single = format!("{}/ofrep/v1/evaluate/flags/enrich", server.url);
    let bulk = format!("{}/ofrep/v1/evaluate/flags", server.url);
    let too_long = context(&"k".repeat(1_025));
    for (url, body, code, with_key) in [
        (&single, "not json", "PARSE_ERROR", true),
        (&single, too_long.as_str(), "INVALID_CONTEXT", true),
        (&bulk, too_long.as_str(), "INVALID_CONTEXT", false),
        (&single, "{}", "TARGETING_KEY_MISSING", true),
        (
            &single,
            r#"{"context": {"targetingKey": ""}}"#,
            "TARGETING_KEY_MISSING",
            true,
        ),
        (
            &single,
            r#"{"context": {"targetingKey": 5}}"#,
            "INVALID_CONTEXT",
            true,
        ),
        (&bulk, "{", "PARSE_ERROR", false),
        (&bulk, r#"{"context": {}}"#, "TARGETING_KEY_MISSING", false),
    ] {
        let reply = post(url, &key, body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = reply.json();
        assert_eq!(error["errorCode"], code, "{body}");
        assert!(
            error["errorDetails"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        assert_eq!(error.get("key").is_some(), with_key, "{body}: {error}");
        if with_key {
            assert_eq!(error["key"], "enrich");
        }
    }
    let missing = post(
        &format!("{}/ofrep/v1/evaluate/flags/enrich_v9", server.url),
        &key,
        &context("k"),
    );
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({"key": "enrich_v9", "errorCode": "FLAG_NOT_FOUND",
               "errorDetails": "flag \"enrich_v9\" does not exist"})
    );
    assert_eq!(evaluations_recorded(&env), 0);
    let longest = post(&single, &key, &context(&"k".repeat(1_024)));
    assert_eq!(longest.status, 200, "{}", longest.body);
    let oversized = post(&single, &key, &" ".repeat(2 * 1024 * 1024 + 1));
    assert_eq!(oversized.status, 413);
}

fn requests_without_an_active_token_are_refused() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let url = format!("{}/ofrep/v1/evaluate/flags/enrich", server.url);
    let bearer_wrong = format!("Bearer {token}x");
    for headers in [
        &[][..],
        &[("Authorization", bearer_wrong.as_str())],
        &[("X-API-Key", "fst_not_a_token")],
        &[("Authorization", "Basic d29ya2VyOg==")],
    ] {
        let reply = post(&url, headers, &context("k"));
        assert_eq!(reply.status, 401, "{headers:?}");
    }
    assert_eq!(
        post(&url, &[("X-API-Key", &token)], &context("k")).status,
        200
    );
    env.ok(&["token", "revoke", "worker"]);
    // The server re-reads its tokens within a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while post(&url, &[("X-API-Key", &token)], &context("k")).status != 401 {
        assert!(Instant::now() < deadline, "a revoked token still works");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE action = 'token_revoke'"),
        1
    );
}

fn bulk_evaluations_carry_an_etag_that_if_none_match_answers_with_304() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let url = format!("{}/ofrep/v1/evaluate/flags", server.url);
    let key = [("X-API-Key", token.as_str())];
    let first = post(&url, &key, &context("tenant:acme"));
    assert_eq!(first.status, 200);
    let flags = first.json()["flags"].as_array().unwrap().clone();
    let names: Vec<&str> = flags.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["ingest", "dedupe", "enrich", "legacy"],
        "definition order"
    );
    let etag = first.etag.clone().expect("an ETag");
    let unchanged = post(
        &url,
        &[key[0], ("If-None-Match", &etag)],
        &context("tenant:acme"),
    );
    assert_eq!((unchanged.status, unchanged.body.as_str()), (304, ""));
    assert_eq!(unchanged.etag.as_deref(), Some(etag.as_str()));
    let other_context = post(
        &url,
        &[key[0], ("If-None-Match", &etag)],
        &context("tenant:b"),
    );
    assert_eq!(other_context.status, 200);
    env.ok(&["flag", "set", "enrich", "--rollout", "75"]);
    let changed = post(
        &url,
        &[key[0], ("If-None-Match", &etag)],
        &context("tenant:acme"),
    );
    assert_eq!(changed.status, 200, "a changed flag keeps the ETag");
    assert_ne!(changed.etag, Some(etag));
    // Every answer, 304 included, is a recorded decision (README: Serve).
    assert_eq!(evaluations_recorded(&env), 4);
}

fn http_and_the_cli_give_one_context_the_same_sticky_answers() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let over_http: Vec<bool> = (0..20)
        .map(|i| one(&server, "enrich", &token, &format!("h{i}")).json()["value"] == true)
        .collect();
    env.ok(&["flag", "set", "enrich", "--rollout", "0"]);
    for (i, was) in over_http.iter().enumerate() {
        let cli = env
            .cmd()
            .args(["eval", "enrich", "--context", &format!("h{i}")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cli.stdout).trim() == "true",
            *was,
            "h{i}"
        );
    }
    env.ok(&["flag", "set", "enrich", "--rollout", "100"]);
    let cli_first = env.ok(&["eval", "enrich", "--context", "c1"]);
    env.ok(&["flag", "set", "enrich", "--rollout", "0"]);
    let http_then = one(&server, "enrich", &token, "c1").json();
    assert_eq!(cli_first.trim(), "true");
    assert_eq!(http_then["value"], true);
    assert_eq!(http_then["metadata"]["source"], "sticky");
}

fn concurrent_clients_on_the_same_keys_agree() {
    let env = Env::new();
    let token = store_with_token(&env);
    env.ok(&["flag", "set", "enrich", "--sticky", "all"]);
    let server = Server::start(&env, &[]);
    let answers: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..50)
                        .map(|i| {
                            one(&server, "enrich", &token, &format!("k{i}")).json()["value"].clone()
                        })
                        .collect::<Vec<Value>>()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for client in &answers[1..] {
        assert_eq!(client, &answers[0]);
    }
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE flag = 'enrich'"),
        50
    );
    assert_eq!(evaluations_recorded(&env), 8 * 50);
    env.ok(&["audit", "verify"]);
}

/// `serve` accepts only the tokens the chain explains: an admin token inserted by SQL, a token
/// whose role was raised by SQL, and a token known to the writer whose digest was put under an
/// explained token's name, are refused as unknown (within the token refresh), while the others
/// go on.
fn a_token_the_chain_does_not_explain_is_refused() {
    use sha2::{Digest, Sha256};
    let env = Env::new();
    let worker = store_with_token(&env);
    let kept = env.ok(&["token", "create", "kept"]).trim().to_string();
    env.ok(&["token", "create", "admin", "--role", "admin"]);
    let server = Server::start(&env, &[]);
    assert_eq!(one(&server, "enrich", &worker, "k").status, 200);
    let digest = |token: &str| -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let (forged, swapped_in) = ("fst_forged_by_sql", "fst_swapped_in_by_sql");
    env.execute(&format!(
        "INSERT INTO api_tokens (name, token_sha256, role, created_at) \
         VALUES ('mallory', '{}', 'admin', '2026-12-06T00:00:00.000Z'); \
         UPDATE api_tokens SET role = 'admin' WHERE name = 'worker'; \
         UPDATE api_tokens SET token_sha256 = '{}' WHERE name = 'admin'",
        digest(forged),
        digest(swapped_in)
    ))
    .unwrap();
    // The server re-reads its tokens at most a second after it last did.
    std::thread::sleep(Duration::from_millis(1_200));
    for token in [forged, swapped_in, worker.as_str()] {
        let reply = one(&server, "enrich", token, "k");
        assert_eq!(reply.status, 401, "{token}: {}", reply.body);
    }
    assert_eq!(one(&server, "enrich", &kept, "k").status, 200);
    let tokens = get(&format!("{}/api/admin/v1/tokens", server.url), forged);
    assert_eq!(tokens.status, 401, "{}", tokens.body);
}

/// A token row SQL made unreadable (a name stored as a BLOB, which SQLite allows; PostgreSQL's
/// typed columns do not) stopped serve's token refresh, and serve kept the last list it read:
/// a token revoked after that went on being accepted. Now every token is refused until the
/// rows can be read again, the log says why once, and serving resumes when they are mended.
#[test]
fn a_token_row_serve_cannot_read_refuses_every_token_until_it_is_mended() {
    let env = Env::new();
    let worker = store_with_token(&env);
    let mut server = Server::start(&env, &[]);
    assert_eq!(one(&server, "enrich", &worker, "k").status, 200);
    env.execute(
        "INSERT INTO api_tokens (name, token_sha256, role, created_at) \
         VALUES (CAST('mallory' AS BLOB), hex(randomblob(32)), 'admin', '2026-12-07T00:00:00.000Z')",
    )
    .unwrap();
    // The server re-reads its tokens at most a second after it last did.
    std::thread::sleep(Duration::from_millis(1_200));
    for _ in 0..3 {
        let reply = one(&server, "enrich", &worker, "k");
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    env.execute("DELETE FROM api_tokens WHERE typeof(name) = 'blob'")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(one(&server, "enrich", &worker, "k").status, 200);
    server.signal("TERM");
    let (code, log) = server.exit();
    assert_eq!(code, Some(0), "{log}");
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("api_tokens")).collect();
    assert_eq!(
        refused,
        [
            "flagstore serve: every token refused until the tokens can be read: api_tokens: the \
          token named \"mallory\" cannot be read: name holds a BLOB of 7 bytes, not text"
        ],
        "{log}"
    );
    assert!(
        log.contains("flagstore serve: the tokens can be read again"),
        "{log}"
    );
}

/// The group commit answers many connections from one transaction: one client sending every
/// kind of bad request meanwhile costs the others nothing. Each valid answer is counted against
/// what the store recorded for its key.
fn valid_clients_are_answered_while_another_sends_bad_requests() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let bearer = format!("Bearer {token}");
    let single = format!("{}/ofrep/v1/evaluate/flags/enrich", server.url);
    let bulk = format!("{}/ofrep/v1/evaluate/flags", server.url);
    let bad_bodies = [
        context(&"k".repeat(1_025)),
        r#"{"context": {"targetingKey": "nul\u0000key"}}"#.to_string(),
        r#"{"context": {"targetingKey": "\ud800"}}"#.to_string(),
        "not json".to_string(),
        "{}".to_string(),
    ];
    let (answered, refused) = std::thread::scope(|scope| {
        let valid: Vec<_> = (0..4)
            .map(|client| {
                let (single, bulk, bearer) = (&single, &bulk, &bearer);
                scope.spawn(move || {
                    (0..40)
                        .map(|i| {
                            let key = format!("c{client}-{i}");
                            let auth = [("Authorization", bearer.as_str())];
                            let reply = if i % 4 == 0 {
                                post(bulk, &auth, &context(&key))
                            } else {
                                post(single, &auth, &context(&key))
                            };
                            assert_eq!(reply.status, 200, "{key}: {}", reply.body);
                            let enrich = match reply.json().get("flags") {
                                Some(flags) => flags
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .find(|f| f["key"] == "enrich")
                                    .unwrap()["value"]
                                    .clone(),
                                None => reply.json()["value"].clone(),
                            };
                            (key, enrich)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let hostile = scope.spawn(|| {
            let mut refused = 0;
            for i in 0..40 {
                let auth = [("Authorization", bearer.as_str())];
                for body in &bad_bodies {
                    refused += usize::from(post(&single, &auth, body).status == 400);
                    refused += usize::from(post(&bulk, &auth, body).status == 400);
                }
                let ghost = format!("{}/ofrep/v1/evaluate/flags/ghost", server.url);
                refused +=
                    usize::from(post(&ghost, &auth, &context(&format!("g{i}"))).status == 404);
                let forged = [("Authorization", "Bearer fst_not_a_token")];
                refused += usize::from(post(&single, &forged, &context("forged")).status == 401);
            }
            refused
        });
        let answered: Vec<(String, Value)> =
            valid.into_iter().flat_map(|c| c.join().unwrap()).collect();
        (answered, hostile.join().unwrap())
    });
    assert_eq!(
        refused,
        40 * (2 * bad_bodies.len() + 2),
        "every bad request refused"
    );
    assert_eq!(answered.len(), 160);
    assert_eq!(
        evaluations_recorded(&env),
        160,
        "one record per valid request, no other"
    );
    for (key, value) in &answered {
        let recorded = env.text(&format!(
            "SELECT CAST(result AS TEXT) FROM audit_evaluations \
             WHERE flag = 'enrich' AND context_key = '{key}'"
        ));
        assert_eq!(recorded == "1", value == &json!(true), "{key}");
    }
    env.ok(&["audit", "verify"]);
}

/// Requests in flight when SIGTERM arrives are answered; the server exits 0.
/// SQLite only (it holds the file's write lock from outside): reads run on connections of
/// their own, and /healthz on what the writer last did, so they answer while the writer waits
/// for the lock with an evaluation.
#[test]
fn reads_answer_while_the_writer_waits() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let holder = env.sql();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let evaluation = {
        let url = server.url.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            let bearer = format!("Bearer {token}");
            post(
                &format!("{url}/ofrep/v1/evaluate/flags/ingest"),
                &[("Authorization", &bearer)],
                &context("waits"),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let flags = get(&format!("{}/api/admin/v1/flags", server.url), &token);
    assert_eq!(flags.status, 200);
    // Health says what the last write did; it does not wait for the writer either.
    let health = get(&format!("{}/healthz", server.url), &token);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert!(
        !evaluation.is_finished(),
        "the evaluation should still be waiting for the lock"
    );
    holder.execute_batch("COMMIT").unwrap();
    assert_eq!(evaluation.join().unwrap().status, 200);
}

fn sigterm_answers_what_is_in_flight_and_exits_0() {
    let env = Env::new();
    let token = store_with_token(&env);
    let mut server = Server::start(&env, &[]);
    let answered = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (server, token) = (&server, &token);
                scope.spawn(move || {
                    let mut answered = 0;
                    for i in 0..200 {
                        let bearer = format!("Bearer {token}");
                        let request = agent()
                            .post(format!("{}/ofrep/v1/evaluate/flags/ingest", server.url))
                            .header("Authorization", &bearer)
                            .send(context(&format!("c{c}-{i}")));
                        match request {
                            Ok(response) if response.status() == 200 => answered += 1,
                            Ok(response) => panic!("status {}", response.status()),
                            // Refused once the server stopped accepting.
                            Err(_) => break,
                        }
                    }
                    answered
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        server.signal("TERM");
        clients.into_iter().map(|c| c.join().unwrap()).sum::<i64>()
    });
    let status = server.child.wait().unwrap();
    let mut said = String::new();
    if let Some(stderr) = server.child.stderr.as_mut() {
        std::io::Read::read_to_string(stderr, &mut said).unwrap();
    }
    assert_eq!(status.code(), Some(0), "serve said: {said}");
    assert!(answered > 0);
    assert_eq!(evaluations_recorded(&env), answered);
}

/// A server killed under load loses only the requests it had not answered: every answer a
/// client received is in the audit log, the chain verifies, and a new server goes on.
fn sigkill_under_load_keeps_every_answered_decision() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    let answered: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (server, token) = (&server, &token);
                scope.spawn(move || {
                    let mut keys = Vec::new();
                    for i in 0..1_000 {
                        let key = format!("c{c}-{i}");
                        let bearer = format!("Bearer {token}");
                        match agent()
                            .post(format!("{}/ofrep/v1/evaluate/flags/ingest", server.url))
                            .header("Authorization", &bearer)
                            .send(context(&key))
                        {
                            Ok(response) if response.status() == 200 => keys.push(key),
                            _ => break,
                        }
                    }
                    keys
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        server.signal("KILL");
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    assert!(!answered.is_empty());
    drop(server);
    let recorded: std::collections::HashSet<String> = env
        .texts("SELECT context_key FROM audit_log WHERE kind = 'evaluation'")
        .into_iter()
        .collect();
    for key in &answered {
        assert!(
            recorded.contains(key),
            "{key} was answered but not recorded"
        );
    }
    env.ok(&["audit", "verify"]);
    let again = Server::start(&env, &[]);
    assert_eq!(one(&again, "ingest", &token, "after").status, 200);
}

fn health_and_metrics_answer() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &[]);
    one(&server, "enrich", &token, "k");
    let health = agent()
        .get(format!("{}/healthz", server.url))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = agent()
        .get(format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    // The evaluation and the health check.
    assert!(
        metrics.contains("flagstore_http_responses_total{code=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flagstore_evaluations_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flagstore_commit_seconds_count 1"),
        "{metrics}"
    );
}

fn the_server_refuses_to_start_without_a_token_and_no_auth_only_on_loopback() {
    let env = Env::new();
    env.import_json(PIPELINE);
    assert_eq!(
        env.fails(&["serve", "--listen", "127.0.0.1:0"]),
        "flagstore: no active API token: create one with `flagstore token create NAME` (or serve --no-auth on a loopback address)"
    );
    assert_eq!(
        env.fails(&["serve", "--listen", "0.0.0.0:0", "--no-auth"]),
        "flagstore: --no-auth serves only a loopback address (127.0.0.1 or ::1), not 0.0.0.0"
    );
    let server = Server::start(&env, &["--no-auth"]);
    let reply = post(
        &format!("{}/ofrep/v1/evaluate/flags/ingest", server.url),
        &[("Content-Type", "application/json")],
        &context("k"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        env.text("SELECT actor FROM audit_log WHERE kind = 'evaluation'"),
        "serve (no auth)"
    );
}

fn token_mistakes_are_refused_and_change_nothing() {
    let env = Env::new();
    store_with_token(&env);
    let before = env.snapshot();
    assert_eq!(
        env.fails(&["token", "create", "worker"]),
        "flagstore: a token named \"worker\" exists already (names are never reused; pick another)"
    );
    assert_eq!(
        env.fails(&["token", "revoke", "wroker"]),
        "flagstore: no active token named \"wroker\" (see `flagstore token list`)"
    );
    assert!(env.fails(&["token", "create", "bad\u{7}name"]).starts_with(
        "flagstore: invalid token name \"bad\\u{7}name\": it contains the control character U+0007"
    ),);
    assert_eq!(env.snapshot(), before);
    env.ok(&["token", "revoke", "worker"]);
    assert_eq!(
        env.fails(&["token", "revoke", "worker"]),
        "flagstore: no active token named \"worker\" (see `flagstore token list`)"
    );
    let listed = env.ok(&["token", "list"]);
    assert!(
        listed
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("worker  viewer  revoked  "),
        "{listed}"
    );
    assert!(!listed.contains("fst_"), "{listed}");
}

fn the_admin_api_reads_flags_history_and_the_audit_log_without_writing() {
    let env = Env::new();
    let viewer = store_with_token(&env);
    env.ok(&["flag", "set", "enrich", "--rollout", "75"]);
    for i in 0..5 {
        env.ok(&["eval", "--all", "--context", &format!("k{i}")]);
    }
    let server = Server::start(&env, &[]);
    let before = env.snapshot();
    let api = format!("{}/api/admin/v1", server.url);

    let answer = get(&format!("{api}/flags"), &viewer);
    assert_eq!(answer.cache_control.as_deref(), Some("no-store"));
    let flags = answer.json();
    let names: Vec<&str> = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ingest", "dedupe", "enrich", "legacy"]);

    let enrich = get(&format!("{api}/flags/enrich"), &viewer);
    assert_eq!(enrich.status, 200);
    let body = enrich.json();
    assert_eq!(body["rollout_pct"], 75.0);
    assert_eq!(body["requires"], json!(["dedupe"]));
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["action"], "update");
    assert_eq!(history[1]["detail"]["after"]["rollout_pct"], 75.0);
    assert_eq!(body["version"], history[1]["id"]);
    assert_eq!(enrich.etag, Some(format!("\"{}\"", body["version"])));
    assert_eq!(get(&format!("{api}/flags/enrihc"), &viewer).status, 404);

    // Keyset paging: pages of 7 decisions end at a record's end and never overlap.
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let url = match cursor {
            Some(c) => format!("{api}/audit?kind=evaluation&limit=7&cursor={c}"),
            None => format!("{api}/audit?kind=evaluation&limit=7"),
        };
        let page = get(&url, &viewer).json();
        for row in page["rows"].as_array().unwrap() {
            seen.push((
                row["id"].as_i64().unwrap(),
                row["flag"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5 * 4);
    let cli: Vec<(i64, String)> = env
        .ok(&[
            "audit",
            "--kind",
            "evaluation",
            "--format",
            "jsonl",
            "--limit",
            "0",
        ])
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            (
                row["id"].as_i64().unwrap(),
                row["flag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen, cli);
    for bad in ["limit=0", "order=sideways", "since=yesterday", "colour=red"] {
        let reply = get(&format!("{api}/audit?{bad}"), &viewer);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    // A reviewer's typo is an error naming it, not a page that looks like "no records".
    for (bad, said) in [
        (
            "kind=evalution",
            "kind \"evalution\" is neither evaluation nor change (did you mean \"evaluation\"?)",
        ),
        (
            "kind=Change",
            "kind \"Change\" is neither evaluation nor change (did you mean \"change\"?)",
        ),
        ("cursor=-1", "cursor -1 is not a row id (ids start at 1)"),
        (
            "since=2026-11-02&until=2026-11-01",
            "since 2026-11-02T00:00:00.000Z is not before until 2026-11-02T00:00:00.000Z: no row can match",
        ),
    ] {
        let reply = get(&format!("{api}/audit?{bad}"), &viewer);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.json()["errorDetails"], said, "{bad}");
    }
    assert_eq!(
        env.fails(&["audit", "--since", "2026-11-03", "--until", "2026-11-01"]),
        "flagstore: since 2026-11-03T00:00:00.000Z is not before until 2026-11-02T00:00:00.000Z: no row can match"
    );
    assert_eq!(get(&format!("{api}/flags"), "fst_nope").status, 401);
    assert_eq!(env.snapshot(), before, "reads wrote to the store");
}

fn the_admin_api_answers_for_the_graph_stale_flags_explain_and_a_context() {
    let env = Env::new();
    let viewer = store_with_token(&env);
    env.ok(&["eval", "--all", "--context", "tenant:acme"]);
    env.ok(&["flag", "set", "legacy", "--stale-exempt", "true"]);
    let server = Server::start(&env, &[]);
    let before = env.snapshot();
    let api = format!("{}/api/admin/v1", server.url);

    let graph = get(&format!("{api}/graph"), &viewer).json();
    let dedupe = &graph["flags"][1];
    assert_eq!(dedupe["name"], "dedupe");
    assert_eq!(dedupe["requires"], json!(["ingest"]));
    assert_eq!(dedupe["required_by"], json!(["enrich"]));

    // A period of 0 days: nothing was evaluated since now, and legacy is exempt.
    let stale = get(&format!("{api}/stale?days=0"), &viewer).json();
    assert_eq!(stale["days"], 0);
    let listed: Value =
        serde_json::from_str(&env.ok(&["flag", "list", "--stale", "--stale-days", "0", "--json"]))
            .unwrap();
    assert_eq!(stale["flags"], listed);
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(get(&format!("{api}/stale"), &viewer).json()["days"], 30);
    assert!(
        get(&format!("{api}/stale"), &viewer).json()["flags"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let explained = get(
        &format!("{api}/explain?flag=enrich&context=tenant%3Aacme&at={today}"),
        &viewer,
    )
    .json();
    let cli: Value = serde_json::from_str(&env.ok(&[
        "explain",
        "enrich",
        "--context",
        "tenant:acme",
        "--at",
        &today,
        "--json",
    ]))
    .unwrap();
    assert_eq!(explained, cli);

    let context = get(&format!("{api}/context?key=tenant%3Aacme"), &viewer).json();
    let assignments: Value = serde_json::from_str(&env.ok(&[
        "assignments",
        "list",
        "--context",
        "tenant:acme",
        "--json",
    ]))
    .unwrap();
    assert_eq!(context["assignments"], assignments);
    assert_eq!(context["decisions"].as_array().unwrap().len(), 4);
    assert_eq!(context["decisions"][0]["context_key"], "tenant:acme");

    for bad in [
        "stale?days=-1",
        "stale?days=soon",
        "stale?days=36501",
        "stale?days=4294967295",
        "explain?flag=enrich",
        "explain?flag=enrich&context=k&at=later",
        "context",
        "context?key=k&limit=0",
        &format!("context?key={}", "k".repeat(1_025)),
        &format!("explain?flag=enrich&context={}", "k".repeat(1_025)),
    ] {
        let reply = get(&format!("{api}/{bad}"), &viewer);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["errorDetails"].is_string(), "{bad}");
    }
    assert_eq!(
        get(&format!("{api}/stale?days=4294967295"), &viewer).json()["errorDetails"],
        "stale period (days) 4294967295 is outside 0-36500"
    );
    assert_eq!(
        env.fails(&["flag", "list", "--stale", "--stale-days", "36501"]),
        "flagstore: stale period (days) 36501 is outside 0-36500"
    );
    assert_eq!(env.snapshot(), before, "reads wrote to the store");
}

fn flag_changes_need_an_operator_and_the_current_version() {
    let env = Env::new();
    let viewer = store_with_token(&env);
    let operator = env
        .ok(&["token", "create", "night-shift", "--role", "operator"])
        .trim()
        .to_string();
    let server = Server::start(&env, &[]);
    let url = format!("{}/api/admin/v1/flags/enrich", server.url);
    let version = get(&url, &viewer).etag.unwrap();
    let kill = r#"{"enabled": false}"#;
    let as_viewer = patch(
        &url,
        &[("X-API-Key", &viewer), ("If-Match", &version)],
        kill,
    );
    assert_eq!(as_viewer.status, 403, "{}", as_viewer.body);
    let before = env.snapshot();
    assert_eq!(patch(&url, &[("X-API-Key", &operator)], kill).status, 428);
    let unknown = format!("{}/api/admin/v1/flags/enrihc", server.url);
    let missing = patch(
        &unknown,
        &[("X-API-Key", &operator), ("If-Match", &version)],
        kill,
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(
        missing.json()["errorDetails"]
            .as_str()
            .unwrap()
            .contains("did you mean \"enrich\"")
    );
    assert_eq!(
        patch(
            &url,
            &[("X-API-Key", &operator), ("If-Match", &version)],
            r#"{"rollout_pct": 101}"#
        )
        .status,
        400
    );
    assert_eq!(
        patch(
            &url,
            &[("X-API-Key", &operator), ("If-Match", &version)],
            r#"{"colour": 1}"#
        )
        .status,
        400
    );
    assert_eq!(env.snapshot(), before);

    let done = patch(
        &url,
        &[("X-API-Key", &operator), ("If-Match", &version)],
        kill,
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["enabled"], false);
    assert_ne!(done.etag.as_ref(), Some(&version));
    let newest = env.text(
        "SELECT actor || ' ' || reason FROM audit_log WHERE kind = 'change' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(newest, "night-shift api: updated enabled true -> false");
    // The same change again, from the view before it: refused, not overwritten.
    let stale = patch(
        &url,
        &[("X-API-Key", &operator), ("If-Match", &version)],
        r#"{"enabled": true}"#,
    );
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert!(
        stale.json()["errorDetails"]
            .as_str()
            .unwrap()
            .contains("changed since version")
    );
    assert_eq!(
        env.ok(&["eval", "enrich", "--context", "k"]).trim(),
        "false"
    );
}

/// A server that has answered bulk requests and admin reads stops cleanly on SIGTERM: exit 0
/// (PostgreSQL readers used to panic as they closed), and on SQLite every connection has
/// closed in order, the writer last, so no WAL is left and a plain copy of the database file
/// holds every answered request.
fn sigterm_after_reads_exits_0_and_leaves_everything_in_the_database_file() {
    let env = Env::new();
    let token = store_with_token(&env);
    let mut server = Server::start(&env, &[]);
    let answered: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (server, token) = (&server, &token);
                scope.spawn(move || {
                    let answered = |i: usize| {
                        let read = agent()
                            .get(format!("{}/api/admin/v1/flags", server.url))
                            .header("X-API-Key", token)
                            .call();
                        let bulk = agent()
                            .post(format!("{}/ofrep/v1/evaluate/flags", server.url))
                            .header("X-API-Key", token)
                            .send(context(&format!("c{c}-{i}")));
                        // Refused once the server stopped accepting.
                        let (Ok(read), Ok(bulk)) = (read, bulk) else {
                            return false;
                        };
                        assert_eq!((read.status().as_u16(), bulk.status().as_u16()), (200, 200));
                        true
                    };
                    (0..2_000).take_while(|&i| answered(i)).count()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        server.signal("TERM");
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let (code, stderr) = server.exit();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(evaluations_recorded(&env), answered as i64);
    if env.backend == crate::common::Backend::Sqlite {
        let wal = env.db.with_extension("db-wal");
        assert!(!wal.exists(), "{} is left behind", wal.display());
        let copied = tempfile::tempdir().unwrap();
        let copy = copied.path().join("copy.db");
        std::fs::copy(&env.db, &copy).unwrap();
        let recorded: i64 = rusqlite::Connection::open(&copy)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM audit_log WHERE kind = 'evaluation'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(recorded, answered as i64);
    }
}

/// A store with no flags is served, but a line on stderr says that every evaluation will be
/// FLAG_NOT_FOUND (which SDKs turn into their defaults without a word).
fn serving_a_store_without_flags_warns() {
    let env = Env::new();
    env.ok(&["init"]);
    env.ok(&["token", "create", "worker"]);
    let mut server = Server::start(&env, &[]);
    server.signal("TERM");
    let (code, stderr) = server.exit();
    assert_eq!(code, Some(0));
    assert_eq!(
        stderr,
        format!(
            "flagstore: warning: {} defines no flags: every evaluation will answer \
             FLAG_NOT_FOUND (create flags with `flagstore import FILE` or `flagstore flag create`)\n",
            env.shown()
        )
    );
}

/// Reads from `stream` until the server closes it; how long that took.
fn closed_after(stream: &mut std::net::TcpStream) -> Duration {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

fn connect(server: &Server) -> std::net::TcpStream {
    std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap()
}

/// A connection that sends half its headers, or sits idle after a response, is closed after
/// --header-timeout, so slow clients cannot pile up until descriptors run out.
#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    use std::io::Write;
    let env = Env::new();
    store_with_token(&env);
    let server = Server::start(&env, &["--header-timeout", "1"]);
    let mut half = connect(&server);
    half.write_all(b"POST /ofrep/v1/evaluate/flags/ingest HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let waited = closed_after(&mut half);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let mut idle = connect(&server);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let waited = closed_after(&mut idle);
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

/// Past --max-connections a client waits for a connection to close instead of the server
/// running out of descriptors.
#[test]
fn connections_past_the_cap_wait_for_one_to_close() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &["--max-connections", "2", "--header-timeout", "30"]);
    let first = connect(&server);
    let _second = connect(&server);
    std::thread::sleep(Duration::from_millis(200));
    let waiting = {
        let (url, token) = (server.url.clone(), token.clone());
        std::thread::spawn(move || get(&format!("{url}/api/admin/v1/flags"), &token).status)
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiting.is_finished(), "a third connection was served");
    drop(first);
    assert_eq!(waiting.join().unwrap(), 200);
}

/// SIGTERM with a request that never finishes sending: the server waits --shutdown-timeout
/// for it, then exits 0.
#[test]
fn sigterm_waits_for_a_stalled_request_only_until_the_shutdown_timeout() {
    use std::io::Write;
    let env = Env::new();
    store_with_token(&env);
    let mut server = Server::start(&env, &["--header-timeout", "60", "--shutdown-timeout", "1"]);
    let mut stalled = connect(&server);
    stalled
        .write_all(b"POST /ofrep/v1/evaluate/flags/ingest HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.signal("TERM");
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Without auth, only a local program is answered: a foreign Host (DNS rebinding) or Origin
/// (a web page the developer visits) is 403, a POST not sent as JSON (no CORS preflight) is
/// 415, and none of them is recorded.
#[test]
fn no_auth_answers_only_local_json_requests() {
    let env = Env::new();
    store_with_token(&env);
    let server = Server::start(&env, &["--no-auth"]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let url = format!("{}/ofrep/v1/evaluate/flags/ingest", server.url);
    let json = ("Content-Type", "application/json");
    for (headers, status) in [
        (vec![json], 200),
        (
            vec![
                ("Content-Type", "application/json; charset=utf-8"),
                ("Origin", &format!("http://localhost:{port}")),
            ],
            200,
        ),
        (vec![("Content-Type", "text/plain")], 415),
        (vec![], 415),
        (vec![json, ("Host", "evil.example")], 403),
        (
            vec![json, ("Host", &format!("rebound.evil.example:{port}"))],
            403,
        ),
        (vec![json, ("Origin", "http://evil.example")], 403),
        (vec![json, ("Origin", "null")], 403),
    ] {
        let reply = post(&url, &headers, &context("k"));
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.body);
    }
    assert_eq!(evaluations_recorded(&env), 2);
}

/// A mistyped URL gets a 404 in the shape of the API it is under (it was a 403 page about
/// Origin); the Bearer scheme is taken in any case; `--listen` takes a host name.
fn mistyped_urls_are_404_in_their_apis_shape_and_bearer_takes_any_case() {
    let env = Env::new();
    let token = store_with_token(&env);
    let server = Server::start(&env, &["--listen", "localhost:0"]);
    let key = [("X-API-Key", token.as_str())];
    for path in [
        "/ofrep/v1/evaluate/flag/ingest",
        "/ofrep/v1/evaluate/flags/",
        "/api/admin/v1/nope",
    ] {
        let reply = post(&format!("{}{path}", server.url), &key, &context("k"));
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert!(
            reply.json()["errorDetails"]
                .as_str()
                .unwrap()
                .contains(path)
        );
    }
    let page = get(&format!("{}/ui/nope", server.url), &token);
    assert_eq!(page.status, 404);
    assert!(
        page.content_type
            .as_deref()
            .unwrap()
            .starts_with("text/html")
    );
    for scheme in ["bearer", "BEARER"] {
        let reply = post(
            &format!("{}/ofrep/v1/evaluate/flags/ingest", server.url),
            &[("Authorization", &format!("{scheme} {token}"))],
            &context("k"),
        );
        assert_eq!(reply.status, 200, "{scheme}: {}", reply.body);
    }
    assert_eq!(evaluations_recorded(&env), 2);
}

/// A decision record of 300 flags is 300 rows, each carrying the record's detail: an audit
/// answer ends after the record that passes 8 MB, with a cursor, instead of growing with
/// `limit` rows of it; the next page goes on from there.
fn audit_answers_are_bounded_in_bytes_and_end_at_a_record() {
    let env = Env::new();
    let flags: Vec<Value> = (0..300)
        .map(|i| json!({"name": format!("stage_with_a_long_descriptive_name_{i:03}")}))
        .collect();
    env.import_json(&json!({ "flags": flags }).to_string());
    let viewer = env.ok(&["token", "create", "worker"]).trim().to_string();
    let keys = env.write(
        "keys.txt",
        (0..6).map(|i| format!("k{i}\n")).collect::<String>(),
    );
    env.ok(&["eval", "--all", "--contexts-file", keys.to_str().unwrap()]);
    let server = Server::start(&env, &[]);
    let url = format!(
        "{}/api/admin/v1/audit?kind=evaluation&limit=1000",
        server.url
    );
    let read = |url: &str| -> String {
        agent()
            .get(url)
            .header("X-API-Key", &viewer)
            .call()
            .unwrap()
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap()
    };
    let body = read(&url);
    // 8 MB and the one record that passed it.
    assert!(body.len() < 24 << 20, "{} bytes", body.len());
    let page: Value = serde_json::from_str(&body).unwrap();
    let rows = page["rows"].as_array().unwrap();
    assert!(
        rows.len() < 1_000 && rows.len().is_multiple_of(300),
        "{} rows",
        rows.len()
    );
    let cursor = page["next_cursor"].as_i64().expect("a cursor to the rest");
    assert_eq!(rows.last().unwrap()["id"].as_i64(), Some(cursor));
    let rest: Value = serde_json::from_str(&read(&format!("{url}&cursor={cursor}"))).unwrap();
    let total = rows.len() + rest["rows"].as_array().unwrap().len();
    assert!(total > rows.len());
    assert!(rest["rows"][0]["id"].as_i64().unwrap() < cursor);
}

fn delete(url: &str, token: &str) -> Reply {
    reply(
        agent()
            .delete(url)
            .header("X-API-Key", token)
            .call()
            .unwrap(),
    )
}

/// The admin role manages tokens over the API: list (never a hash), create (the text shown
/// once, the change audited under the admin's name), revoke; an operator may not.
fn admins_list_create_and_revoke_tokens_over_the_api() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let admin = env
        .ok(&["token", "create", "root", "--role", "admin"])
        .trim()
        .to_string();
    let operator = env
        .ok(&["token", "create", "ops", "--role", "operator"])
        .trim()
        .to_string();
    let server = Server::start(&env, &[]);
    let tokens = format!("{}/api/admin/v1/tokens", server.url);
    assert_eq!(get(&tokens, &operator).status, 403);
    let key = [("X-API-Key", admin.as_str())];
    let created = post(&tokens, &key, r#"{"name": "pipeline-7", "role": "viewer"}"#);
    assert_eq!(created.status, 200, "{}", created.body);
    let created = created.json();
    assert_eq!(
        (&created["name"], &created["role"]),
        (&json!("pipeline-7"), &json!("viewer"))
    );
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(one(&server, "ingest", &secret, "k").status, 200);

    let listed = get(&tokens, &admin);
    assert!(!listed.body.contains(&flagstore::token::sha256_hex(&secret)));
    let names: Vec<String> = listed.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["ops", "pipeline-7", "root"]);
    for (body, status) in [
        (r#"{"name": "pipeline-7"}"#, 400),
        (r#"{"name": "x", "role": "superuser"}"#, 400),
        (r#"{"name": "bad\u0007name"}"#, 400),
        (r#"{"nom": "x"}"#, 400),
    ] {
        assert_eq!(post(&tokens, &key, body).status, status, "{body}");
    }
    assert_eq!(
        post(&tokens, &[("X-API-Key", &operator)], r#"{"name": "y"}"#).status,
        403
    );

    assert_eq!(delete(&format!("{tokens}/pipeline-7"), &admin).status, 200);
    assert_eq!(delete(&format!("{tokens}/pipeline-7"), &admin).status, 404);
    assert_eq!(one(&server, "ingest", &secret, "k").status, 401);
    let changes = env.texts(
        "SELECT actor || ' ' || action FROM audit_log WHERE action LIKE 'token%' ORDER BY id",
    );
    assert_eq!(
        changes,
        [
            "tester token_create",
            "tester token_create",
            "root token_create",
            "root token_revoke"
        ]
    );
}

/// serve signs heads as it records, sooner after --head-every-rows requests, and once more
/// at shutdown: every row it wrote is under a head when it has exited.
fn serve_publishes_signed_heads_and_a_last_one_at_shutdown() {
    let env = Env::new();
    let token = store_with_token(&env);
    let signing = env.signing();
    let heads = &signing.heads;
    // A head every hour at most by the clock: only the row count and shutdown publish here.
    let mut server = Server::start_with(
        env.signing_cmd(&signing),
        &["--head-every", "3600", "--head-every-rows", "5"],
    );
    let newest_size = || {
        std::fs::read_to_string(heads)
            .unwrap_or_default()
            .lines()
            .last()
            .map_or(0, |line| {
                serde_json::from_str::<Value>(line).unwrap()["size"]
                    .as_i64()
                    .unwrap()
            })
    };
    for i in 0..5 {
        assert_eq!(one(&server, "enrich", &token, &format!("k{i}")).status, 200);
    }
    let rows = env.count("SELECT count(*) FROM audit_log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while newest_size() < rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(newest_size(), rows, "five requests published a head");
    // The metrics are told once the head is in the file: a moment later.
    let metrics = || get(&format!("{}/metrics", server.url), &token).body;
    let published = format!("flagstore_tree_head_rows {rows}");
    while !metrics().contains(&published) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = metrics();
    assert!(
        metrics.contains(&format!("flagstore_tree_head_rows {rows}"))
            && metrics.contains("flagstore_tree_head_failures_total 0"),
        "{metrics}"
    );

    for i in 5..8 {
        assert_eq!(one(&server, "enrich", &token, &format!("k{i}")).status, 200);
    }
    server.signal("TERM");
    let (code, stderr) = server.exit();
    assert_eq!(code, Some(0), "{stderr}");
    let rows = env.count("SELECT count(*) FROM audit_log");
    assert_eq!(
        newest_size(),
        rows,
        "the rows of the last requests are signed at shutdown"
    );
    let verified = env.ok(&[
        "audit",
        "verify",
        "--heads",
        heads.to_str().unwrap(),
        "--public-key",
        signing.public_key.to_str().unwrap(),
    ]);
    assert!(verified.contains("all 2 signed heads"), "{verified}");

    // By the clock alone: a request's row is signed within a second or so.
    let server = Server::start_with(
        env.signing_cmd(&signing),
        &["--head-every", "1", "--head-every-rows", "100000"],
    );
    assert_eq!(one(&server, "enrich", &token, "late").status, 200);
    let rows = env.count("SELECT count(*) FROM audit_log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while newest_size() < rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(newest_size(), rows, "a head within the interval");
}

/// serve hands every head it publishes to its witness; one refused is a failure in its
/// metrics and log.
fn serve_hands_its_heads_to_a_witness() {
    let env = Env::new();
    let token = store_with_token(&env);
    let signing = env.signing();
    let serving = |witness: &FakeWitness| {
        let mut cmd = env.signing_cmd(&signing);
        cmd.env("FLAGSTORE_WITNESS_URL", &witness.url);
        Server::start_with(cmd, &["--head-every", "3600", "--head-every-rows", "1"])
    };
    let accepting = FakeWitness::start(200);
    let mut server = serving(&accepting);
    assert_eq!(one(&server, "enrich", &token, "k1").status, 200);
    server.signal("TERM");
    assert_eq!(server.exit().0, Some(0));
    let text = std::fs::read_to_string(&signing.heads).unwrap();
    assert_eq!(
        accepting.bodies().last().map(String::as_str),
        text.lines().last()
    );

    let refusing = FakeWitness::start(503);
    let server = serving(&refusing);
    assert_eq!(one(&server, "enrich", &token, "k2").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = || get(&format!("{}/metrics", server.url), &token).body;
    while !metrics().contains("flagstore_tree_head_failures_total 1") {
        assert!(Instant::now() < deadline, "{}", metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(refusing.bodies().len(), 1);
}

contract_tests! {
    serve_publishes_signed_heads_and_a_last_one_at_shutdown,
    serve_hands_its_heads_to_a_witness,
    a_token_the_chain_does_not_explain_is_refused,
    valid_clients_are_answered_while_another_sends_bad_requests,
    admins_list_create_and_revoke_tokens_over_the_api,
    audit_answers_are_bounded_in_bytes_and_end_at_a_record,
    mistyped_urls_are_404_in_their_apis_shape_and_bearer_takes_any_case,
    serving_a_store_without_flags_warns,
    sigterm_after_reads_exits_0_and_leaves_everything_in_the_database_file,
    the_admin_api_reads_flags_history_and_the_audit_log_without_writing,
    the_admin_api_answers_for_the_graph_stale_flags_explain_and_a_context,
    flag_changes_need_an_operator_and_the_current_version,
    token_mistakes_are_refused_and_change_nothing,
    single_evaluations_have_ofrep_shapes_and_are_recorded_under_the_token_name,
    bad_requests_get_ofrep_errors_and_record_nothing,
    requests_without_an_active_token_are_refused,
    bulk_evaluations_carry_an_etag_that_if_none_match_answers_with_304,
    http_and_the_cli_give_one_context_the_same_sticky_answers,
    concurrent_clients_on_the_same_keys_agree,
    sigterm_answers_what_is_in_flight_and_exits_0,
    sigkill_under_load_keeps_every_answered_decision,
    health_and_metrics_answer,
    the_server_refuses_to_start_without_a_token_and_no_auth_only_on_loopback,
}
