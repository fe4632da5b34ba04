//! `flagstore check`: everything that can be proved about a store from the file alone.

use std::io::Write;

use clap::Args;

use super::{ActorOption, DbOption, Globals, Outcome, stdout_error};
use flagstore::error::{Error, Result};
use flagstore::store::{PageCheck, Store};

#[derive(Debug, Args)]
#[command(
    after_help = "Checks, in order, and stops at the first failure (exit 2):
  1. pages: every page of the file is well formed and every index holds exactly its
     table's rows (SQLite's integrity_check);
  2. references: every foreign key holds;
  3. the audit log's hash chain (as `audit verify`);
  4. the live state: each flag's stored definition is the one its change rows leave, and
     the assignments table exactly what the decision records stored, less what later
     audited resets and deletions removed (an assignment no record stored, one whose
     decision, bucket, rollout or time is not its record's, one a record stored that is
     missing);
     the index of decision records by flag (audit_ranges and their audit_flag_sets; the
     view audit_flag_ranges) lists each record under exactly the flags it was asked for;
     every API token row the one its change rows leave
     (its role, creation and revocation); and the schema's triggers, views and indexes (and
     SQLite's table texts, PostgreSQL's functions) are the ones the migrations make, run
     anew in an empty database (on PostgreSQL in a scratch schema rolled back, which a role
     that may not create a schema cannot do: the summary then says they were not compared)
     (one line per difference).

With --repair-index, decision records missing from the index are added back, recorded in
the audit log as one change row per flag (action reindex); a range that lists too much
stays (the tables are append-only) and is still reported.

Examples:
  flagstore check
  flagstore check --repair-index
  flagstore --db /backups/flagstore.db check"
)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbOption,
    /// Add the decision records missing from the index by flag back to it (audited).
    #[arg(long)]
    pub repair_index: bool,
    #[command(flatten)]
    pub actor: ActorOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &CheckArgs) -> Result<Outcome> {
    let actor = args.repair_index.then(|| globals.writer(&args.actor));
    let checked = |store: &mut Store| check(store, out, actor.as_deref());
    if args.repair_index {
        globals.with_store(&args.db, checked)
    } else {
        globals.reading(&args.db, checked)
    }
}

/// Checks `store`; with `repair_actor`, first adds what the index misses, as that actor.
fn check(store: &mut Store, out: &mut impl Write, repair_actor: Option<&str>) -> Result<Outcome> {
    let (storage, (assignments, (verified, mut index, decisions))) =
        store.with_storage_checked(PageCheck::Everything, || {
            store.beside(Store::unexplained_assignments, || {
                store.check_references()?;
                store.verify_audit_for_check(None)
            })
        })?;
    if let Some(actor) = repair_actor
        && !index.missing.is_empty()
    {
        for repaired in store.repair_index(&index, actor)? {
            writeln!(
                out,
                "audit_flag_ranges: flag {:?}: {} decision record{} added back ({}), recorded \
                 as change row {}",
                repaired.flag,
                repaired.records.ids(),
                if repaired.records.ids() == 1 { "" } else { "s" },
                repaired.records.shown(),
                repaired.audit_id
            )
            .map_err(stdout_error)?;
        }
        index.missing.clear();
    }
    let mut differences = store.unexplained_state()?;
    differences.extend(assignments.differences);
    differences.extend(index.lines());
    differences.extend(decisions);
    let schema = match store.schema_differences()? {
        Ok(found) => {
            differences.extend(found);
            "the schema the migrations make".to_string()
        }
        Err(why) => format!("the schema not compared ({why})"),
    };
    if !differences.is_empty() {
        for line in &differences {
            eprintln!("flagstore: {}: {line}", store.path());
        }
        return Err(Error::Inconsistent {
            path: store.path().to_string(),
            problem: format!(
                "{} difference(s) between the live state and the audit chain (listed above)",
                differences.len()
            ),
        });
    }
    writeln!(
        out,
        "store checked: {storage}, foreign keys hold, {} assignments each the one its \
         evaluation record stored, the flags the ones their change rows leave, every decision \
         record indexed under the flags it was asked for, filed under its own context and agreeing \
         with the definitions in force when it was written, every \
         API token the one its change rows leave, {schema}; audit log verified: {} rows, \
         head {}",
        assignments.checked, verified.rows, verified.head
    )
    .map_err(stdout_error)?;
    Ok(Outcome::Success)
}
