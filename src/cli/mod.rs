//! The command-line interface: one file per command group, each with its arguments beside its
//! `run`, and a thin layer of printing over [`Store`]. Scripts outside the project call these
//! commands, so their names, flags and output formats are a contract.

mod assignments;
mod audit;
mod backup;
#[cfg(feature = "bench")]
mod bench;
mod check;
mod completions;
mod copy;
mod eval;
mod explain;
mod export;
mod flag;
mod history;
mod import;
mod init;
mod keys;
mod run;
mod serve;
mod token;

use std::ffi::OsString;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use flagstore::error::{Error, Result};
use flagstore::heads::{HeadKey, check_key_for, hand_to_witness};
pub(crate) use flagstore::output::escaped;
use flagstore::store::{Location, Store};

const DB_HELP: &str = "The store: an SQLite file, or a postgres:// URL \
                       [default: $FLAGSTORE_DB, else ./flagstore.db]";

#[derive(Debug, Parser)]
#[command(
    name = "flagstore",
    version,
    args_override_self = true,
    about = "Feature flags for data pipelines: sticky rollouts and a hash-chained audit trail, in one SQLite file or in PostgreSQL",
    after_help = "Examples:
  flagstore run --input examples/pipeline.json --output out.json
  flagstore eval enrich --context tenant:acme
  flagstore --db /srv/flags.db audit --flag enrich"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbOption,

    #[command(flatten)]
    pub actor: ActorOption,

    #[command(flatten)]
    pub witness: WitnessOption,

    #[command(subcommand)]
    pub command: Command,
}

/// Where a command that writes publishes a signed tree head of the audit log, and with which
/// key. Both or neither; given before the command, or in the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct WitnessOption {
    /// After a command that writes, sign a head over the audit log with this Ed25519 key
    /// (made by `flagstore keys generate`) [default: $FLAGSTORE_SIGNING_KEY].
    #[arg(long = "signing-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The heads file the signed heads are appended to: somewhere the store's owner cannot
    /// rewrite [default: $FLAGSTORE_HEADS].
    #[arg(long = "heads", value_name = "FILE")]
    pub heads: Option<PathBuf>,
    /// Also hand each signed head to this witness, an HTTP(S) URL that takes it as a POST of
    /// its JSON line; a head it does not take (no 2xx within 10 s) fails the command
    /// [default: $FLAGSTORE_WITNESS_URL].
    #[arg(long = "witness-url", value_name = "URL")]
    pub witness_url: Option<String>,
}

/// A loaded signing key and where its heads go.
pub struct Witness {
    pub key: HeadKey,
    pub heads: PathBuf,
    pub witness_url: Option<String>,
}

