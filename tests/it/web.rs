//! The web UI over real HTTP on loopback, as a browser without JavaScript uses it: sign-in
//! sessions, roles, CSRF and Origin checks, the kill switch with its confirmation, rollouts,
//! a concurrent edit refused, escaping of hostile names, and the audit pages.

use std::time::{Duration, Instant};

use crate::common::{Env, PIPELINE, Server};
use flagstore::audit::GENESIS_HASH;

/// A browser: one cookie jar entry (the session), no redirects followed, so each step's
/// status and `Location` can be checked.
struct Browser {
    base: String,
    session: Option<String>,
    agent: ureq::Agent,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    csp: Option<String>,
    body: String,
}

impl Page {
    /// The value of the first hidden field `name` in the page.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end].to_string()
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            base: server.url.clone(),
            session: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into(),
        }
    }

    fn page(&self, mut response: ureq::http::Response<ureq::Body>) -> Page {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (location, set_cookie, csp) = (
            header("location"),
            header("set-cookie"),
            header("content-security-policy"),
        );
        Page {
            status: response.status().as_u16(),
            location,
            set_cookie,
            csp,
            body: response.body_mut().read_to_string().unwrap(),
        }
    }

    fn get(&self, path: &str) -> Page {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(session) = &self.session {
            request = request.header("Cookie", session);
        }
        self.page(request.call().unwrap())
    }

    /// A form POST from this server's own page (its Origin), unless `origin` says otherwise.
    fn post_from(&self, origin: Option<&str>, path: &str, form: &[(&str, &str)]) -> Page {
        let body: Vec<String> = form
            .iter()
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect();
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        if let Some(session) = &self.session {
            request = request.header("Cookie", session);
        }
        self.page(request.send(body.join("&")).unwrap())
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_from(Some(&self.base.clone()), path, form)
    }

    fn sign_in(&mut self, token: &str) -> Page {
        let page = self.post("/ui/sign-in", &[("token", token)]);
        self.session = page
            .set_cookie
            .as_deref()
            .and_then(|cookie| cookie.split(';').next())
            .map(str::to_string);
        page
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A server on `env`'s store and a browser signed in to it with `token`.
fn signed_in(env: &Env, token: &str) -> (Server, Browser) {
    let server = Server::start(env, &[]);
    let mut browser = Browser::new(&server);
    browser.sign_in(token);
    (server, browser)
}

/// A store holding PIPELINE and tokens "ops" (operator) and "reader" (viewer).
fn store_with_tokens(env: &Env) -> (String, String) {
    env.import_json(PIPELINE);
    let operator = env.ok(&["token", "create", "ops", "--role", "operator"]);
    let viewer = env.ok(&["token", "create", "reader"]);
    (operator.trim().to_string(), viewer.trim().to_string())
}

fn change_rows(env: &Env) -> i64 {
    env.count("SELECT count(*) FROM audit_log WHERE kind = 'change'")
}

fn sign_in_gives_a_strict_http_only_session_and_a_wrong_token_nothing() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let server = Server::start(&env, &[]);
    let mut browser = Browser::new(&server);

    for path in ["/ui/flags", "/ui/audit/export?format=csv"] {
        let anonymous = browser.get(path);
        assert_eq!(anonymous.status, 303, "{path}");
        assert_eq!(anonymous.location.as_deref(), Some("/ui/sign-in"));
    }

    let wrong = browser.sign_in("fst_not-a-token");
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());
    assert!(wrong.body.contains("not an active flagstore token"));

    let signed_in = browser.sign_in(&operator);
    assert_eq!(signed_in.status, 303);
    let cookie = signed_in.set_cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(&operator),
        "the cookie must not carry the token"
    );

    let flags = browser.get("/ui/flags");
    assert_eq!(flags.status, 200);
    assert!(
        flags
            .body
            .contains("Signed in as <strong>ops</strong> (operator)")
    );
    for flag in ["ingest", "dedupe", "enrich", "legacy"] {
        assert!(flags.body.contains(&format!("href=\"/ui/flags/{flag}\"")));
    }
    assert_eq!(
        flags.csp.as_deref(),
        Some(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             report-uri /ui/csp-report"
        )
    );
    assert!(
        !flags.body.contains("<script>") && !flags.body.contains(" style="),
        "no inline script or style"
    );

    let csrf = flags.field("csrf");
    assert_eq!(browser.post("/ui/sign-out", &[("csrf", &csrf)]).status, 303);
    assert_eq!(browser.get("/ui/flags").status, 303, "signed out");

    // Behind a TLS-terminating proxy the cookie is Secure.
    let behind_tls = browser
        .agent
        .post(format!("{}/ui/sign-in", browser.base))
        .header("Origin", &browser.base)
        .header("X-Forwarded-Proto", "https")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={}", encode(&operator)))
        .unwrap();
    let cookie = behind_tls.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("SameSite=Strict; Secure"), "{cookie}");
    assert!(cookie.starts_with("__Host-flagstore_session="), "{cookie}");
    // The __Host- cookie signs in, and pages over TLS ask for HSTS.
    let session = cookie.split(';').next().unwrap();
    let page = browser
        .agent
        .get(format!("{}/ui/flags", browser.base))
        .header("Cookie", session)
        .header("X-Forwarded-Proto", "https")
        .call()
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["strict-transport-security"]
            .to_str()
            .unwrap(),
        "max-age=31536000"
    );
}

