//! Flag pages: the list with its filters and one flag with its history; `forms.rs` its kill
//! switch, rollout and stale exemption; `graph.rs` the dependency graph.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::{Chrome, PageQuery, bad_query, encoded, page};
use crate::audit::AuditQuery;
use crate::error::Error;
use crate::flag::{Flag, FlagSet, validate_rollout};
use crate::serve::{Refusal, Shared};
use crate::store::{AssignmentTally, View};

mod forms;
mod graph;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/flags", get(list))
        .route("/ui/flags/{name}", get(show))
        .merge(forms::routes())
        .route("/ui/graph", get(graph::graph))
}

/// A flag as a link: its name, and its page's address.
pub(super) struct FlagLink {
    pub name: String,
    pub href: String,
}

impl FlagLink {
    pub fn new(name: &str) -> FlagLink {
        FlagLink {
            // Spelled out as in the CLI's tables: a bidirectional override or a zero-width
            // character would otherwise make one flag look like another on the page.
            name: crate::output::escaped(name),
            href: format!("/ui/flags/{}", encoded(name)),
        }
    }
}

/// A rollout as people write it: `50`, `12.5`.
fn percent(pct: f64) -> String {
    crate::output::percentage(pct).to_string()
}

#[derive(Debug, Default, Deserialize)]
struct ListFilter {
    #[serde(default)]
    q: String,
    /// "on", "off", or empty for both.
    #[serde(default)]
    state: String,
    /// Only flags rolled out to some contexts but not all.
    #[serde(default)]
    partial: Option<String>,
    /// Only flags other flags require.
    #[serde(default)]
    dependents: Option<String>,
    /// Only stale flags (see `Store::stale_flags`).
    #[serde(default)]
    stale: Option<String>,
    /// The stale period in days, as typed; 30 when empty.
    #[serde(default)]
    days: String,
}

struct FlagRow {
    link: FlagLink,
    /// Why it is stale, when the stale filter is on.
    stale: Option<String>,
    enabled: bool,
    rollout: String,
    requires: Vec<FlagLink>,
    required_by: usize,
    sticky: &'static str,
}

#[derive(Template)]
#[template(path = "flags.html")]
struct ListPage {
    chrome: Option<Chrome>,
    filter: ListFilter,
    rows: Vec<FlagRow>,
    total: usize,
    default_days: u32,
}

impl ListFilter {
    fn stale_days(&self) -> Result<u32, Refusal> {
        match self.days.trim() {
            "" => Ok(crate::store::DEFAULT_STALE_DAYS),
            days => days.parse().map_err(|_| {
                Refusal::BadRequest(format!(
                    "stale period {days:?} is not a whole number of days"
                ))
            }),
        }
    }

