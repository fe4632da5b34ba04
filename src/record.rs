//! Decision records: the audit row an evaluation request writes for one context key, holding
//! every decision the request made for it.
//!
//! The row's `detail` is JSON, `{"requested": N, "decisions": [...]}`: the first N decisions
//! are the flags the caller asked for, in the order asked; the rest are requirements decided on
//! the way. Each decision stores what cannot be derived, not its reason text, as an array whose
//! first three elements are the flag, the result (1 on, 0 off) and the source, and whose rest
//! depend on the source:
//!
//! - `rollout`: the bucket, the rollout (as text, exactly as the reason prints it), and a `1`
//!   where this request stored the flag's assignment;
//! - `sticky`: the bucket and when the stored decision was made;
//! - `dependency`: the requirement that was off, its own failed requirement and so on, down to
//!   the flag whose own step decided, which is in the record;
//! - `cycle` (possible only in a database edited by hand): the reason;
//! - `disabled`, `unknown`: nothing.
//!
//! Records written before schema 13 hold each decision as an object of the same facts, named
//! (`flag`, `result`, `source`, `bucket`, `rollout_pct`, `since`, `requires`, `reason`,
//! `assigned: 1`); they read alike. The names were more than half of a record's bytes.
//!
//! The reason text is rendered from those facts by [`decode`] and, identically, by the
//! `audit_evaluations` view in SQL.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::eval::{ContextEvaluation, Decision, Source};
use crate::flag::{Flag, FlagSet};

/// One requested decision read back from a record, with its reason rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedDecision {
    pub flag: String,
    pub enabled: bool,
    pub source: String,
    pub reason: String,
}

/// A stored `detail` as its walks read it, into fields, not a `serde_json::Value`: `check`
/// reads every record twice, and a `Value` of each (maps that keep their order) was a third
/// of the command. A schema-1 row's detail has no decisions but the flags its request stored.
#[derive(Debug, Deserialize)]
pub struct StoredDetail {
    requested: Option<usize>,
    #[serde(default, deserialize_with = "either_form")]
    decisions: Option<Vec<StoredDecision>>,
    assigned: Option<Vec<String>>,
}

/// One decision of a record as stored, each field as the module's documentation lists it:
/// derived for the named form, read by `DecisionVisitor` from either.
#[derive(Debug, Default, Deserialize)]
pub struct StoredDecision {
    flag: Option<String>,
    result: Option<i64>,
    source: Option<String>,
    bucket: Option<u64>,
    rollout_pct: Option<String>,
    since: Option<String>,
    requires: Option<Vec<String>>,
    reason: Option<String>,
    assigned: Option<i64>,
}

fn either_form<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<StoredDecision>>, D::Error> {
    /// A decision in either form; its own type, because the named form's is derived.
    struct EitherForm(StoredDecision);

    impl<'de> Deserialize<'de> for EitherForm {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EitherForm, D::Error> {
            deserializer
                .deserialize_any(DecisionVisitor)
                .map(EitherForm)
        }
    }

    let decisions: Option<Vec<EitherForm>> = Option::deserialize(deserializer)?;
    Ok(decisions.map(|all| all.into_iter().map(|EitherForm(d)| d).collect()))
}

struct DecisionVisitor;

impl<'de> Visitor<'de> for DecisionVisitor {
    type Value = StoredDecision;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a decision: an array, or an object of a record before schema 13")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StoredDecision, A::Error> {
        StoredDecision::deserialize(de::value::MapAccessDeserializer::new(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StoredDecision, A::Error> {
        // An element that is missing or null is a fact the record lacks, named by its reader.
        fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
            seq: &mut A,
        ) -> Result<Option<T>, A::Error> {
            Ok(seq.next_element::<Option<T>>()?.flatten())
        }
        let mut decision = StoredDecision {
            flag: next(&mut seq)?,
            result: next(&mut seq)?,
            source: next(&mut seq)?,
            ..StoredDecision::default()
        };
        match decision.source.as_deref() {
            Some("rollout") => {
                decision.bucket = next(&mut seq)?;
                decision.rollout_pct = next(&mut seq)?;
                decision.assigned = next(&mut seq)?;
            }
            Some("sticky") => {
                decision.bucket = next(&mut seq)?;
                decision.since = next(&mut seq)?;
            }
            Some("dependency") => decision.requires = next(&mut seq)?,
            Some("cycle") => decision.reason = next(&mut seq)?,
            _ => {}
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a {:?} decision with more elements than its facts",
                decision.source.as_deref().unwrap_or_default()
            )));
        }
        Ok(decision)
    }
}

