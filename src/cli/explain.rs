//! `flagstore explain`: every step of a flag's evaluation for a context, now or in the past.

use std::collections::HashMap;
use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use crate::audit::parse_time_bound;
use crate::error::Result;
use crate::eval::{self, Explanation, in_rollout};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    pub flag: String,
    #[arg(long)]
    pub context: String,
    /// Answer from history: the definitions in force at this time (RFC 3339 or a date)
    /// and the decision recorded nearest before it.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ExplainArgs) -> Result<Outcome> {
    globals.with_store(&args.db, |store| {
        explain(store, out, &args.flag, &args.context, args.at.as_deref())
    })
}

fn explain(
    store: &mut Store,
    out: &mut impl Write,
    name: &str,
    context: &str,
    at: Option<&str>,
) -> Result<Outcome> {
    let mut text = String::new();
    match at {
        None => {
            let (flags, stored) = store.evaluation_state(name, context)?;
            let explanation = eval::explain(&flags, context, &stored, name);
            text.push_str(&format!("{name} for context {context:?}, now\n"));
            text.push_str(&explanation_steps(&explanation, true));
        }
        Some(at) => {
            let until = parse_time_bound(at, true)?;
            let flags = store.flags_as_of(&until)?;
            let explanation = eval::explain(&flags, context, &HashMap::new(), name);
            text.push_str(&format!(
                "{name} for context {context:?}, as of {at} (definitions rebuilt from the audit log)\n"
            ));
            text.push_str(&explanation_steps(&explanation, false));
            let recorded = match store.decision_before(name, context, &until)? {
                Some(row) => format!(
                    "row {} at {}: {} ({})",
                    row.id,
                    row.ts,
                    row.result == Some(1),
                    row.reason
                ),
                None => "none: no evaluation of this flag for this context by then".to_string(),
            };
            text.push_str(&format!("  recorded decision:  {recorded}\n"));
        }
    }
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
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
