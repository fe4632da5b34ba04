//! `flagstore audit`: query the audit log, verify its hash chain and write checkpoints.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Outcome, stdout_error, table, write_file_atomically};
use crate::audit::{AuditQuery, AuditRow, Checkpoint, parse_time_bound};
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only rows about this flag.
    #[arg(long)]
    pub flag: Option<String>,
    /// Only rows about this context key.
    #[arg(long)]
    pub context: Option<String>,
    /// Only evaluation rows or only change rows.
    #[arg(long, value_parser = ["evaluation", "change"])]
    pub kind: Option<String>,
    /// Only rows at or after this time (RFC 3339, or a date meaning its midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only rows at or before this time (RFC 3339, or a date meaning that whole day).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many rows; 0 for no limit.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub asc: bool,
    /// Continue after the row with this id (printed on stderr when a page is full).
    #[arg(long, value_name = "ID")]
    pub cursor: Option<i64>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "jsonl", "csv"])]
    pub format: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; exit 0 with the row count and head hash when it holds, 2 naming
    /// the first row that does not verify.
    Verify {
        /// Also require this hash (a head printed earlier) to be in the chain.
        #[arg(long, value_name = "HASH", conflicts_with = "checkpoint")]
        expect_head: Option<String>,
        /// Also require the row recorded in this checkpoint file to be in the chain.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Write the current head (row id and hash) as a checkpoint file, to keep elsewhere.
    Checkpoint {
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Runs an `audit` subcommand, or a query when none is given. `actor` is the global
/// `--actor` option, which filters queries.
pub fn run(
    store: &Store,
    out: &mut impl Write,
    args: &AuditArgs,
    actor: Option<&str>,
) -> Result<Outcome> {
    match &args.command {
        Some(command) => audit_command(store, out, command),
        None => audit_query(store, out, args, actor),
    }
}

fn audit_command(store: &Store, out: &mut impl Write, command: &AuditCommand) -> Result<Outcome> {
    let text = match command {
        AuditCommand::Verify {
            expect_head,
            checkpoint,
        } => {
            let checkpoint = match (expect_head, checkpoint) {
                (Some(hash), _) => Some(Checkpoint {
                    id: None,
                    hash: hash.clone(),
                }),
                (None, Some(path)) => Some(read_checkpoint(path)?),
                (None, None) => None,
            };
            store.check_pages(true)?;
            let verified = store.verify_audit(checkpoint.as_ref())?;
            format!(
                "audit log verified: {} rows, head {}\n",
                verified.rows, verified.head
            )
        }
        AuditCommand::Checkpoint { output } => {
            let verified = store.verify_audit(None)?;
            let checkpoint = Checkpoint {
                id: Some(verified.rows),
                hash: verified.head,
            };
            let json = format!("{}\n", serde_json::to_string(&checkpoint).expect("json"));
            match output {
                Some(path) => {
                    write_file_atomically(path, json.as_bytes())?;
                    String::new()
                }
                None => json,
            }
        }
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

fn audit_query(
    store: &Store,
    out: &mut impl Write,
    args: &AuditArgs,
    actor: Option<&str>,
) -> Result<Outcome> {
    let bound = |value: &Option<String>, until| {
        value
            .as_deref()
            .map(|v| parse_time_bound(v, until))
            .transpose()
    };
    let query = AuditQuery {
        flag: args.flag.clone(),
        context: args.context.clone(),
        kind: args.kind.clone(),
        actor: actor.map(str::to_string),
        since: bound(&args.since, false)?,
        until: bound(&args.until, true)?,
        limit: (args.limit > 0).then_some(args.limit),
        ascending: args.asc,
        cursor: args.cursor,
    };
    let mut rows_written = 0;
    let mut last_id = None;
    let mut seen = |row: &AuditRow| {
        rows_written += 1;
        last_id = Some(row.id);
    };
    match args.format.as_str() {
        "table" => {
            let mut rows = Vec::new();
            store.query_audit(&query, |row| {
                seen(&row);
                rows.push(audit_table_row(&row));
                Ok::<(), Error>(())
            })?;
            let headers = [
                "ID", "TS", "KIND", "ACTOR", "FLAG", "CONTEXT", "RESULT", "WHY", "REASON",
            ];
            out.write_all(table(&headers, rows).as_bytes())
                .map_err(stdout_error)?;
        }
        "csv" => {
            let mut csv = csv::Writer::from_writer(&mut *out);
            csv.write_record(AUDIT_COLUMNS).map_err(csv_error)?;
            store.query_audit(&query, |row| {
                seen(&row);
                csv.write_record(audit_csv_record(&row)).map_err(csv_error)
            })?;
            csv.flush().map_err(stdout_error)?;
        }
        format => {
            let json_array = format == "json";
            if json_array {
                out.write_all(b"[").map_err(stdout_error)?;
            }
            let mut first = true;
            store.query_audit(&query, |row| {
                seen(&row);
                let separator: &[u8] = match (json_array, first) {
                    (true, true) => b"\n",
                    (true, false) => b",\n",
                    (false, _) => b"",
                };
                first = false;
                out.write_all(separator).map_err(stdout_error)?;
                serde_json::to_writer(&mut *out, &audit_row_json(&row))
                    .map_err(|e| stdout_error(e.into()))?;
                if !json_array {
                    out.write_all(b"\n").map_err(stdout_error)?;
                }
                Ok::<(), Error>(())
            })?;
            if json_array {
                out.write_all(b"\n]\n").map_err(stdout_error)?;
            }
        }
    }
    if let (Some(limit), Some(last_id)) = (query.limit, last_id)
        && rows_written == limit
    {
        eprintln!("flagstore: {limit} rows shown; the next page: --cursor {last_id}");
    }
    Ok(Outcome::Success)
}

const AUDIT_COLUMNS: [&str; 13] = [
    "id",
    "ts",
    "kind",
    "actor",
    "action",
    "flag",
    "context_key",
    "result",
    "source",
    "reason",
    "detail",
    "prev_hash",
    "hash",
];

fn csv_error(error: csv::Error) -> Error {
    stdout_error(io::Error::other(error))
}

fn audit_table_row(row: &AuditRow) -> Vec<String> {
    vec![
        row.id.to_string(),
        row.ts.clone(),
        row.kind.clone(),
        row.actor.clone(),
        row.flag.clone(),
        row.context_key.clone().unwrap_or_default(),
        row.result.map_or(String::new(), |r| (r == 1).to_string()),
        row.source
            .clone()
            .or_else(|| row.action.clone())
            .unwrap_or_default(),
        row.reason.clone(),
    ]
}

fn audit_csv_record(row: &AuditRow) -> Vec<String> {
    let optional = |value: &Option<String>| value.clone().unwrap_or_default();
    vec![
        row.id.to_string(),
        row.ts.clone(),
        row.kind.clone(),
        row.actor.clone(),
        optional(&row.action),
        row.flag.clone(),
        optional(&row.context_key),
        row.result.map_or(String::new(), |r| r.to_string()),
        optional(&row.source),
        row.reason.clone(),
        row.detail.clone(),
        row.prev_hash.clone(),
        row.hash.clone(),
    ]
}

/// Every column, with `detail` as the JSON it holds.
fn audit_row_json(row: &AuditRow) -> serde_json::Value {
    let detail = serde_json::from_str(&row.detail)
        .unwrap_or_else(|_| serde_json::Value::String(row.detail.clone()));
    json!({
        "id": row.id,
        "ts": row.ts,
        "kind": row.kind,
        "actor": row.actor,
        "action": row.action,
        "flag": row.flag,
        "context_key": row.context_key,
        "result": row.result,
        "source": row.source,
        "reason": row.reason,
        "detail": detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::BadCheckpoint {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}
