//! Property tests: for any flags and keys, the store's answers agree with a plain
//! re-implementation of the documented evaluation order, and sticky policies behave as stated.

use crate::common::{Backend, Env};

use std::collections::HashMap;

use flagstore::{Flag, FlagSet, Selection, StickyPolicy, Store};
use md5::{Digest, Md5};
use proptest::prelude::*;

/// Steps 1-5 of the README's evaluation order, without stickiness, written as plainly as
/// possible and independently of the library.
fn reference(flags: &[Flag], name: &str, key: &str) -> bool {
    let Some(flag) = flags.iter().find(|f| f.name == name) else {
        return false;
    };
    if !flag.enabled {
        return false;
    }
    if flag.requires.iter().any(|r| !reference(flags, r, key)) {
        return false;
    }
    let digest: [u8; 16] = Md5::digest(format!("{name}:{key}").as_bytes()).into();
    let bucket = u128::from_be_bytes(digest) % 100;
    (bucket as f64) < flag.rollout_pct
}

fn rollout() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(100.0),
        (0u32..=100).prop_map(f64::from),
        (0u32..=10_000).prop_map(|hundredths| f64::from(hundredths) / 100.0),
    ]
}

fn sticky() -> impl Strategy<Value = StickyPolicy> {
    prop_oneof![
        Just(StickyPolicy::OnOnly),
        Just(StickyPolicy::All),
        Just(StickyPolicy::None)
    ]
}

