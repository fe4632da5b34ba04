//! `flagstore audit` filters, orders, paging and formats; `history`; `explain`.

use crate::common::{Env, PIPELINE};
use serde_json::Value;

/// Every decision a row shows, in order: a decision record shows one per requested flag,
/// each with the record's id.
const ALL_DESC: [i64; 12] = [8, 8, 7, 6, 5, 5, 5, 5, 4, 3, 2, 1];

/// A store whose log has changes by two actors, evaluations of several contexts, and a gap in
/// time in the middle so time filters have something to cut.
fn store_with_log() -> (Env, String) {
    let env = Env::new();
    env.import_json(PIPELINE); // rows 1-4: ingest, dedupe, enrich, legacy, as the file lists them
    // Row 5, one decision record: ingest, dedupe, enrich, legacy.
    env.ok(&["eval", "--all", "--context", "a"]);
    std::thread::sleep(std::time::Duration::from_millis(30));
    env.cmd()
        .args([
            "--actor",
            "alice",
            "flag",
            "set",
            "enrich",
            "--rollout",
            "10",
        ])
        .assert()
        .success(); // row 6
    env.ok(&["eval", "enrich", "--context", "b"]); // row 7
    env.ok(&["eval", "enrich", "legacy", "--context", "a"]); // row 8: enrich, legacy
    let boundary = env.text("SELECT ts FROM audit_log WHERE id = 6");
    (env, boundary)
}

fn ids(env: &Env, args: &[&str]) -> Vec<i64> {
    let mut full = vec!["audit", "--format", "jsonl"];
    full.extend(args);
    env.ok(&full)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

fn newest_first_by_default_and_oldest_first_on_request() {
    let (env, _) = store_with_log();
    assert_eq!(ids(&env, &[]), ALL_DESC);
    assert_eq!(ids(&env, &["--asc", "--limit", "3"]), [1, 2, 3]);
    assert_eq!(ids(&env, &["--limit", "2"]), [8, 8]);
    // A page ends at a record's end: the limit reached inside record 5 shows all of it.
    assert_eq!(ids(&env, &["--limit", "5"]), [8, 8, 7, 6, 5, 5, 5, 5]);
}

fn filters_combine() {
    let (env, boundary) = store_with_log();
    assert_eq!(ids(&env, &["--flag", "enrich"]), [8, 7, 6, 5, 3]);
    assert_eq!(ids(&env, &["--flag", "enrich", "--asc"]), [3, 5, 6, 7, 8]);
    assert_eq!(ids(&env, &["--flag", "legacy"]), [8, 5, 4]);
    assert_eq!(ids(&env, &["--flag", "enrich", "--cursor", "7"]), [6, 5, 3]);
    assert_eq!(ids(&env, &["--flag", "enrich", "--limit", "2"]), [8, 7]);
    assert_eq!(ids(&env, &["--context", "a"]), [8, 8, 5, 5, 5, 5]);
    assert_eq!(ids(&env, &["--flag", "enrich", "--context", "a"]), [8, 5]);
    assert_eq!(ids(&env, &["--kind", "change"]), [6, 4, 3, 2, 1]);
    assert_eq!(ids(&env, &["--kind", "change", "--actor", "alice"]), [6]);
    assert_eq!(ids(&env, &["--since", &boundary]), [8, 8, 7, 6]);
    assert_eq!(
        ids(&env, &["--until", &boundary, "--kind", "evaluation"]),
        [5, 5, 5, 5]
    );
    let day = &boundary[..10];
    assert_eq!(ids(&env, &["--since", day, "--until", day]).len(), 12);
    assert!(ids(&env, &["--until", "2000-01-01"]).is_empty());
    assert!(ids(&env, &["--flag", "nothing"]).is_empty());
}

fn keyset_paging_visits_every_row_once() {
    let (env, _) = store_with_log();
    for order in [vec![], vec!["--asc"]] {
        let mut seen: Vec<i64> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut args = vec!["audit", "--format", "jsonl", "--limit", "5"];
            args.extend(order.iter().copied());
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let output = env.cmd().args(&args).output().unwrap();
            let page: Vec<i64> = String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["id"]
                        .as_i64()
                        .unwrap()
                })
                .collect();
            seen.extend(&page);
            let stderr = String::from_utf8(output.stderr).unwrap();
            match stderr.trim().rsplit_once("--cursor ") {
                Some((_, next)) if page.len() >= 5 => cursor = Some(next.to_string()),
                _ => break,
            }
        }
        let mut expected = ALL_DESC.to_vec();
        if !order.is_empty() {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }
}

