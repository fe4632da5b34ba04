//! `flagstore flag`: list, show and change flags.

use std::io::Write;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Subcommand};
use serde_json::json;

use super::{ActorOption, DbOption, Globals, Outcome, escaped, stdout_error, table};
use flagstore::change::Change;
use flagstore::error::{Error, Result};
use flagstore::flag::{Flag, FlagSet, StickyPolicy, validate_name};
use flagstore::store::{StaleFlag, Store};

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Create a flag (defaults: enabled, rollout 100, no requirements, sticky on_only).
    #[command(after_help = "Examples:
  flagstore flag create enrich --rollout 10 --requires dedupe
  flagstore flag create shadow_write --enabled false --sticky none")]
    Create(DefineArgs),
    /// List every flag.
    #[command(after_help = "Examples:
  flagstore flag list
  flagstore flag list --json
  flagstore flag list --stale --stale-days 90")]
    List(ListArgs),
    /// Show one flag with its timestamps and the flags that require it.
    #[command(after_help = "Examples:
  flagstore flag show enrich
  flagstore flag show enrich --json")]
    Show(ShowArgs),
    /// Change the given fields of an existing flag.
    #[command(after_help = "Examples:
  flagstore flag set enrich --rollout 25
  flagstore flag set enrich --requires ingest,dedupe --sticky all
  flagstore flag set enrich --requires \"\"     # no requirements")]
    Set(DefineArgs),
    /// Turn a flag on (its rollout and requirements still apply).
    #[command(after_help = "Examples:
  flagstore flag enable enrich")]
    Enable(NameArgs),
    /// Turn a flag off for everyone: the kill switch.
    #[command(after_help = "Examples:
  flagstore flag disable enrich")]
    Disable(NameArgs),
    /// Delete a flag and its assignments; refused while other flags require it.
    #[command(after_help = "Examples:
  flagstore flag delete legacy_export")]
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct DefineArgs {
    /// The flag's name.
    pub name: String,
    /// true or false.
    #[arg(long, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enabled: Option<bool>,
    /// Rollout percentage, a number from 0 to 100; fractions allowed.
    #[arg(long, value_name = "PCT", allow_negative_numbers = true, value_parser = percentage)]
    pub rollout: Option<f64>,
    /// Comma-separated flags this one requires; an empty value clears them.
    #[arg(long, value_name = "FLAGS")]
    pub requires: Option<String>,
    /// Which decisions to store: on_only, all or none.
    #[arg(long, value_name = "POLICY")]
    pub sticky: Option<String>,
    /// true keeps the flag off `flag list --stale` (a switch meant to stay as it is).
    #[arg(long, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub stale_exempt: Option<bool>,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON array of the export format's flag objects instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only stale flags: not exempt, no change for --stale-days days, and the same answer
    /// in every decision recorded meanwhile (or none), read from the audit trail.
    #[arg(long)]
    pub stale: bool,
    /// The stale period, in days.
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 30,
        requires = "stale",
        allow_negative_numbers = true
    )]
    pub stale_days: u32,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The flag's name.
    pub name: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbOption,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The flag's name.
    pub name: String,
    #[command(flatten)]
    pub db: DbOption,
    #[command(flatten)]
    pub actor: ActorOption,
}

/// A rollout percentage from the command line; the range is checked with the other rules
/// when the flag is written, so that it names the flag.
fn percentage(value: &str) -> std::result::Result<f64, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|pct| pct.is_finite())
        .ok_or_else(|| "must be a number from 0 to 100".to_string())
}

pub fn run(globals: &Globals, out: &mut impl Write, command: FlagCommand) -> Result<Outcome> {
    let text = match command {
        FlagCommand::List(args) if args.stale => {
            let stale = globals.reading(&args.db, |store| store.stale_flags(args.stale_days))?;
            if args.json {
                format!("{}\n", serde_json::to_string_pretty(&stale).expect("json"))
            } else {
                stale_table(&stale)
            }
        }
        FlagCommand::List(args) => {
            let flags = globals.reading(&args.db, |store| store.flags())?;
            if args.json {
                let list: Vec<&Flag> = flags.iter().collect();
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&list).expect("flags serialize")
                )
            } else {
                flag_table(&flags)
            }
        }
        FlagCommand::Show(args) => globals.reading(&args.db, |store| {
            let Some(record) = store.flag(&args.name)? else {
                return Err(store.unknown_flag(&args.name)?);
            };
            Ok(if args.json {
                let mut shown = serde_json::to_value(&record.flag).expect("a flag serializes");
                shown["required_by"] = json!(record.required_by);
                shown["created_at"] = json!(record.created_at);
                shown["updated_at"] = json!(record.updated_at);
                format!("{}\n", serde_json::to_string_pretty(&shown).expect("json"))
            } else {
                let flag = &record.flag;
                let fields = [
                    ("name", flag.name.clone()),
                    ("enabled", flag.enabled.to_string()),
                    ("rollout_pct", flag.rollout_pct.to_string()),
                    ("requires", flag.requires.join(", ")),
                    ("required_by", record.required_by.join(", ")),
                    ("sticky", flag.sticky.to_string()),
                    ("stale_exempt", flag.stale_exempt.to_string()),
                    ("created_at", record.created_at.clone()),
                    ("updated_at", record.updated_at.clone()),
                ];
                fields
                    .iter()
                    .map(|(field, value)| {
                        format!("{:<14}{}\n", format!("{field}:"), escaped(value))
                    })
                    .map(|line| line.trim_end().to_string() + "\n")
                    .collect()
            })
        })?,
        FlagCommand::Create(args) => define(globals, &args, Definition::Create)?,
        FlagCommand::Set(args) => define(globals, &args, Definition::Update)?,
        FlagCommand::Enable(args) => set_enabled(globals, &args, true)?,
        FlagCommand::Disable(args) => set_enabled(globals, &args, false)?,
        FlagCommand::Delete(args) => {
            let name = &args.name;
            let changes = globals.with_store(&args.db, |store| {
                store.modify(
                    &globals.writer(&args.actor),
                    "flag delete",
                    false,
                    |current| {
                        let mut next = current.clone();
                        next.delete(name)?;
                        Ok(next)
                    },
                )
            })?;
            describe_changes(name, &changes)
        }
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