impl StoredDetail {
    pub fn parse(detail: &str) -> Result<StoredDetail, String> {
        serde_json::from_str(detail).map_err(|e| e.to_string())
    }

    /// A decision record's decisions; `None` for a schema-1 row's detail.
    pub fn decisions(&self) -> Option<&[StoredDecision]> {
        self.decisions.as_deref()
    }

    /// The flags the record was asked for: its first `requested` decisions' (a schema-1 row's
    /// detail: none).
    pub fn requested_flags(&self) -> Result<Vec<&str>, String> {
        let decisions = self.decisions().unwrap_or_default();
        let requested = self.requested.unwrap_or(0);
        decisions
            .iter()
            .take(requested)
            .map(StoredDecision::flag)
            .collect()
    }

    /// The flags a schema-1 row lists as stored by its request.
    pub fn schema_1_assigned(&self) -> &[String] {
        self.assigned.as_deref().unwrap_or_default()
    }

    fn decisions_or_error(&self) -> Result<&[StoredDecision], String> {
        self.decisions()
            .ok_or_else(|| "no \"decisions\" list".to_string())
    }
}

impl StoredDecision {
    pub fn flag(&self) -> Result<&str, String> {
        text(&self.flag, "flag")
    }

    pub fn on(&self) -> bool {
        self.result == Some(1)
    }

    fn source(&self) -> Result<&str, String> {
        text(&self.source, "source")
    }

    /// Whether this request stored the flag's assignment.
    pub fn assigned(&self) -> bool {
        self.assigned == Some(1)
    }

    pub fn bucket(&self) -> Option<u8> {
        self.bucket.and_then(|bucket| u8::try_from(bucket).ok())
    }

    /// The rollout, as the text the reason prints.
    pub fn rollout_pct(&self) -> Option<&str> {
        self.rollout_pct.as_deref()
    }

    fn first_requirement(&self) -> &str {
        self.requires
            .as_ref()
            .and_then(|chain| chain.first())
            .map_or("", |name| name)
    }
}

/// The `detail` of the record of `evaluation`. Written by hand: it runs for every key of a batch.
pub fn encode(evaluation: &ContextEvaluation) -> String {
    let mut assigned: foldhash::HashSet<&str> = evaluation
        .evaluations
        .iter()
        .flat_map(|e| &e.new_assignments)
        .map(|a| a.flag.as_str())
        .collect();
    let mut detail = String::with_capacity(64 + 96 * evaluation.evaluations.len());
    detail.push_str("{\"requested\":");
    detail.push_str(itoa::Buffer::new().format(evaluation.evaluations.len()));
    detail.push_str(",\"decisions\":[");
    let requested = evaluation
        .evaluations
        .iter()
        .map(|e| (e.flag.as_str(), &e.decision));
    let requirements = evaluation
        .requirements
        .iter()
        .map(|(flag, decision)| (flag.as_str(), decision));
    for (i, (flag, decision)) in requested.chain(requirements).enumerate() {
        if i > 0 {
            detail.push(',');
        }
        push_decision(&mut detail, flag, decision, assigned.remove(flag));
    }
    detail.push_str("]}");
    detail
}