/// Up to 8 flags; each may require any of the flags before it, in any order but each once (a
/// repeat is refused), so the set is acyclic.
fn flags() -> impl Strategy<Value = Vec<Flag>> {
    prop::collection::vec(
        (
            any::<bool>(),
            rollout(),
            sticky(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        ),
        1..8,
    )
    .prop_map(|specs| {
        let mut flags: Vec<Flag> = Vec::new();
        for (i, (enabled, rollout_pct, sticky, picks)) in specs.into_iter().enumerate() {
            let mut requires: Vec<String> = Vec::new();
            for pick in picks.iter().filter(|_| i > 0) {
                let required = format!("f{}", pick.index(i));
                if !requires.contains(&required) {
                    requires.push(required);
                }
            }
            flags.push(Flag {
                enabled,
                rollout_pct,
                requires,
                sticky,
                ..Flag::new(format!("f{i}"))
            });
        }
        flags
    })
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("\\PC{0,12}", 1..12)
}

fn store_with(flags: &[Flag]) -> Store {
    let mut store = Store::open_in_memory().unwrap();
    store
        .modify("proptest", "import", false, |_| {
            Ok(flags.iter().cloned().collect::<FlagSet>())
        })
        .unwrap();
    store
}

fn evaluate_one(store: &mut Store, flag: &str, key: &str) -> bool {
    let evaluations = store
        .evaluate(&Selection::Flags(vec![flag.to_string()]), key, "proptest")
        .unwrap();
    evaluations[0].decision.enabled
}

proptest! {
    #![proptest_config(crate::common::proptest_config(256))]
    #[test]
    fn pure_evaluator_agrees_with_the_reference(flags in flags(), keys in keys()) {
        let set: FlagSet = flags.iter().cloned().collect();
        let mut names: Vec<String> = flags.iter().map(|f| f.name.clone()).collect();
        names.push("not-a-flag".to_string());
        let requested: Vec<&str> = names.iter().map(String::as_str).collect();
        for key in &keys {
            let evaluations = flagstore::eval::evaluate(&set, key, &HashMap::new(), &requested);
            for evaluation in evaluations {
                prop_assert_eq!(
                    evaluation.decision.enabled,
                    reference(&flags, &evaluation.flag, key),
                    "flag {} key {:?}: {}", evaluation.flag, key, evaluation.decision.reason()
                );
            }
        }
    }

    #[test]
    fn fresh_store_agrees_with_the_reference_and_repeats_itself(
        flags in flags(),
        keys in keys(),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
    ) {
        let mut store = store_with(&flags);
        // Ask in a random order, so dependencies are sometimes decided before, sometimes
        // while, evaluating the flags that need them.
        for key in &keys {
            for pick in &order {
                let flag = &flags[pick.index(flags.len())].name;
                let expected = reference(&flags, flag, key);
                prop_assert_eq!(evaluate_one(&mut store, flag, key), expected, "first: {} {:?}", flag, key);
                prop_assert_eq!(evaluate_one(&mut store, flag, key), expected, "again: {} {:?}", flag, key);
            }
            prop_assert!(!evaluate_one(&mut store, "unknown", key));
        }
    }

    #[test]
    fn sticky_policies_hold_when_the_rollout_moves(
        policy in sticky(),
        first_pct in rollout(),
        second_pct in rollout(),
        keys in keys(),
    ) {
        let flag = Flag { rollout_pct: first_pct, sticky: policy, ..Flag::new("f") };
        let mut store = store_with(std::slice::from_ref(&flag));
        let first: Vec<bool> = keys.iter().map(|k| evaluate_one(&mut store, "f", k)).collect();
        store
            .modify("proptest", "flag set", false, |current| {
                let mut next = current.clone();
                next.insert(Flag { rollout_pct: second_pct, ..flag.clone() });
                Ok(next)
            })
            .unwrap();
        let moved = Flag { rollout_pct: second_pct, ..flag.clone() };
        for (key, was_on) in keys.iter().zip(first) {
            let hashed = reference(std::slice::from_ref(&moved), "f", key);
            let expected = match policy {
                StickyPolicy::OnOnly => was_on || hashed,
                StickyPolicy::All => was_on,
                StickyPolicy::None => hashed,
            };
            prop_assert_eq!(evaluate_one(&mut store, "f", key), expected, "{} {:?}", policy, key);
        }
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(64))]

    /// What a reviewer reads in plain SQL (the audit_evaluations view over decision records)
    /// is exactly what the evaluations returned: flag, result, source and reason wording,
    /// sticky hits, dependencies and unknown flags included.
    #[test]
    fn the_reviewers_view_equals_the_decisions_returned_on_sqlite(
        flags in flags(),
        keys in keys(),
        lowered in rollout(),
    ) {
        view_equals_decisions(&flags, &keys, lowered)?;
    }

    /// The same on PostgreSQL, whose view is its own SQL (skipped without a server).
    #[test]
    fn the_reviewers_view_equals_the_decisions_returned_on_postgres(
        flags in flags(),
        keys in keys(),
        lowered in rollout(),
    ) {
        if crate::common::use_postgres() {
            view_equals_decisions(&flags, &keys, lowered)?;
        }
    }
}

type ViewRow = (String, String, i64, String, String);

/// Evaluates `flags` for `keys` twice (moving every rollout to `lowered` in between, so the
/// second round mixes sticky hits with new decisions) and checks that `audit_evaluations`
/// shows exactly the decisions returned.
fn view_equals_decisions(
    flags: &[Flag],
    keys: &[String],
    lowered: f64,
) -> Result<(), TestCaseError> {
    let env = Env::new();
    let mut store = env.open_store();
    store
        .modify("proptest", "import", false, |_| {
            Ok(flags.iter().cloned().collect::<FlagSet>())
        })
        .unwrap();
    let mut requested: Vec<String> = flags.iter().map(|f| f.name.clone()).collect();
    requested.push("ghost".to_string());
    let selection = Selection::Flags(requested);
    let mut returned: Vec<ViewRow> = Vec::new();
    for round in 0..2 {
        if round == 1 {
            store
                .modify("proptest", "import", false, |current| {
                    Ok(current
                        .iter()
                        .cloned()
                        .map(|f| Flag {
                            rollout_pct: lowered,
                            ..f
                        })
                        .collect::<FlagSet>())
                })
                .unwrap();
        }
        for key in keys {
            for e in store.evaluate(&selection, key, "proptest").unwrap() {
                let d = e.decision;
                returned.push((
                    key.clone(),
                    e.flag,
                    i64::from(d.enabled),
                    d.source.as_str().to_string(),
                    d.reason(),
                ));
            }
        }
    }
    const VIEWED: &str = "SELECT context_key, flag, result, source, reason FROM audit_evaluations";
    let mut viewed: Vec<ViewRow> = match env.backend {
        Backend::Sqlite => env
            .sql()
            .prepare(VIEWED)
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
        Backend::Postgres => env
            .postgres()
            .query(VIEWED, &[])
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    i64::from(r.get::<_, i32>(2)),
                    r.get(3),
                    r.get(4),
                )
            })
            .collect(),
    };
    // The order of one request's decisions is not part of the view's contract.
    viewed.sort();
    returned.sort();
    prop_assert_eq!(viewed, returned);
    Ok(())
}