    fn admits(&self, flag: &Flag, flags: &FlagSet) -> bool {
        let wanted = self.q.trim().to_lowercase();
        (wanted.is_empty() || flag.name.to_lowercase().contains(&wanted))
            && match self.state.as_str() {
                "on" => flag.enabled,
                "off" => !flag.enabled,
                _ => true,
            }
            && (self.partial.is_none() || (flag.rollout_pct > 0.0 && flag.rollout_pct < 100.0))
            && (self.dependents.is_none() || !flags.dependents_of(&flag.name).is_empty())
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    filter: PageQuery<ListFilter>,
) -> Response {
    let filter = match filter {
        Ok(filter) => filter.0,
        Err(rejection) => return bad_query(&rejection),
    };
    page(&shared, &headers, move |store, chrome| {
        let flags = store.flags()?;
        let stale: Option<BTreeMap<String, String>> = match filter.stale {
            None => None,
            Some(_) => {
                let days = filter.stale_days()?;
                let stale = store.stale_flags(days)?;
                Some(
                    stale
                        .into_iter()
                        .map(|flag| {
                            let why = format!(
                                "{}, unchanged since {}",
                                flag.answer_text(),
                                flag.changed_at
                            );
                            (flag.name, why)
                        })
                        .collect(),
                )
            }
        };
        let rows = flags
            .iter()
            .filter(|flag| filter.admits(flag, &flags))
            .filter(|flag| stale.as_ref().is_none_or(|s| s.contains_key(&flag.name)))
            .map(|flag| FlagRow {
                stale: stale.as_ref().and_then(|s| s.get(&flag.name).cloned()),
                link: FlagLink::new(&flag.name),
                enabled: flag.enabled,
                rollout: percent(flag.rollout_pct),
                requires: flag.requires.iter().map(|r| FlagLink::new(r)).collect(),
                required_by: flags.dependents_of(&flag.name).len(),
                sticky: flag.sticky.as_str(),
            })
            .collect();
        Ok(ListPage {
            chrome: Some(chrome),
            filter,
            rows,
            total: flags.len(),
            default_days: crate::store::DEFAULT_STALE_DAYS,
        })
    })
    .await
}

struct HistoryRow {
    id: i64,
    ts: String,
    actor: String,
    change: String,
}

/// What a rollout change would do to the stored assignments.
struct Preview {
    rollout: String,
    tally: AssignmentTally,
}

#[derive(Template)]
#[template(path = "flag.html")]
struct FlagPage {
    chrome: Option<Chrome>,
    flag: Flag,
    link: FlagLink,
    rollout: String,
    requires: Vec<FlagLink>,
    required_by: Vec<FlagLink>,
    created_at: String,
    updated_at: String,
    version: i64,
    tally: AssignmentTally,
    preview: Option<Preview>,
    history: Vec<HistoryRow>,
    /// The audit page filtered to this flag (a `cursor` is appended per history row).
    audit_href: String,
    explain_href: String,
}

#[derive(Debug, Default, Deserialize)]
struct ShowQuery {
    /// A rollout to preview, as typed.
    #[serde(default)]
    preview: String,
}

async fn show(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: PageQuery<ShowQuery>,
) -> Response {
    let query = match query {
        Ok(query) => query.0,
        Err(rejection) => return bad_query(&rejection),
    };
    page(&shared, &headers, move |store, chrome| {
        store.read(|view| flag_page(view, chrome, &name, &query.preview))
    })
    .await
}

/// The flag page, every part of it from one snapshot: the version in its forms names the
/// state it shows.
fn flag_page(view: &View, chrome: Chrome, name: &str, preview: &str) -> Result<FlagPage, Refusal> {
    let version = view.flag_version(name)?;
    let Some(record) = view.flag(name)? else {
        return Err(view.unknown_flag(name)?.into());
    };
    let preview = if preview.trim().is_empty() {
        None
    } else {
        let pct = parse_rollout(name, preview)?;
        Some(Preview {
            rollout: percent(pct),
            tally: view.assignment_tally(name, pct)?,
        })
    };
    let changes = AuditQuery {
        flag: Some(name.to_string()),
        kind: Some("change".to_string()),
        ..AuditQuery::default()
    };
    let mut history = Vec::new();
    view.query_audit(&changes, |row| {
        history.push(HistoryRow {
            id: row.id,
            ts: row.ts.to_string(),
            actor: row.actor.to_string(),
            change: row.reason.unwrap_or_default(),
        });
        Ok::<(), Error>(())
    })?;
    let flag = record.flag;
    Ok(FlagPage {
        audit_href: format!("/ui/audit?flag={}", encoded(name)),
        explain_href: format!("/ui/explain?flag={}", encoded(name)),
        chrome: Some(chrome),
        link: FlagLink::new(&flag.name),
        rollout: percent(flag.rollout_pct),
        requires: flag.requires.iter().map(|r| FlagLink::new(r)).collect(),
        required_by: record
            .required_by
            .iter()
            .map(|r| FlagLink::new(r))
            .collect(),
        created_at: record.created_at,
        updated_at: record.updated_at,
        version,
        tally: view.assignment_tally(name, flag.rollout_pct)?,
        preview,
        history,
        flag,
    })
}

fn parse_rollout(flag: &str, text: &str) -> Result<f64, Refusal> {
    let pct: f64 = text.trim().parse().map_err(|_| {
        Refusal::BadRequest(format!(
            "rollout {text:?} for flag {flag:?} is not a number (0 to 100)"
        ))
    })?;
    validate_rollout(flag, pct)?;
    Ok(pct)
}