fn push_decision(detail: &mut String, flag: &str, decision: &Decision, assigned: bool) {
    detail.push('[');
    push_string(detail, flag);
    detail.push_str(if decision.enabled { ",1,\"" } else { ",0,\"" });
    detail.push_str(decision.source.as_str());
    detail.push('"');
    let facts = &decision.facts;
    // Only a rollout decides anew, so only a rollout stores an assignment.
    debug_assert!(!assigned || decision.source == Source::Rollout);
    match decision.source {
        Source::Rollout => {
            push_bucket(detail, decision.bucket);
            push_fact(
                detail,
                facts.rollout_pct.map(|pct| pct.to_string()).as_deref(),
            );
            if assigned {
                detail.push_str(",1");
            }
        }
        Source::Sticky => {
            push_bucket(detail, decision.bucket);
            push_fact(detail, facts.since.as_deref());
        }
        Source::Dependency => {
            detail.push_str(",[");
            for (i, required) in facts.failed_requirements.iter().enumerate() {
                if i > 0 {
                    detail.push(',');
                }
                push_string(detail, required);
            }
            detail.push(']');
        }
        Source::Cycle => {
            detail.push(',');
            push_string(detail, &decision.reason());
        }
        Source::Disabled | Source::Unknown => {}
    }
    detail.push(']');
}

/// A missing fact is written as `null`, which the reader names, rather than as a made-up value.
fn push_bucket(detail: &mut String, bucket: Option<u8>) {
    detail.push(',');
    match bucket {
        Some(bucket) => detail.push_str(itoa::Buffer::new().format(bucket)),
        None => detail.push_str("null"),
    }
}

/// A fact in text, `null` where it is missing (see [`push_bucket`]).
fn push_fact(detail: &mut String, text: Option<&str>) {
    detail.push(',');
    match text {
        Some(text) => push_string(detail, text),
        None => detail.push_str("null"),
    }
}

fn push_string(detail: &mut String, text: &str) {
    // Flag names, times and most keys need no escaping; the rest go through serde_json.
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        detail.push('"');
        detail.push_str(text);
        detail.push('"');
    } else {
        detail.push_str(&serde_json::to_string(text).expect("a string serializes"));
    }
}

/// The requested decisions of a record, with their reasons, or why the detail is not a record.
pub fn decode(detail: &str) -> Result<Vec<RecordedDecision>, String> {
    let stored = StoredDetail::parse(detail)?;
    let requested = stored.requested.ok_or("no \"requested\" count")?;
    let decisions = stored.decisions_or_error()?;
    if requested > decisions.len() {
        return Err(format!(
            "{requested} requested but {} decisions",
            decisions.len()
        ));
    }
    decisions[..requested]
        .iter()
        .map(|decision| {
            Ok(RecordedDecision {
                flag: decision.flag()?.to_string(),
                enabled: decision.on(),
                source: decision.source()?.to_string(),
                reason: reason(decision, decisions)?,
            })
        })
        .collect()
}

