//! Stale flags, read from the audit trail: no change for N days and one answer for every
//! context meanwhile, unless exempt. The store's clock is turned back to write history.

use crate::common::Env;
use chrono::{DateTime, TimeDelta, Utc};
use flagstore::store::StaleFlag;
use flagstore::{Flag, FlagSet, Selection, Store};

fn at(store: &mut Store, instant: DateTime<Utc>) {
    store.set_clock(move || instant);
}

fn evaluate(store: &mut Store, flags: &[&str], keys: std::ops::Range<usize>) {
    let selection = Selection::Flags(flags.iter().map(|f| f.to_string()).collect());
    for key in keys {
        store
            .evaluate(&selection, &format!("key-{key}"), "worker")
            .unwrap();
    }
}

fn names(stale: &[StaleFlag]) -> Vec<&str> {
    stale.iter().map(|flag| flag.name.as_str()).collect()
}

fn stale_flags_are_unchanged_and_gave_one_answer_unless_exempt() {
    let env = Env::new();
    let now = Utc::now();
    let mut store = env.open_store();
    at(&mut store, now - TimeDelta::days(60));
    let flags: FlagSet = [
        Flag::new("always_on"),
        Flag {
            rollout_pct: 50.0,
            ..Flag::new("half")
        },
        Flag {
            enabled: false,
            ..Flag::new("killed")
        },
        Flag {
            stale_exempt: true,
            ..Flag::new("exempt")
        },
        Flag::new("unused"),
        Flag::new("recent"),
    ]
    .into_iter()
    .collect();
    store
        .modify("tester", "import", false, |_| Ok(flags))
        .unwrap();
    let evaluated = ["always_on", "half", "killed", "exempt"];
    at(&mut store, now - TimeDelta::days(50));
    evaluate(&mut store, &evaluated, 0..40);
    at(&mut store, now - TimeDelta::days(10));
    evaluate(&mut store, &evaluated, 40..80);
    store
        .modify("tester", "flag set", false, |current| {
            let mut next = current.clone();
            next.insert(Flag {
                rollout_pct: 20.0,
                ..current.get("recent").unwrap().clone()
            });
            Ok(next)
        })
        .unwrap();
    at(&mut store, now);

    let stale = store.stale_flags(30).unwrap();
    assert_eq!(names(&stale), ["always_on", "killed", "unused"]);
    let changed_at = flagstore::audit::timestamp(now - TimeDelta::days(60));
    assert_eq!(
        stale[0],
        StaleFlag {
            name: "always_on".to_string(),
            changed_at: changed_at.clone(),
            answer: Some(true),
            decisions: 40,
        }
    );
    assert_eq!((stale[1].answer, stale[1].decisions), (Some(false), 40));
    assert_eq!((stale[2].answer, stale[2].decisions), (None, 0));
    assert_eq!(stale[2].answer_text(), "not evaluated");

    // Over 5 days nothing was evaluated, and "recent" changed 10 days ago: only "exempt"
    // stays off the list.
    assert_eq!(
        names(&store.stale_flags(5).unwrap()),
        ["always_on", "half", "killed", "unused", "recent"]
    );
    // Over 90 days every flag changed: none is stale.
    assert!(store.stale_flags(90).unwrap().is_empty());
}

fn flag_list_stale_lists_them_and_an_exemption_is_an_audited_change() {
    let env = Env::new();
    env.import_json(crate::common::PIPELINE);
    assert_eq!(
        env.ok(&["flag", "list", "--stale"]),
        "name  changed_at  answer  decisions\n"
    );
    let changes = env.count("SELECT count(*) FROM audit_log WHERE kind = 'change'");
    assert_eq!(
        env.ok(&["flag", "set", "legacy", "--stale-exempt", "true"]),
        "legacy: updated stale_exempt false -> true\n"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE kind = 'change'"),
        changes + 1
    );
    assert!(
        env.ok(&["flag", "show", "legacy"])
            .contains("stale_exempt: true")
    );
    let exported = env.ok(&["export"]);
    assert_eq!(exported.matches("stale_exempt").count(), 1, "{exported}");

    // A period of 0 days: every flag is older than it and nothing was evaluated since.
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["flag", "list", "--stale", "--stale-days", "0", "--json"]))
            .unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|flag| flag["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["ingest", "dedupe", "enrich"]);

    for (bad, named) in [
        (
            &["--stale", "--stale-days", "-1"][..],
            "'-1' for '--stale-days <DAYS>'",
        ),
        (
            &["--stale", "--stale-days", "soon"],
            "'soon' for '--stale-days <DAYS>'",
        ),
        (&["--stale-days", "5"], "not provided: --stale"),
    ] {
        let mut args = vec!["flag", "list"];
        args.extend_from_slice(bad);
        let message = env.fails(&args);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains(named), "{message}");
    }
    let refused = env.fails(&["flag", "set", "legacy", "--stale-exempt", "maybe"]);
    assert!(refused.contains("maybe"), "{refused}");
}

fn imports_read_and_check_stale_exempt() {
    let env = Env::new();
    env.import_json(r#"{"flags": [{"name": "keep", "stale_exempt": true}]}"#);
    assert!(
        env.ok(&["flag", "show", "keep"])
            .contains("stale_exempt: true")
    );
    let file = env.write(
        "bad.json",
        r#"{"flags": [{"name": "keep", "stale_exempt": "yes"}]}"#,
    );
    let message = env.fails(&["import", file.to_str().unwrap()]);
    assert!(
        message.contains("flags[0] (\"keep\"): stale_exempt must be true or false"),
        "{message}"
    );
}

contract_tests! {
    stale_flags_are_unchanged_and_gave_one_answer_unless_exempt,
    flag_list_stale_lists_them_and_an_exemption_is_an_audited_change,
    imports_read_and_check_stale_exempt,
}