fn a_viewer_reads_but_cannot_change_a_flag() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    let (_server, browser) = signed_in(&env, &viewer);

    let page = browser.get("/ui/flags/ingest");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Turn off (kill switch)"));
    // The version is the forms' business (a concurrent edit is refused), not the reader's.
    assert!(!page.body.contains("Version "), "{}", page.body);
    assert!(page.body.contains("Created "), "{}", page.body);
    let csrf = browser.get("/ui/flags").field("csrf");
    let version = env.open_store().flag_version("ingest").unwrap().to_string();
    let before = change_rows(&env);
    let refused = browser.post(
        "/ui/flags/ingest/enabled",
        &[("csrf", &csrf), ("version", &version), ("enabled", "false")],
    );
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("role operator"), "{}", refused.body);
    assert_eq!(change_rows(&env), before);
    assert!(env.flag("ingest").enabled);
}

fn forms_need_this_sessions_csrf_token_and_this_origin() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let (_server, browser) = signed_in(&env, &operator);
    let page = browser.get("/ui/flags/legacy");
    let (csrf, version) = (page.field("csrf"), page.field("version"));
    let before = change_rows(&env);
    let forged_csrf = "0".repeat(64);
    let forged = browser.post(
        "/ui/flags/legacy/enabled",
        &[
            ("csrf", &forged_csrf),
            ("version", &version),
            ("enabled", "true"),
        ],
    );
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("security token"), "{}", forged.body);
    let valid = [
        ("csrf", csrf.as_str()),
        ("version", &version),
        ("enabled", "true"),
    ];
    let cross_site = browser.post_from(
        Some("http://evil.example"),
        "/ui/flags/legacy/enabled",
        &valid,
    );
    assert_eq!(cross_site.status, 403);
    assert!(cross_site.body.contains("Origin"), "{}", cross_site.body);
    let no_origin = browser.post_from(None, "/ui/flags/legacy/enabled", &valid);
    assert_eq!(no_origin.status, 403);
    assert_eq!(change_rows(&env), before, "nothing refused was written");
    assert!(!env.flag("legacy").enabled);
}

fn the_kill_switch_names_its_dependents_then_writes_one_change_as_the_operator() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    env.ok(&["eval", "ingest", "--context", "k1"]);
    let (_server, browser) = signed_in(&env, &operator);
    let page = browser.get("/ui/flags/ingest");
    assert!(page.body.contains("Turn off (kill switch)"));
    assert!(page.body.contains("1 contexts stored on"), "{}", page.body);
    let (csrf, version) = (page.field("csrf"), page.field("version"));
    let before = change_rows(&env);

    let off = [
        ("csrf", csrf.as_str()),
        ("version", &version),
        ("enabled", "false"),
    ];
    let confirm = browser.post("/ui/flags/ingest/enabled", &off);
    assert_eq!(confirm.status, 200);
    assert!(
        confirm
            .body
            .contains("Turn off ingest and its 2 dependents")
    );
    for dependent in ["dedupe", "enrich"] {
        assert!(
            confirm.body.contains(&format!(">{dependent}</a>")),
            "{dependent}"
        );
    }
    assert_eq!(
        change_rows(&env),
        before,
        "asking to confirm writes nothing"
    );

    let confirmed = [
        ("csrf", csrf.as_str()),
        ("version", &version),
        ("enabled", "false"),
        ("confirm", "yes"),
    ];
    let done = browser.post("/ui/flags/ingest/enabled", &confirmed);
    assert_eq!(done.status, 303);
    assert_eq!(done.location.as_deref(), Some("/ui/flags/ingest"));
    assert_eq!(change_rows(&env), before + 1, "exactly one change row");
    assert_eq!(
        env.text(
            "SELECT actor || ' ' || reason FROM audit_log WHERE kind = 'change' ORDER BY id DESC LIMIT 1"
        ),
        "ops web: updated enabled true -> false"
    );
    assert_eq!(
        env.ok(&["eval", "enrich", "--context", "k1"]).trim(),
        "false"
    );

    let page = browser.get("/ui/flags/ingest");
    assert!(page.body.contains("Off: the kill switch is thrown"));
    let newest = env.count("SELECT max(id) FROM audit_log WHERE kind = 'change'");
    assert!(
        page.body.contains(&format!(
            "href=\"/ui/audit?flag=ingest&amp;cursor={}\">{newest}</a>",
            newest + 1
        )),
        "the history links its change row: {}",
        page.body
    );
    let on = [
        ("csrf", csrf.as_str()),
        ("version", &page.field("version")),
        ("enabled", "true"),
    ];
    assert_eq!(browser.post("/ui/flags/ingest/enabled", &on).status, 303);
    assert!(env.flag("ingest").enabled);
    assert_eq!(change_rows(&env), before + 2);
}

