//! Flag definitions and the rules a set of flags must obey before it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, shortened};

/// Longest accepted flag name, in characters (not bytes), so that non-ASCII names get the same room.
pub const MAX_NAME_CHARS: usize = 128;

/// Which rollout decisions are remembered as sticky assignments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyPolicy {
    /// Remember only ON decisions: a context that got the new code path keeps it when the rollout
    /// is lowered, while raising the rollout still reaches contexts that were out.
    #[default]
    OnOnly,
    /// Remember every decision: the first answer a context gets is final.
    All,
    /// Remember nothing: pure hashing.
    None,
}

impl StickyPolicy {
    pub const NAMES: [&'static str; 3] = ["on_only", "all", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            StickyPolicy::OnOnly => "on_only",
            StickyPolicy::All => "all",
            StickyPolicy::None => "none",
        }
    }

    /// Whether a fresh rollout decision must be stored under this policy.
    pub fn stores(self, decision: bool) -> bool {
        match self {
            StickyPolicy::OnOnly => decision,
            StickyPolicy::All => true,
            StickyPolicy::None => false,
        }
    }
}

impl fmt::Display for StickyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StickyPolicy {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        match value {
            "on_only" => Ok(StickyPolicy::OnOnly),
            "all" => Ok(StickyPolicy::All),
            "none" => Ok(StickyPolicy::None),
            _ => Err(Error::UnknownStickyPolicy {
                value: value.to_string(),
            }),
        }
    }
}

/// One flag as operators define it; also its JSON form in import and export files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_rollout", serialize_with = "serialize_pct")]
    pub rollout_pct: f64,
    /// Names of the flags this one requires, in the order they are checked: the first that is
    /// off decides, and the reason names it, as the prototype's `is_enabled` did. Part of the
    /// definition, so reordering them is an audited change; a name listed twice is refused.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub sticky: StickyPolicy,
    /// Never listed as stale (see `Store::stale_flags`): a permanent kill switch, say, that
    /// is meant to stay on for everyone. Left out of exports while false, so files written
    /// before it existed read the same.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stale_exempt: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn default_enabled() -> bool {
    true
}

fn default_rollout() -> f64 {
    100.0
}

/// Whole percentages are written as integers (`50`, not `50.0`) so exported files read like the
/// ones operators write by hand.
fn serialize_pct<S: serde::Serializer>(pct: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if pct.fract() == 0.0 && pct.is_finite() {
        serializer.serialize_u64(*pct as u64)
    } else {
        serializer.serialize_f64(*pct)
    }
}

impl Flag {
    /// A flag with the import format's defaults: enabled, 100% rollout, no dependencies.
    pub fn new(name: impl Into<String>) -> Flag {
        Flag {
            name: name.into(),
            enabled: default_enabled(),
            rollout_pct: default_rollout(),
            requires: Vec::new(),
            sticky: StickyPolicy::default(),
            stale_exempt: false,
        }
    }
}

/// Checks a flag name against the documented rules: 1-128 characters, no control characters.
/// The most flags a chain of requirements may hold (a requires b requires c: 3). An
/// evaluation decides a chain's flags one inside another, and an operator reading a reason
/// follows it; pipelines have a few stages, not dozens.
pub const MAX_CHAIN: usize = 64;

