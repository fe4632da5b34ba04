//! `flagstore explain`: every step of a flag's evaluation for a context, now or in the past.

use std::collections::HashMap;
use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{DbOption, Globals, Outcome, stdout_error};
use crate::audit::{AuditRow, parse_time_bound};
use crate::error::Result;
use crate::eval::{self, Decision, Explanation, in_rollout};
use crate::output::percentage;
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore explain enrich --context tenant:acme
  flagstore explain enrich --context tenant:acme --at 2026-11-20T09:30:00Z")]
pub struct ExplainArgs {
    /// The flag to explain.
    pub flag: String,
    /// The context key.
    #[arg(long)]
    pub context: String,
    /// Answer from history: the definitions in force at this time (RFC 3339 or a date)
    /// and the decision recorded nearest before it.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Print one JSON object with the same steps.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ExplainArgs) -> Result<Outcome> {
    let text = globals.with_store(&args.db, |store| explain(store, args))?;
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

fn explain(store: &mut Store, args: &ExplainArgs) -> Result<String> {
    let (name, context) = (args.flag.as_str(), args.context.as_str());
    let Some(at) = args.at.as_deref() else {
        let (flags, stored) = store.evaluation_state(name, context)?;
        let explanation = eval::explain(&flags, context, &stored, name);
        if args.json {
            return Ok(as_json(args, &explanation, None));
        }
        return Ok(format!(
            "{name} for context {context:?}, now\n{}",
            explanation_steps(&explanation, true)
        ));
    };
    let until = parse_time_bound(at, true)?;
    let flags = store.flags_as_of(&until)?;
    let explanation = eval::explain(&flags, context, &HashMap::new(), name);
    let recorded = store.decision_before(name, context, &until)?;
    if args.json {
        return Ok(as_json(args, &explanation, Some(recorded.as_ref())));
    }
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
    Ok(format!(
        "{name} for context {context:?}, as of {at} (definitions rebuilt from the audit log)\n{}  \
         recorded decision:  {recorded}\n",
        explanation_steps(&explanation, false)
    ))
}

/// The explanation as one JSON object with the same steps as the text. `recorded` is given
/// for a past time only: the decision recorded nearest before it, if any.
fn as_json(
    args: &ExplainArgs,
    explanation: &Explanation,
    recorded: Option<Option<&AuditRow>>,
) -> String {
    let decision =
        |d: &Decision| json!({"enabled": d.enabled, "reason": d.reason, "source": d.source});
    let mut shown = json!({
        "flag": args.flag,
        "context": args.context,
        "at": args.at,
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
    match recorded {
        None => {
            shown["assignment"] = json!(explanation.stored.as_ref().map(|a| json!({
                "decision": a.decision,
                "bucket": a.bucket,
                "rollout_pct": percentage(a.rollout_pct),
                "assigned_at": a.assigned_at,
            })));
        }
        Some(row) => {
            shown["recorded"] = json!(row.map(|row| json!({
                "audit_id": row.id,
                "ts": row.ts,
                "result": row.result == Some(1),
                "reason": row.reason,
            })));
        }
    }
    format!("{shown}\n")
}

/// The evaluation steps of an explanation, one line each. Without `with_assignment` the
/// stored assignment is not known (a past state) and the answer is the hashed one.
fn explanation_steps(explanation: &Explanation, with_assignment: bool) -> String {
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
            decision.reason
        ));
    }
    if with_assignment {
        lines.push(match &explanation.stored {
            Some(stored) => format!(
                "  4 assignment:     {} since {}, decided at bucket {} under rollout_pct {}",
                on(stored.decision),
                stored.assigned_at,
                stored.bucket,
                stored.rollout_pct
            ),
            None => "  4 assignment:     none stored".to_string(),
        });
    } else {
        lines.push(
            "  4 assignment:     not rebuilt for past times (see the recorded decision)"
                .to_string(),
        );
    }
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
        decision.enabled, decision.reason
    ));
    lines.join("\n") + "\n"
}
