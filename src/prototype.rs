//! The Python prototype's audit trail, for callers that keep its API (the Python package):
//! one `{flag, result, reason}` entry per decision, in the order its recursion reached them,
//! a requirement's entries before its dependent's, and a requirement entered again each time
//! a flag that requires it is evaluated. Pure: built from the decisions one evaluation made.

use std::collections::{HashMap, HashSet};

use crate::eval::{ContextEvaluation, Decision};
use crate::flag::FlagSet;

/// Why the prototype answered as it did, in its own words (see [`TrailReason::text`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TrailReason {
    UnknownFlag,
    Disabled,
    DependencyNotMet(String),
    /// Off by the rollout (or by a stored decision to be off): the flag's percentage.
    Rollout(f64),
    Ok,
}

impl TrailReason {
    /// The prototype's wording, with `percent` writing a rollout as Python printed the number
    /// it was given.
    pub fn text(&self, percent: impl Fn(f64) -> String) -> String {
        match self {
            TrailReason::UnknownFlag => "unknown flag".to_string(),
            TrailReason::Disabled => "disabled".to_string(),
            TrailReason::DependencyNotMet(name) => format!("dependency {name} not met"),
            TrailReason::Rollout(pct) => format!("rollout {}%", percent(*pct)),
            TrailReason::Ok => "ok".to_string(),
        }
    }
}

/// `value` as the prototype's `json.dumps(value, indent=2)` writes it: two-space indents, `,`
/// ending a line and `": "` after a key, as serde_json's pretty printer does too, and every
/// character past `~` escaped as `\uXXXX` (UTF-16 units, lowercase hex), as Python's default
/// `ensure_ascii` does. Such characters occur only inside strings, so escaping them in the
/// finished text is the same as escaping them as the strings are written.
pub fn python_json(value: &serde_json::Value) -> String {
    let pretty = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    let mut text = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if c <= '~' {
            text.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                text.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    text
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrailEntry {
    pub flag: String,
    pub result: bool,
    pub reason: TrailReason,
}

/// The prototype's entries for evaluating `requested`, in order, given what `evaluated` (the
/// store's evaluation of those flags for one context) decided. A sticky decision answers as
/// the prototype's rollout check would have: `ok` when on, `rollout P%` when off.
pub fn trail(
    flags: &FlagSet,
    evaluated: &ContextEvaluation,
    requested: &[&str],
) -> Vec<TrailEntry> {
    let decided: HashMap<&str, &Decision> = evaluated
        .evaluations
        .iter()
        .map(|e| (e.flag.as_str(), &e.decision))
        .chain(
            evaluated
                .requirements
                .iter()
                .map(|(name, decision)| (name.as_str(), decision)),
        )
        .collect();
    let mut entries = Vec::new();
    for name in requested {
        walk(flags, &decided, name, &mut entries);
    }
    entries
}

/// Appends the entries of evaluating `name`, without recursion: a chain of requirements of
/// any length uses heap, not stack (as the evaluator does).
fn walk(
    flags: &FlagSet,
    decided: &HashMap<&str, &Decision>,
    name: &str,
    entries: &mut Vec<TrailEntry>,
) -> bool {
    let entry = |flag: &str, result: bool, reason: TrailReason| TrailEntry {
        flag: flag.to_string(),
        result,
        reason,
    };
    // Each frame: a flag whose requirements are being walked, and the next one to walk.
    let mut frames: Vec<(&str, usize)> = Vec::new();
    let mut on_path: HashSet<&str> = HashSet::new();
    // The answer of the requirement walked last, for the frame that asked for it.
    let mut answered: Option<bool> = None;
    let mut entering = Some(name);
    loop {
        if let Some(current) = entering.take() {
            match flags.get(current) {
                None => {
                    entries.push(entry(current, false, TrailReason::UnknownFlag));
                    answered = Some(false);
                }
                Some(flag) if !flag.enabled => {
                    entries.push(entry(current, false, TrailReason::Disabled));
                    answered = Some(false);
                }
                // A cycle (only in a store edited by hand): the evaluator's answer, unexplained.
                Some(_) if on_path.contains(current) => {
                    answered = Some(decided.get(current).is_some_and(|d| d.enabled));
                }
                Some(flag) => {
                    on_path.insert(flag.name.as_str());
                    frames.push((flag.name.as_str(), 0));
                    answered = None;
                }
            }
        }
        let Some((current, next)) = frames.last_mut() else {
            return answered.unwrap_or(false);
        };
        let flag = flags.get(current).expect("a frame's flag exists");
        if answered == Some(false) {
            let missing = &flag.requires[*next - 1];
            entries.push(entry(
                current,
                false,
                TrailReason::DependencyNotMet(missing.clone()),
            ));
        } else if let Some(requirement) = flag.requires.get(*next) {
            *next += 1;
            entering = Some(requirement.as_str());
            continue;
        } else {
            let on = decided.get(*current).is_some_and(|d| d.enabled);
            let reason = if on {
                TrailReason::Ok
            } else {
                TrailReason::Rollout(flag.rollout_pct)
            };
            entries.push(entry(current, on, reason));
            answered = Some(on);
        }
        let (done, _) = frames.pop().expect("the frame just read");
        on_path.remove(done);
        if frames.is_empty() {
            return answered.unwrap_or(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flag::Flag;

    fn flags() -> FlagSet {
        [
            Flag::new("ingest"),
            Flag {
                requires: vec!["ingest".into()],
                ..Flag::new("dedupe")
            },
            Flag {
                requires: vec!["dedupe".into()],
                rollout_pct: 0.0,
                ..Flag::new("enrich")
            },
            Flag {
                enabled: false,
                ..Flag::new("legacy")
            },
            Flag {
                requires: vec!["legacy".into(), "ingest".into()],
                ..Flag::new("report")
            },
        ]
        .into_iter()
        .collect()
    }

    fn entries(requested: &[&str]) -> Vec<(String, bool, String)> {
        let flags = flags();
        let evaluated = crate::eval::evaluate_context(&flags, "k", &HashMap::new(), requested);
        trail(&flags, &evaluated, requested)
            .into_iter()
            .map(|e| (e.flag, e.result, e.reason.text(|p| p.to_string())))
            .collect()
    }

    #[test]
    fn requirements_come_first_each_time_they_are_reached() {
        let shown = |v: &[(&str, bool, &str)]| -> Vec<(String, bool, String)> {
            v.iter()
                .map(|(f, r, why)| (f.to_string(), *r, why.to_string()))
                .collect()
        };
        assert_eq!(
            entries(&["enrich", "dedupe"]),
            shown(&[
                ("ingest", true, "ok"),
                ("dedupe", true, "ok"),
                ("enrich", false, "rollout 0%"),
                ("ingest", true, "ok"),
                ("dedupe", true, "ok"),
            ])
        );
        // Requirements are walked in the order listed (report: legacy, then ingest); the
        // first that is off ends the walk, so ingest is not reached.
        assert_eq!(
            entries(&["report", "ghost"]),
            shown(&[
                ("legacy", false, "disabled"),
                ("report", false, "dependency legacy not met"),
                ("ghost", false, "unknown flag"),
            ])
        );
    }
}