pub fn validate_name(name: &str) -> Result<(), Error> {
    let invalid = |why: &str| Error::InvalidName {
        name: preview(name),
        why: why.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(&format!(
            "it has {chars} characters, more than {MAX_NAME_CHARS}"
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(invalid(&format!(
            "it contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

/// A name shortened for an error message, so a megabyte-long name still gives a one-line error.
fn preview(name: &str) -> String {
    shortened(name, 40)
}

pub fn validate_rollout(flag: &str, pct: f64) -> Result<(), Error> {
    if pct.is_finite() && (0.0..=100.0).contains(&pct) {
        Ok(())
    } else {
        Err(Error::RolloutOutOfRange {
            flag: flag.to_string(),
            value: pct.to_string(),
        })
    }
}

/// All flags of a store, keyed by name, in definition order: where each was first defined
/// (a file's order, then creation order), which is the order `evaluate_all`, `run`, exports
/// and listings follow, as the prototype's dict did. It may hold a dependency cycle when it
/// was read from a database edited by hand; [`FlagSet::validate`] is what every write must
/// pass.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    flags: IndexMap<String, Flag>,
}

/// Two sets are equal when they define the same flags in the same order.
impl PartialEq for FlagSet {
    fn eq(&self, other: &FlagSet) -> bool {
        self.flags.iter().eq(other.flags.iter())
    }
}

impl FlagSet {
    pub fn new() -> FlagSet {
        FlagSet::default()
    }

    pub fn get(&self, name: &str) -> Option<&Flag> {
        self.flags.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }

    /// Adds a flag at the end, or redefines one where it stands.
    pub fn insert(&mut self, flag: Flag) {
        self.flags.insert(flag.name.clone(), flag);
    }

    /// Removes a flag, keeping the others' order.
    pub fn remove(&mut self, name: &str) -> Option<Flag> {
        self.flags.shift_remove(name)
    }

    /// Puts the flags named in `order` first, in that order, the others after them as they
    /// stood: how a move row of the audit log is replayed.
    pub fn reorder<'a>(&mut self, order: impl IntoIterator<Item = &'a str>) {
        let mut place = 0;
        for name in order {
            if let Some(at) = self.flags.get_index_of(name)
                && at >= place
            {
                self.flags.move_index(at, place);
                place += 1;
            }
        }
    }

    /// The set `import` makes of this one: each of `flags` created or redefined (a new one at
    /// the end); with `replace`, exactly `flags`, in their order.
    pub fn imported<'a>(
        &self,
        flags: impl IntoIterator<Item = &'a Flag>,
        replace: bool,
    ) -> FlagSet {
        let mut next = if replace {
            FlagSet::new()
        } else {
            self.clone()
        };
        for flag in flags {
            next.insert(flag.clone());
        }
        next
    }

    /// Deletes flag `name`, as `flag delete` does: refused, naming them, while other flags
    /// require it, and naming the nearest name when there is no such flag.
    pub fn delete(&mut self, name: &str) -> Result<Flag, Error> {
        let dependents = self.dependents_of(name);
        if !dependents.is_empty() {
            return Err(Error::RequiredBy {
                flag: name.to_string(),
                dependents,
            });
        }
        self.remove(name).ok_or_else(|| Error::UnknownFlag {
            name: name.to_string(),
            suggestion: self.nearest_name(name),
        })
    }

    /// Where `name` stands in definition order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.flags.get_index_of(name)
    }

    /// Flags in definition order.
    pub fn iter(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Names of the flags that require `name`, in definition order.
    pub fn dependents_of(&self, name: &str) -> Vec<String> {
        self.iter()
            .filter(|flag| flag.requires.iter().any(|r| r == name))
            .map(|flag| flag.name.clone())
            .collect()
    }

    /// Names of the flags that require `name` directly or through others, in name order:
    /// the flags its kill switch turns off with it.
    pub fn all_dependents_of(&self, name: &str) -> Vec<String> {
        let mut found = BTreeSet::new();
        let mut pending = vec![name.to_string()];
        while let Some(next) = pending.pop() {
            for dependent in self.dependents_of(&next) {
                if found.insert(dependent.clone()) {
                    pending.push(dependent);
                }
            }
        }
        found.into_iter().collect()
    }

    /// `names` and everything they require, transitively, in name order. Unknown names are kept
    /// so that a caller asking for them still gets an "unknown flag" answer.
    pub fn closure<'a>(&'a self, names: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<&str> = names.into_iter().collect();
        while let Some(name) = pending.pop() {
            if seen.insert(name)
                && let Some(flag) = self.get(name)
            {
                pending.extend(flag.requires.iter().map(String::as_str));
            }
        }
        seen
    }

    /// Checks every rule a stored flag set obeys: valid names and percentages, dependencies that
    /// exist, each listed once, no self-dependency and no cycle.
    pub fn validate(&self) -> Result<(), Error> {
        for flag in self.iter() {
            validate_name(&flag.name)?;
            validate_rollout(&flag.name, flag.rollout_pct)?;
            for (index, required) in flag.requires.iter().enumerate() {
                if required == &flag.name {
                    return Err(Error::SelfDependency {
                        flag: flag.name.clone(),
                    });
                }
                if flag.requires[..index].contains(required) {
                    return Err(Error::RepeatedRequirement {
                        flag: flag.name.clone(),
                        requires: required.clone(),
                    });
                }
                if !self.contains(required) {
                    return Err(Error::UnknownRequirement {
                        flag: flag.name.clone(),
                        requires: required.clone(),
                        suggestion: self.nearest_name(required),
                    });
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(Error::Cycle { path: cycle });
        }
        match self.longest_chain() {
            chain if chain.len() > MAX_CHAIN => Err(Error::ChainTooLong {
                chain,
                limit: MAX_CHAIN,
            }),
            _ => Ok(()),
        }
    }

    /// The longest chain of requirements (`["a", "b", "c"]`: a requires b, which requires c),
    /// the first of the longest in name order. The set must have no cycle. Iterative, so a
    /// long chain cannot overflow the stack.
    pub fn longest_chain(&self) -> Vec<String> {
        let longest = self.chains();
        let start = longest
            .iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.0.cmp(a.0)))
            .map(|(name, _)| *name);
        let mut chain = Vec::new();
        let mut at = start;
        while let Some(name) = at {
            chain.push(name.to_string());
            at = longest[name].1;
        }
        chain
    }

    /// How many requirements deep each flag stands: 0 for one that requires nothing, else one
    /// more than its deepest requirement. The set must have no cycle. Iterative.
    pub fn depths(&self) -> BTreeMap<&str, usize> {
        self.chains()
            .into_iter()
            .map(|(name, (length, _))| (name, length - 1))
            .collect()
    }

    /// For each flag: the length of the longest chain of requirements it starts, and that
    /// chain's next link (the first of the longest in name order). A requirement that leads
    /// back into the chain being measured (a cycle, in a store edited by hand) is not followed.
    fn chains(&self) -> BTreeMap<&str, (usize, Option<&str>)> {
        let mut longest: BTreeMap<&str, (usize, Option<&str>)> = BTreeMap::new();
        let mut entered: BTreeSet<&str> = BTreeSet::new();
        for start in self.names() {
            let mut pending: Vec<&str> = vec![start];
            while let Some(&name) = pending.last() {
                if longest.contains_key(name) {
                    pending.pop();
                    continue;
                }
                let requires = self.get(name).map(|f| f.requires.as_slice()).unwrap_or(&[]);
                let undecided: Vec<&str> = requires
                    .iter()
                    .map(String::as_str)
                    .filter(|r| !longest.contains_key(r) && !entered.contains(r))
                    .collect();
                if entered.insert(name) && !undecided.is_empty() {
                    pending.extend(undecided);
                    continue;
                }
                let next = requires
                    .iter()
                    .filter_map(|r| {
                        longest
                            .get(r.as_str())
                            .map(|(length, _)| (*length, r.as_str()))
                    })
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
                longest.insert(
                    name,
                    (1 + next.map_or(0, |(length, _)| length), next.map(|n| n.1)),
                );
                pending.pop();
            }
        }
        longest
    }

    /// The existing name closest to `wanted`, if one is close enough to be a likely typo.
    pub fn nearest_name(&self, wanted: &str) -> Option<String> {
        let limit = (wanted.chars().count() / 3).max(2);
        self.names()
            .map(|name| (strsim::levenshtein(wanted, name), name))
            .filter(|(distance, _)| *distance <= limit)
            .min()
            .map(|(_, name)| name.to_string())
    }

    /// A dependency cycle as a closed path (`["a", "b", "a"]`), if there is one. Iterative, so a
    /// long chain cannot overflow the stack.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            InProgress,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        for start in self.names() {
            if marks.contains_key(start) {
                continue;
            }
            // Each frame is a flag on the current path and the index of its next requirement.
            let mut path: Vec<(&str, usize)> = vec![(start, 0)];
            marks.insert(start, Mark::InProgress);
            while let Some((name, next)) = path.last_mut() {
                let requires = self.get(name).map(|f| f.requires.as_slice()).unwrap_or(&[]);
                let Some(required) = requires.get(*next) else {
                    marks.insert(name, Mark::Done);
                    path.pop();
                    continue;
                };
                *next += 1;
                match marks.get(required.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::InProgress) => {
                        let from = path.iter().position(|(n, _)| *n == required).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(required.clone());
                        return Some(cycle);
                    }
                    None => {
                        marks.insert(required, Mark::InProgress);
                        path.push((required, 0));
                    }
                }
            }
        }
        None
    }
}