/// Whether `flag create` or `flag set` is defining the flag.
#[derive(Clone, Copy, PartialEq)]
enum Definition {
    Create,
    Update,
}

fn define(globals: &Globals, args: &DefineArgs, definition: Definition) -> Result<String> {
    let name = &args.name;
    validate_name(name)?;
    let sticky: Option<StickyPolicy> = args.sticky.as_deref().map(str::parse).transpose()?;
    let requires = args.requires.as_deref().map(split_names);
    let via = match definition {
        Definition::Create => "flag create",
        Definition::Update => "flag set",
    };
    let write = |store: &mut Store| {
        store.modify(&globals.writer(&args.actor), via, false, |current| {
            let mut flag = match (definition, current.get(name)) {
                (Definition::Create, None) => Flag::new(name),
                (Definition::Create, Some(_)) => {
                    return Err(Error::FlagExists { name: name.clone() });
                }
                (Definition::Update, Some(flag)) => flag.clone(),
                (Definition::Update, None) => {
                    return Err(Error::NoSuchFlagToSet {
                        name: name.clone(),
                        suggestion: current.nearest_name(name),
                    });
                }
            };
            if let Some(enabled) = args.enabled {
                flag.enabled = enabled;
            }
            if let Some(rollout) = args.rollout {
                flag.rollout_pct = rollout;
            }
            if let Some(requires) = &requires {
                flag.requires = requires.clone();
            }
            if let Some(sticky) = sticky {
                flag.sticky = sticky;
            }
            if let Some(exempt) = args.stale_exempt {
                flag.stale_exempt = exempt;
            }
            let mut next = current.clone();
            next.insert(flag);
            Ok(next)
        })
    };
    let changes = match definition {
        Definition::Create => globals.with_store_or_create(&args.db, write)?,
        Definition::Update => globals.with_store(&args.db, write)?,
    };
    Ok(describe_changes(name, &changes))
}

fn set_enabled(globals: &Globals, args: &NameArgs, enabled: bool) -> Result<String> {
    let name = &args.name;
    let via = if enabled {
        "flag enable"
    } else {
        "flag disable"
    };
    let changes = globals.with_store(&args.db, |store| {
        store.modify(&globals.writer(&args.actor), via, false, |current| {
            let mut flag = existing(current, name)?.clone();
            flag.enabled = enabled;
            let mut next = current.clone();
            next.insert(flag);
            Ok(next)
        })
    })?;
    Ok(describe_changes(name, &changes))
}

fn existing<'a>(flags: &'a FlagSet, name: &str) -> Result<&'a Flag> {
    flags.get(name).ok_or_else(|| Error::UnknownFlag {
        name: name.to_string(),
        suggestion: flags.nearest_name(name),
    })
}

fn describe_changes(name: &str, changes: &[Change]) -> String {
    match changes {
        [] => format!("{name}: unchanged\n"),
        changes => changes
            .iter()
            .map(|c| format!("{}: {}\n", c.flag_name(), c.summary()))
            .collect(),
    }
}

fn split_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

fn stale_table(flags: &[StaleFlag]) -> String {
    let rows = flags
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.changed_at.clone(),
                f.answer_text().to_string(),
                f.decisions.to_string(),
            ]
        })
        .collect();
    table(&["name", "changed_at", "answer", "decisions"], rows)
}

fn flag_table(flags: &FlagSet) -> String {
    let rows = flags
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.enabled.to_string(),
                f.rollout_pct.to_string(),
                f.sticky.to_string(),
                f.requires.join(","),
            ]
        })
        .collect();
    table(
        &["name", "enabled", "rollout_pct", "sticky", "requires"],
        rows,
    )
}