impl WitnessOption {
    /// The key and heads file given, from the options or the environment; `None` when
    /// neither is, an error naming the missing one when only one is.
    fn load(&self) -> Result<Option<Witness>> {
        let given = |option: &Option<PathBuf>, variable| {
            option.clone().or_else(|| {
                std::env::var_os(variable)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
        };
        let witness_url = self.witness_url.clone().or_else(|| {
            std::env::var("FLAGSTORE_WITNESS_URL")
                .ok()
                .filter(|v| !v.is_empty())
        });
        match (
            given(&self.key, "FLAGSTORE_SIGNING_KEY"),
            given(&self.heads, "FLAGSTORE_HEADS"),
        ) {
            (None, None) if witness_url.is_none() => Ok(None),
            (None, None) => Err(Error::Usage {
                message: "--witness-url needs --signing-key and --heads (or their variables): \
                          the heads it is handed"
                    .into(),
            }),
            (Some(key), Some(heads)) => Ok(Some(Witness {
                key: HeadKey::load(&key)?,
                heads,
                witness_url,
            })),
            (Some(_), None) => Err(Error::Usage {
                message: "--signing-key needs --heads FILE (or $FLAGSTORE_HEADS): where to \
                          publish the heads it signs"
                    .into(),
            }),
            (None, Some(_)) => Err(Error::Usage {
                message: "--heads needs --signing-key FILE (or $FLAGSTORE_SIGNING_KEY): the \
                          key that signs the heads it holds"
                    .into(),
            }),
        }
    }
}

/// `--db`, accepted before the command and after it by the commands that use a database.
#[derive(Debug, Clone, Default, Args)]
pub struct DbOption {
    #[arg(id = "db", long = "db", value_name = "PATH|URL", help = DB_HELP)]
    pub path: Option<OsString>,
}

/// `--actor`, accepted before the command and after it by the commands that record or filter
/// by who acted.
#[derive(Debug, Clone, Default, Args)]
pub struct ActorOption {
    /// Who is acting, recorded in the audit log [default: $FLAGSTORE_ACTOR, else the OS user].
    /// For `audit` queries: show only rows by this actor.
    #[arg(id = "actor", long = "actor", value_name = "NAME", value_parser = non_empty)]
    pub name: Option<String>,
}

fn non_empty(value: &str) -> std::result::Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(value.to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty store (a database file holding no flags yet).
    Init(init::InitArgs),
    /// Create or update flags from a JSON file (`-` for stdin), all or nothing.
    Import(import::ImportArgs),
    /// Write every flag as JSON, in definition order, in the format `import` reads.
    Export(export::ExportArgs),
    /// Create, list, show and change flags.
    #[command(subcommand)]
    Flag(flag::FlagCommand),
    /// Evaluate flags for a context key, or for every key of a file.
    Eval(eval::EvalArgs),
    /// List or reset sticky assignments.
    #[command(subcommand)]
    Assignments(assignments::AssignmentsCommand),
    /// The prototype's job: evaluate a flags file's flags for its context_key and write the
    /// results, creating the flags the store lacks.
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
    /// Write a consistent copy of the store to one file, while other commands keep running.
    Backup(backup::BackupArgs),
    /// Copy a whole store into a new one, between SQLite and PostgreSQL either way.
    Copy(copy::CopyArgs),
    /// Serve evaluations over HTTP with the OpenFeature remote evaluation protocol (OFREP).
    Serve(serve::ServeArgs),
    /// Create, list and revoke the API tokens `serve` accepts.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Make the Ed25519 key that signs tree heads of the audit log.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Measure throughput and latency on a temporary database (not --db).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script: `flagstore completions bash > /etc/bash_completion.d/flagstore`.
    Completions(completions::CompletionsArgs),
}

/// How a successful command ends: `Off` is exit status 1 under `eval -q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Off,
}

/// What every command may need from the options given before it: the database and the actor.
pub struct Globals {
    db: DbOption,
    actor: ActorOption,
    witness: WitnessOption,
}

impl Globals {
    /// The database: `--db` after the command, else before it, else $FLAGSTORE_DB, else
    /// `./flagstore.db`.
    fn database(&self, local: &DbOption) -> Location {
        let given = local
            .path
            .clone()
            .or_else(|| self.db.path.clone())
            .or_else(|| std::env::var_os("FLAGSTORE_DB"))
            .unwrap_or_else(|| OsString::from("flagstore.db"));
        Location::parse(&given)
    }

    /// Runs `work` on the store of a command that defines flags: created when it does not
    /// exist. Database errors name the file.
    fn with_store_or_create<T>(
        &self,
        local: &DbOption,
        work: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        let open = || {
            let store = Store::open(&self.database(local))?;
            warn_if_owner(&store)?;
            Ok(store)
        };
        self.witnessed(open, work)
    }

    /// The signing key and heads file given, loaded, and the key held to the heads file's
    /// newest head; `None` when none is given.
    fn witness(&self) -> Result<Option<Witness>> {
        let witness = self.witness.load()?;
        if let Some(witness) = &witness {
            check_key_for(&witness.heads, &witness.key.public())?;
        }
        Ok(witness)
    }

    /// Opens the store with `open` and runs `work` on it, then, when a signing key is given
    /// and `work` added audit rows, publishes a signed head over them. The key is read before
    /// the store is opened: a command that cannot sign what it writes writes nothing, not
    /// even a new store.
    fn witnessed<T>(
        &self,
        open: impl FnOnce() -> Result<Store>,
        work: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        let witness = self.witness()?;
        let mut store = open()?;
        let witnessed_work = || {
            let rows_before = match &witness {
                Some(_) => store.last_audit_id()?,
                None => 0,
            };
            let done = work(&mut store)?;
            if let Some(witness) = &witness
                && store.last_audit_id()? > rows_before
                && let Some(head) = store.publish_head(&witness.key, &witness.heads)?
                && let Some(url) = &witness.witness_url
            {
                hand_to_witness(url, &head)?;
            }
            Ok(done)
        };
        witnessed_work().map_err(|e: Error| e.at_database(store.path()))
    }

