//! The evaluator: a pure function of (flag definitions, stored assignments, context key).
//!
//! It does no I/O. The store hands it what it read and writes back the assignments it reports, so
//! the same code serves SQLite and PostgreSQL, and it can be property-tested without either.

use std::collections::HashMap;
use std::hash::BuildHasher;

use md5::{Digest, Md5};
use serde::Serialize;

use crate::flag::{Flag, FlagSet};

/// The rollout bucket of a context for a flag: MD5 of the UTF-8 bytes of `flag:context`, read as
/// a 128-bit big-endian unsigned integer, mod 100. Byte-compatible with the Python prototype's
/// `int(hashlib.md5(f"{name}:{key}".encode()).hexdigest(), 16) % 100`.
pub fn bucket(flag: &str, context: &str) -> u8 {
    let mut hasher = Md5::new();
    hasher.update(flag.as_bytes());
    hasher.update(b":");
    hasher.update(context.as_bytes());
    let digest: [u8; 16] = hasher.finalize().into();
    (u128::from_be_bytes(digest) % 100) as u8
}

/// Whether a bucket falls inside a (possibly fractional) rollout percentage.
pub fn in_rollout(bucket: u8, rollout_pct: f64) -> bool {
    f64::from(bucket) < rollout_pct
}

/// Which step of the evaluation order produced a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Unknown,
    Disabled,
    Dependency,
    Cycle,
    Sticky,
    Rollout,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Unknown => "unknown",
            Source::Disabled => "disabled",
            Source::Dependency => "dependency",
            Source::Cycle => "cycle",
            Source::Sticky => "sticky",
            Source::Rollout => "rollout",
        }
    }

    /// OpenFeature's reason code for a decision from this step: `rollout` (hashed into the
    /// rollout now) and `sticky` (the stored first decision) are SPLIT, `disabled` is
    /// DISABLED, `dependency` (a required flag is off) is TARGETING_MATCH, anything else
    /// UNKNOWN. What `serve` (OFREP) and the Python package's provider answer.
    pub fn openfeature_reason(self) -> &'static str {
        match self {
            Source::Rollout | Source::Sticky => "SPLIT",
            Source::Disabled => "DISABLED",
            Source::Dependency => "TARGETING_MATCH",
            Source::Unknown | Source::Cycle => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub enabled: bool,
    pub source: Source,
    /// The rollout bucket, when the decision came from hashing or a stored assignment.
    pub bucket: Option<u8>,
    /// What the reason is made of: the reason is worded from these when it is read (see
    /// [`Decision::reason`]), not when a batch decides, and an audit record stores them.
    pub facts: Facts,
}

/// The facts behind a decision's reason, beyond its source and bucket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// Dependency: the requirement that was off, then its own failed requirement and so on,
    /// down to the flag whose own step (disabled, unknown, rollout, sticky or a cycle)
    /// decided; that flag's decision is `cause`.
    pub failed_requirements: Vec<String>,
    pub cause: Option<Box<Decision>>,
    /// Rollout: the percentage the bucket was compared with.
    pub rollout_pct: Option<f64>,
    /// Sticky: when the stored decision was made.
    pub since: Option<String>,
    /// A dependency cycle met on this flag: the flags around it, the first repeated last.
    pub cycle: Vec<String>,
}

impl Decision {
    fn off(source: Source) -> Decision {
        Decision {
            enabled: false,
            source,
            bucket: None,
            facts: Facts::default(),
        }
    }

    /// Why, in words an operator reads in the audit log (e.g. "requires dedupe: disabled").
    pub fn reason(&self) -> String {
        let facts = &self.facts;
        if let Some(cause) = &facts.cause {
            let mut reason = String::new();
            for required in &facts.failed_requirements {
                reason.push_str("requires ");
                reason.push_str(required);
                reason.push_str(": ");
            }
            return reason + &cause.reason();
        }
        match self.source {
            Source::Unknown => "unknown flag".to_string(),
            Source::Disabled => "disabled".to_string(),
            Source::Cycle => format!("dependency cycle: {}", facts.cycle.join(" -> ")),
            Source::Sticky => format!(
                "sticky: {} since {}",
                on_off(self.enabled),
                facts.since.as_deref().unwrap_or_default()
            ),
            Source::Rollout => format!(
                "rollout: bucket {} {} {}",
                self.bucket.unwrap_or_default(),
                if self.enabled { "<" } else { ">=" },
                facts.rollout_pct.unwrap_or_default()
            ),
            // Decisions made here always name their cause; one built by hand may not.
            Source::Dependency => {
                format!("requires {}", facts.failed_requirements.join(": requires "))
            }
        }
    }
}