/// One step of a random history: an evaluation, a change to one flag, or a reset.
#[derive(Debug, Clone)]
enum Step {
    Evaluate(prop::sample::Index, prop::sample::Index),
    Rollout(prop::sample::Index, f64),
    Enabled(prop::sample::Index, bool),
    Sticky(prop::sample::Index, StickyPolicy),
    Reset(prop::sample::Index, Option<prop::sample::Index>),
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    let index = any::<prop::sample::Index>;
    prop::collection::vec(
        prop_oneof![
            6 => (index(), index()).prop_map(|(f, k)| Step::Evaluate(f, k)),
            2 => (index(), rollout()).prop_map(|(f, p)| Step::Rollout(f, p)),
            1 => (index(), any::<bool>()).prop_map(|(f, on)| Step::Enabled(f, on)),
            1 => (index(), sticky()).prop_map(|(f, s)| Step::Sticky(f, s)),
            1 => (index(), prop::option::of(index())).prop_map(|(f, k)| Step::Reset(f, k)),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(crate::common::proptest_config(32))]

    /// `explain --at T` answers, for every decision recorded at T (the requested flag's and
    /// the requirements' alike), what was recorded: the definitions and stored assignments
    /// replayed as of T, through rollout changes, kill switches, policy changes and resets.
    #[test]
    fn explain_at_answers_what_was_recorded_on_sqlite(
        flags in flags(),
        keys in prop::collection::vec("\\PC{1,8}", 1..4),
        history in history(),
    ) {
        explain_at_answers_what_was_recorded(&flags, &keys, &history)?;
    }

    /// The same on PostgreSQL (skipped without a server).
    #[test]
    fn explain_at_answers_what_was_recorded_on_postgres(
        flags in flags(),
        keys in prop::collection::vec("\\PC{1,8}", 1..4),
        history in history(),
    ) {
        if crate::common::use_postgres() {
            explain_at_answers_what_was_recorded(&flags, &keys, &history)?;
        }
    }
}

fn explain_at_answers_what_was_recorded(
    flags: &[Flag],
    keys: &[String],
    history: &[Step],
) -> Result<(), TestCaseError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    let env = Env::new();
    let mut store = env.open_store();
    // One second per step, so each step's rows have a time of their own to ask about.
    let step_clock = Arc::new(AtomicI64::new(0));
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::clone(&step_clock);
    store.set_clock(move || start + chrono::TimeDelta::seconds(clock.load(Ordering::SeqCst)));
    store
        .modify("proptest", "import", false, |_| {
            Ok(flags.iter().cloned().collect::<FlagSet>())
        })
        .unwrap();
    let name = |index: &prop::sample::Index| flags[index.index(flags.len())].name.clone();
    let change = |store: &mut Store, flag: String, edit: &dyn Fn(&mut Flag)| {
        store
            .modify("proptest", "flag set", false, |current| {
                Ok(current
                    .iter()
                    .cloned()
                    .map(|mut f| {
                        if f.name == flag {
                            edit(&mut f);
                        }
                        f
                    })
                    .collect::<FlagSet>())
            })
            .unwrap();
    };
    let mut recorded: Vec<(i64, String, String, bool)> = Vec::new();
    for (second, step) in (1..).zip(history) {
        step_clock.store(second, Ordering::SeqCst);
        match step {
            Step::Evaluate(flag, key) => {
                let key = &keys[key.index(keys.len())];
                let selection = Selection::Flags(vec![name(flag)]);
                for e in store.evaluate(&selection, key, "proptest").unwrap() {
                    recorded.push((second, e.flag, key.clone(), e.decision.enabled));
                }
            }
            Step::Rollout(flag, pct) => change(&mut store, name(flag), &|f| f.rollout_pct = *pct),
            Step::Enabled(flag, on) => change(&mut store, name(flag), &|f| f.enabled = *on),
            Step::Sticky(flag, policy) => change(&mut store, name(flag), &|f| f.sticky = *policy),
            Step::Reset(flag, key) => {
                let key = key.as_ref().map(|k| keys[k.index(keys.len())].as_str());
                store
                    .reset_assignments(&name(flag), key, "proptest")
                    .unwrap();
            }
        }
    }
    for (second, flag, key, enabled) in recorded {
        let at = flagstore::audit::timestamp(start + chrono::TimeDelta::seconds(second));
        let report = flagstore::explain::explain(&mut store, &flag, &key, Some(&at)).unwrap();
        prop_assert_eq!(
            report.explanation.decision.enabled,
            enabled,
            "{} for {:?} at {}: {}",
            flag,
            key,
            at,
            report.text()
        );
    }
    Ok(())
}

