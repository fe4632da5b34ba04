//! `flagstore init`: create an empty store.

use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::error::Result;
use flagstore::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore init
  flagstore init --db /srv/pipeline/flags.db")]
pub struct InitArgs {
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &InitArgs) -> Result<Outcome> {
    let store = Store::create(&globals.database(&args.db))?;
    writeln!(out, "created {}", store.path()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}
