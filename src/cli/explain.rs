//! `flagstore explain`: every step of a flag's evaluation for a context, now or in the past.

use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::error::Result;
use flagstore::explain::explain;

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
    let report = globals.reading(&args.db, |store| {
        explain(store, &args.flag, &args.context, args.at.as_deref())
    })?;
    let text = if args.json {
        format!("{}\n", report.json())
    } else {
        report.text()
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