impl FromIterator<Flag> for FlagSet {
    fn from_iter<I: IntoIterator<Item = Flag>>(iter: I) -> FlagSet {
        let mut set = FlagSet::new();
        for flag in iter {
            set.insert(flag);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_puts_the_named_flags_first_and_keeps_the_rest_as_they_stood() {
        let mut flags: FlagSet = ["a", "b", "c", "d", "e"]
            .map(Flag::new)
            .into_iter()
            .collect();
        // "x" is not a flag; "d" named twice counts once.
        flags.reorder(["d", "x", "b", "d"]);
        assert_eq!(flags.names().collect::<Vec<_>>(), ["d", "b", "a", "c", "e"]);
    }

    fn flag(name: &str, requires: &[&str]) -> Flag {
        Flag {
            requires: requires.iter().map(|r| r.to_string()).collect(),
            ..Flag::new(name)
        }
    }

    #[test]
    fn a_set_is_empty_until_a_flag_is_inserted() {
        let mut flags = FlagSet::new();
        assert!(flags.is_empty());
        flags.insert(Flag::new("a"));
        assert!(!flags.is_empty());
    }

    #[test]
    fn all_dependents_are_the_flags_that_require_one_directly_or_through_others() {
        let flags: FlagSet = [
            flag("base", &[]),
            flag("middle", &["base"]),
            flag("top", &["middle"]),
            flag("also", &["base", "top"]),
            flag("apart", &[]),
        ]
        .into_iter()
        .collect();
        assert_eq!(flags.all_dependents_of("base"), ["also", "middle", "top"]);
        assert_eq!(flags.all_dependents_of("top"), ["also"]);
        assert!(flags.all_dependents_of("apart").is_empty());
    }

    #[test]
    fn the_nearest_name_allows_more_typos_in_longer_names() {
        let flags: FlagSet = [Flag::new("customer_enrichment_stage"), Flag::new("ab")]
            .into_iter()
            .collect();
        // 3 edits in a 22-character name: within a third of its length.
        assert_eq!(
            flags.nearest_name("custmer_enrchment_stag").as_deref(),
            Some("customer_enrichment_stage")
        );
        // Short names allow 2 edits, and no more.
        assert_eq!(flags.nearest_name("xy").as_deref(), Some("ab"));
        assert_eq!(flags.nearest_name("xyz"), None);
    }

    #[test]
    fn names_follow_the_documented_rules() {
        assert!(validate_name("stage.enrich").is_ok());
        assert!(validate_name("flag with spaces").is_ok());
        assert!(validate_name(&"é".repeat(128)).is_ok());
        let too_long = validate_name(&"é".repeat(129)).unwrap_err().to_string();
        assert!(too_long.contains("129 characters"), "{too_long}");
        assert!(validate_name("").unwrap_err().to_string().contains("empty"));
        let control = validate_name("a\u{7}b").unwrap_err().to_string();
        assert!(control.contains("U+0007"), "{control}");
        assert!(validate_name("a\0b").is_err());
    }

    #[test]
    fn rollout_must_be_a_finite_percentage() {
        for ok in [0.0, 0.5, 33.3, 100.0] {
            assert!(validate_rollout("f", ok).is_ok(), "{ok}");
        }
        for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY] {
            let message = validate_rollout("f", bad).unwrap_err().to_string();
            assert!(message.contains("\"f\""), "{message}");
        }
    }

    #[test]
    fn unknown_requirement_suggests_the_nearest_name() {
        let set: FlagSet = [flag("dedupe", &[]), flag("export", &["dedup"])]
            .into_iter()
            .collect();
        let message = set.validate().unwrap_err().to_string();
        assert_eq!(
            message,
            "flag \"export\" requires unknown flag \"dedup\" (did you mean \"dedupe\"?)"
        );
        let far: FlagSet = [flag("export", &["zzzzzz"])].into_iter().collect();
        assert!(!far.validate().unwrap_err().to_string().contains("mean"));
    }

    #[test]
    fn self_dependency_is_rejected() {
        let set: FlagSet = [flag("a", &["a"])].into_iter().collect();
        assert_eq!(
            set.validate().unwrap_err().to_string(),
            "flag \"a\" requires itself"
        );
    }

    #[test]
    fn cycles_are_named_as_a_closed_path() {
        let set: FlagSet = [flag("a", &["b"]), flag("b", &["c"]), flag("c", &["a"])]
            .into_iter()
            .collect();
        assert_eq!(
            set.validate().unwrap_err().to_string(),
            "dependency cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn diamonds_and_long_chains_are_not_cycles() {
        let mut set: FlagSet = [
            flag("top", &["left", "right"]),
            flag("left", &["base"]),
            flag("right", &["base"]),
            flag("base", &[]),
        ]
        .into_iter()
        .collect();
        for i in 0..100_000 {
            set.insert(flag(&format!("chain{i}"), &[&format!("chain{}", i + 1)]));
        }
        set.insert(flag("chain100000", &[]));
        // Found without recursion; validate refuses the chain for its length, not as a cycle.
        assert_eq!(set.find_cycle(), None);
        assert!(matches!(set.validate(), Err(Error::ChainTooLong { .. })));
    }

    #[test]
    fn closure_follows_requirements_transitively() {
        let set: FlagSet = [
            flag("a", &["b"]),
            flag("b", &["c"]),
            flag("c", &[]),
            flag("d", &[]),
        ]
        .into_iter()
        .collect();
        let closure: Vec<&str> = set.closure(["a", "ghost"]).into_iter().collect();
        assert_eq!(closure, ["a", "b", "c", "ghost"]);
        assert_eq!(set.dependents_of("c"), ["b"]);
    }

    #[test]
    fn whole_percentages_export_as_integers() {
        let mut f = Flag::new("x");
        f.rollout_pct = 50.0;
        assert!(
            serde_json::to_string(&f)
                .unwrap()
                .contains("\"rollout_pct\":50,")
        );
        f.rollout_pct = 12.5;
        assert!(
            serde_json::to_string(&f)
                .unwrap()
                .contains("\"rollout_pct\":12.5,")
        );
    }

    #[test]
    fn the_longest_chain_is_found_without_recursion_and_ties_go_to_the_first_name() {
        let mut set: FlagSet = [
            flag("b", &["c"]),
            flag("a", &["c", "x"]),
            flag("c", &[]),
            flag("x", &["y"]),
            flag("y", &[]),
        ]
        .into_iter()
        .collect();
        assert_eq!(set.longest_chain(), ["a", "x", "y"]);
        let tied: FlagSet = [flag("b", &["c"]), flag("a", &["c"]), flag("c", &[])]
            .into_iter()
            .collect();
        assert_eq!(tied.longest_chain(), ["a", "c"]);
        set.insert(flag("y", &["z"]));
        set.insert(flag("z", &[]));
        assert_eq!(set.longest_chain(), ["a", "x", "y", "z"]);
        let deep: FlagSet = (0..100_000)
            .map(|i| match i {
                99_999 => flag(&format!("f{i}"), &[]),
                _ => flag(&format!("f{i}"), &[&format!("f{}", i + 1)]),
            })
            .collect();
        assert_eq!(deep.longest_chain().len(), 100_000);
        assert!(matches!(deep.validate(), Err(Error::ChainTooLong { .. })));
        assert!(FlagSet::new().longest_chain().is_empty());
    }

    #[test]
    fn depths_are_found_without_recursion_and_stop_at_a_cycle() {
        let set: FlagSet = [
            flag("top", &["mid"]),
            flag("mid", &["base"]),
            flag("base", &[]),
            flag("a", &["b"]),
            flag("b", &["a"]),
        ]
        .into_iter()
        .collect();
        let depths = set.depths();
        assert_eq!((depths["top"], depths["mid"], depths["base"]), (2, 1, 0));
        // A cycle (a store edited by hand) ends, instead of looping or overflowing.
        assert!(depths["a"] <= 1 && depths["b"] <= 1);
    }
}
