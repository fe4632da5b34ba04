//! The Python prototype's audit trail, for callers that keep its API (the Python package):
//! one `{flag, result, reason}` entry per decision, in the order its recursion reached them,
//! a requirement's entries before its dependent's, and a requirement entered again each time
//! a flag that requires it is evaluated. Pure: built from the decisions one evaluation made.

use crate::eval::{ContextEvaluation, Decision};
use crate::flag::FlagSet;

/// Why the prototype answered as it did, in its own words (see [`TrailReason::text`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TrailReason<'a> {
    UnknownFlag,
    Disabled,
    DependencyNotMet(&'a str),
    /// Off by the rollout (or by a stored decision to be off): the flag's percentage.
    Rollout(f64),
    Ok,
}

impl TrailReason<'_> {
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

/// A rollout as the prototype's Python printed a number a flags file gave it (`str` of what
/// `json.loads` made of it): an integral value as an integer (`50`), any other as `repr` of
/// the float (`12.5`, `1e-05`). `repr` writes the shortest digits that read back as the same
/// float, as Rust's formatting chooses them, in scientific notation (`1.5e-07`) for a decimal
/// exponent below -4 and in fixed notation otherwise (Python's limit above, 16, is never
/// reached: every float from 2^53 up is integral).
pub fn python_number(value: f64) -> String {
    // No rollout is one of these (0 to 100 is checked as it is written), but a store edited
    // by hand is read too: Python's repr of them, not a panic.
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // -0.0 + 0.0 is 0.0: Python's int(-0.0) prints as 0.
    let value = value + 0.0;
    if value.fract() == 0.0 {
        return format!("{value:.0}");
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("Rust writes an exponent in {:e}");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    if exponent >= -4 {
        let (sign, mantissa) = match mantissa.strip_prefix('-') {
            Some(unsigned) => ("-", unsigned),
            None => ("", mantissa),
        };
        let digits = mantissa.replace('.', "");
        let fixed = match usize::try_from(exponent) {
            Ok(whole) => {
                let digits = format!("{digits:0<width$}", width = whole + 2);
                format!("{}.{}", &digits[..=whole], &digits[whole + 1..])
            }
            Err(_) => format!(
                "0.{}{digits}",
                "0".repeat(exponent.unsigned_abs() as usize - 1)
            ),
        };
        return format!("{sign}{fixed}");
    }
    format!("{mantissa}e-{:02}", exponent.unsigned_abs())
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

/// One entry, naming its flags as the flag set and the request name them.
#[derive(Debug, Clone, PartialEq)]
pub struct TrailEntry<'a> {
    pub flag: &'a str,
    pub result: bool,
    pub reason: TrailReason<'a>,
}

/// The prototype's entries for evaluating `requested`, in order, given what `evaluated` (the
/// store's evaluation of those flags for one context) decided. A sticky decision answers as
/// the prototype's rollout check would have: `ok` when on, `rollout P%` when off.
pub fn trail<'a>(
    flags: &'a FlagSet,
    evaluated: &ContextEvaluation,
    requested: &[&'a str],
) -> Vec<TrailEntry<'a>> {
    let decided: foldhash::HashMap<&str, &Decision> = evaluated
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
    // The walk's buffers, kept from one requested flag to the next: the Python package
    // builds a trail for every call, and allocating them per flag was a tenth of it.
    let mut walking = Walk::default();
    for name in requested {
        walking.walk(flags, &decided, name, &mut entries);
    }
    entries
}

/// A walk's stack and path, empty between walks.
#[derive(Default)]
struct Walk<'a> {
    /// Each frame: a flag whose requirements are being walked, and the next one to walk.
    frames: Vec<(&'a str, usize)>,
    on_path: foldhash::HashSet<&'a str>,
}

/// Appends the entries of evaluating `name`, without recursion: a chain of requirements of
/// any length uses heap, not stack (as the evaluator does).
impl<'a> Walk<'a> {
    fn walk(
        &mut self,
        flags: &'a FlagSet,
        decided: &foldhash::HashMap<&str, &Decision>,
        name: &'a str,
        entries: &mut Vec<TrailEntry<'a>>,
    ) -> bool {
        let entry = |flag: &'a str, result: bool, reason: TrailReason<'a>| TrailEntry {
            flag,
            result,
            reason,
        };
        let Walk { frames, on_path } = self;
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
                    TrailReason::DependencyNotMet(missing),
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
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
            .map(|e| {
                (
                    e.flag.to_string(),
                    e.result,
                    e.reason.text(|p| p.to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn numbers_read_as_pythons_str_of_what_json_loads_made_of_them() {
        // Each pair: a float, and what Python 3 prints for it (str(int(x)) when integral;
        // repr(x) for the three that int() refuses).
        for (value, python) in [
            (50.0, "50"),
            (0.0, "0"),
            (-0.0, "0"),
            (100.0, "100"),
            (12.5, "12.5"),
            (33.3, "33.3"),
            (99.99999999999999, "99.99999999999999"),
            (0.1 + 0.2, "0.30000000000000004"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (0.000015, "1.5e-05"),
            (1.5e-7, "1.5e-07"),
            (5e-324, "5e-324"),
            (1234567890123456.7, "1234567890123456.8"),
            (12345678901234567.5, "12345678901234568"),
            (1.5e16, "15000000000000000"),
            (-2.5, "-2.5"),
            (-0.00001, "-1e-05"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(python_number(value), python, "{value:?}");
        }
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
