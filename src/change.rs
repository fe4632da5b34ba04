//! Writes as data: every command that changes flags computes the next flag set, and the
//! difference to the current one is what gets written and audited, one row per flag, a move
//! in the definition order included.

use crate::flag::{Flag, FlagSet};

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(Flag),
    Update {
        before: Flag,
        after: Flag,
    },
    Delete(Flag),
    /// A flag whose place in the definition order is not the one creations and deletions
    /// alone leave it (`import --replace` of a file in another order): `place` counts from 0
    /// in `order`, the whole new order, which the change row holds so the chain can replay it.
    Move {
        flag: String,
        place: usize,
        order: Vec<String>,
    },
}

impl Change {
    pub fn flag_name(&self) -> &str {
        match self {
            Change::Create(flag) | Change::Delete(flag) => &flag.name,
            Change::Update { after, .. } => &after.name,
            Change::Move { flag, .. } => flag,
        }
    }

    /// The word stored in the audit log's `action` column.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Create(_) => "create",
            Change::Update { .. } => "update",
            Change::Delete(_) => "delete",
            Change::Move { .. } => "move",
        }
    }

    /// The definition before the change; `None` where it creates one or leaves it as it was.
    pub fn before(&self) -> Option<&Flag> {
        match self {
            Change::Create(_) | Change::Move { .. } => None,
            Change::Update { before, .. } => Some(before),
            Change::Delete(flag) => Some(flag),
        }
    }

    /// The definition after the change; `None` where it deletes one or leaves it as it was.
    pub fn after(&self) -> Option<&Flag> {
        match self {
            Change::Create(flag) => Some(flag),
            Change::Update { after, .. } => Some(after),
            Change::Delete(_) | Change::Move { .. } => None,
        }
    }

    /// What the audit row's `detail` holds: the definitions before and after, or for a move
    /// the whole new order.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Change::Move { order, .. } => serde_json::json!({ "order": order }),
            _ => serde_json::json!({ "before": self.before(), "after": self.after() }),
        }
    }

    /// A one-line description for people: which fields went from what to what.
    pub fn summary(&self) -> String {
        match self {
            Change::Create(flag) => format!("created {}", describe(flag)),
            Change::Delete(flag) => format!("deleted {}", describe(flag)),
            Change::Move { place, order, .. } => {
                format!("moved to place {} of {}", place + 1, order.len())
            }
            Change::Update { before, after } => {
                let fields: Vec<String> = differences(before, after)
                    .into_iter()
                    .map(|(field, before, after)| format!("{field} {before} -> {after}"))
                    .collect();
                format!("updated {}", fields.join(", "))
            }
        }
    }
}

/// The fields in which two definitions of a flag differ: (field, value in `a`, value in `b`),
/// values as people read them.
pub fn differences(a: &Flag, b: &Flag) -> Vec<(&'static str, String, String)> {
    let mut fields = Vec::new();
    if a.enabled != b.enabled {
        fields.push(("enabled", a.enabled.to_string(), b.enabled.to_string()));
    }
    if a.rollout_pct != b.rollout_pct {
        fields.push((
            "rollout_pct",
            a.rollout_pct.to_string(),
            b.rollout_pct.to_string(),
        ));
    }
    if a.requires != b.requires {
        let list = |flag: &Flag| format!("[{}]", flag.requires.join(", "));
        fields.push(("requires", list(a), list(b)));
    }
    if a.sticky != b.sticky {
        fields.push(("sticky", a.sticky.to_string(), b.sticky.to_string()));
    }
    if a.stale_exempt != b.stale_exempt {
        fields.push((
            "stale_exempt",
            a.stale_exempt.to_string(),
            b.stale_exempt.to_string(),
        ));
    }
    fields
}

fn describe(flag: &Flag) -> String {
    format!(
        "enabled {}, rollout_pct {}, requires [{}], sticky {}{}",
        flag.enabled,
        flag.rollout_pct,
        flag.requires.join(", "),
        flag.sticky,
        if flag.stale_exempt {
            ", stale_exempt"
        } else {
            ""
        }
    )
}

/// The changes that turn `current` into `next`: creates and updates in `next`'s order, then
/// deletes in `current`'s, then moves in `next`'s order; unchanged flags are left out. A
/// deletion keeps the others' order and a creation goes last unless `next` places it, so a
/// move is a flag whose place differs from the one those leave it.
pub fn diff(current: &FlagSet, next: &FlagSet) -> Vec<Change> {
    let mut changes = Vec::new();
    for flag in next.iter() {
        match current.get(&flag.name) {
            None => changes.push(Change::Create(flag.clone())),
            Some(before) if before != flag => changes.push(Change::Update {
                before: before.clone(),
                after: flag.clone(),
            }),
            Some(_) => {}
        }
    }
    for flag in current.iter() {
        if !next.contains(&flag.name) {
            changes.push(Change::Delete(flag.clone()));
        }
    }
    let left: Vec<&str> = current
        .names()
        .filter(|name| next.contains(name))
        .chain(next.names().filter(|name| !current.contains(name)))
        .collect();
    if !left.iter().copied().eq(next.names()) {
        let order: Vec<String> = next.names().map(str::to_string).collect();
        for (place, (name, was)) in next.names().zip(&left).enumerate() {
            if name != *was {
                changes.push(Change::Move {
                    flag: name.to_string(),
                    place,
                    order: order.clone(),
                });
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> FlagSet {
        names.iter().copied().map(Flag::new).collect()
    }

    fn moves(changes: &[Change]) -> Vec<(&str, usize)> {
        changes
            .iter()
            .filter_map(|change| match change {
                Change::Move { flag, place, .. } => Some((flag.as_str(), *place)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn diff_moves_only_flags_out_of_the_place_creations_and_deletions_leave() {
        // Deleting keeps the others' order, a new flag at the end stays there: no move.
        assert_eq!(
            moves(&diff(&set(&["a", "b", "c"]), &set(&["a", "c", "d"]))),
            []
        );
        // A new flag placed first moves itself and everything it passed.
        assert_eq!(
            moves(&diff(&set(&["a", "b"]), &set(&["n", "a", "b"]))),
            [("n", 0), ("a", 1), ("b", 2)]
        );
        // A swap moves the two swapped; the whole order is in every move.
        let changes = diff(&set(&["a", "b", "c"]), &set(&["c", "b", "a"]));
        assert_eq!(moves(&changes), [("c", 0), ("a", 2)]);
        assert_eq!(
            changes[0].detail(),
            serde_json::json!({ "order": ["c", "b", "a"] })
        );
        assert_eq!(changes[1].summary(), "moved to place 3 of 3");
    }

    #[test]
    fn diff_reports_creates_updates_and_deletes_only() {
        let current: FlagSet = [Flag::new("keep"), Flag::new("change"), Flag::new("drop")]
            .into_iter()
            .collect();
        let mut changed = Flag::new("change");
        changed.rollout_pct = 25.0;
        changed.enabled = false;
        let next: FlagSet = [Flag::new("keep"), changed, Flag::new("add")]
            .into_iter()
            .collect();
        let changes = diff(&current, &next);
        let actions: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.action(), c.flag_name()))
            .collect();
        assert_eq!(
            actions,
            [("update", "change"), ("create", "add"), ("delete", "drop")]
        );
        assert_eq!(
            changes[0].summary(),
            "updated enabled true -> false, rollout_pct 100 -> 25"
        );
    }
}