/// What an evaluation reads is the flags the tables hold when it runs, however many times
/// the same connection evaluated before: a change through another connection, an edit by SQL
/// (as an operator may make in a pinch), and this connection's own changes, committed or
/// rolled back.
fn each_evaluation_reads_the_flags_the_tables_hold_then() {
    let env = Env::new();
    let mut evaluating = env.open_store();
    evaluating
        .modify("test", "import", false, |_| {
            Ok([Flag::new("ingest")].into_iter().collect::<FlagSet>())
        })
        .unwrap();
    let answer = |store: &mut Store, key: &str| evaluate_one(store, "ingest", key);
    assert!(answer(&mut evaluating, "k1"));
    assert!(answer(&mut evaluating, "k2"));

    let switch = |enabled: bool| {
        move |current: &FlagSet| -> flagstore::Result<FlagSet> {
            let mut next = current.clone();
            next.insert(Flag {
                enabled,
                ..Flag::new("ingest")
            });
            Ok(next)
        }
    };
    env.open_store()
        .modify("test", "flag set", false, switch(false))
        .unwrap();
    assert!(
        !answer(&mut evaluating, "k3"),
        "the kill switch of another connection"
    );

    env.execute("UPDATE flags SET enabled = 1 WHERE name = 'ingest'")
        .unwrap();
    assert!(answer(&mut evaluating, "k4"), "an edit made by SQL");

    evaluating
        .modify("test", "flag set", false, switch(false))
        .unwrap();
    assert!(!answer(&mut evaluating, "k5"), "its own change");
    evaluating
        .modify("test", "flag set", false, switch(true))
        .unwrap();

    let refused = evaluating.modify_and_evaluate(
        "test",
        "run",
        switch(false),
        &Selection::Flags(vec!["ingest".to_string()]),
        "k6",
        |_, _, evaluated| {
            assert!(!evaluated.evaluations[0].decision.enabled);
            Err(flagstore::Error::InvalidContextKey {
                key: "k6".to_string(),
                why: "refused by the test".to_string(),
            })
        },
    );
    assert!(refused.is_err());
    assert!(answer(&mut evaluating, "k7"), "a change rolled back");
}

contract_tests! {
    each_evaluation_reads_the_flags_the_tables_hold_then,
}
