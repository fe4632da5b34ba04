//! Property tests: for any flags and keys, the store's answers agree with a plain
//! re-implementation of the documented evaluation order, and sticky policies behave as stated.

mod common;

use common::{Backend, Env};

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

/// Up to 8 flags; each may require any of the flags before it, so the set is acyclic.
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
            let requires = if i == 0 {
                Vec::new()
            } else {
                picks.iter().map(|p| format!("f{}", p.index(i))).collect()
            };
            flags.push(
                Flag {
                    enabled,
                    rollout_pct,
                    requires,
                    sticky,
                    ..Flag::new(format!("f{i}"))
                }
                .normalized(),
            );
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
    #![proptest_config(common::proptest_config(256))]
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
    #![proptest_config(common::proptest_config(64))]

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
        if common::use_postgres() {
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
