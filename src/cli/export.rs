//! `flagstore export`: every flag as JSON, in the format `import` reads.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::document::Document;
use flagstore::error::Result;
use flagstore::file::write_atomically;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore export
  flagstore export -o flags.json")]
pub struct ExportArgs {
    /// Write to this file (atomically: a failed write keeps the old file) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ExportArgs) -> Result<Outcome> {
    let flags = globals.reading(&args.db, |store| store.flags())?;
    let json = Document::from_flags(&flags).to_json();
    match &args.output {
        Some(path) => write_atomically(path, json.as_bytes())?,
        None => out.write_all(json.as_bytes()).map_err(stdout_error)?,
    }
    Ok(Outcome::Success)
}
