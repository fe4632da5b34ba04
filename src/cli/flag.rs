//! `flagstore flag`: list, show and change flags.

use std::io::Write;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Subcommand};
use serde_json::json;

use super::{Outcome, stdout_error, table};
use crate::change::Change;
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet, StickyPolicy, validate_name};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// List every flag.
    List {
        /// Print JSON (the export format's flag objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one flag with its timestamps and the flags that require it.
    Show { name: String },
    /// Create a flag, or change the given fields of an existing one.
    Set {
        name: String,
        /// true or false.
        #[arg(long, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
        enabled: Option<bool>,
        /// Rollout percentage, 0-100; fractions allowed.
        #[arg(long, value_name = "PCT", allow_negative_numbers = true)]
        rollout: Option<f64>,
        /// Comma-separated flags this one requires; an empty value clears them.
        #[arg(long, value_name = "FLAGS")]
        requires: Option<String>,
        /// Which decisions to store: on_only, all or none.
        #[arg(long, value_name = "POLICY")]
        sticky: Option<String>,
    },
    /// Turn a flag on (its rollout and dependencies still apply).
    Enable { name: String },
    /// Turn a flag off for everyone: the kill switch.
    Disable { name: String },
    /// Delete a flag and its assignments; refused while other flags require it.
    Delete { name: String },
}

pub fn run(
    store: &mut Store,
    out: &mut impl Write,
    actor: &str,
    command: FlagCommand,
) -> Result<Outcome> {
    let text = match command {
        FlagCommand::List { json } => {
            let flags = store.flags()?;
            if json {
                let list: Vec<&Flag> = flags.iter().collect();
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&list).expect("flags serialize")
                )
            } else {
                flag_table(&flags)
            }
        }
        FlagCommand::Show { name } => {
            let Some(record) = store.flag(&name)? else {
                return Err(store.unknown_flag(&name)?);
            };
            let mut shown = serde_json::to_value(&record.flag).expect("a flag serializes");
            shown["required_by"] = json!(record.required_by);
            shown["created_at"] = json!(record.created_at);
            shown["updated_at"] = json!(record.updated_at);
            format!("{}\n", serde_json::to_string_pretty(&shown).expect("json"))
        }
        FlagCommand::Set {
            name,
            enabled,
            rollout,
            requires,
            sticky,
        } => {
            validate_name(&name)?;
            let sticky: Option<StickyPolicy> = sticky.map(|s| s.parse()).transpose()?;
            let requires = requires.map(|list| split_names(&list));
            let changes = store.modify(actor, "flag set", false, |current| {
                let mut flag = current
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| Flag::new(&name));
                if let Some(enabled) = enabled {
                    flag.enabled = enabled;
                }
                if let Some(rollout) = rollout {
                    flag.rollout_pct = rollout;
                }
                if let Some(requires) = requires {
                    flag.requires = requires;
                }
                if let Some(sticky) = sticky {
                    flag.sticky = sticky;
                }
                let mut next = current.clone();
                next.insert(flag);
                Ok(next)
            })?;
            describe_changes(&name, &changes)
        }
        FlagCommand::Enable { name } => set_enabled(store, actor, &name, true)?,
        FlagCommand::Disable { name } => set_enabled(store, actor, &name, false)?,
        FlagCommand::Delete { name } => {
            let changes = store.modify(actor, "flag delete", false, |current| {
                existing(current, &name)?;
                let dependents = current.dependents_of(&name);
                if !dependents.is_empty() {
                    return Err(Error::RequiredBy {
                        flag: name.clone(),
                        dependents,
                    });
                }
                let mut next = current.clone();
                next.remove(&name);
                Ok(next)
            })?;
            describe_changes(&name, &changes)
        }
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(Outcome::Success)
}

fn set_enabled(store: &mut Store, actor: &str, name: &str, enabled: bool) -> Result<String> {
    let via = if enabled {
        "flag enable"
    } else {
        "flag disable"
    };
    let changes = store.modify(actor, via, false, |current| {
        let mut flag = existing(current, name)?.clone();
        flag.enabled = enabled;
        let mut next = current.clone();
        next.insert(flag);
        Ok(next)
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
    table(&["NAME", "ENABLED", "ROLLOUT", "STICKY", "REQUIRES"], rows)
}