fn a_rollout_is_changed_previewed_and_checked() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let keys: String = (0..200).map(|i| format!("key-{i}\n")).collect();
    let file = env.write("keys.txt", keys);
    env.ok(&["eval", "enrich", "--contexts-file", file.to_str().unwrap()]);
    let (_server, browser) = signed_in(&env, &operator);

    // Stored decisions the bucket would decide otherwise at 20%: enrich (on_only, 50%) stored
    // only its on decisions, and those with a bucket from 20 to 49 would now be off.
    let expected = env.count(
        "SELECT count(*) FROM assignments WHERE flag = 'enrich' AND decision <> CASE WHEN bucket < 20 THEN 1 ELSE 0 END",
    );
    assert!(expected > 0, "200 keys give some buckets from 20 to 49");
    let preview = browser.get("/ui/flags/enrich?preview=20");
    assert!(
        preview.body.contains(&format!(
            "of the {} stored contexts,\n{expected} would be decided otherwise",
            env.count("SELECT count(*) FROM assignments WHERE flag = 'enrich'")
        )),
        "{}",
        preview.body
    );
    let bad_preview = browser.get("/ui/flags/enrich?preview=120");
    assert_eq!(bad_preview.status, 400);
    assert!(bad_preview.body.contains("enrich"), "{}", bad_preview.body);

    let page = browser.get("/ui/flags/enrich");
    assert!(page.body.contains("data-slider="), "the slider's field");
    let (csrf, version) = (page.field("csrf"), page.field("version"));
    let before = change_rows(&env);
    for bad in ["abc", "101", "-1", "NaN"] {
        let refused = browser.post(
            "/ui/flags/enrich/rollout",
            &[("csrf", &csrf), ("version", &version), ("rollout_pct", bad)],
        );
        assert_eq!(refused.status, 400, "{bad}");
        assert!(refused.body.contains("enrich"), "{bad}: {}", refused.body);
    }
    assert_eq!(change_rows(&env), before);
    let saved = browser.post(
        "/ui/flags/enrich/rollout",
        &[
            ("csrf", &csrf),
            ("version", &version),
            ("rollout_pct", "12.5"),
        ],
    );
    assert_eq!(saved.status, 303);
    assert_eq!(env.flag("enrich").rollout_pct, 12.5);
    assert_eq!(change_rows(&env), before + 1);
    assert!(
        browser
            .get("/ui/flags/enrich")
            .body
            .contains("rollout_pct 50 -&#62; 12.5")
    );
}

fn the_stale_filter_lists_what_flag_list_stale_lists_and_an_exemption_removes_a_flag() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let (_server, browser) = signed_in(&env, &operator);
    let listed = |browser: &Browser| -> Vec<String> {
        let page = browser.get("/ui/flags?stale=1&days=0");
        assert_eq!(page.status, 200, "{}", page.body);
        page.body
            .split("<tr>\n<td><a href=\"/ui/flags/")
            .skip(1)
            .map(|row| row.split('"').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&browser), ["ingest", "dedupe", "enrich", "legacy"]);
    assert!(
        browser
            .get("/ui/flags?stale=1&days=0")
            .body
            .contains("<td>not evaluated, unchanged since ")
    );
    assert!(
        browser
            .get("/ui/flags?stale=1")
            .body
            .contains("0 of 4 flags")
    );

    let page = browser.get("/ui/flags/legacy");
    let exempt = browser.post(
        "/ui/flags/legacy/stale-exempt",
        &[
            ("csrf", &page.field("csrf")),
            ("version", &page.field("version")),
            ("stale_exempt", "true"),
        ],
    );
    assert_eq!(exempt.status, 303);
    assert!(env.flag("legacy").stale_exempt);
    assert_eq!(
        env.text("SELECT actor || ' ' || reason FROM audit_log ORDER BY id DESC LIMIT 1"),
        "ops web: updated stale_exempt false -> true"
    );
    assert_eq!(listed(&browser), ["ingest", "dedupe", "enrich"]);
    assert!(
        browser
            .get("/ui/flags/legacy")
            .body
            .contains("Remove the exemption")
    );

    let bad = browser.get("/ui/flags?stale=1&days=soon");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("soon"), "{}", bad.body);
}

