//! Writes as data: every command that changes flags computes the next flag set, and the
//! difference to the current one is what gets written and audited, one row per flag.

use crate::flag::{Flag, FlagSet};

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(Flag),
    Update { before: Flag, after: Flag },
    Delete(Flag),
}

impl Change {
    pub fn flag_name(&self) -> &str {
        match self {
            Change::Create(flag) | Change::Delete(flag) => &flag.name,
            Change::Update { after, .. } => &after.name,
        }
    }

    /// The word stored in the audit log's `action` column.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Create(_) => "create",
            Change::Update { .. } => "update",
            Change::Delete(_) => "delete",
        }
    }

    pub fn before(&self) -> Option<&Flag> {
        match self {
            Change::Create(_) => None,
            Change::Update { before, .. } => Some(before),
            Change::Delete(flag) => Some(flag),
        }
    }

    pub fn after(&self) -> Option<&Flag> {
        match self {
            Change::Create(flag) => Some(flag),
            Change::Update { after, .. } => Some(after),
            Change::Delete(_) => None,
        }
    }

    /// A one-line description for people: which fields went from what to what.
    pub fn summary(&self) -> String {
        match self {
            Change::Create(flag) => format!("created {}", describe(flag)),
            Change::Delete(flag) => format!("deleted {}", describe(flag)),
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
/// deletes in `current`'s; unchanged flags are left out.
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
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

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
