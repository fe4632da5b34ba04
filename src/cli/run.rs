//! `flagstore run`: the prototype's job: evaluate a flags file's flags for its context_key and
//! write the results. The store is the audited source of truth: the file may add flags the
//! store lacks, but it never overrides what operators set.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::eval::decision_map;
use super::{ActorOption, DbOption, Globals, Outcome, stdout_error};
use flagstore::change::differences;
use flagstore::document::{DEFAULT_CONTEXT_KEY, Document, display_path};
use flagstore::error::Result;
use flagstore::eval::ContextEvaluation;
use flagstore::file::PendingFile;
use flagstore::flag::FlagSet;
use flagstore::prototype::{python_json, trail};
use flagstore::store::Selection;

#[derive(Debug, Args)]
#[command(
    after_help = "Flags the store lacks are created from the file; for a flag the store
already has, the store's definition is used, and a warning names each difference and the
command that would apply the file. Nothing is written unless the results are.

Examples:
  flagstore run --input examples/pipeline.json --output out.json
  flagstore run --input flags.json --output -"
)]
pub struct RunArgs {
    /// Flags file; its optional "context_key" (default "default") is the context evaluated.
    #[arg(long, value_name = "FILE")]
    pub input: String,
    /// Where to write the results JSON, byte for byte as the prototype wrote it (no final
    /// newline); also printed to stdout, with one; `-` for stdout only.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &RunArgs) -> Result<Outcome> {
    let document = Document::read(&args.input)?;
    let input = display_path(&args.input);
    let context = document
        .context_key
        .as_deref()
        .unwrap_or(DEFAULT_CONTEXT_KEY);
    let names: Vec<String> = document.flags.iter().map(|f| f.name.clone()).collect();
    let to_stdout_only = args.output.as_os_str() == "-";
    // Created before anything is evaluated, so an output that cannot be written refuses the
    // run before the store changes.
    let pending = (!to_stdout_only)
        .then(|| PendingFile::create(&args.output))
        .transpose()?;
    let mut text = String::new();
    globals.with_store_or_create(&args.db, |store| {
        store.modify_and_evaluate(
            &globals.writer(&args.actor),
            "run",
            |current| {
                warn_of_differences(current, &document, input);
                let mut next = current.clone();
                for flag in document.flags.iter().filter(|f| !current.contains(&f.name)) {
                    next.insert(flag.clone());
                }
                next.validate().map_err(|e| e.in_file(input))?;
                Ok(next)
            },
            &Selection::Flags(names.clone()),
            context,
            |flags, _, evaluated| {
                text = results(flags, &names, evaluated);
                match &pending {
                    Some(pending) => pending.write(text.as_bytes()),
                    None => Ok(()),
                }
            },
        )
    })?;
    if let Some(pending) = pending {
        pending.persist()?;
    }
    writeln!(out, "{text}").map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// The prototype's result document, as its `json.dumps(summary, indent=2)` wrote it: the
/// file's flags in the file's order; `stats` counting them by their `enabled` setting (as the
/// store has it), not by their decisions; and `audit_entries` the entries its `evaluate_all`
/// appended, a requirement's each time a flag that requires it was evaluated. Stored
/// assignments change no count: a second run of a file writes the same bytes.
fn results(flags: &FlagSet, names: &[String], evaluated: &ContextEvaluation) -> String {
    let enabled = names
        .iter()
        .filter(|name| flags.get(name).is_some_and(|f| f.enabled))
        .count();
    let requested: Vec<&str> = names.iter().map(String::as_str).collect();
    python_json(&json!({
        "evaluations": decision_map(&evaluated.evaluations),
        "stats": {
            "total": names.len(),
            "enabled": enabled,
            "disabled": names.len() - enabled,
        },
        "audit_entries": trail(flags, evaluated, &requested).len(),
    }))
}

/// One warning per flag the store defines otherwise than the file, naming the differences.
fn warn_of_differences(store: &FlagSet, document: &Document, input: &str) {
    for in_file in document.flag_set().iter() {
        let Some(stored) = store.get(&in_file.name) else {
            continue;
        };
        let fields = differences(in_file, stored);
        if fields.is_empty() {
            continue;
        }
        let says = |pick: fn(&(&str, String, String)) -> String| {
            fields.iter().map(pick).collect::<Vec<_>>().join(" and ")
        };
        eprintln!(
            "flagstore: warning: flag {:?}: {input} says {}, the store has {}; the store's \
             definition was used (apply the file with: flagstore import {input})",
            in_file.name,
            says(|(field, file, _)| format!("{field} {file}")),
            says(|(_, _, stored)| stored.clone()),
        );
    }
}
