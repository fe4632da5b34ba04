//! `flagstore import`: create or update flags from a JSON file, all or nothing.

use std::io::Write;

use clap::Args;

use super::{ActorOption, DbOption, Globals, Outcome, stdout_error};
use flagstore::change::Change;
use flagstore::document::{Document, display_path};
use flagstore::error::{Error, Result};
use flagstore::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore import flags.json
  flagstore import --dry-run flags.json
  producer | flagstore import --replace -")]
pub struct ImportArgs {
    /// The flags file (`-` for stdin): {"flags": [{"name", "enabled"?, "rollout_pct"?,
    /// "requires"?, "sticky"?}]}.
    pub file: String,
    /// Also delete flags that the file does not list.
    #[arg(long)]
    pub replace: bool,
    /// Validate and report what would change, writing nothing (and creating no database).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: &ImportArgs) -> Result<Outcome> {
    let document = Document::read(&args.file)?;
    let actor = globals.writer(&args.actor);
    if args.dry_run {
        return match globals.reading(&args.db, |store| {
            report(store, out, &actor, args, &document)
        }) {
            // What would change in a store that does not exist yet, without creating one.
            Err(Error::NoDatabase { .. }) => {
                report(&mut Store::open_in_memory()?, out, &actor, args, &document)
            }
            reported => reported,
        };
    }
    globals.with_store_or_create(&args.db, |store| {
        report(store, out, &actor, args, &document)
    })
}

/// Imports `document` (or with --dry-run, works out what importing would change) and prints
/// one line per changed flag and a summary.
fn report(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    args: &ImportArgs,
    document: &Document,
) -> Result<Outcome> {
    let via = if args.replace {
        "import --replace"
    } else {
        "import"
    };
    let changes = import_document(
        store,
        actor,
        via,
        document,
        display_path(&args.file),
        args.replace,
        args.dry_run,
    )?;
    let count = |action: &str| changes.iter().filter(|c| c.action() == action).count();
    let unchanged = document.flags.len() - count("create") - count("update");
    let moved = match count("move") {
        0 => String::new(),
        moved => format!(", {moved} moved"),
    };
    let mut report = String::new();
    for change in &changes {
        report.push_str(&format!("{}: {}\n", change.flag_name(), change.summary()));
    }
    report.push_str(&format!(
        "{} created, {} updated, {} deleted, {} unchanged{moved}{}\n",
        count("create"),
        count("update"),
        count("delete"),
        unchanged,
        if args.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    ));
    out.write_all(report.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// Upserts a document's flags (with `replace`, also deleting the flags it does not list) as one
/// atomic write. Validation errors name the file.
fn import_document(
    store: &mut Store,
    actor: &str,
    via: &str,
    document: &Document,
    path: &str,
    replace: bool,
    dry_run: bool,
) -> Result<Vec<Change>> {
    store.modify(actor, via, dry_run, |current| {
        let next = current.imported(&document.flags, replace);
        next.validate().map_err(|e| e.in_file(path))?;
        Ok(next)
    })
}
