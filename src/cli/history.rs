//! `flagstore history`: a flag's changes, oldest first.

use std::io::Write;

use clap::Args;

use serde_json::json;

use super::{DbOption, Format, Globals, Outcome, escaped, stdout_error, write_json};
use flagstore::audit::AuditQuery;
use flagstore::error::{Error, Result};
use flagstore::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore history enrich")]
pub struct HistoryArgs {
    /// The flag whose changes to list (it may since have been deleted).
    pub flag: String,
    /// Print one JSON array of the changes, each with its full before and after state.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &HistoryArgs) -> Result<Outcome> {
    globals.reading(&args.db, |store| history(store, out, args))
}

fn history(store: &Store, out: &mut impl Write, args: &HistoryArgs) -> Result<Outcome> {
    let changes = AuditQuery {
        flag: Some(args.flag.clone()),
        kind: Some("change".to_string()),
        ascending: true,
        ..AuditQuery::default()
    };
    let mut rows = Vec::new();
    store.query_audit(&changes, |row| {
        rows.push(row);
        Ok::<(), Error>(())
    })?;
    if rows.is_empty() {
        return Err(store.unknown_flag(&args.flag)?);
    }
    if args.json {
        let changes = rows.iter().map(|row| {
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null);
            json!({
                "audit_id": row.id,
                "ts": row.ts,
                "actor": row.actor,
                "action": row.action,
                "reason": row.reason,
                "before": detail["before"],
                "after": detail["after"],
            })
        });
        return write_json(out, Format::Json, changes).map(|()| Outcome::Success);
    }
    let lines: String = rows
        .iter()
        .map(|row| {
            format!(
                "{}  {}  {}\n",
                row.ts,
                escaped(&row.actor),
                escaped(row.reason.as_deref().unwrap_or_default())
            )
        })
        .collect();
    out.write_all(lines.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
