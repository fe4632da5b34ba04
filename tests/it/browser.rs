//! The web UI in a real browser: Debian's `chromium`, driven through `chromedriver` with
//! WebDriver (fantoccini). Every page is checked by axe-core (vendored in tests/browser/) and
//! photographed into target/screenshots/; the server counts CSP violations the browser
//! reports. Skipped, saying so, where chromium or chromedriver is not installed; `.ci/run`
//! installs both and names them in FLAGSTORE_TEST_CHROMIUM and FLAGSTORE_TEST_CHROMEDRIVER,
//! so there the test cannot be skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, PIPELINE, Server};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const AXE: &str = include_str!("../browser/axe.min.js");

/// The binary `variable` names, which must exist; without the variable, `default` if it does.
fn installed(variable: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "{variable} names {}, which does not exist",
                path.display()
            );
            Some(path)
        }
        None => Some(PathBuf::from(default)).filter(|path| path.exists()),
    }
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(binary: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    // The flags a closed network needs: without them Chromium keeps trying to reach Google.
    let options = json!({
        "binary": chromium,
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--window-size=1280,1000",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_string(), options);
    capabilities.insert("goog:loggingPrefs".to_string(), json!({"browser": "ALL"}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// chromedriver's browser log (console messages, failed loads, CSP violations) since the last
/// read; fantoccini has no command for it.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type": "browser"}"#.to_string()),
        )
    }
}

/// The browser log's errors since the last read.
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("the browser log");
    log.as_array()
        .expect("log entries")
        .iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Checks the page in the browser with axe-core, that the browser logged no error since the
/// last check, and saves a screenshot as `name`.png.
async fn check_page(client: &Client, name: &str) {
    assert_eq!(
        console_errors(client).await,
        Vec::<String>::new(),
        "console errors up to the {name} page"
    );
    client.execute(AXE, vec![]).await.unwrap();
    let violations = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(
                 (r) => done(r.passes.length === 0 ? ['axe checked nothing'] :
                     r.violations.map((v) => `${v.id} (${v.nodes.length}): ${v.help}`)),
                 (e) => done([`axe failed: ${e}`]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(violations, json!([]), "axe-core on the {name} page");
    let png = client.screenshot().await.unwrap();
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(directory.join(format!("{name}.png")), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits for the in-browser verification of the audit page to finish; returns its verdict.
async fn verification(client: &Client) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.find(Locator::Id("chain-status")).await.unwrap();
        if let Some(state) = status.attr("data-state").await.unwrap() {
            return (state, status.text().await.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "the page never finished verifying"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(client: &Client, id: &str, value: &str) {
    let field = client.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Clicks what `css` finds and waits for the page it leads to: a click returns before the
/// next document has loaded, so the old one is marked and the wait is for a document
/// without the mark.
async fn click(client: &Client, css: &str) {
    client
        .execute("document.documentElement.dataset.left = 'yes';", vec![])
        .await
        .unwrap();
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let loaded = client
            .execute(
                "return document.readyState === 'complete' \
                 && document.documentElement.dataset.left === undefined;",
                vec![],
            )
            .await
            .unwrap_or(json!(false));
        if loaded == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "clicking {css} led to no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_and_reviewers_use_every_page_in_chromium() {
    let (Some(chromium), Some(chromedriver)) = (
        installed("FLAGSTORE_TEST_CHROMIUM", "/usr/bin/chromium"),
        installed("FLAGSTORE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        // Past the harness's capture (which hides a passing test's eprintln!), so the skip
        // shows on the terminal and in CI's log.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: the browser test: no chromium and chromedriver (apt-get install \
              chromium chromium-driver, as .ci/run does)\n",
        );
        return;
    };
    let env = Env::new();
    env.import_json(PIPELINE);
    let token = env.ok(&["token", "create", "ops", "--role", "admin"]);
    let keys: String = (0..40).map(|i| format!("key-{i}\n")).collect();
    let file = env.write("keys.txt", keys);
    env.ok(&["eval", "--all", "--contexts-file", file.to_str().unwrap()]);
    let server = Server::start(&env, &[]);
    let driver = Driver::start(&chromedriver);
    let client = browser(&driver, &chromium, &env.dir.path().join("chromium")).await;
    let base = server.url.clone();

    client.goto(&format!("{base}/ui/flags")).await.unwrap();
    assert!(client.current_url().await.unwrap().path() == "/ui/sign-in");
    check_page(&client, "sign-in").await;
    fill(&client, "token", token.trim()).await;
    click(&client, "main button[type=submit]").await;
    assert!(
        text_of(&client, "nav .who")
            .await
            .contains("Signed in as ops")
    );
    check_page(&client, "flags").await;

    // The partial-rollout filter leaves only enrich (50%); htmx swaps the table in place.
    client
        .find(Locator::Id("partial"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // htmx may swap the table between finding it and reading it: that read is retried.
        let listed = match client.find(Locator::Css("#flag-table tbody")).await {
            Ok(table) => table.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if !listed.is_empty() && !listed.contains("legacy") {
            assert!(listed.contains("enrich"), "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the filter never applied: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The stale filter, over 0 days: nothing was evaluated since now, so every flag shows.
    client
        .goto(&format!("{base}/ui/flags?stale=1&days=0"))
        .await
        .unwrap();
    let stale = text_of(&client, "#flag-table").await;
    assert!(
        stale.contains("4 of 4 flags") && stale.contains("not evaluated"),
        "{stale}"
    );
    check_page(&client, "stale-flags").await;

    // The kill switch: confirmation naming the dependents, then one change row as "ops".
    client
        .goto(&format!("{base}/ui/flags/ingest"))
        .await
        .unwrap();
    check_page(&client, "flag").await;
    click(&client, "button.danger").await;
    let confirm = text_of(&client, "main").await;
    assert!(
        confirm.contains("dedupe") && confirm.contains("enrich"),
        "{confirm}"
    );
    check_page(&client, "confirm-kill-switch").await;
    click(&client, "button.danger").await;
    assert!(
        text_of(&client, "main")
            .await
            .contains("Off: the kill switch is thrown")
    );
    assert_eq!(
        env.text("SELECT actor FROM audit_log WHERE kind = 'change' ORDER BY id DESC LIMIT 1"),
        "ops"
    );
    click(&client, "form[action$='/enabled'] button").await;
    assert!(env.flag("ingest").enabled);

    // A rollout through the number field; app.js adds the slider beside it.
    client
        .goto(&format!("{base}/ui/flags/enrich"))
        .await
        .unwrap();
    client
        .find(Locator::Css("input[type=range]"))
        .await
        .expect("the rollout slider");
    fill(&client, "rollout_pct", "25").await;
    click(&client, "form[action$='/rollout'] button").await;
    assert!(text_of(&client, "main").await.contains("rolled out to 25%"));

    client.goto(&format!("{base}/ui/graph")).await.unwrap();
    check_page(&client, "graph").await;

    // The audit page re-hashes its rows in the browser, up to the head `audit verify` prints.
    client.goto(&format!("{base}/ui/audit")).await.unwrap();
    let (state, said) = verification(&client).await;
    let verified = env.ok(&["audit", "verify"]);
    let head = verified.trim().rsplit(' ').next().unwrap();
    assert_eq!(state, "verified", "{said}");
    assert!(
        said.contains(&format!("has hash {head}")) && said.contains("flagstore audit verify"),
        "{said} / {verified}"
    );
    check_page(&client, "audit").await;
    click(&client, "a[rel=next]").await;
    assert_eq!(verification(&client).await.0, "verified");

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    client
        .goto(&format!(
            "{base}/ui/explain?flag=enrich&context=key-1&at={}",
            now.replace(':', "%3A")
        ))
        .await
        .unwrap();
    assert!(text_of(&client, "pre").await.contains("recorded decision"));
    check_page(&client, "explain").await;
    client
        .goto(&format!("{base}/ui/context?key=key-1"))
        .await
        .unwrap();
    check_page(&client, "context").await;

    // The admin's tokens page: a new token shown once, in the list at once.
    client.goto(&format!("{base}/ui/tokens")).await.unwrap();
    fill(&client, "t-name", "etl-worker").await;
    click(&client, "form[action='/ui/tokens'] button[type=submit]").await;
    assert!(
        text_of(&client, ".notice")
            .await
            .contains("shown this once")
    );
    assert!(text_of(&client, "table").await.contains("etl-worker"));
    check_page(&client, "tokens").await;

    // A problem page: its 404 is the one error the browser may log.
    client
        .goto(&format!("{base}/ui/flags/no-such-flag"))
        .await
        .unwrap();
    let logged = console_errors(&client).await;
    assert!(logged.len() == 1 && logged[0].contains("404"), "{logged:?}");
    assert!(text_of(&client, "main").await.contains("no-such-flag"));
    check_page(&client, "problem").await;

    // Altering a stored row is caught by the browser, which names the row.
    let altered = env.count("SELECT max(id) FROM audit_log WHERE kind = 'evaluation'");
    env.tamper(&format!(
        "UPDATE audit_log SET actor = 'someone else' WHERE id = {altered}"
    ));
    client.goto(&format!("{base}/ui/audit")).await.unwrap();
    let (state, said) = verification(&client).await;
    assert_eq!(state, "failed");
    assert!(
        said.contains(&format!("Row {altered} was altered")),
        "{said}"
    );

    client.close().await.unwrap();
    let metrics = ureq::get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "flagstore_csp_violations_total 0"),
        "{metrics}"
    );
}
