//! The command-line interface: one file per command group, each with its arguments beside its
//! `run`, and a thin layer of printing over [`Store`]. Scripts outside the project call these
//! commands, so their names, flags and output formats are a contract.

mod assignments;
mod audit;
mod bench;
mod check;
mod eval;
mod explain;
mod export;
mod flag;
mod history;
mod import;
mod run;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "flagstore",
    version,
    args_override_self = true,
    about = "Feature flags for data pipelines: sticky rollouts and an audit trail in one SQLite file"
)]
pub struct Cli {
    /// SQLite database file; created and migrated on first use.
    #[arg(
        long,
        global = true,
        env = "FLAGSTORE_DB",
        default_value = "flagstore.db"
    )]
    pub db: PathBuf,

    /// Who is acting, recorded in the audit log [default: $FLAGSTORE_ACTOR, else the OS
    /// user]. For `audit` queries: show only rows by this actor.
    #[arg(long, global = true)]
    pub actor: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update flags from a JSON file (`-` for stdin), all or nothing.
    Import(import::ImportArgs),
    /// Write every flag as JSON, sorted by name, in the format `import` reads.
    Export(export::ExportArgs),
    /// List, show and change flags.
    #[command(subcommand)]
    Flag(flag::FlagCommand),
    /// Evaluate flags for a context key, or for every key of a file.
    Eval(eval::EvalArgs),
    /// List or reset sticky assignments.
    #[command(subcommand)]
    Assignments(assignments::AssignmentsCommand),
    /// The prototype's job: import a flags file, evaluate its flags for its context_key and
    /// write the results.
    Run(run::RunArgs),
    /// Query the audit log (newest first), or verify and anchor its hash chain.
    Audit(audit::AuditArgs),
    /// Show every step of a flag's evaluation for a context, now or as of a past time,
    /// without recording an evaluation.
    Explain(explain::ExplainArgs),
    /// A flag's changes, oldest first, as before -> after lines.
    History(history::HistoryArgs),
    /// Check the whole store: pages, indexes, references and the audit chain.
    Check(check::CheckArgs),
    /// Measure throughput and latency on a temporary database (not --db).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// How a successful command ends: `Off` is exit status 1 under `eval -q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Off,
}

/// Runs a parsed command line against the store it names.
pub fn run(cli: Cli) -> Result<Outcome> {
    // The environment's actor applies to writes only: as an audit filter it would silently
    // hide other people's rows.
    let actor = cli
        .actor
        .clone()
        .or_else(|| {
            std::env::var("FLAGSTORE_ACTOR")
                .ok()
                .filter(|a| !a.is_empty())
        })
        .unwrap_or_else(os_user);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if let Command::Bench(command) = &cli.command {
        let outcome = bench::run(&mut out, command)?;
        out.flush().map_err(stdout_error)?;
        return Ok(outcome);
    }
    let mut store = Store::open(&cli.db)?;
    let outcome = match cli.command {
        Command::Bench(_) => unreachable!("handled before the store is opened"),
        Command::Import(args) => import::run(&mut store, &mut out, &actor, &args),
        Command::Export(args) => export::run(&store, &mut out, &args),
        Command::Flag(command) => flag::run(&mut store, &mut out, &actor, command),
        Command::Eval(args) => eval::run(&mut store, &mut out, &actor, args),
        Command::Assignments(command) => assignments::run(&mut store, &mut out, &actor, command),
        Command::Audit(args) => audit::run(&store, &mut out, &args, cli.actor.as_deref()),
        Command::Explain(args) => explain::run(&mut store, &mut out, &args),
        Command::History(args) => history::run(&store, &mut out, &args),
        Command::Check(_) => check::run(&store, &mut out),
        Command::Run(args) => run::run(&mut store, &mut out, &actor, &args),
    }
    .map_err(|e| e.at_database(store.path()))?;
    out.flush().map_err(stdout_error)?;
    Ok(outcome)
}

/// The login name: from the environment when it is set (cheap), else from the OS user
/// database (which may ask a name service, so it is the fallback).
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn stdout_error(source: io::Error) -> Error {
    Error::Write {
        path: "stdout".to_string(),
        source,
    }
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// reader never sees half a file and a failed write leaves the old one.
fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = File::create(&temporary)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        // Best effort: the write error is the one worth reporting.
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(write_error)
}

/// Left-aligned columns separated by two spaces, the last one unpadded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row = headers.iter().map(|h| h.to_string()).collect();
    let mut text = String::new();
    for row in std::iter::once(header_row).chain(rows) {
        let last = row.len() - 1;
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let padding = width - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(padding + 2));
            }
        }
        text.push('\n');
    }
    text
}
