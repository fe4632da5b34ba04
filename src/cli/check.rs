//! `flagstore check`: everything that can be proved about a store from the file alone.

use std::io::Write;

use clap::Args;

use super::{DbOption, Globals, Outcome, stdout_error};
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(
    after_help = "Checks, in order, and stops at the first failure (exit 2):
  1. pages: every page of the file is well formed and every index holds exactly its
     table's rows (SQLite's integrity_check);
  2. references: every foreign key holds, and every stored assignment has the
     evaluation row that stored it;
  3. the audit log's hash chain (as `audit verify`);
  4. the live state: each flag's stored definition is the one its change rows leave, and
     each assignment's decision, bucket and rollout the ones its record stored (a table
     edited without the audit log is named, one line per difference).

Examples:
  flagstore check
  flagstore --db /backups/flagstore.db check"
)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &CheckArgs) -> Result<Outcome> {
    globals.with_store(&args.db, |store| check(store, out))
}

fn check(store: &Store, out: &mut impl Write) -> Result<Outcome> {
    let storage = store.check_storage(false)?;
    let assignments = store.check_references()?;
    let verified = store.verify_audit(None)?;
    let unexplained = store.unexplained_state()?;
    if !unexplained.is_empty() {
        for line in &unexplained {
            eprintln!("flagstore: {}: {line}", store.path());
        }
        return Err(Error::Inconsistent {
            path: store.path().to_string(),
            problem: format!(
                "{} difference(s) between the live state and the audit chain (listed above)",
                unexplained.len()
            ),
        });
    }
    writeln!(
        out,
        "store checked: {storage}, foreign keys hold, {assignments} assignments each with the \
         evaluation that stored it, the flags the ones their change rows leave; audit log \
         verified: {} rows, head {}",
        verified.rows, verified.head
    )
    .map_err(stdout_error)?;
    Ok(Outcome::Success)
}