/// A flag's records come from the ranges of every set that lists it, each set read a few
/// ranges at a time and merged: writes alternating between two lists of flags (more ranges
/// in each set than one read takes) come back in id order both ways, and paging by cursor
/// visits each record once.
fn a_flags_records_in_several_sets_merge_in_order() {
    let env = Env::new();
    env.import_json(PIPELINE);
    let mut records = Vec::new();
    for n in 0..40 {
        let context = format!("tenant:{n}");
        match n % 2 {
            0 => env.ok(&["eval", "enrich", "--context", &context]),
            _ => env.ok(&["eval", "enrich", "dedupe", "--context", &context]),
        };
        records.push(env.count("SELECT max(id) FROM audit_log"));
    }
    let newest_first: Vec<i64> = records.iter().rev().copied().collect();
    let evaluations = ["--flag", "enrich", "--kind", "evaluation"];
    assert_eq!(ids(&env, &evaluations), newest_first);
    assert_eq!(ids(&env, &[&evaluations[..], &["--asc"]].concat()), records);
    for (order, expected) in [(None, &newest_first), (Some("--asc"), &records)] {
        let mut seen: Vec<i64> = Vec::new();
        let mut cursor: Option<i64> = None;
        loop {
            let mut args = evaluations.to_vec();
            args.extend(order);
            let cursor_text = cursor.map(|id| id.to_string());
            args.extend(["--limit", "7"]);
            if let Some(text) = &cursor_text {
                args.extend(["--cursor", text.as_str()]);
            }
            let page = ids(&env, &args);
            seen.extend(&page);
            match page.last() {
                Some(&last) if page.len() == 7 => cursor = Some(last),
                _ => break,
            }
        }
        assert_eq!(&seen, expected, "{order:?}");
    }
}

fn every_format_carries_every_column() {
    let (env, _) = store_with_log();
    let columns = [
        "id",
        "ts",
        "kind",
        "actor",
        "action",
        "flag",
        "context_key",
        "result",
        "source",
        "reason",
        "detail",
        "prev_hash",
        "hash",
    ];
    let array: Value =
        serde_json::from_str(&env.ok(&["audit", "--format", "json", "--flag", "enrich"])).unwrap();
    let rows = array.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, columns);
    assert_eq!(rows[2]["detail"]["before"]["rollout_pct"], 50);
    assert_eq!(rows[2]["actor"], "alice");

    let csv = env.ok(&[
        "audit", "--format", "csv", "--kind", "change", "--actor", "alice",
    ]);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header, columns);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0][9], "flag set: updated rollout_pct 50 -> 10");
    let detail: Value = serde_json::from_str(&records[0][10]).unwrap();
    assert_eq!(detail["after"]["rollout_pct"], 10);

    let table = env.ok(&["audit", "--limit", "2"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with("id  ts                        kind        actor   action  flag"),
        "{table}"
    );
    let reason_column = lines[0].find("reason").unwrap();
    assert_eq!(&lines[1][reason_column..], "disabled");
}

fn bad_query_values_are_refused() {
    let (env, _) = store_with_log();
    assert_eq!(
        env.fails(&["audit", "--since", "last tuesday"]),
        "flagstore: invalid time \"last tuesday\": expected RFC 3339 (2026-11-23T20:45:00Z) or a date (2026-11-23)"
    );
    env.cmd()
        .args(["audit", "--format", "xml"])
        .assert()
        .code(2);
    env.cmd()
        .args(["audit", "--kind", "other"])
        .assert()
        .code(2);
}

