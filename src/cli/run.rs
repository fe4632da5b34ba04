//! `flagstore run`: the prototype's job: import a flags file, evaluate its flags for its
//! context_key and write the results.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::eval::decision_map;
use super::import::import_document;
use super::{Outcome, stdout_error, write_file_atomically};
use crate::document::{DEFAULT_CONTEXT_KEY, Document, display_path};
use crate::error::Result;
use crate::store::{Selection, Store};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Flags file; its optional "context_key" (default "default") is the context evaluated.
    #[arg(long)]
    pub input: String,
    /// Where to write the results JSON (also printed to stdout).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    args: &RunArgs,
) -> Result<Outcome> {
    run_job(store, out, actor, &args.input, &args.output)
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