    /// Runs `work` on the store of a command that evaluates or changes it: it must exist.
    fn with_store<T>(
        &self,
        local: &DbOption,
        work: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        self.witnessed(|| self.open_existing(local), work)
    }

    /// Runs `work` on the store of a command that only reads it, which must exist. No signing
    /// key is read: there is nothing to sign, and a reviewer may share the operator's
    /// environment without the key, which is the operator's alone.
    fn reading<T>(
        &self,
        local: &DbOption,
        work: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        let mut store = self.open_existing(local)?;
        let done = work(&mut store);
        done.map_err(|e| e.at_database(store.path()))
    }

    /// The store of a command that reads or evaluates, which must exist.
    fn open_existing(&self, local: &DbOption) -> Result<Store> {
        let store = Store::open_existing(&self.database(local))?;
        warn_if_owner(&store)?;
        Ok(store)
    }

    /// Who writes: `--actor`, else $FLAGSTORE_ACTOR, else the OS user.
    fn writer(&self, local: &ActorOption) -> String {
        self.actor_filter(local)
            .or_else(|| {
                std::env::var("FLAGSTORE_ACTOR")
                    .ok()
                    .filter(|a| !a.is_empty())
            })
            .unwrap_or_else(os_user)
    }

    /// The actor to filter audit rows by: only an explicit `--actor`, since an exported
    /// $FLAGSTORE_ACTOR would silently hide other people's rows.
    fn actor_filter(&self, local: &ActorOption) -> Option<String> {
        local.name.clone().or_else(|| self.actor.name.clone())
    }
}

/// Says on stderr when the store's role could rewrite the audit trail, unless
/// $FLAGSTORE_NO_OWNER_WARNING is set (a development database run as its owner).
fn warn_if_owner(store: &Store) -> Result<()> {
    if std::env::var_os("FLAGSTORE_NO_OWNER_WARNING").is_some_and(|v| !v.is_empty()) {
        return Ok(());
    }
    if let Some(warning) = store.owner_warning()? {
        eprintln!("flagstore: warning: {warning}");
    }
    Ok(())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    let globals = Globals {
        db: cli.db,
        actor: cli.actor,
        witness: cli.witness,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let outcome = match cli.command {
        Command::Init(args) => init::run(&globals, &mut out, &args),
        Command::Import(args) => import::run(&globals, &mut out, &args),
        Command::Export(args) => export::run(&globals, &mut out, &args),
        Command::Flag(command) => flag::run(&globals, &mut out, command),
        Command::Eval(args) => eval::run(&globals, &mut out, args),
        Command::Assignments(command) => assignments::run(&globals, &mut out, command),
        Command::Run(args) => run::run(&globals, &mut out, &args),
        Command::Audit(args) => audit::run(&globals, &mut out, &args),
        Command::Explain(args) => explain::run(&globals, &mut out, &args),
        Command::History(args) => history::run(&globals, &mut out, &args),
        Command::Check(args) => check::run(&globals, &mut out, &args),
        Command::Backup(args) => backup::run(&globals, &mut out, &args),
        Command::Copy(args) => copy::run(&globals, &mut out, &args),
        Command::Serve(args) => serve::run(&globals, &mut out, &args),
        Command::Token(command) => token::run(&globals, &mut out, command),
        Command::Keys(command) => keys::run(&mut out, &command),
        #[cfg(feature = "bench")]
        Command::Bench(command) => bench::run(&mut out, &command),
        Command::Completions(args) => completions::run(&mut out, &args),
    }?;
    out.flush().map_err(stdout_error)?;
    Ok(outcome)
}

/// A command-line mistake as the one line every error gets: clap's message, any tip it has
/// (a similar command, how to pass a value starting with `-`), and where to read more.
pub fn usage_error_line(usage: &clap::Error) -> String {
    let rendered = usage.render().to_string();
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .peekable();
    let first = lines.next().unwrap_or("invalid command line");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    // "the following required arguments were not provided:" lists them on the next lines.
    if line.ends_with(':') {
        let listed: Vec<&str> = std::iter::from_fn(|| {
            lines.next_if(|l| !l.starts_with("Usage:") && !l.starts_with("tip: "))
        })
        .collect();
        line.push(' ');
        line.push_str(&listed.join(", "));
    }
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        line.push_str("; ");
        line.push_str(tip);
    }
    line.push_str(" (see --help)");
    line
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

/// Output formats of the commands that list rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people; control characters escaped.
    Table,
    /// One JSON array.
    Json,
    /// JSON Lines: one object per line.
    Jsonl,
}

/// Writes `items` as one JSON array, one item per line (`Format::Json`), or as JSON Lines.
fn write_json(
    out: &mut impl Write,
    format: Format,
    items: impl Iterator<Item = serde_json::Value>,
) -> Result<()> {
    let mut writer = JsonItems::new(out, format);
    for item in items {
        writer.write(&item)?;
    }
    writer.finish()
}

/// [`write_json`] one item at a time, so that a listing of any length takes constant memory.
struct JsonItems<'w, W: Write> {
    out: &'w mut W,
    array: bool,
    written: usize,
}

