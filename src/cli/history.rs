//! `flagstore history`: a flag's changes, oldest first.

use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use crate::audit::AuditQuery;
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore history enrich")]
pub struct HistoryArgs {
    /// The flag whose changes to list (it may since have been deleted).
    pub flag: String,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &HistoryArgs) -> Result<Outcome> {
    globals.with_store(&args.db, |store| history(store, out, args))
}

fn history(store: &Store, out: &mut impl Write, args: &HistoryArgs) -> Result<Outcome> {
    let changes = AuditQuery {
        flag: Some(args.flag.clone()),
        kind: Some("change".to_string()),
        ascending: true,
        ..AuditQuery::default()
    };
    let mut lines = String::new();
    store.query_audit(&changes, |row| {
        lines.push_str(&format!("{}  {}  {}\n", row.ts, row.actor, row.reason));
        Ok::<(), Error>(())
    })?;
    if lines.is_empty() {
        return Err(store.unknown_flag(&args.flag)?);
    }
    out.write_all(lines.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