/// An assignment as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAssignment {
    pub decision: bool,
    pub bucket: u8,
    pub rollout_pct: f64,
    pub assigned_at: String,
}

/// A rollout decision the sticky policy says must be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAssignment {
    pub flag: String,
    pub decision: bool,
    pub bucket: u8,
    pub rollout_pct: f64,
}

/// The answer for one requested flag, with the assignments its evaluation made (its own and
/// those of the dependencies it checked first), so they are audited together.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub flag: String,
    pub decision: Decision,
    pub new_assignments: Vec<NewAssignment>,
}

/// Evaluates `requested` flags, in the order given, for one context key.
///
/// `stored` holds the context's assignments by flag name; it must cover every flag in
/// `flags.closure(requested)`. A dependency decided on the way is decided once and, when its
/// policy says so, stored too: evaluating F before D must not give D a different answer later.
pub fn evaluate<S: BuildHasher>(
    flags: &FlagSet,
    context: &str,
    stored: &HashMap<String, StoredAssignment, S>,
    requested: &[&str],
) -> Vec<Evaluation> {
    evaluate_context(flags, context, stored, requested).evaluations
}

/// Everything one evaluation request decided for one context: the requested flags, and the
/// flags decided on the way (requirements), which an audit record keeps so that each reason
/// can be rendered from stored facts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContextEvaluation {
    pub evaluations: Vec<Evaluation>,
    /// Flags decided only as requirements, in the order they were first decided.
    pub requirements: Vec<(String, Decision)>,
}

/// [`evaluate`], also returning the requirements decided on the way.
pub fn evaluate_context<'a, S: BuildHasher>(
    flags: &'a FlagSet,
    context: &'a str,
    stored: &'a HashMap<String, StoredAssignment, S>,
    requested: &[&'a str],
) -> ContextEvaluation {
    let mut evaluator = ContextEvaluator {
        flags,
        context,
        stored,
        decided: Vec::new(),
        decided_index: foldhash::HashMap::default(),
        path: Vec::new(),
        on_path: foldhash::HashSet::default(),
        new_assignments: Vec::new(),
    };
    let evaluations: Vec<Evaluation> = requested
        .iter()
        .map(|name| {
            let decision = match evaluator.decide(name) {
                Decided::Cached(index) => evaluator.decided[index].1.clone(),
                Decided::Uncached(decision) => decision,
            };
            Evaluation {
                flag: name.to_string(),
                decision,
                new_assignments: std::mem::take(&mut evaluator.new_assignments),
            }
        })
        .collect();
    let requirements = evaluator
        .decided
        .into_iter()
        .filter(|(name, _)| !requested.contains(name))
        .map(|(name, decision)| (name.to_string(), decision))
        .collect();
    ContextEvaluation {
        evaluations,
        requirements,
    }
}

/// A decision kept for the rest of the context's evaluation, or one that must not be.
enum Decided {
    /// At this index of `ContextEvaluator::decided`.
    Cached(usize),
    /// Reached through a dependency cycle: it depends on where the walk entered the cycle.
    Uncached(Decision),
}

/// Its maps are keyed by flag names and hashed with foldhash: SipHash, the standard library's
/// default, was a quarter of a batch's evaluating thread, and flag names come from the store.
struct ContextEvaluator<'a, S> {
    flags: &'a FlagSet,
    context: &'a str,
    stored: &'a HashMap<String, StoredAssignment, S>,
    /// Decisions already made for this context, in the order they were made, so shared
    /// dependencies are decided once; found by name through `decided_index`.
    decided: Vec<(&'a str, Decision)>,
    decided_index: foldhash::HashMap<&'a str, usize>,
    /// The flags whose requirements are being checked, outermost first: a flag met again on
    /// this path is a cycle.
    path: Vec<&'a str>,
    /// The names in `path`, to see a cycle without walking a long path at every step.
    on_path: foldhash::HashSet<&'a str>,
    new_assignments: Vec<NewAssignment>,
}

