//! The command-line interface: argument definitions and a thin layer of printing over
//! [`Store`]. Scripts outside the project call these commands, so their names, flags and output
//! formats are a contract.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::audit::{self, AuditQuery, AuditRow, Checkpoint, parse_time_bound};
use crate::change::Change;
use crate::contexts::ContextKeys;
use crate::document::{DEFAULT_CONTEXT_KEY, Document, display_path};
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation, Explanation, in_rollout};
use crate::flag::{Flag, FlagSet, StickyPolicy, validate_name};
use crate::store::{Selection, Store};

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
    Import {
        /// The flags file: {"flags": [{"name", "enabled"?, "rollout_pct"?, "requires"?, "sticky"?}]}.
        file: String,
        /// Also delete flags that the file does not list.
        #[arg(long)]
        replace: bool,
        /// Validate and report what would change, writing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write every flag as JSON, sorted by name, in the format `import` reads.
    Export {
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List, show and change flags.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Evaluate flags for a context key, or for every key of a file.
    Eval(EvalArgs),
    /// List or reset sticky assignments.
    #[command(subcommand)]
    Assignments(AssignmentsCommand),
    /// The prototype's job: import a flags file, evaluate its flags for its context_key and
    /// write the results.
    Run {
        /// Flags file; its optional "context_key" (default "default") is the context evaluated.
        #[arg(long)]
        input: String,
        /// Where to write the results JSON (also printed to stdout).
        #[arg(long)]
        output: PathBuf,
    },
    /// Query the audit log (newest first), or verify and anchor its hash chain.
    Audit(AuditArgs),
    /// Show every step of a flag's evaluation for a context, now or as of a past time,
    /// without recording an evaluation.
    Explain {
        flag: String,
        #[arg(long)]
        context: String,
        /// Answer from history: the definitions in force at this time (RFC 3339 or a date)
        /// and the decision recorded nearest before it.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// A flag's changes, oldest first, as before -> after lines.
    History { flag: String },
    /// Measure throughput and latency on a temporary database (not --db).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Batch evaluation: a fresh store (all sticky misses), then the same keys again (hits).
    Eval {
        /// Context keys per pass.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Directory for the temporary database [default: the system's temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Audit queries: fill the log with this many evaluation rows, then time the queries
    /// reviewers run and a full chain verification.
    Audit {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Directory for the temporary database [default: the system's temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// List every flag.
    List {
        /// Print JSON (the export format's flag objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one flag with its timestamps and the flags that require it.
    Show { name: String },
    /// Create a flag, or change the given fields of an existing one.
    Set {
        name: String,
        /// true or false.
        #[arg(long, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
        enabled: Option<bool>,
        /// Rollout percentage, 0-100; fractions allowed.
        #[arg(long, value_name = "PCT", allow_negative_numbers = true)]
        rollout: Option<f64>,
        /// Comma-separated flags this one requires; an empty value clears them.
        #[arg(long, value_name = "FLAGS")]
        requires: Option<String>,
        /// Which decisions to store: on_only, all or none.
        #[arg(long, value_name = "POLICY")]
        sticky: Option<String>,
    },
    /// Turn a flag on (its rollout and dependencies still apply).
    Enable { name: String },
    /// Turn a flag off for everyone: the kill switch.
    Disable { name: String },
    /// Delete a flag and its assignments; refused while other flags require it.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Flags to evaluate.
    #[arg(required_unless_present = "all")]
    pub flags: Vec<String>,
    /// Evaluate every flag.
    #[arg(long, conflicts_with = "flags")]
    pub all: bool,
    /// The context key (a tenant, batch or record id).
    #[arg(long, required_unless_present = "contexts_file")]
    pub context: Option<String>,
    /// Evaluate for every key of this file (`-` for stdin), one per line; prints JSON Lines.
    #[arg(long, value_name = "FILE", conflicts_with = "context")]
    pub contexts_file: Option<String>,
    /// Print the decision with its reason and source as JSON.
    #[arg(long, conflicts_with = "contexts_file")]
    pub json: bool,
    /// Print nothing; exit 0 when the flag is on, 1 when it is off.
    #[arg(short, long, conflicts_with_all = ["json", "contexts_file", "all"])]
    pub quiet: bool,
    /// With --contexts-file: no progress bar (it is only drawn when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

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
        match command {
            BenchCommand::Eval { keys, dir } => {
                let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
                crate::bench::run(*keys, &dir, &mut out)?;
            }
            BenchCommand::Audit { rows, dir } => {
                let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
                crate::bench::run_audit(*rows, &dir, &mut out)?;
            }
        }
        out.flush().map_err(stdout_error)?;
        return Ok(Outcome::Success);
    }
    let mut store = Store::open(&cli.db)?;
    let outcome = match cli.command {
        Command::Bench(_) => unreachable!("handled before the store is opened"),
        Command::Import {
            file,
            replace,
            dry_run,
        } => import(&mut store, &mut out, &actor, &file, replace, dry_run),
        Command::Export { output } => export(&store, &mut out, output.as_deref()),
        Command::Flag(command) => flag_command(&mut store, &mut out, &actor, command),
        Command::Eval(args) => eval(&mut store, &mut out, &actor, args),
        Command::Assignments(command) => assignments(&mut store, &mut out, &actor, command),
        Command::Audit(args) => match args.command {
            Some(command) => audit(&store, &mut out, command),
            None => audit_query(&store, &mut out, &args, cli.actor.as_deref()),
        },
        Command::Explain { flag, context, at } => {
            explain(&mut store, &mut out, &flag, &context, at.as_deref())
        }
        Command::History { flag } => history(&store, &mut out, &flag),
        Command::Run { input, output } => run_job(&mut store, &mut out, &actor, &input, &output),
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

fn import(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    file: &str,
    replace: bool,
    dry_run: bool,
) -> Result<Outcome> {
    let document = Document::read(file)?;
    let via = if replace {
        "import --replace"
    } else {
        "import"
    };
    let changes = import_document(
        store,
        actor,
        via,
        &document,
        display_path(file),
        replace,
        dry_run,
    )?;
    let unchanged = document.flags.len()
        - changes
            .iter()
            .filter(|c| !matches!(c, Change::Delete(_)))
            .count();
    let count = |action: &str| changes.iter().filter(|c| c.action() == action).count();
    let mut report = String::new();
    for change in &changes {
        report.push_str(&format!("{}: {}\n", change.flag_name(), change.summary()));
    }
    report.push_str(&format!(
        "{} created, {} updated, {} deleted, {} unchanged{}\n",
        count("create"),
        count("update"),
        count("delete"),
        unchanged,
        if dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    ));
    out.write_all(report.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// Upserts a document's flags (with `replace`, also deleting the flags it does not list) as one
/// atomic write. Validation errors name the file.
fn import_document(
    store: &mut Store,
    actor: &str,
    via: &str,
    document: &Document,
    path: &str,
    replace: bool,
    dry_run: bool,
) -> Result<Vec<Change>> {
    store.modify(actor, via, dry_run, |current| {
        let mut next = if replace {
            FlagSet::new()
        } else {
            current.clone()
        };
        for flag in &document.flags {
            next.insert(flag.clone());
        }
        next.validate().map_err(|e| e.in_file(path))?;
        Ok(next)
    })
}

fn export(store: &Store, out: &mut impl Write, output: Option<&Path>) -> Result<Outcome> {
    let json = Document::from_flags(&store.flags()?).to_json();
    match output {
        Some(path) => write_file_atomically(path, json.as_bytes())?,
        None => out.write_all(json.as_bytes()).map_err(stdout_error)?,
    }
    Ok(Outcome::Success)
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

fn flag_command(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    command: FlagCommand,
) -> Result<Outcome> {
    let text = match command {
        FlagCommand::List { json } => {
            let flags = store.flags()?;
            if json {
                let list: Vec<&Flag> = flags.iter().collect();
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&list).expect("flags serialize")
                )
            } else {
                flag_table(&flags)
            }
        }
        FlagCommand::Show { name } => {
            let Some(record) = store.flag(&name)? else {
                return Err(store.unknown_flag(&name)?);
            };
            let mut shown = serde_json::to_value(&record.flag).expect("a flag serializes");
            shown["required_by"] = json!(record.required_by);
            shown["created_at"] = json!(record.created_at);
            shown["updated_at"] = json!(record.updated_at);
            format!("{}\n", serde_json::to_string_pretty(&shown).expect("json"))
        }
        FlagCommand::Set {
            name,
            enabled,
            rollout,
            requires,
            sticky,
        } => {
            validate_name(&name)?;
            let sticky: Option<StickyPolicy> = sticky.map(|s| s.parse()).transpose()?;
            let requires = requires.map(|list| split_names(&list));
            let changes = store.modify(actor, "flag set", false, |current| {
                let mut flag = current
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| Flag::new(&name));
                if let Some(enabled) = enabled {
                    flag.enabled = enabled;
                }
                if let Some(rollout) = rollout {
                    flag.rollout_pct = rollout;
                }
                if let Some(requires) = requires {
                    flag.requires = requires;
                }
                if let Some(sticky) = sticky {
                    flag.sticky = sticky;
                }
                let mut next = current.clone();
                next.insert(flag);
                Ok(next)
            })?;
            describe_changes(&name, &changes)
        }
        FlagCommand::Enable { name } => set_enabled(store, actor, &name, true)?,
        FlagCommand::Disable { name } => set_enabled(store, actor, &name, false)?,
        FlagCommand::Delete { name } => {
            let changes = store.modify(actor, "flag delete", false, |current| {
                existing(current, &name)?;
                let dependents = current.dependents_of(&name);
                if !dependents.is_empty() {
                    return Err(Error::RequiredBy {
                        flag: name.clone(),
                        dependents,
                    });
                }
                let mut next = current.clone();
                next.remove(&name);
                Ok(next)
            })?;
            describe_changes(&name, &changes)
        }
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

fn set_enabled(store: &mut Store, actor: &str, name: &str, enabled: bool) -> Result<String> {
    let via = if enabled {
        "flag enable"
    } else {
        "flag disable"
    };
    let changes = store.modify(actor, via, false, |current| {
        let mut flag = existing(current, name)?.clone();
        flag.enabled = enabled;
        let mut next = current.clone();
        next.insert(flag);
        Ok(next)
    })?;
    Ok(describe_changes(name, &changes))
}

fn existing<'a>(flags: &'a FlagSet, name: &str) -> Result<&'a Flag> {
    flags.get(name).ok_or_else(|| Error::UnknownFlag {
        name: name.to_string(),
        suggestion: flags.nearest_name(name),
    })
}

fn describe_changes(name: &str, changes: &[Change]) -> String {
    match changes {
        [] => format!("{name}: unchanged\n"),
        changes => changes
            .iter()
            .map(|c| format!("{}: {}\n", c.flag_name(), c.summary()))
            .collect(),
    }
}

fn split_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

fn flag_table(flags: &FlagSet) -> String {
    let rows = flags
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.enabled.to_string(),
                f.rollout_pct.to_string(),
                f.sticky.to_string(),
                f.requires.join(","),
            ]
        })
        .collect();
    table(&["NAME", "ENABLED", "ROLLOUT", "STICKY", "REQUIRES"], rows)
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

fn eval(store: &mut Store, out: &mut impl Write, actor: &str, args: EvalArgs) -> Result<Outcome> {
    let selection = if args.all {
        Selection::All
    } else {
        Selection::Flags(args.flags.clone())
    };
    if let Some(file) = &args.contexts_file {
        let progress = !args.no_progress && io::stderr().is_terminal();
        return eval_contexts_file(store, out, actor, &selection, file, progress);
    }
    let context = args
        .context
        .as_deref()
        .expect("clap requires --context without --contexts-file");
    let evaluations = store.evaluate(&selection, context, actor)?;
    let single = !args.all && args.flags.len() == 1;
    if args.quiet {
        let on = evaluations.iter().all(|e| e.decision.enabled);
        return Ok(if on { Outcome::Success } else { Outcome::Off });
    }
    let text = if args.json {
        let detailed: Vec<serde_json::Value> = evaluations
            .iter()
            .map(|e| {
                json!({
                    "flag": e.flag,
                    "context": context,
                    "enabled": e.decision.enabled,
                    "reason": e.decision.reason,
                    "source": e.decision.source,
                })
            })
            .collect();
        if single {
            detailed[0].to_string()
        } else {
            serde_json::Value::from(detailed).to_string()
        }
    } else if single {
        evaluations[0].decision.enabled.to_string()
    } else {
        serde_json::to_string(&decision_map(&evaluations)).expect("json")
    };
    writeln!(out, "{text}").map_err(stdout_error)?;
    Ok(Outcome::Success)
}

fn decision_map(evaluations: &[Evaluation]) -> BTreeMap<&str, bool> {
    evaluations
        .iter()
        .map(|e| (e.flag.as_str(), e.decision.enabled))
        .collect()
}

fn eval_contexts_file(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    selection: &Selection,
    file: &str,
    show_progress: bool,
) -> Result<Outcome> {
    let name = display_path(file);
    let keys: Box<dyn Iterator<Item = Result<String>>> = if file == "-" {
        Box::new(ContextKeys::new(io::stdin().lock(), name))
    } else {
        let opened = File::open(file).map_err(|source| Error::Read {
            path: file.to_string(),
            source,
        })?;
        Box::new(ContextKeys::new(BufReader::new(opened), name))
    };
    let progress = if show_progress {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {human_pos} keys  {per_sec}  {elapsed}")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let outcome = store.evaluate_batch(selection, actor, keys, |key, evaluations| {
        progress.inc(1);
        write_batch_line(out, key, evaluations).map_err(stdout_error)
    });
    progress.finish_and_clear();
    outcome?;
    Ok(Outcome::Success)
}

/// Writes one JSON Lines record `{"context":KEY,"flags":{"flag":bool,...}}`, flags in name
/// order (a flag asked for twice appears once). Written by hand because it runs once per key
/// of a batch and a generic JSON value would cost more than the evaluation.
pub(crate) fn write_batch_line(
    out: &mut impl Write,
    key: &str,
    evaluations: &[Evaluation],
) -> io::Result<()> {
    let mut ordered: Vec<&Evaluation> = evaluations.iter().collect();
    ordered.sort_by(|a, b| a.flag.cmp(&b.flag));
    ordered.dedup_by(|a, b| a.flag == b.flag);
    out.write_all(b"{\"context\":")?;
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b",\"flags\":{")?;
    for (i, evaluation) in ordered.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, &evaluation.flag)?;
        let value: &[u8] = if evaluation.decision.enabled {
            b":true"
        } else {
            b":false"
        };
        out.write_all(value)?;
    }
    out.write_all(b"}}\n")
}

fn assignments(
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

fn audit(store: &Store, out: &mut impl Write, command: AuditCommand) -> Result<Outcome> {
    let text = match command {
        AuditCommand::Verify {
            expect_head,
            checkpoint,
        } => {
            let checkpoint = match (expect_head, checkpoint) {
                (Some(hash), _) => Some(Checkpoint { id: None, hash }),
                (None, Some(path)) => Some(read_checkpoint(&path)?),
                (None, None) => None,
            };
            let verified = audit::verify(store, checkpoint.as_ref())?;
            format!(
                "audit log verified: {} rows, head {}\n",
                verified.rows, verified.head
            )
        }
        AuditCommand::Checkpoint { output } => {
            let verified = audit::verify(store, None)?;
            let checkpoint = Checkpoint {
                id: Some(verified.rows),
                hash: verified.head,
            };
            let json = format!("{}\n", serde_json::to_string(&checkpoint).expect("json"));
            match output {
                Some(path) => {
                    write_file_atomically(&path, json.as_bytes())?;
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

fn history(store: &Store, out: &mut impl Write, flag: &str) -> Result<Outcome> {
    let changes = AuditQuery {
        flag: Some(flag.to_string()),
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
        return Err(store.unknown_flag(flag)?);
    }
    out.write_all(lines.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
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
            let flags = audit::flags_as_of(store, &until)?;
            let explanation = eval::explain(&flags, context, &HashMap::new(), name);
            text.push_str(&format!(
                "{name} for context {context:?}, as of {at} (definitions rebuilt from the audit log)\n"
            ));
            text.push_str(&explanation_steps(&explanation, false));
            let recorded = match audit::decision_before(store, name, context, &until)? {
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

fn run_job(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    input: &str,
    output: &Path,
) -> Result<Outcome> {
    let document = Document::read(input)?;
    let changes = import_document(
        store,
        actor,
        "run",
        &document,
        display_path(input),
        false,
        false,
    )?;
    let context = document
        .context_key
        .as_deref()
        .unwrap_or(DEFAULT_CONTEXT_KEY);
    let names = document.flags.iter().map(|f| f.name.clone()).collect();
    let evaluations = store.evaluate(&Selection::Flags(names), context, actor)?;
    let enabled = evaluations.iter().filter(|e| e.decision.enabled).count();
    let result = json!({
        "evaluations": decision_map(&evaluations),
        "stats": {
            "total": evaluations.len(),
            "enabled": enabled,
            "disabled": evaluations.len() - enabled,
        },
        "audit_entries": changes.len() + evaluations.len(),
    });
    let text = format!("{}\n", serde_json::to_string_pretty(&result).expect("json"));
    write_file_atomically(output, text.as_bytes())?;
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