/// What in the record `detail`, for context `context`, the flag definitions in force when it
/// was written (`flags`) do not give: one line per decision, naming the flag, what the record
/// says and why those definitions disagree. A record that agrees gives none. Sticky decisions
/// are held here only to their flag being enabled and its requirements on; their values are
/// the assignments', which `check` holds to the records that stored them.
pub fn disagreements(detail: &str, context: &str, flags: &FlagSet) -> Result<Vec<String>, String> {
    let stored = StoredDetail::parse(detail)?;
    let decisions = stored.decisions_or_error()?;
    let decided_on = |name: &str| {
        decisions
            .iter()
            .find(|d| d.flag.as_deref() == Some(name))
            .map(StoredDecision::on)
    };
    let first_not_on = |flag: &Flag| {
        flag.requires
            .iter()
            .find(|required| decided_on(required) != Some(true))
            .map(|required| format!("its requirement {required:?} was not decided on"))
    };
    let mut found = Vec::new();
    for decision in decisions {
        let name = decision.flag()?;
        let on = decision.on();
        let why = match (flags.get(name), decision.source()?) {
            (_, "cycle") => None,
            (None, "unknown") => on.then(|| "an unknown flag is off".to_string()),
            (None, _) => Some("it was not defined".to_string()),
            (Some(_), "unknown") => Some("it was defined".to_string()),
            (Some(flag), "disabled") => match (flag.enabled, on) {
                (true, _) => Some("it was enabled".to_string()),
                (false, true) => Some("a disabled flag is off".to_string()),
                (false, false) => None,
            },
            (Some(flag), _) if !flag.enabled => Some("it was disabled".to_string()),
            (Some(flag), "dependency") => {
                let off = decision.first_requirement();
                match flag.requires.iter().position(|required| required == off) {
                    _ if on => Some("a flag whose requirement is off is off".to_string()),
                    None => Some(format!(
                        "{off:?} was not among its requirements {:?}",
                        flag.requires
                    )),
                    Some(at) => first_not_on(&Flag {
                        requires: flag.requires[..at].to_vec(),
                        ..flag.clone()
                    })
                    .or_else(|| {
                        (decided_on(off) != Some(false))
                            .then(|| format!("its requirement {off:?} was not decided off"))
                    }),
                }
            }
            (Some(flag), "rollout") => first_not_on(flag).or_else(|| {
                let bucket = crate::eval::bucket(name, context);
                let pct = flag.rollout_pct.to_string();
                if decision.bucket != Some(u64::from(bucket)) {
                    Some(format!("the key's bucket is {bucket}"))
                } else if decision.rollout_pct() != Some(&pct) {
                    Some(format!("its rollout was {pct}"))
                } else if on != (f64::from(bucket) < flag.rollout_pct) {
                    Some(format!(
                        "bucket {bucket} against rollout {pct} decides the other way"
                    ))
                } else {
                    None
                }
            }),
            (Some(flag), _) => first_not_on(flag),
        };
        if let Some(why) = why {
            let reason = reason(decision, decisions).unwrap_or_else(|e| e);
            let on_off = if on { "on" } else { "off" };
            found.push(format!(
                "flag {name:?} is recorded {on_off} ({reason}), but {why} in the definitions in \
                 force then"
            ));
        }
    }
    Ok(found)
}

fn text<'v>(field: &'v Option<String>, name: &str) -> Result<&'v str, String> {
    field
        .as_deref()
        .ok_or_else(|| format!("a decision without {name:?}"))
}

