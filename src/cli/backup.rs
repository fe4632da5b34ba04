//! `flagstore backup`: a consistent copy of the store in one file.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::error::Result;

#[derive(Debug, Args)]
#[command(
    after_help = "The copy is taken from one snapshot with SQLite's online backup API, so
writers may keep running; it is written beside its destination and renamed into place, so a
failed backup leaves any earlier file there as it was.

Examples:
  flagstore backup -o /backups/flagstore-$(date +%F).db
  flagstore --db /srv/flags.db backup -o flags-copy.db"
)]
pub struct BackupArgs {
    /// The file to write (replaced atomically if it exists).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &BackupArgs) -> Result<Outcome> {
    globals.reading(&args.db, |store| {
        store.backup_to(&args.output)?;
        writeln!(
            out,
            "backed up {} to {}",
            store.path(),
            args.output.display()
        )
        .map_err(stdout_error)?;
        Ok(Outcome::Success)
    })
}