impl<'a, S: BuildHasher> ContextEvaluator<'a, S> {
    /// Decides `name` and, first, each flag it requires, depth first. Iterative: a chain of
    /// requirements of any length (a store edited by hand, or written before chains were
    /// limited) uses heap, not the stack of serve's writer thread.
    fn decide(&mut self, name: &'a str) -> Decided {
        match self.enter(name) {
            Entered::Decided(decided) => decided,
            Entered::Requirements(flag) => self.decide_requirements(vec![(flag, 0)]),
        }
    }

    /// Runs the requirement checks on `checking` (outermost first) to the end, and returns the
    /// outermost flag's decision.
    fn decide_requirements(&mut self, mut checking: Vec<(&'a Flag, usize)>) -> Decided {
        // The decision of the requirement the innermost check asked for last.
        let mut answered: Option<Decided> = None;
        loop {
            let Some(&mut (flag, ref mut next)) = checking.last_mut() else {
                return answered.expect("the outermost flag was decided");
            };
            let failed = answered.take().and_then(|requirement| {
                let decision = match requirement {
                    Decided::Cached(index) if self.decided[index].1.enabled => return None,
                    Decided::Cached(index) => self.decided[index].1.clone(),
                    Decided::Uncached(decision) if decision.enabled => return None,
                    Decided::Uncached(decision) => decision,
                };
                Some((flag.requires[*next - 1].as_str(), decision))
            });
            let decision = match (failed, flag.requires.get(*next)) {
                (Some((required, decision)), _) => requirement_off(required, decision),
                (None, Some(required)) => {
                    *next += 1;
                    match self.enter(required) {
                        Entered::Decided(decided) => answered = Some(decided),
                        Entered::Requirements(inner) => checking.push((inner, 0)),
                    }
                    continue;
                }
                (None, None) => {
                    self.leave_path();
                    checking.pop();
                    let decision = self.own_step(flag);
                    answered = Some(self.keep(&flag.name, decision));
                    continue;
                }
            };
            self.leave_path();
            checking.pop();
            answered = Some(self.keep(&flag.name, decision));
        }
    }

    /// The first steps of deciding `name`: a decision made already, a cycle, an unknown or a
    /// disabled flag decide at once; otherwise its requirements are checked next (it joins
    /// `self.path`).
    fn enter(&mut self, name: &'a str) -> Entered<'a> {
        if let Some(&index) = self.decided_index.get(name) {
            return Entered::Decided(Decided::Cached(index));
        }
        if self.on_path.contains(name)
            && let Some(start) = self.path.iter().position(|n| *n == name)
        {
            let mut decision = Decision::off(Source::Cycle);
            decision.facts.cycle = self.path[start..]
                .iter()
                .chain([&name])
                .map(|n| n.to_string())
                .collect();
            return Entered::Decided(Decided::Uncached(decision));
        }
        match self.flags.get(name) {
            None => Entered::Decided(self.keep(name, Decision::off(Source::Unknown))),
            Some(flag) if !flag.enabled => {
                Entered::Decided(self.keep(name, Decision::off(Source::Disabled)))
            }
            Some(flag) => {
                self.path.push(&flag.name);
                self.on_path.insert(&flag.name);
                Entered::Requirements(flag)
            }
        }
    }

    fn leave_path(&mut self) {
        if let Some(name) = self.path.pop() {
            self.on_path.remove(name);
        }
    }

    /// Keeps `decision` of `name` for the rest of the context's evaluation, unless it was
    /// reached through a dependency cycle: that depends on where the walk entered the cycle.
    fn keep(&mut self, name: &'a str, decision: Decision) -> Decided {
        if decision.source == Source::Cycle {
            return Decided::Uncached(decision);
        }
        self.decided_index.insert(name, self.decided.len());
        self.decided.push((name, decision));
        Decided::Cached(self.decided.len() - 1)
    }

    /// The decision of an enabled flag whose requirements are all on: its stored assignment,
    /// or its rollout (stored as its sticky policy says).
    fn own_step(&mut self, flag: &'a Flag) -> Decision {
        if let Some(stored) = self.stored.get(&flag.name) {
            return Decision {
                enabled: stored.decision,
                source: Source::Sticky,
                bucket: Some(stored.bucket),
                facts: Facts {
                    since: Some(stored.assigned_at.clone()),
                    ..Facts::default()
                },
            };
        }
        let bucket = bucket(&flag.name, self.context);
        let enabled = in_rollout(bucket, flag.rollout_pct);
        if flag.sticky.stores(enabled) {
            self.new_assignments.push(NewAssignment {
                flag: flag.name.clone(),
                decision: enabled,
                bucket,
                rollout_pct: flag.rollout_pct,
            });
        }
        Decision {
            enabled,
            source: Source::Rollout,
            bucket: Some(bucket),
            facts: Facts {
                rollout_pct: Some(flag.rollout_pct),
                ..Facts::default()
            },
        }
    }
}

/// What the first steps of deciding a flag found.
enum Entered<'a> {
    Decided(Decided),
    /// An enabled flag: its requirements are to be checked.
    Requirements(&'a Flag),
}

/// The decision of a flag whose requirement `required` was off, decided `decision`.
fn requirement_off(required: &str, mut decision: Decision) -> Decision {
    let source = match decision.source {
        Source::Cycle => Source::Cycle,
        _ => Source::Dependency,
    };
    let mut failed_requirements = vec![required.to_string()];
    failed_requirements.append(&mut decision.facts.failed_requirements);
    let cause = match decision.facts.cause.take() {
        Some(cause) => cause,
        None => Box::new(decision),
    };
    Decision {
        facts: Facts {
            failed_requirements,
            cause: Some(cause),
            ..Facts::default()
        },
        ..Decision::off(source)
    }
}

/// Every step of one flag's evaluation for one context, for `flagstore explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The definition, or `None` for an unknown flag.
    pub flag: Option<Flag>,
    /// Each required flag with its own decision for the same context.
    pub requirements: Vec<(String, Decision)>,
    /// The stored assignment for (flag, context), if any.
    pub stored: Option<StoredAssignment>,
    pub bucket: u8,
    /// The answer an evaluation would give now.
    pub decision: Decision,
}

/// Explains how `name` is decided for `context`, computing everything an evaluation would and
/// storing nothing.
pub fn explain<S: BuildHasher>(
    flags: &FlagSet,
    context: &str,
    stored: &HashMap<String, StoredAssignment, S>,
    name: &str,
) -> Explanation {
    let decide = |flag: &str| {
        let mut evaluations = evaluate(flags, context, stored, &[flag]);
        evaluations.remove(0).decision
    };
    let flag = flags.get(name).cloned();
    let requirements = flag
        .iter()
        .flat_map(|f| &f.requires)
        .map(|required| (required.clone(), decide(required)))
        .collect();
    Explanation {
        flag,
        requirements,
        stored: stored.get(name).cloned(),
        bucket: bucket(name, context),
        decision: decide(name),
    }
}

fn on_off(decision: bool) -> &'static str {
    if decision { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flag::StickyPolicy;

    fn flag(name: &str, enabled: bool, pct: f64, requires: &[&str]) -> Flag {
        Flag {
            enabled,
            rollout_pct: pct,
            requires: requires.iter().map(|r| r.to_string()).collect(),
            sticky: StickyPolicy::OnOnly,
            ..Flag::new(name)
        }
    }

    fn set(flags: Vec<Flag>) -> FlagSet {
        flags.into_iter().collect()
    }

    fn one(flags: &FlagSet, name: &str, context: &str) -> Evaluation {
        evaluate(flags, context, &HashMap::new(), &[name]).remove(0)
    }

    fn sticky(decision: bool) -> StoredAssignment {
        StoredAssignment {
            decision,
            bucket: 7,
            rollout_pct: 10.0,
            assigned_at: "2026-01-02T03:04:05.678Z".to_string(),
        }
    }

    /// Picks a context key whose bucket for `flag` satisfies `want`, so tests state the bucket
    /// they rely on instead of a magic key.
    fn key_with_bucket(flag: &str, want: impl Fn(u8) -> bool) -> String {
        (0..10_000)
            .map(|i| format!("k{i}"))
            .find(|k| want(bucket(flag, k)))
            .expect("some key in 10,000 has the wanted bucket")
    }

    #[test]
    fn bucket_matches_known_vectors() {
        assert_eq!(bucket("dedupe", "user-42"), 29);
        assert_eq!(bucket("ingest", ""), 19);
        assert_eq!(bucket("new-checkout", "ü-ñ-日本"), 38);
    }

    #[test]
    fn unknown_flag_is_off() {
        let e = one(&FlagSet::new(), "ghost", "k");
        assert!(!e.decision.enabled);
        assert_eq!(e.decision.source, Source::Unknown);
        assert_eq!(e.decision.reason(), "unknown flag");
        assert!(e.new_assignments.is_empty());
    }

    #[test]
    fn kill_switch_beats_a_sticky_on() {
        let flags = set(vec![flag("f", false, 100.0, &[])]);
        let stored = HashMap::from([("f".to_string(), sticky(true))]);
        let e = evaluate(&flags, "k", &stored, &["f"]).remove(0);
        assert!(!e.decision.enabled);
        assert_eq!(e.decision.source, Source::Disabled);
        assert_eq!(e.decision.reason(), "disabled");
    }

    #[test]
    fn a_failed_requirement_is_named_even_over_a_sticky_on() {
        let flags = set(vec![
            flag("export", true, 100.0, &["dedupe"]),
            flag("dedupe", false, 100.0, &[]),
        ]);
        let stored = HashMap::from([("export".to_string(), sticky(true))]);
        let e = evaluate(&flags, "k", &stored, &["export"]).remove(0);
        assert!(!e.decision.enabled);
        assert_eq!(e.decision.source, Source::Dependency);
        assert_eq!(e.decision.reason(), "requires dedupe: disabled");
    }

    #[test]
    fn nested_requirement_reasons_chain() {
        let flags = set(vec![
            flag("a", true, 100.0, &["b"]),
            flag("b", true, 100.0, &["c"]),
            flag("c", true, 0.0, &[]),
        ]);
        let e = one(&flags, "a", "k");
        let c_bucket = bucket("c", "k");
        assert_eq!(
            e.decision.reason(),
            format!("requires b: requires c: rollout: bucket {c_bucket} >= 0")
        );
    }

    #[test]
    fn sticky_assignment_is_served_with_its_date() {
        let flags = set(vec![flag("f", true, 0.0, &[])]);
        let stored = HashMap::from([("f".to_string(), sticky(true))]);
        let e = evaluate(&flags, "k", &stored, &["f"]).remove(0);
        assert!(e.decision.enabled);
        assert_eq!(e.decision.source, Source::Sticky);
        assert_eq!(
            e.decision.reason(),
            "sticky: on since 2026-01-02T03:04:05.678Z"
        );
        assert_eq!(e.decision.bucket, Some(7));
        assert!(e.new_assignments.is_empty());
    }

    #[test]
    fn rollout_compares_bucket_strictly_below_percentage() {
        let flag_name = "stage.enrich";
        let key = key_with_bucket(flag_name, |b| b == 40);
        for (pct, expected) in [(40.0, false), (40.5, true), (41.0, true), (0.0, false)] {
            let flags = set(vec![flag(flag_name, true, pct, &[])]);
            let e = one(&flags, flag_name, &key);
            assert_eq!(e.decision.enabled, expected, "rollout {pct}");
            assert_eq!(e.decision.source, Source::Rollout);
            assert_eq!(e.decision.bucket, Some(40));
        }
        let flags = set(vec![flag(flag_name, true, 40.5, &[])]);
        assert_eq!(
            one(&flags, flag_name, &key).decision.reason(),
            "rollout: bucket 40 < 40.5"
        );
    }

    #[test]
    fn fractional_rollout_below_one_percent_only_reaches_bucket_zero() {
        let zero = key_with_bucket("f", |b| b == 0);
        let one_key = key_with_bucket("f", |b| b == 1);
        let flags = set(vec![flag("f", true, 0.5, &[])]);
        assert!(one(&flags, "f", &zero).decision.enabled);
        assert!(!one(&flags, "f", &one_key).decision.enabled);
    }

    #[test]
    fn sticky_policy_decides_what_is_stored() {
        let on_key = key_with_bucket("f", |b| b < 50);
        let off_key = key_with_bucket("f", |b| b >= 50);
        for (policy, stores_on, stores_off) in [
            (StickyPolicy::OnOnly, true, false),
            (StickyPolicy::All, true, true),
            (StickyPolicy::None, false, false),
        ] {
            let flags = set(vec![Flag {
                sticky: policy,
                ..flag("f", true, 50.0, &[])
            }]);
            let on = one(&flags, "f", &on_key);
            assert!(on.decision.enabled);
            assert_eq!(on.new_assignments.len(), usize::from(stores_on), "{policy}");
            let off = one(&flags, "f", &off_key);
            assert!(!off.decision.enabled);
            assert_eq!(
                off.new_assignments.len(),
                usize::from(stores_off),
                "{policy}"
            );
        }
    }

    #[test]
    fn dependency_assignments_are_reported_with_the_flag_that_needed_them() {
        let flags = set(vec![
            flag("export", true, 100.0, &["dedupe"]),
            flag("dedupe", true, 100.0, &[]),
        ]);
        let results = evaluate(&flags, "k", &HashMap::new(), &["export", "dedupe"]);
        let stored: Vec<&str> = results[0]
            .new_assignments
            .iter()
            .map(|a| a.flag.as_str())
            .collect();
        assert_eq!(stored, ["dedupe", "export"]);
        // Decided once: asking for dedupe afterwards stores nothing twice.
        assert!(results[1].decision.enabled);
        assert!(results[1].new_assignments.is_empty());
    }

    #[test]
    fn cycles_are_off_and_named_without_recursing_forever() {
        let flags = set(vec![
            flag("a", true, 100.0, &["b"]),
            flag("b", true, 100.0, &["a"]),
        ]);
        let e = one(&flags, "a", "k");
        assert!(!e.decision.enabled);
        assert_eq!(e.decision.source, Source::Cycle);
        assert_eq!(
            e.decision.reason(),
            "requires b: requires a: dependency cycle: a -> b -> a"
        );
        let from_b = one(&flags, "b", "k");
        assert!(
            from_b
                .decision
                .reason()
                .ends_with("dependency cycle: b -> a -> b")
        );
        assert!(e.new_assignments.is_empty());
    }

    #[test]
    fn first_failing_requirement_in_listed_order_is_named() {
        let flags = set(vec![
            flag("top", true, 100.0, &["zeta", "alpha"]),
            flag("alpha", false, 100.0, &[]),
            flag("zeta", false, 100.0, &[]),
        ]);
        assert_eq!(
            one(&flags, "top", "k").decision.reason(),
            "requires zeta: disabled"
        );
    }

    #[test]
    fn explain_shows_each_step_without_storing() {
        let flags = set(vec![
            flag("export", true, 0.0, &["dedupe", "ingest"]),
            flag("dedupe", true, 100.0, &[]),
            flag("ingest", false, 100.0, &[]),
        ]);
        let stored = HashMap::from([("export".to_string(), sticky(true))]);
        let explanation = explain(&flags, "k", &stored, "export");
        assert_eq!(explanation.flag.as_ref().map(|f| f.rollout_pct), Some(0.0));
        let requirements: Vec<(&str, bool)> = explanation
            .requirements
            .iter()
            .map(|(name, d)| (name.as_str(), d.enabled))
            .collect();
        assert_eq!(requirements, [("dedupe", true), ("ingest", false)]);
        assert_eq!(explanation.stored, Some(sticky(true)));
        assert_eq!(explanation.bucket, bucket("export", "k"));
        assert_eq!(explanation.decision.reason(), "requires ingest: disabled");
        let unknown = explain(&flags, "k", &stored, "nope");
        assert_eq!(unknown.flag, None);
        assert_eq!(unknown.decision.source, Source::Unknown);
    }

    #[test]
    fn a_chain_of_any_length_is_decided_without_recursion() {
        // A store edited by hand (or written before chains were limited) can hold one; decided
        // on a thread with a small stack, as serve's writer would be by a recursive evaluator.
        let chain: FlagSet = (0..20_000)
            .map(|i| match i {
                19_999 => flag(&format!("f{i}"), true, 100.0, &[]),
                _ => flag(&format!("f{i}"), true, 100.0, &[&format!("f{}", i + 1)]),
            })
            .collect();
        let decided = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || one(&chain, "f0", "k").decision.enabled)
            .unwrap()
            .join()
            .unwrap();
        assert!(decided);
    }
}
