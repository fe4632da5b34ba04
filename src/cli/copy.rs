//! `flagstore copy`: a whole store into a new one, SQLite to PostgreSQL and back.

use std::ffi::OsString;
use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use flagstore::error::Result;
use flagstore::store::Location;

#[derive(Debug, Args)]
#[command(
    after_help = "Copies the flags, every assignment and every audit row verbatim, so
`audit verify` on the copy prints the same head hash. The source is read from one snapshot
while other commands keep running; the copy is written in one transaction (a new SQLite file
is written beside its path and renamed into place), so a failed copy leaves nothing behind. A
destination that already holds flags, assignments or audit rows is refused.

Examples:
  flagstore copy --to postgres://flagstore@db.internal/pipeline
  flagstore copy --from postgres://flagstore@db.internal/pipeline --to snapshot.db"
)]
pub struct CopyArgs {
    /// The store to write: a new SQLite file, or a postgres:// URL of a database (or schema,
    /// through `options=-c search_path=...`) without a store or with an empty one.
    #[arg(long, value_name = "PATH|URL")]
    pub to: OsString,
    /// The store to read [default: --db, else $FLAGSTORE_DB, else ./flagstore.db].
    #[arg(long, value_name = "PATH|URL", conflicts_with = "db")]
    pub from: Option<OsString>,
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &CopyArgs) -> Result<Outcome> {
    let source = match &args.from {
        Some(from) => DbOption {
            path: Some(from.clone()),
        },
        None => args.db.clone(),
    };
    let destination = Location::parse(&args.to);
    globals.reading(&source, |store| {
        let report = store.copy_to_location(&destination)?;
        writeln!(
            out,
            "copied {} to {destination}: {} flags, {} assignments, {} audit rows, head {}",
            store.path(),
            report.flags,
            report.assignments,
            report.audit_rows,
            report.head.as_deref().unwrap_or("(empty log)")
        )
        .map_err(stdout_error)?;
        Ok(Outcome::Success)
    })
}
