//! `flagstore assignments`: list or reset sticky assignments.

use std::io::Write;

use clap::{Args, Subcommand};

use super::{ActorOption, DbOption, Format, Globals, JsonItems, Outcome, stdout_error, table};
use flagstore::error::Result;
use flagstore::store::AssignmentRow;

#[derive(Debug, Subcommand)]
pub enum AssignmentsCommand {
    /// List stored assignments, by flag then context key.
    #[command(after_help = "Examples:
  flagstore assignments list --flag enrich
  flagstore assignments list --context tenant:acme --json")]
    List(ListArgs),
    /// Forget stored assignments so the next evaluation decides afresh (audited).
    #[command(after_help = "Examples:
  flagstore assignments reset --flag enrich
  flagstore assignments reset --flag enrich --context tenant:acme")]
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this flag's assignments.
    #[arg(long)]
    pub flag: Option<String>,
    /// Only this context key's assignments.
    #[arg(long)]
    pub context: Option<String>,
    /// Print one JSON array (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The flag whose assignments to forget.
    #[arg(long)]
    pub flag: String,
    /// Only this context key's assignment [default: every context's].
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

pub fn run(
    globals: &Globals,
    out: &mut impl Write,
    command: AssignmentsCommand,
) -> Result<Outcome> {
    match command {
        AssignmentsCommand::List(args) => {
            let (flag, context) = (args.flag.as_deref(), args.context.as_deref());
            let format = if args.json { Format::Json } else { args.format };
            globals.reading(&args.db, |store| match format {
                Format::Table => {
                    // Column widths come from every row, so the table holds them all; JSON
                    // streams, for listings too long to hold.
                    let rows = store.assignments(flag, context)?;
                    let text = table(
                        &[
                            "flag",
                            "context_key",
                            "decision",
                            "bucket",
                            "rollout_pct",
                            "assigned_at",
                        ],
                        rows.into_iter().map(table_row).collect(),
                    );
                    out.write_all(text.as_bytes()).map_err(stdout_error)
                }
                format => {
                    let mut items = JsonItems::new(out, format);
                    store.for_each_assignment(flag, context, |row| items.write(&row))?;
                    items.finish()
                }
            })?;
        }
        AssignmentsCommand::Reset(args) => {
            let actor = globals.writer(&args.actor);
            let cleared = globals.with_store(&args.db, |store| {
                store.reset_assignments(&args.flag, args.context.as_deref(), &actor)
            })?;
            let plural = if cleared == 1 { "" } else { "s" };
            writeln!(
                out,
                "cleared {cleared} assignment{plural} of flag {}",
                args.flag
            )
            .map_err(stdout_error)?;
        }
    }
    Ok(Outcome::Success)
}

fn table_row(a: AssignmentRow) -> Vec<String> {
    vec![
        a.flag,
        a.context_key,
        a.decision.to_string(),
        a.bucket.to_string(),
        a.rollout_pct.to_string(),
        a.assigned_at,
    ]
}