fn an_edit_made_since_the_page_was_loaded_is_refused_not_overwritten() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let (_server, browser) = signed_in(&env, &operator);
    let page = browser.get("/ui/flags/enrich");
    env.ok(&["flag", "set", "enrich", "--rollout", "30"]);
    let stale = browser.post(
        "/ui/flags/enrich/rollout",
        &[
            ("csrf", &page.field("csrf")),
            ("version", &page.field("version")),
            ("rollout_pct", "90"),
        ],
    );
    assert_eq!(stale.status, 409);
    assert!(stale.body.contains("enrich"), "{}", stale.body);
    assert_eq!(env.flag("enrich").rollout_pct, 30.0);
}

/// The graph's list: each flag under the flags it requires, a flag required by several listed
/// in full once and marked "(above)" where it appears again with dependents of its own.
fn the_graph_lists_each_flag_under_what_it_requires() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    env.import_json(
        r#"{"flags": [
            {"name": "ingest"},
            {"name": "dedupe", "requires": ["ingest"]},
            {"name": "enrich", "requires": ["ingest", "dedupe"]},
            {"name": "score", "requires": ["enrich"]},
            {"name": "legacy", "enabled": false}
        ]}"#,
    );
    let (_server, browser) = signed_in(&env, &viewer);
    let page = browser.get("/ui/graph");
    assert_eq!(page.status, 200);
    let item = |name: &str, state: &str| {
        format!(
            "<li><a href=\"/ui/flags/{name}\">{name}</a> <span class=\"{state}\">{state}</span>"
        )
    };
    let expected = [
        "<ul>".to_string(),
        item("ingest", "on"),
        "<ul>".to_string(),
        item("dedupe", "on"),
        "<ul>".to_string(),
        item("enrich", "on"),
        "<ul>".to_string(),
        item("score", "on"),
        "</li></ul></li></ul></li>".to_string(),
        item("enrich", "on"),
        " (above)</li></ul></li>".to_string(),
        item("legacy", "off"),
        "</li></ul>".to_string(),
    ]
    .concat();
    assert!(page.body.contains(&expected), "{}", page.body);
}

fn html_in_flag_names_and_context_keys_is_shown_as_text() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let hostile_flag = "<script>alert(1)</script>";
    let hostile_key = "<img src=x onerror=alert(2)>";
    env.import_json(&format!(
        r#"{{"flags": [{{"name": {hostile_flag:?}, "requires": ["ingest"]}}]}}"#
    ));
    env.ok(&["eval", hostile_flag, "--context", hostile_key]);
    let (_server, browser) = signed_in(&env, &operator);
    let flag_path = format!("/ui/flags/{}", encode(hostile_flag));
    for path in [
        "/ui/flags".to_string(),
        flag_path,
        "/ui/graph".to_string(),
        "/ui/audit".to_string(),
        format!("/ui/context?key={}", encode(hostile_key)),
        format!(
            "/ui/explain?flag={}&context={}",
            encode(hostile_flag),
            encode(hostile_key)
        ),
    ] {
        let page = browser.get(&path);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            !page.body.contains("<script>alert") && !page.body.contains("<img src=x"),
            "{path} shows markup unescaped"
        );
        assert!(
            page.body
                .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path} does not show the name as text"
        );
    }
}

