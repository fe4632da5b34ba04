//! Flag pages: the list with its filters, one flag with its kill switch, rollout and history,
//! and the dependency graph.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Chrome, PageQuery, Visit, as_visitor, bad_query, encoded, page, problem, render};
use crate::audit::AuditQuery;
use crate::error::Error;
use crate::flag::{Flag, FlagSet, validate_rollout};
use crate::serve::{Refusal, Shared};
use crate::store::{AssignmentTally, Store, View};
use crate::token::Role;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/flags", get(list))
        .route("/ui/flags/{name}", get(show))
        .route("/ui/flags/{name}/enabled", post(set_enabled))
        .route("/ui/flags/{name}/rollout", post(set_rollout))
        .route("/ui/flags/{name}/stale-exempt", post(set_stale_exempt))
        .route("/ui/graph", get(graph))
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
            ts: row.ts,
            actor: row.actor,
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

/// A flag a kill switch would turn off along with the one thrown, and its contexts stored on.
struct Dependent {
    link: FlagLink,
    stored_on: i64,
}

#[derive(Template)]
#[template(path = "confirm_off.html")]
struct ConfirmPage {
    chrome: Option<Chrome>,
    link: FlagLink,
    version: i64,
    stored_on: i64,
    dependents: Vec<Dependent>,
}

#[derive(Debug, Deserialize)]
struct EnabledForm {
    csrf: String,
    version: i64,
    enabled: bool,
    /// "yes" once the operator has seen which dependent flags turn off with this one.
    #[serde(default)]
    confirm: String,
}

/// What a flag change did: a redirect back to the flag, or a page to show instead.
enum Outcome {
    Changed,
    Confirm(ConfirmPage),
}

/// A form that changes one flag; its CSRF token is checked before anything else.
trait FlagForm: Send + 'static {
    fn csrf(&self) -> &str;
}

impl FlagForm for EnabledForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

#[derive(Debug, Deserialize)]
struct ExemptForm {
    csrf: String,
    version: i64,
    stale_exempt: bool,
}

impl FlagForm for ExemptForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn set_stale_exempt(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ExemptForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "stale exemption",
        |store, chrome, name, form| {
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    stale_exempt: form.stale_exempt,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

impl FlagForm for RolloutForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Runs `work` with a flag form as an operator, then answers as [`answer`] does. `what`
/// names the form in the message for one that is incomplete.
async fn operate<F: FlagForm>(
    shared: &Shared,
    headers: &HeaderMap,
    name: String,
    form: Result<Form<F>, axum::extract::rejection::FormRejection>,
    what: &str,
    work: impl FnOnce(&mut Store, Chrome, &str, F) -> Result<Outcome, Refusal> + Send + 'static,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            &format!("The {what} form was incomplete: reload the flag's page and try again."),
        );
    };
    let csrf = form.csrf().to_string();
    let flag_href = FlagLink::new(&name).href;
    let done = as_visitor(
        shared,
        headers,
        Role::Operator,
        Visit::Form { csrf: &csrf },
        move |store, chrome| work(store, chrome, &name, form),
    )
    .await;
    answer(done, &flag_href)
}

