//! What `flagstore explain` and the web UI's explain page show: every step of one flag's
//! evaluation for one context, now or at a past time, as text or as JSON.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::audit::{AuditRow, parse_time_bound};
use crate::error::Result;
use crate::eval::{self, Decision, Explanation, in_rollout};
use crate::output::percentage;
use crate::store::Store;

/// One explanation, with what the audit log recorded when it is about a past time.
#[derive(Debug, Clone)]
pub struct Report {
    pub flag: String,
    pub context: String,
    /// The past time asked about, as the caller wrote it; `None` means now.
    pub at: Option<String>,
    pub explanation: Explanation,
    /// For a past time only: the decision recorded nearest before it, if any.
    pub recorded: Option<Option<AuditRow>>,
    /// For a past time only: the id of the record that stored the flag's assignment then in
    /// force, if one was.
    pub assigned_by: Option<i64>,
}

/// Explains `flag` for `context` now (with its stored assignments), or at `at` (RFC 3339 or
/// a date): the definitions and the context's assignments then in force, both rebuilt from
/// the audit log, and the decision recorded nearest before it. Reads only.
pub fn explain(store: &mut Store, flag: &str, context: &str, at: Option<&str>) -> Result<Report> {
    if let Some(why) = crate::contexts::key_problem(context) {
        return Err(crate::error::Error::InvalidContextKey {
            key: context.to_string(),
            why,
        });
    }
    let (explanation, recorded, assigned_by) = match at {
        None => {
            let (flags, stored) = store.evaluation_state(flag, context)?;
            (eval::explain(&flags, context, &stored, flag), None, None)
        }
        Some(at) => {
            let now = store.now();
            if parse_time_bound(at, false)? > now {
                return Err(crate::error::Error::FutureTime {
                    value: at.to_string(),
                    now,
                });
            }
            let until = parse_time_bound(at, true)?;
            let flags = store.flags_as_of(&until)?;
            let replayed = store.assignments_as_of(context, &until)?;
            let assigned_by = replayed.get(flag).map(|(_, id)| *id);
            let stored: HashMap<_, _> = replayed
                .into_iter()
                .map(|(name, (assignment, _))| (name, assignment))
                .collect();
            let explanation = eval::explain(&flags, context, &stored, flag);
            (
                explanation,
                Some(store.decision_before(flag, context, &until)?),
                assigned_by,
            )
        }
    };
    Ok(Report {
        flag: flag.to_string(),
        context: context.to_string(),
        at: at.map(str::to_string),
        explanation,
        recorded,
        assigned_by,
    })
}

impl Report {
    /// The explanation as people read it: a heading, then one line per step.
    pub fn text(&self) -> String {
        let (name, context, explanation) = (&self.flag, &self.context, &self.explanation);
        let (Some(at), Some(recorded)) = (&self.at, &self.recorded) else {
            return format!(
                "{name} for context {context:?}, now\n{}",
                explanation_steps(explanation, None)
            );
        };
        let recorded = match recorded {
            Some(row) => format!(
                "row {} at {}: {} ({})",
                row.id,
                row.ts,
                row.result == Some(1),
                row.reason.as_deref().unwrap_or_default()
            ),
            None => "none: no evaluation of this flag for this context by then".to_string(),
        };
        format!(
            "{name} for context {context:?}, as of {at} (definitions and assignments rebuilt from \
             the audit log)\n{}  recorded decision:  {recorded}\n",
            explanation_steps(explanation, self.assigned_by)
        )
    }

    /// The explanation as one JSON object with the same steps as the text.
    pub fn json(&self) -> Value {
        let explanation = &self.explanation;
        let decision =
            |d: &Decision| json!({"enabled": d.enabled, "reason": d.reason(), "source": d.source});
        let mut shown = json!({
            "flag": self.flag,
            "context": self.context,
            "at": self.at,
            "definition": explanation.flag,
            "requirements": explanation.requirements.iter().map(|(flag, d)| {
                let mut step = decision(d);
                step["flag"] = json!(flag);
                step
            }).collect::<Vec<_>>(),
            "bucket": explanation.bucket,
            "in_rollout": explanation.flag.as_ref().map(|f| in_rollout(explanation.bucket, f.rollout_pct)),
            "answer": decision(&explanation.decision),
        });
        shown["assignment"] = json!(explanation.stored.as_ref().map(|a| {
            let mut assignment = json!({
                "decision": a.decision,
                "bucket": a.bucket,
                "rollout_pct": percentage(a.rollout_pct),
                "assigned_at": a.assigned_at,
            });
            if let Some(id) = self.assigned_by {
                assignment["audit_id"] = json!(id);
            }
            assignment
        }));
        match &self.recorded {
            None => {}
            Some(row) => {
                shown["recorded"] = json!(row.as_ref().map(|row| json!({
                    "audit_id": row.id,
                    "ts": row.ts,
                    "result": row.result == Some(1),
                    "reason": row.reason,
                })));
            }
        }
        shown
    }
}

/// The evaluation steps of an explanation, one line each; for a past state, `stored_by` is
/// the row that stored the assignment then in force.
fn explanation_steps(explanation: &Explanation, stored_by: Option<i64>) -> String {
    let on = |enabled: bool| if enabled { "on" } else { "off" };
    let Some(flag) = &explanation.flag else {
        return "  1 known:          no\n  answer:           false (unknown flag)\n".to_string();
    };
    let mut lines = vec![
        format!(
            "  1 known:          yes (rollout_pct {}, requires [{}], sticky {})",
            flag.rollout_pct,
            flag.requires.join(", "),
            flag.sticky
        ),
        format!(
            "  2 enabled:        {}",
            if flag.enabled { "yes" } else { "no" }
        ),
    ];
    if explanation.requirements.is_empty() {
        lines.push("  3 requires:       nothing".to_string());
    }
    for (required, decision) in &explanation.requirements {
        lines.push(format!(
            "  3 requires:       {required}: {} ({})",
            on(decision.enabled),
            decision.reason()
        ));
    }
    lines.push(match &explanation.stored {
        Some(stored) => format!(
            "  4 assignment:     {} since {}, decided at bucket {} under rollout_pct {}{}",
            on(stored.decision),
            stored.assigned_at,
            stored.bucket,
            stored.rollout_pct,
            stored_by.map_or(String::new(), |id| format!(" (stored by row {id})"))
        ),
        None => "  4 assignment:     none stored".to_string(),
    });
    let bucket = explanation.bucket;
    let comparison = if in_rollout(bucket, flag.rollout_pct) {
        "<"
    } else {
        ">="
    };
    lines.push(format!(
        "  5 rollout:        bucket {bucket} {comparison} {}: {}",
        flag.rollout_pct,
        on(in_rollout(bucket, flag.rollout_pct))
    ));
    let decision = &explanation.decision;
    lines.push(format!(
        "  answer:           {} ({})",
        decision.enabled,
        decision.reason()
    ));
    lines.join("\n") + "\n"
}
