//! `flagstore export`: every flag as JSON, in the format `import` reads.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{Outcome, stdout_error, write_file_atomically};
use crate::document::Document;
use crate::error::Result;
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore export
  flagstore export -o flags.json")]
pub struct ExportArgs {
    /// Write to this file (atomically: a failed write keeps the old file) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(store: &Store, out: &mut impl Write, args: &ExportArgs) -> Result<Outcome> {
    let json = Document::from_flags(&store.flags()?).to_json();
    match &args.output {
        Some(path) => write_file_atomically(path, json.as_bytes())?,
        None => out.write_all(json.as_bytes()).map_err(stdout_error)?,
    }
    Ok(Outcome::Success)
}
