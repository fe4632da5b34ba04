//! `flagstore assignments`: list or reset sticky assignments.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::{Outcome, stdout_error, table};
use crate::error::Result;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum AssignmentsCommand {
    /// List stored assignments.
    List {
        #[arg(long)]
        flag: Option<String>,
        #[arg(long)]
        context: Option<String>,
        /// Print JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget stored assignments so the next evaluation decides afresh (audited).
    Reset {
        #[arg(long)]
        flag: String,
        #[arg(long)]
        context: Option<String>,
    },
}

pub fn run(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    command: AssignmentsCommand,
) -> Result<Outcome> {
    let text = match command {
        AssignmentsCommand::List {
            flag,
            context,
            json,
        } => {
            let rows = store.assignments(flag.as_deref(), context.as_deref())?;
            if json {
                rows.iter()
                    .map(|a| {
                        let line = json!({
                            "flag": a.flag,
                            "context": a.context_key,
                            "decision": a.decision,
                            "bucket": a.bucket,
                            "rollout_pct": a.rollout_pct,
                            "assigned_at": a.assigned_at,
                        });
                        format!("{line}\n")
                    })
                    .collect()
            } else {
                let rows = rows
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.flag,
                            a.context_key,
                            a.decision.to_string(),
                            a.bucket.to_string(),
                            a.rollout_pct.to_string(),
                            a.assigned_at,
                        ]
                    })
                    .collect();
                table(
                    &[
                        "FLAG",
                        "CONTEXT",
                        "DECISION",
                        "BUCKET",
                        "ROLLOUT",
                        "ASSIGNED_AT",
                    ],
                    rows,
                )
            }
        }
        AssignmentsCommand::Reset { flag, context } => {
            let cleared = store.reset_assignments(&flag, context.as_deref(), actor)?;
            let plural = if cleared == 1 { "" } else { "s" };
            format!("cleared {cleared} assignment{plural} of flag {flag}\n")
        }
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