fn history_lists_changes_as_before_and_after() {
    let (env, _) = store_with_log();
    env.ok(&["flag", "disable", "enrich"]);
    let history = env.ok(&["history", "enrich"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[0].ends_with(
        "tester  import: created enabled true, rollout_pct 50, requires [dedupe], sticky on_only"
    ));
    assert!(lines[1].ends_with("alice  flag set: updated rollout_pct 50 -> 10"));
    assert!(lines[2].ends_with("tester  flag disable: updated enabled true -> false"));
    assert_eq!(
        env.fails(&["history", "enrch"]),
        "flagstore: unknown flag \"enrch\" (did you mean \"enrich\"?)"
    );
}

fn explain_now_shows_every_step_and_writes_nothing() {
    let (env, _) = store_with_log();
    let before = env.snapshot();
    let text = env.ok(&["explain", "enrich", "--context", "a"]);
    assert_eq!(env.snapshot(), before, "explain wrote to the store");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "enrich for context \"a\", now");
    assert_eq!(
        lines[1],
        "  1 known:          yes (rollout_pct 10, requires [dedupe], sticky on_only)"
    );
    assert_eq!(lines[2], "  2 enabled:        yes");
    assert!(
        lines[3].starts_with("  3 requires:       dedupe: on ("),
        "{text}"
    );
    // Python: int(hashlib.md5(b"enrich:a").hexdigest(), 16) % 100 == 45: inside the 50% the
    // store was evaluated at (so assigned), outside today's 10%.
    assert!(
        lines[4].starts_with("  4 assignment:     on since 20"),
        "{text}"
    );
    assert!(
        lines[4].ends_with("decided at bucket 45 under rollout_pct 50"),
        "{text}"
    );
    assert_eq!(lines[5], "  5 rollout:        bucket 45 >= 10: off");
    let single = env.ok(&["eval", "enrich", "--context", "a"]);
    assert!(
        lines[6].starts_with(&format!("  answer:           {}", single.trim())),
        "{text}"
    );
}

fn explain_at_a_past_time_uses_the_definitions_then() {
    let (env, boundary) = store_with_log();
    let text = env.ok(&["explain", "enrich", "--context", "a", "--at", &boundary]);
    assert!(
        text.contains("1 known:          yes (rollout_pct 10,"),
        "at the change itself: {text}"
    );
    // Just before the rollout change, the definition had 50%.
    let earlier = env.text("SELECT ts FROM audit_log WHERE id = 5");
    let text = env.ok(&["explain", "enrich", "--context", "a", "--at", &earlier]);
    assert!(text.contains("as of "), "{text}");
    assert!(
        text.contains("1 known:          yes (rollout_pct 50,"),
        "{text}"
    );
    let recorded = text.lines().last().unwrap();
    assert!(
        recorded.starts_with("  recorded decision:  row 5 at "),
        "{text}"
    );
    let before_anything = env.ok(&["explain", "enrich", "--context", "a", "--at", "2000-01-01"]);
    assert!(
        before_anything.contains("1 known:          no"),
        "{before_anything}"
    );
    assert!(before_anything.ends_with(
        "recorded decision:  none: no evaluation of this flag for this context by then\n"
    ));
}

/// A time that has not come is refused, not answered with today's state as if recorded; a
/// date that began already (today) is answered.
fn explain_at_a_future_time_says_so() {
    let (env, _) = store_with_log();
    let message = env.fails(&["explain", "enrich", "--context", "a", "--at", "2999-01-01"]);
    assert!(
        message
            .starts_with("flagstore: --at 2999-01-01 is in the future (the store's clock says 20"),
        "{message}"
    );
    assert!(
        message.ends_with("): without --at, explain answers as of now"),
        "{message}"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    env.ok(&["explain", "enrich", "--context", "a", "--at", &today]);
}

fn explain_at_names_an_unreadable_change_row() {
    let (env, boundary) = store_with_log();
    env.tamper("UPDATE audit_log SET detail = 'not json' WHERE id = 2");
    let message = env.fails(&["explain", "enrich", "--context", "a", "--at", &boundary]);
    assert!(
        message.starts_with("flagstore: audit row 2 cannot be read: "),
        "{message}"
    );
}

fn explain_shows_the_stored_assignment_of_a_disabled_flag() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "f", "sticky": "all"}]}"#);
    env.ok(&["eval", "f", "--context", "k"]);
    env.ok(&["flag", "disable", "f"]);
    let text = env.ok(&["explain", "f", "--context", "k"]);
    assert!(text.contains("  2 enabled:        no\n"), "{text}");
    assert!(text.contains("  4 assignment:     on since "), "{text}");
    assert!(
        text.ends_with("  answer:           false (disabled)\n"),
        "{text}"
    );
}

contract_tests! {
    a_flags_records_in_several_sets_merge_in_order,
    explain_at_a_future_time_says_so,
    newest_first_by_default_and_oldest_first_on_request,
    filters_combine,
    keyset_paging_visits_every_row_once,
    every_format_carries_every_column,
    bad_query_values_are_refused,
    history_lists_changes_as_before_and_after,
    explain_now_shows_every_step_and_writes_nothing,
    explain_at_a_past_time_uses_the_definitions_then,
    explain_at_names_an_unreadable_change_row,
    explain_shows_the_stored_assignment_of_a_disabled_flag,
}
