//! Property test of the import parser and validator on arbitrary, mostly hostile documents:
//! never a panic; either a clean error that leaves the store as it was, or a store that
//! round-trips through export byte for byte.

use flagstore::document::Document;
use flagstore::{FlagSet, Store};
use proptest::prelude::*;
use serde_json::{Value, json};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-e]{1,3}",
        1 => Just(String::new()),
        1 => "\\PC{0,6}",
        1 => "[a\\x00-\\x1f]{1,3}",
        1 => "x{120,140}",
    ]
}

fn number_or_junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-20.0f64..130.0).prop_map(|v| json!(v)),
        2 => (0u8..=100).prop_map(|v| json!(v)),
        1 => Just(json!("50")),
        1 => Just(json!(null)),
        1 => Just(json!([1])),
    ]
}

fn flag() -> impl Strategy<Value = Value> {
    (
        name(),
        prop::option::of(any::<bool>()),
        prop::option::of(number_or_junk()),
        prop::option::of(prop::collection::vec(name(), 0..3)),
        prop::option::of(prop_oneof![
            Just("on_only"),
            Just("all"),
            Just("none"),
            Just("sometimes")
        ]),
        prop::option::of(Just("surprise")),
    )
        .prop_map(|(name, enabled, rollout, requires, sticky, extra)| {
            let mut flag = json!({ "name": name });
            if let Some(enabled) = enabled {
                flag["enabled"] = json!(enabled);
            }
            if let Some(rollout) = rollout {
                flag["rollout_pct"] = rollout;
            }
            if let Some(requires) = requires {
                flag["requires"] = json!(requires);
            }
            if let Some(sticky) = sticky {
                flag["sticky"] = json!(sticky);
            }
            if let Some(extra) = extra {
                flag[extra] = json!(1);
            }
            flag
        })
}

fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(flag(), 0..6).prop_map(|flags| json!({ "flags": flags }).to_string()),
        1 => "\\PC{0,40}",
        1 => prop::collection::vec(flag(), 0..3)
            .prop_map(|flags| json!({ "flags": flags }).to_string())
            .prop_flat_map(|text| {
                let len = text.len();
                (Just(text), 0..=len)
            })
            .prop_map(|(text, cut)| text.get(..cut).unwrap_or_default().to_string()),
    ]
}

fn export(store: &Store) -> String {
    Document::from_flags(&store.flags().unwrap()).to_json()
}

proptest! {
    #![proptest_config(crate::common::proptest_config(3_000))]

    #[test]
    fn import_never_panics_and_either_refuses_cleanly_or_round_trips(text in document()) {
        let mut store = Store::open_in_memory().unwrap();
        let parsed = Document::parse(&text, "fuzz.json");
        let imported = parsed.and_then(|document| {
            store.modify("fuzz", "import", false, |current| {
                let mut next = current.clone();
                for flag in &document.flags {
                    next.insert(flag.clone());
                }
                Ok(next)
            })
        });
        match imported {
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty() && !message.contains('\n'), "{}", message);
                prop_assert_eq!(store.flags().unwrap(), FlagSet::new());
                prop_assert_eq!(store.audit_len().unwrap(), 0);
            }
            Ok(_) => {
                // Every flag the document defined is stored as the document defined it.
                let document = Document::parse(&text, "fuzz.json").unwrap();
                let stored = store.flags().unwrap();
                prop_assert_eq!(stored.len(), document.flags.len());
                for flag in document.flag_set().iter() {
                    prop_assert_eq!(stored.get(&flag.name), Some(flag));
                }
                let exported = export(&store);
                let mut again = Store::open_in_memory().unwrap();
                let document = Document::parse(&exported, "export.json").unwrap();
                again
                    .modify("fuzz", "import", false, |_| Ok(document.flag_set()))
                    .unwrap();
                prop_assert_eq!(export(&again), exported);
            }
        }
    }
}