fn the_audit_page_pages_verifies_and_exports_what_the_cli_prints() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    let keys: String = (0..250).map(|i| format!("key-{i}\n")).collect();
    let file = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", file.to_str().unwrap()]);
    let (_server, browser) = signed_in(&env, &viewer);
    let rows_before = env.count("SELECT count(*) FROM audit_log");

    let first = browser.get("/ui/audit?limit=10&flag=enrich");
    assert_eq!(first.status, 200);
    let older = first
        .body
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|href| href.contains("cursor="))
        .expect("an older page")
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let second = browser.get(&older);
    assert_eq!(second.status, 200);
    let ids = |page: &Page| -> Vec<i64> {
        page.body
            .split("<tr>\n<td>")
            .skip(1)
            .map(|s| s.split('<').next().unwrap().parse().unwrap())
            .collect()
    };
    let (a, b) = (ids(&first), ids(&second));
    assert_eq!(a.len(), 10);
    assert!(
        a.last() > b.first(),
        "the older page continues after the first"
    );

    // The stored rows behind the page re-hash to their hashes: what the browser checks.
    let start = first.body.find("data-rows=\"").unwrap() + "data-rows=\"".len();
    let end = start + first.body[start..].find('"').unwrap();
    let json = first.body[start..end]
        .replace("&#34;", "\"")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#39;", "'")
        .replace("&#38;", "&");
    let stored: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    // One stored row per decision record shown, and the row just before the first and the one
    // just after the last, for the browser to check the page's edges link to them.
    let (page, edges): (Vec<_>, Vec<_>) = stored.iter().partition(|row| row["edge"] == false);
    assert_eq!(page.len(), 10, "one stored row per decision record shown");
    let page_ids: Vec<i64> = page.iter().map(|row| row["id"].as_i64().unwrap()).collect();
    let (lowest, highest) = (
        page_ids.iter().min().unwrap(),
        page_ids.iter().max().unwrap(),
    );
    let edge_ids: Vec<i64> = edges
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    // The newest rows have no row after them.
    let newest = env.count("SELECT max(id) FROM audit_log");
    let expected: Vec<i64> = [lowest - 1, highest + 1]
        .into_iter()
        .filter(|id| *id <= newest)
        .collect();
    assert_eq!(edge_ids, expected);
    for row in &stored {
        let entry = flagstore::audit::Entry {
            ts: row["ts"].as_str().unwrap(),
            kind: row["kind"].as_str().unwrap(),
            actor: row["actor"].as_str().unwrap(),
            action: row["action"].as_str(),
            flag: row["flag"].as_str(),
            context_key: row["context_key"].as_str(),
            result: row["result"].as_i64(),
            source: row["source"].as_str(),
            reason: row["reason"].as_str(),
            detail: row["detail"].as_str().unwrap(),
        };
        assert_eq!(
            entry.hash(
                row["id"].as_i64().unwrap(),
                row["prev_hash"].as_str().unwrap()
            ),
            row["hash"].as_str().unwrap()
        );
        assert_ne!(row["prev_hash"], GENESIS_HASH);
    }

    for format in ["csv", "jsonl"] {
        let export = browser.get(&format!("/ui/audit/export?format={format}&flag=enrich"));
        assert_eq!(export.status, 200);
        assert!(
            format == "jsonl" || export.body.len() > 64 * 1024,
            "the CSV export spans more than one streamed chunk: {} bytes",
            export.body.len()
        );
        assert_eq!(
            export.body,
            env.ok(&[
                "audit", "--flag", "enrich", "--format", format, "--limit", "0"
            ]),
            "{format}"
        );
    }
    assert_eq!(browser.get("/ui/audit/export?format=xml").status, 400);
    let bad_time = browser.get("/ui/audit?flag=enrich&since=last%20tuesday");
    assert_eq!(bad_time.status, 400);
    assert!(bad_time.body.contains("last tuesday"), "{}", bad_time.body);
    // The refusal comes back on the page: the navigation, and the form as it was sent.
    for kept in [
        r#"<a href="/ui/audit">Audit log</a>"#,
        r#"name="flag" value="enrich""#,
        r#"name="since" value="last tuesday""#,
    ] {
        assert!(bad_time.body.contains(kept), "{kept}: {}", bad_time.body);
    }
    let typo = browser.get("/ui/audit?kind=evalution");
    assert_eq!(typo.status, 400);
    assert!(
        typo.body.contains("evaluation"),
        "the nearest kind: {}",
        typo.body
    );
    let nothing = browser.get("/ui/audit?actor=nobody");
    assert_eq!(nothing.status, 200);
    assert!(
        nothing
            .body
            .contains("No rows match these filters (actor nobody)."),
        "{}",
        nothing.body
    );
    assert!(
        first.body.contains(r#"<td class="time">"#),
        "times do not wrap: {}",
        first.body
    );
    let bad_limit = browser.get("/ui/audit?limit=0");
    assert_eq!(bad_limit.status, 400);
    assert!(
        bad_limit.body.contains("outside 1-500"),
        "{}",
        bad_limit.body
    );
    let unknown = browser.get("/ui/flags/enrichh");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("enrichh") && unknown.body.contains("enrich"));
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log"),
        rows_before,
        "reads append nothing"
    );
}