/// The reason as the evaluator words it, from the stored facts.
fn reason(decision: &StoredDecision, all: &[StoredDecision]) -> Result<String, String> {
    let on_off = if decision.on() { "on" } else { "off" };
    Ok(match decision.source()? {
        "unknown" => "unknown flag".to_string(),
        "disabled" => "disabled".to_string(),
        "cycle" => text(&decision.reason, "reason")?.to_string(),
        "rollout" => format!(
            "rollout: bucket {} {} {}",
            decision.bucket.ok_or("a rollout without bucket")?,
            if decision.on() { "<" } else { ">=" },
            text(&decision.rollout_pct, "rollout_pct")?
        ),
        "sticky" => format!("sticky: {on_off} since {}", text(&decision.since, "since")?),
        "dependency" => {
            let chain = decision
                .requires
                .as_deref()
                .ok_or("a dependency without requires")?;
            let last = chain.last().ok_or("a dependency with no requirement")?;
            let decided = all
                .iter()
                .find(|d| d.flag.as_ref() == Some(last))
                .ok_or_else(|| format!("requirement {last:?} is not in the record"))?;
            let prefix: String = chain.iter().map(|f| format!("requires {f}: ")).collect();
            prefix + &reason(decided, all)?
        }
        other => return Err(format!("unknown source {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::eval::{StoredAssignment, evaluate_context};
    use crate::flag::{Flag, FlagSet, StickyPolicy};

    fn flags() -> FlagSet {
        let flag = |name: &str, enabled: bool, pct: f64, requires: &[&str]| Flag {
            enabled,
            rollout_pct: pct,
            requires: requires.iter().map(|r| r.to_string()).collect(),
            sticky: StickyPolicy::All,
            ..Flag::new(name)
        };
        [
            flag("ingest", true, 100.0, &[]),
            flag("dedupe", false, 100.0, &["ingest"]),
            flag("enrich", true, 12.5, &["dedupe"]),
            flag("export", true, 33.3, &["ingest"]),
            flag("shadow", true, 0.5, &[]),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn every_reason_renders_as_the_evaluator_words_it() {
        let flags = flags();
        let mut stored = HashMap::new();
        stored.insert(
            "export".to_string(),
            StoredAssignment {
                decision: true,
                bucket: 7,
                rollout_pct: 50.0,
                assigned_at: "2026-11-01T00:00:00.000Z".to_string(),
            },
        );
        let requested = ["enrich", "export", "shadow", "ghost", "enrich"];
        let evaluation = evaluate_context(&flags, "tenant:é", &stored, &requested);
        let decoded = decode(&encode(&evaluation)).unwrap();
        let expected: Vec<RecordedDecision> = evaluation
            .evaluations
            .iter()
            .map(|e| RecordedDecision {
                flag: e.flag.clone(),
                enabled: e.decision.enabled,
                source: e.decision.source.as_str().to_string(),
                reason: e.decision.reason(),
            })
            .collect();
        assert_eq!(decoded, expected);
        assert_eq!(decoded[0].reason, "requires dedupe: disabled");
        assert_eq!(
            decoded[1].reason,
            "sticky: on since 2026-11-01T00:00:00.000Z"
        );
        assert_eq!(decoded[3].reason, "unknown flag");
    }

    /// The hash chain covers these bytes: the fast path must write what serde_json writes.
    #[test]
    fn strings_are_written_exactly_as_serde_json_writes_them() {
        for text in [
            "",
            "plain",
            "quote\"",
            "back\\slash",
            "tab\t",
            "\u{1f}",
            "\u{7f}",
            "ü-ñ-日本",
            "</script>",
            "\u{2028}",
        ] {
            let mut written = String::new();
            push_string(&mut written, text);
            assert_eq!(written, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn the_detail_holds_facts_not_reasons() {
        let flags = flags();
        let evaluation = evaluate_context(&flags, "k", &HashMap::new(), &["enrich", "ingest"]);
        // Python: int(hashlib.md5(b"ingest:k").hexdigest(), 16) % 100 == 15.
        assert_eq!(
            encode(&evaluation),
            "{\"requested\":2,\"decisions\":[\
             [\"enrich\",0,\"dependency\",[\"dedupe\"]],\
             [\"ingest\",1,\"rollout\",15,\"100\",1],\
             [\"dedupe\",0,\"disabled\"]]}"
        );
    }

    /// Every record the evaluator writes agrees with the definitions it was written under,
    /// and a record of another definition is named, one line per decision that differs.
    #[test]
    fn records_agree_with_the_definitions_they_were_written_under() {
        let flags = flags();
        let requested = ["enrich", "export", "shadow", "ghost", "dedupe", "ingest"];
        for key in ["k", "tenant:é", "", "42"] {
            let evaluation = evaluate_context(&flags, key, &HashMap::new(), &requested);
            assert_eq!(disagreements(&encode(&evaluation), key, &flags), Ok(vec![]));
        }

        let evaluation = evaluate_context(&flags, "k", &HashMap::new(), &requested);
        let detail = encode(&evaluation);
        let mut changed = flags.clone();
        let mut export = changed.get("export").unwrap().clone();
        export.rollout_pct = 90.0;
        changed.insert(export);
        let mut dedupe = changed.get("dedupe").unwrap().clone();
        dedupe.enabled = true;
        changed.insert(dedupe);
        changed.remove("shadow");
        let found = disagreements(&detail, "k", &changed).unwrap();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with("flag \"export\" is recorded"),
            "{found:#?}"
        );
        assert!(
            found[0].contains("but its rollout was 90 in the definitions"),
            "{found:#?}"
        );
        assert!(found[1].contains("\"shadow\"") && found[1].contains("it was not defined"));
        assert!(
            found[2].starts_with("flag \"dedupe\" is recorded off (disabled), but it was enabled")
        );
        // The same record under another key: every rollout bucket is checked against the key.
        let elsewhere = disagreements(&detail, "another key", &flags).unwrap();
        assert!(
            elsewhere
                .iter()
                .any(|line| line.contains("the key's bucket is")),
            "{elsewhere:#?}"
        );
    }

    /// Schema 12 and before wrote each decision as an object of named facts; those records
    /// are in the chain for good and read exactly as the arrays that replaced them.
    #[test]
    fn records_written_before_schema_13_read_as_they_did() {
        let named = "{\"requested\":3,\"decisions\":[\
             {\"flag\":\"enrich\",\"result\":0,\"source\":\"dependency\",\"requires\":[\"dedupe\"]},\
             {\"flag\":\"export\",\"result\":1,\"source\":\"sticky\",\"bucket\":7,\"since\":\"2026-11-01T00:00:00.000Z\"},\
             {\"flag\":\"ingest\",\"result\":1,\"source\":\"rollout\",\"bucket\":15,\"rollout_pct\":\"100\",\"assigned\":1},\
             {\"flag\":\"dedupe\",\"result\":0,\"source\":\"disabled\"}]}";
        let compact = "{\"requested\":3,\"decisions\":[\
             [\"enrich\",0,\"dependency\",[\"dedupe\"]],\
             [\"export\",1,\"sticky\",7,\"2026-11-01T00:00:00.000Z\"],\
             [\"ingest\",1,\"rollout\",15,\"100\",1],\
             [\"dedupe\",0,\"disabled\"]]}";
        let decoded = decode(compact).unwrap();
        assert_eq!(decode(named).unwrap(), decoded);
        assert_eq!(
            decoded
                .iter()
                .map(|d| d.reason.as_str())
                .collect::<Vec<_>>(),
            [
                "requires dedupe: disabled",
                "sticky: on since 2026-11-01T00:00:00.000Z",
                "rollout: bucket 15 < 100"
            ]
        );
        for detail in [named, compact] {
            let stored = StoredDetail::parse(detail).unwrap();
            let assigned: Vec<bool> = stored
                .decisions()
                .unwrap()
                .iter()
                .map(StoredDecision::assigned)
                .collect();
            assert_eq!(assigned, [false, false, true, false], "{detail}");
            assert_eq!(
                disagreements(detail, "k", &flags()).unwrap(),
                disagreements(named, "k", &flags()).unwrap()
            );
        }
    }

    #[test]
    fn a_damaged_detail_is_named_not_misread() {
        assert!(decode("{}").is_err());
        assert!(decode("{\"requested\":2,\"decisions\":[]}").is_err());
        assert!(
            decode("{\"requested\":1,\"decisions\":[{\"flag\":\"f\",\"result\":0,\"source\":\"dependency\",\"requires\":[\"x\"]}]}")
                .unwrap_err()
                .contains("\"x\" is not in the record")
        );
        let one =
            |decision: &str| decode(&format!("{{\"requested\":1,\"decisions\":[{decision}]}}"));
        assert_eq!(
            one("[\"f\",1,\"rollout\",null,\"50\"]"),
            Err("a rollout without bucket".to_string())
        );
        assert!(
            one("[\"f\",0,\"disabled\",3]")
                .unwrap_err()
                .contains("a \"disabled\" decision with more elements than its facts"),
            "{:?}",
            one("[\"f\",0,\"disabled\",3]")
        );
        assert_eq!(one("[]"), Err("a decision without \"flag\"".to_string()));
    }
}
