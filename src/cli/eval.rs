//! `flagstore eval`: evaluate flags for one context key, or for every key of a file.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde_json::json;

use super::{ActorOption, DbOption, Globals, Outcome, stdout_error};
use flagstore::contexts::ContextKeys;
use flagstore::document::display_path;
use flagstore::error::{Error, Result};
use flagstore::eval::Evaluation;
use flagstore::output::write_batch_line;
use flagstore::store::{Selection, Store};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  flagstore eval enrich --context tenant:acme
  flagstore eval ingest enrich --context batch-7 -q && run-stage
  producer | flagstore eval --all --contexts-file - > decisions.jsonl")]
pub struct EvalArgs {
    /// Flags to evaluate (or --all).
    pub flags: Vec<String>,
    /// Evaluate every flag.
    #[arg(long, conflicts_with = "flags")]
    pub all: bool,
    /// The context key (a tenant, batch or record id).
    #[arg(long, required_unless_present = "contexts_file")]
    pub context: Option<String>,
    /// Evaluate for every key of this file (`-` for stdin), one per line; prints JSON Lines.
    #[arg(long, value_name = "FILE", conflicts_with = "context")]
    pub contexts_file: Option<String>,
    /// Print the decision with its reason and source as JSON (an array for several flags).
    #[arg(long, conflicts_with = "contexts_file")]
    pub json: bool,
    /// Print nothing; exit 0 when every flag is on, 1 when one is off.
    #[arg(short, long, conflicts_with_all = ["json", "contexts_file", "all"])]
    pub quiet: bool,
    /// With --contexts-file: no progress bar (it is only drawn when stderr is a terminal).
    #[arg(long, requires = "contexts_file")]
    pub no_progress: bool,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

pub fn run(globals: &Globals, out: &mut impl Write, args: EvalArgs) -> Result<Outcome> {
    let selection = if args.all {
        Selection::All
    } else if args.flags.is_empty() {
        return Err(Error::Usage {
            message: "name the flags to evaluate, or use --all".to_string(),
        });
    } else {
        Selection::Flags(args.flags.clone())
    };
    let actor = globals.writer(&args.actor);
    globals.with_store(&args.db, |store| {
        warn_of_unknown_flags(store, &args.flags)?;
        match &args.contexts_file {
            Some(file) => {
                let progress = !args.no_progress && io::stderr().is_terminal();
                eval_contexts_file(store, out, &actor, &selection, file, progress)
            }
            None => eval_context(store, out, &actor, &selection, &args),
        }
    })
}

/// Asking for a flag that does not exist answers false, as the prototype did, but a
/// misspelt name deserves a word on stderr.
fn warn_of_unknown_flags(store: &Store, names: &[String]) -> Result<()> {
    let flags = store.flags()?;
    for name in names.iter().filter(|name| !flags.contains(name)) {
        let unknown = Error::UnknownFlag {
            name: name.clone(),
            suggestion: flags.nearest_name(name),
        };
        eprintln!("flagstore: warning: {unknown}");
    }
    Ok(())
}

fn eval_context(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    selection: &Selection,
    args: &EvalArgs,
) -> Result<Outcome> {
    let context = args
        .context
        .as_deref()
        .expect("clap requires --context without --contexts-file");
    if context.is_empty() {
        // The prototype's default key is "", so it is answered; but an unset $TENANT in a
        // script puts every run on that one key, which deserves a word.
        eprintln!(
            "flagstore: warning: the context key is empty: every caller with an empty key \
             shares one sticky decision"
        );
    }
    let evaluations = store.evaluate(selection, context, actor)?;
    let single = !args.all && args.flags.len() == 1;
    if args.quiet {
        let on = evaluations.iter().all(|e| e.decision.enabled);
        return Ok(if on { Outcome::Success } else { Outcome::Off });
    }
    let text = if args.json {
        let detailed: Vec<serde_json::Value> = evaluations
            .iter()
            .map(|e| {
                json!({
                    "flag": e.flag,
                    "context": context,
                    "enabled": e.decision.enabled,
                    "reason": e.decision.reason(),
                    "source": e.decision.source,
                })
            })
            .collect();
        if single {
            detailed[0].to_string()
        } else {
            serde_json::Value::from(detailed).to_string()
        }
    } else if single {
        evaluations[0].decision.enabled.to_string()
    } else {
        serde_json::to_string(&decision_map(&evaluations)).expect("json")
    };
    writeln!(out, "{text}").map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// `{"flag": decision, ...}` in the order asked (with --all, the store's order); a flag asked
/// for twice appears once, where it was first asked.
pub(super) fn decision_map(
    evaluations: &[Evaluation],
) -> serde_json::Map<String, serde_json::Value> {
    evaluations
        .iter()
        .map(|e| (e.flag.clone(), e.decision.enabled.into()))
        .collect()
}

fn eval_contexts_file(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    selection: &Selection,
    file: &str,
    show_progress: bool,
) -> Result<Outcome> {
    let name = display_path(file);
    let keys: Box<dyn Iterator<Item = Result<String>>> = if file == "-" {
        Box::new(ContextKeys::new(io::stdin().lock(), name))
    } else {
        let opened = File::open(file).map_err(|source| Error::Read {
            path: file.to_string(),
            source,
        })?;
        Box::new(ContextKeys::new(BufReader::new(opened), name))
    };
    let progress = if show_progress {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {human_pos} keys  {rate} keys/s  {elapsed}")
                .expect("a valid template")
                .with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}", state.per_sec());
                    },
                ),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let outcome = store.evaluate_batch(selection, actor, keys, |key, evaluations| {
        progress.inc(1);
        write_batch_line(out, key, evaluations).map_err(stdout_error)
    });
    progress.finish_and_clear();
    outcome?;
    Ok(Outcome::Success)
}