fn the_audit_page_says_what_signed_heads_vouch_for() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    let (server, browser) = signed_in(&env, &viewer);
    let page = browser.get("/ui/audit");
    assert!(
        page.body
            .contains("This server publishes no signed tree heads"),
        "{}",
        page.body
    );
    drop(server);

    let signing = env.signing();
    let signing = |every: &str| {
        let server = Server::start_with(env.signing_cmd(&signing), &["--head-every", every]);
        let mut browser = Browser::new(&server);
        browser.sign_in(&viewer);
        (server, browser)
    };
    // A head an hour at most, so none before the page is read.
    let (server, browser) = signing("3600");
    assert!(
        browser
            .get("/ui/audit")
            .body
            .contains("It has published no signed tree head yet.")
    );
    drop(server);
    let (_server, browser) = signing("1");
    // Rows written by another command are covered by the server's next head too.
    env.ok(&["eval", "ingest", "--context", "k"]);
    let rows = env.count("SELECT count(*) FROM audit_log");
    let said = format!("The newest signed tree head this server published covers rows 1..={rows},");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !browser.get("/ui/audit").body.contains(&said) {
        assert!(
            std::time::Instant::now() < deadline,
            "no head covering {rows} rows"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn a_pasted_checkpoint_opens_its_row_and_is_compared() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    let checkpoint = env.ok(&["audit", "checkpoint"]);
    env.ok(&["eval", "ingest", "--context", "later"]);
    let (_server, browser) = signed_in(&env, &viewer);
    let id = serde_json::from_str::<serde_json::Value>(&checkpoint).unwrap()["id"]
        .as_i64()
        .unwrap();
    let page = browser.get(&format!(
        "/ui/audit?checkpoint={}",
        encode(checkpoint.trim())
    ));
    assert!(
        page.body
            .contains(&format!("for row {id}, as the checkpoint says")),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("data-checkpoint-id=\"{id}\"")));
    let wrong = format!(r#"{{"id": {id}, "hash": "{}"}}"#, "f".repeat(64));
    let page = browser.get(&format!("/ui/audit?checkpoint={}", encode(&wrong)));
    assert!(
        page.body.contains(&format!(
            "Row {id} is stored with hash {}, not the checkpoint",
            checkpoint_hash(&checkpoint)
        )),
        "{}",
        page.body
    );
    let garbage = browser.get("/ui/audit?checkpoint=hello");
    assert!(garbage.body.contains("The checkpoint was not read"));
}

fn checkpoint_hash(checkpoint: &str) -> String {
    serde_json::from_str::<serde_json::Value>(checkpoint).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

fn explain_at_a_past_time_shows_the_cli_steps_and_links_the_recorded_row() {
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    env.ok(&["eval", "enrich", "--context", "tenant:acme"]);
    let (_server, browser) = signed_in(&env, &viewer);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let at = now.as_str();
    let page = browser.get(&format!(
        "/ui/explain?flag=enrich&context=tenant%3Aacme&at={}",
        encode(at)
    ));
    assert_eq!(page.status, 200);
    let cli = env.ok(&["explain", "enrich", "--context", "tenant:acme", "--at", at]);
    let shown = cli
        .replace('&', "&#38;")
        .replace('"', "&#34;")
        .replace('<', "&#60;")
        .replace('>', "&#62;");
    assert!(page.body.contains(&shown), "{}\n---\n{shown}", page.body);
    assert!(page.body.contains("The recorded decision in the audit log"));
}

fn a_revoked_token_ends_its_sessions() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let (_server, browser) = signed_in(&env, &operator);
    assert_eq!(browser.get("/ui/flags").status, 200);
    env.ok(&["token", "revoke", "ops"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = browser.get("/ui/flags");
        if page.status == 303 {
            assert_eq!(page.location.as_deref(), Some("/ui/sign-in"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still signed in");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// An admin lists, creates and revokes tokens on the tokens page: a new token is shown once
/// and works at once, a revoked one stops at once, both are audited under the admin's name,
/// and an operator neither sees the page in the navigation nor may open or post it.
fn an_admin_manages_tokens_in_the_ui_and_an_operator_cannot() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let admin = env.ok(&["token", "create", "boss", "--role", "admin"]);
    let (server, admin_browser) = signed_in(&env, admin.trim());
    let page = admin_browser.get("/ui/flags");
    assert!(
        page.body.contains(r#"<a href="/ui/tokens">Tokens</a>"#),
        "{}",
        page.body
    );
    let list = admin_browser.get("/ui/tokens");
    assert_eq!(list.status, 200);
    for shown in [
        "<td>ops</td>",
        "<td>operator</td>",
        "<td>reader</td>",
        "<td>boss</td>",
    ] {
        assert!(list.body.contains(shown), "{shown} in {}", list.body);
    }
    let csrf = list.field("csrf");
    let changes = change_rows(&env);
    let created = admin_browser.post(
        "/ui/tokens",
        &[
            ("csrf", &csrf),
            ("name", "etl-worker"),
            ("role", "operator"),
        ],
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let token = created.field("new-token");
    assert!(
        token.starts_with("fst_") && token.len() == 68,
        "{}",
        created.body
    );
    assert!(created.body.contains("shown this once"), "{}", created.body);
    let mut newcomer = Browser::new(&server);
    assert_eq!(
        newcomer.sign_in(&token).status,
        303,
        "the new token works at once"
    );
    assert!(
        admin_browser.get("/ui/tokens").body.find(&token).is_none(),
        "shown once only"
    );

    let duplicate = admin_browser.post(
        "/ui/tokens",
        &[("csrf", &csrf), ("name", "etl-worker"), ("role", "viewer")],
    );
    assert_eq!(duplicate.status, 400, "{}", duplicate.body);
    assert!(duplicate.body.contains("etl-worker"), "{}", duplicate.body);
    assert!(
        duplicate
            .body
            .contains(r#"<a href="/ui/tokens">Tokens</a>"#),
        "an error page keeps the navigation: {}",
        duplicate.body
    );

    let revoked = admin_browser.post("/ui/tokens/etl-worker/revoke", &[("csrf", &csrf)]);
    assert_eq!(revoked.status, 303);
    assert_eq!(revoked.location.as_deref(), Some("/ui/tokens"));
    assert_eq!(newcomer.get("/ui/flags").status, 303, "revoked at once");
    assert_eq!(change_rows(&env), changes + 2);
    let audited = env.ok(&[
        "audit", "--kind", "change", "--limit", "2", "--format", "jsonl",
    ]);
    assert_eq!(audited.matches(r#""actor":"boss""#).count(), 2, "{audited}");
    assert!(audited.contains(r#""action":"token_revoke""#), "{audited}");
    assert!(audited.contains(r#""action":"token_create""#), "{audited}");

    let (_server, operator_browser) = signed_in(&env, &operator);
    let page = operator_browser.get("/ui/flags");
    assert!(!page.body.contains("/ui/tokens"), "{}", page.body);
    assert_eq!(operator_browser.get("/ui/tokens").status, 403);
    let csrf = page.field("csrf");
    let refused = operator_browser.post(
        "/ui/tokens",
        &[("csrf", &csrf), ("name", "sneaky"), ("role", "admin")],
    );
    assert_eq!(refused.status, 403);
    assert_eq!(change_rows(&env), changes + 2);
}

/// A flag name or context key with a bidirectional override or a zero-width character is
/// spelled out in the lists, as the CLI's tables show it, so it cannot pass for another.
fn bidi_and_zero_width_characters_are_spelled_out_in_the_lists() {
    let env = Env::new();
    let (operator, _) = store_with_tokens(&env);
    let (flipped, hidden) = ("exe\u{202e}gnp.txt", "in\u{200b}gest");
    env.import_json(
        &serde_json::json!({"flags": [{"name": flipped}, {"name": hidden}]}).to_string(),
    );
    env.ok(&["eval", flipped, "--context", "tenant\u{2066}x"]);
    let (_server, browser) = signed_in(&env, &operator);
    for path in ["/ui/flags", "/ui/audit", "/ui/graph"] {
        let mut page = browser.get(path);
        assert_eq!(page.status, 200, "{path}");
        // The audit page carries the stored rows, exact, for the browser to re-hash: an
        // attribute nobody reads.
        if let Some(start) = page.body.find("data-rows=\"") {
            let end = start + 11 + page.body[start + 11..].find('"').unwrap();
            page.body.replace_range(start..=end, "");
        }
        for (raw, spelled) in [
            ('\u{202e}', "exe\\u{202e}gnp.txt"),
            ('\u{200b}', "in\\u{200b}gest"),
        ] {
            if path != "/ui/audit" || raw == '\u{202e}' {
                assert!(page.body.contains(spelled), "{path} lacks {spelled}");
            }
            assert!(!page.body.contains(raw), "{path} shows {raw:?} raw");
        }
    }
    let audit = browser.get("/ui/audit");
    assert!(audit.body.contains("tenant\\u{2066}x"));
}

contract_tests! {
    an_admin_manages_tokens_in_the_ui_and_an_operator_cannot,
    bidi_and_zero_width_characters_are_spelled_out_in_the_lists,
    sign_in_gives_a_strict_http_only_session_and_a_wrong_token_nothing,
    a_viewer_reads_but_cannot_change_a_flag,
    forms_need_this_sessions_csrf_token_and_this_origin,
    the_kill_switch_names_its_dependents_then_writes_one_change_as_the_operator,
    a_rollout_is_changed_previewed_and_checked,
    the_stale_filter_lists_what_flag_list_stale_lists_and_an_exemption_removes_a_flag,
    an_edit_made_since_the_page_was_loaded_is_refused_not_overwritten,
    html_in_flag_names_and_context_keys_is_shown_as_text,
    the_graph_lists_each_flag_under_what_it_requires,
    the_audit_page_pages_verifies_and_exports_what_the_cli_prints,
    a_pasted_checkpoint_opens_its_row_and_is_compared,
    the_audit_page_says_what_signed_heads_vouch_for,
    explain_at_a_past_time_shows_the_cli_steps_and_links_the_recorded_row,
    a_revoked_token_ends_its_sessions,
}

/// Six downloads of the whole log whose clients never read: pages and the admin API still
/// answer within a second (downloads have readers of their own), a download that finds both
/// download readers taken is answered 503 with Retry-After instead of hanging, and once the
/// stuck downloads pass the stall deadline their readers are free again.
#[test]
fn stuck_exports_never_hold_pages_up_and_give_their_readers_back() {
    use std::io::{Read, Write};
    let env = Env::new();
    let (_, viewer) = store_with_tokens(&env);
    let keys: String = (0..8_000).map(|i| format!("key-{i}\n")).collect();
    let file = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", file.to_str().unwrap()]);
    let (server, browser) = signed_in(&env, &viewer);
    let cookie = browser.session.clone().unwrap();
    let address = server.url.trim_start_matches("http://").to_string();
    let export = |format: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET /ui/audit/export?format={format} HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\n\r\n"
        )
        .unwrap();
        stream
    };
    let started = Instant::now();
    let stuck: Vec<_> = (0..6).map(|_| export("jsonl")).collect();
    std::thread::sleep(Duration::from_millis(300));
    for (path, answer) in [
        ("/ui/flags", browser.get("/ui/flags").status),
        (
            "/api/admin/v1/flags",
            browser
                .agent
                .get(format!("{}/api/admin/v1/flags", server.url))
                .header("X-API-Key", &viewer)
                .call()
                .unwrap()
                .status()
                .as_u16(),
        ),
    ] {
        assert_eq!(answer, 200, "{path}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Two downloads hold the two download readers; the others were refused after 2 s.
    let mut refused = 0;
    for mut stream in stuck {
        stream
            .set_read_timeout(Some(Duration::from_millis(3_000)))
            .unwrap();
        let mut head = [0u8; 64];
        let read = stream.read(&mut head).unwrap_or(0);
        let status = String::from_utf8_lossy(&head[..read]).to_string();
        if status.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            std::mem::forget(stream);
        }
    }
    assert_eq!(refused, 4);
    // Past the stall deadline the stuck downloads are given up and a new one goes through.
    std::thread::sleep(Duration::from_secs(10));
    let whole = browser
        .agent
        .get(format!("{}/ui/audit/export?format=jsonl", server.url))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(whole.status(), 200);
    let lines = std::io::BufRead::lines(std::io::BufReader::new(whole.into_body().into_reader()));
    assert_eq!(
        lines.count(),
        env.ok(&["audit", "--limit", "0", "--format", "jsonl"])
            .lines()
            .count()
    );
}

/// Anyone can post a CSP violation report: the server's log shows it with control characters
/// escaped (a report cannot clear the terminal or forge a line), logs 10 a minute at most,
/// and refuses one over 16 KB.
#[test]
fn csp_reports_are_logged_escaped_bounded_and_rate_limited() {
    let env = Env::new();
    store_with_tokens(&env);
    let mut server = Server::start(&env, &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let report = |body: &str| {
        agent
            .post(format!("{}/ui/csp-report", server.url))
            .header("Content-Type", "application/csp-report")
            .send(body)
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(report("\u{1b}[2J\nflagstore serve: forged line"), 204);
    for i in 0..19 {
        assert_eq!(report(&format!("report {i}")), 204);
    }
    assert_eq!(report(&"x".repeat(16 * 1024 + 1)), 413);
    server.signal("TERM");
    let (_, log) = server.exit();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Content-Security-Policy"))
        .collect();
    assert_eq!(reports.len(), 10, "{log}");
    assert!(
        reports[0].ends_with("violation: \\u{1b}[2J\\nflagstore serve: forged line"),
        "{}",
        reports[0]
    );
    assert!(!log.contains('\u{1b}'));
}