impl<'w, W: Write> JsonItems<'w, W> {
    fn new(out: &'w mut W, format: Format) -> Self {
        JsonItems {
            out,
            array: format == Format::Json,
            written: 0,
        }
    }

    fn write(&mut self, item: &impl serde::Serialize) -> Result<()> {
        let before: &[u8] = match (self.array, self.written) {
            (true, 0) => b"[\n",
            (true, _) => b",\n",
            (false, _) => b"",
        };
        self.out.write_all(before).map_err(stdout_error)?;
        serde_json::to_writer(&mut *self.out, item).map_err(|e| stdout_error(e.into()))?;
        if !self.array {
            self.out.write_all(b"\n").map_err(stdout_error)?;
        }
        self.written += 1;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let end: &[u8] = match (self.array, self.written) {
            (true, 0) => b"[]\n",
            (true, _) => b"\n]\n",
            (false, _) => b"",
        };
        self.out.write_all(end).map_err(stdout_error)
    }
}

/// Left-aligned columns separated by two spaces, without trailing spaces; every cell escaped
/// for the terminal.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escaped(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row = headers.iter().map(|h| h.to_string()).collect();
    let mut text = String::new();
    for row in std::iter::once(header_row).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count() + 2));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// Every argument of every command is described, and every command that does something
    /// ends its help with examples.
    #[test]
    fn help_describes_every_argument_and_shows_examples() {
        fn visit(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    missing.push(format!("{path} {}: no help", arg.get_id()));
                }
            }
            let examples = command
                .get_after_help()
                .is_some_and(|text| text.to_string().contains("Examples:"));
            if !command.has_subcommands() && !examples && path != "flagstore help" {
                missing.push(format!("{path}: no examples"));
            }
            for sub in command.get_subcommands() {
                visit(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        visit(&Cli::command(), "flagstore", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn json_is_one_array_with_an_item_per_line_or_json_lines() {
        let written = |format, count: usize| {
            let mut out = Vec::new();
            let items = (0..count).map(|i| serde_json::json!({"i": i}));
            write_json(&mut out, format, items).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(Format::Json, 0), "[]\n");
        assert_eq!(written(Format::Json, 1), "[\n{\"i\":0}\n]\n");
        assert_eq!(written(Format::Json, 2), "[\n{\"i\":0},\n{\"i\":1}\n]\n");
        assert_eq!(written(Format::Jsonl, 0), "");
        assert_eq!(written(Format::Jsonl, 2), "{\"i\":0}\n{\"i\":1}\n");
    }

    #[test]
    fn tables_have_no_trailing_spaces() {
        let text = table(
            &["a", "b"],
            vec![
                vec!["x".into(), String::new()],
                vec!["yy".into(), "z".into()],
            ],
        );
        assert_eq!(text, "a   b\nx\nyy  z\n");
    }
}