async fn set_enabled(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<EnabledForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "kill switch",
        |store, chrome, name, form| {
            if !form.enabled && form.confirm != "yes" {
                let dependents = store.flags()?.all_dependents_of(name);
                if !dependents.is_empty() {
                    return confirmation(store, chrome, name, form.version, &dependents);
                }
            }
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    enabled: form.enabled,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

fn confirmation(
    store: &Store,
    chrome: Chrome,
    name: &str,
    version: i64,
    dependents: &[String],
) -> Result<Outcome, Refusal> {
    let stored_on =
        |flag: &str| -> Result<i64, Refusal> { Ok(store.assignment_tally(flag, 0.0)?.on) };
    let dependents = dependents
        .iter()
        .map(|flag| {
            Ok(Dependent {
                link: FlagLink::new(flag),
                stored_on: stored_on(flag)?,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(Outcome::Confirm(ConfirmPage {
        chrome: Some(chrome),
        link: FlagLink::new(name),
        version,
        stored_on: stored_on(name)?,
        dependents,
    }))
}

#[derive(Debug, Deserialize)]
struct RolloutForm {
    csrf: String,
    version: i64,
    rollout_pct: String,
}

async fn set_rollout(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<RolloutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "rollout",
        |store, chrome, name, form| {
            let pct = parse_rollout(name, &form.rollout_pct)?;
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    rollout_pct: pct,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

/// Applies `edit` to the flag as the visitor, if it is still at `version`: one audited change
/// row whose actor is the visitor's token name.
fn change(
    store: &mut Store,
    chrome: &Chrome,
    name: &str,
    version: i64,
    edit: impl FnOnce(&Flag) -> crate::error::Result<Flag>,
) -> Result<Outcome, Refusal> {
    store.modify_flag_at_version(name, version, &chrome.name, "web", edit)?;
    Ok(Outcome::Changed)
}

/// The response to a flag change: back to the flag's page (303, so a reload does not post
/// again), the confirmation page, or why it was refused.
fn answer(done: Result<Outcome, Response>, flag_href: &str) -> Response {
    match done {
        Ok(Outcome::Changed) => Redirect::to(flag_href).into_response(),
        Ok(Outcome::Confirm(page)) => render(&page),
        Err(response) => response,
    }
}

/// A flag placed in the graph: its column is its depth in the requires chain.
struct Node {
    link: FlagLink,
    label: String,
    enabled: bool,
    x: usize,
    y: usize,
}

struct Edge {
    x1: usize,
    y1: usize,
    x2: usize,
    y2: usize,
}

#[derive(Template)]
#[template(path = "graph.html")]
struct GraphPage {
    chrome: Option<Chrome>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    width: usize,
    height: usize,
    /// The same graph as nested lists, each flag with the flags that require it under it;
    /// built as escaped HTML because templates cannot recurse.
    nested_list: String,
}

const NODE_WIDTH: usize = 200;
const NODE_HEIGHT: usize = 32;
const COLUMN: usize = 260;
const ROW: usize = 48;
/// Longest name drawn in a box; the full name is the box's title and in the list.
const LABEL_CHARS: usize = 24;

async fn graph(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    page(&shared, &headers, |store, chrome| {
        let flags = store.flags()?;
        Ok(graph_page(&flags, chrome))
    })
    .await
}

fn graph_page(flags: &FlagSet, chrome: Chrome) -> GraphPage {
    // Computed without recursion: a store edited by hand may hold a long chain or a cycle.
    let depth = flags.depths();
    let mut rows_used: Vec<usize> = Vec::new();
    let mut place: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for flag in flags.iter() {
        let column = depth.get(flag.name.as_str()).copied().unwrap_or(0);
        if rows_used.len() <= column {
            rows_used.resize(column + 1, 0);
        }
        let (x, y) = (10 + column * COLUMN, 10 + rows_used[column] * ROW);
        rows_used[column] += 1;
        place.insert(&flag.name, (x, y));
        let link = FlagLink::new(&flag.name);
        let label = if link.name.chars().count() > LABEL_CHARS {
            let short: String = link.name.chars().take(LABEL_CHARS - 1).collect();
            format!("{short}…")
        } else {
            link.name.clone()
        };
        nodes.push(Node {
            link,
            label,
            enabled: flag.enabled,
            x,
            y,
        });
    }
    let edges = flags
        .iter()
        .flat_map(|flag| flag.requires.iter().map(move |r| (r.as_str(), &flag.name)))
        .filter_map(|(required, dependent)| {
            let (from, to) = (place.get(required)?, place.get(dependent.as_str())?);
            Some(Edge {
                x1: from.0 + NODE_WIDTH,
                y1: from.1 + NODE_HEIGHT / 2,
                x2: to.0,
                y2: to.1 + NODE_HEIGHT / 2,
            })
        })
        .collect();
    let roots: Vec<&str> = flags
        .iter()
        .filter(|flag| flag.requires.is_empty())
        .map(|flag| flag.name.as_str())
        .collect();
    let mut nested_list = String::new();
    nest(flags, &roots, &mut nested_list);
    GraphPage {
        chrome: Some(chrome),
        width: 20 + rows_used.len().max(1) * COLUMN,
        height: 20 + rows_used.iter().max().copied().unwrap_or(1) * ROW,
        nodes,
        edges,
        nested_list,
    }
}

/// Appends `roots` as a `<ul>`, each flag with the flags that require it nested under it.
/// Without recursion, and each flag's dependents are listed once: a flag met again (several
/// flags require it) is shown with "(above)", so a graph of shared requirements stays
/// linear in size instead of unfolding into a tree.
fn nest(flags: &FlagSet, roots: &[&str], html: &mut String) {
    if roots.is_empty() {
        return;
    }
    let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Each level: the names to list and how many of them are listed so far.
    let mut levels: Vec<(Vec<String>, usize)> =
        vec![(roots.iter().map(|r| r.to_string()).collect(), 0)];
    html.push_str("<ul>");
    while let Some((names, next)) = levels.last_mut() {
        let Some(name) = names.get(*next).cloned() else {
            levels.pop();
            html.push_str("</ul>");
            if !levels.is_empty() {
                html.push_str("</li>");
            }
            continue;
        };
        *next += 1;
        let link = FlagLink::new(&name);
        let state = if flags.get(&name).is_some_and(|f| f.enabled) {
            "on"
        } else {
            "off"
        };
        html.push_str(&format!(
            "<li><a href=\"{}\">{}</a> <span class=\"{state}\">{state}</span>",
            escaped(&link.href),
            escaped(&link.name)
        ));
        let dependents = flags.dependents_of(&name);
        if !listed.insert(name) {
            if !dependents.is_empty() {
                html.push_str(" (above)");
            }
            html.push_str("</li>");
        } else if dependents.is_empty() {
            html.push_str("</li>");
        } else {
            html.push_str("<ul>");
            levels.push((dependents, 0));
        }
    }
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
