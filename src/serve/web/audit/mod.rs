//! Reviewer pages: the audit log with its filters, paging and in-browser verification;
//! `export.rs` its CSV and JSONL downloads, `explain.rs` explain at a past time, `context.rs`
//! what one context got.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::flags::FlagLink;
use super::{Chrome, PageQuery, Visit, as_visitor, bad_query, encoded, query_string, render};
use crate::audit::{AuditQuery, AuditRow, Checkpoint, parse_time_bound};
use crate::error::Error;
use crate::serve::{Refusal, Shared};
use crate::store::Store;
use crate::token::Role;

mod context;
mod explain;
mod export;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/audit", get(audit_page))
        .merge(export::routes())
        .merge(explain::routes())
        .merge(context::routes())
}

/// Rows per audit page unless the reviewer asks for another number, and the most shown.
const PAGE_ROWS: i64 = 50;
const MAX_PAGE_ROWS: i64 = 500;

/// The audit page's filters, as the CLI's `audit` takes them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct Filters {
    flag: String,
    context: String,
    actor: String,
    kind: String,
    since: String,
    until: String,
}

impl Filters {
    fn query(&self) -> Result<AuditQuery, Refusal> {
        let text = |value: &str| (!value.trim().is_empty()).then(|| value.trim().to_string());
        let bound =
            |value: &str, until| text(value).map(|v| parse_time_bound(&v, until)).transpose();
        Ok(AuditQuery {
            flag: text(&self.flag),
            context: (!self.context.is_empty()).then(|| self.context.clone()),
            kind: text(&self.kind),
            actor: (!self.actor.is_empty()).then(|| self.actor.clone()),
            since: bound(&self.since, false)?,
            until: bound(&self.until, true)?,
            ..AuditQuery::default()
        })
    }

    /// The filters set, as a reviewer reads them: `flag enrich, kind change`; `None` for none.
    fn shown(&self) -> Option<String> {
        let set: Vec<String> = self
            .pairs()
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name} {}", crate::output::escaped(value)))
            .collect();
        (!set.is_empty()).then(|| set.join(", "))
    }

    fn pairs(&self) -> [(&str, &str); 6] {
        [
            ("flag", &self.flag),
            ("context", &self.context),
            ("actor", &self.actor),
            ("kind", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
        ]
    }
}

/// The audit page's paging, read from the same query string as its [`Filters`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Paging {
    cursor: Option<i64>,
    limit: Option<i64>,
    /// A checkpoint kept elsewhere, `{"id": N, "hash": "..."}`, to hold the log to.
    checkpoint: String,
}

struct ShownRow {
    id: i64,
    ts: String,
    kind: String,
    actor: String,
    flag: Option<FlagLink>,
    context: Option<(String, String)>,
    result: Option<bool>,
    reason: String,
}

/// A pasted checkpoint and what the server found for it.
struct CheckpointShown {
    id: i64,
    hash: String,
    /// The stored hash of row `id`, when the row is on this page.
    stored: Option<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Option<Chrome>,
    filters: Filters,
    limit: i64,
    rows: Vec<ShownRow>,
    /// The stored rows behind `rows`, as JSON, for the browser to re-hash.
    stored_json: String,
    older_href: Option<String>,
    newest_href: String,
    csv_href: String,
    jsonl_href: String,
    checkpoint_text: String,
    checkpoint: Option<CheckpointShown>,
    checkpoint_problem: Option<String>,
    /// What this server's signed tree heads vouch for, in words.
    heads: String,
    /// Why the filters were refused; the page then shows them in its form and no rows.
    problem: Option<String>,
    filters_shown: Option<String>,
}

async fn audit_page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    filters: PageQuery<Filters>,
    paging: PageQuery<Paging>,
) -> Response {
    let (filters, params) = match (filters, paging) {
        (Ok(filters), Ok(paging)) => (filters.0, paging.0),
        (Err(rejection), _) | (_, Err(rejection)) => return bad_query(&rejection),
    };
    let heads = shared.metrics.heads_said();
    let shown = as_visitor(
        &shared,
        &headers,
        Role::Viewer,
        Visit::Page,
        move |store, chrome| {
            let limit = params.limit.unwrap_or(PAGE_ROWS);
            let mut page = AuditPage {
                chrome: Some(chrome),
                limit,
                rows: Vec::new(),
                stored_json: "[]".to_string(),
                older_href: None,
                newest_href: "/ui/audit".to_string(),
                csv_href: String::new(),
                jsonl_href: String::new(),
                checkpoint_text: params.checkpoint.clone(),
                checkpoint: None,
                checkpoint_problem: None,
                heads,
                problem: None,
                filters_shown: filters.shown(),
                filters,
            };
            match fill_audit_page(store, &mut page, params) {
                Ok(()) => Ok((StatusCode::OK, page)),
                // A refused filter is shown in the page, beside the form that holds it.
                Err(Refusal::BadRequest(why)) => {
                    page.problem = Some(why);
                    Ok((StatusCode::BAD_REQUEST, page))
                }
                Err(other) => Err(other),
            }
        },
    )
    .await;
    match shown {
        Ok((status, page)) => (status, render(&page)).into_response(),
        Err(response) => response,
    }
}

/// Reads the rows `page.filters` and `params` select into `page`.
fn fill_audit_page(store: &Store, page: &mut AuditPage, params: Paging) -> Result<(), Refusal> {
    let (filters, limit) = (page.filters.clone(), page.limit);
    if !(1..=MAX_PAGE_ROWS).contains(&limit) {
        return Err(Refusal::BadRequest(format!(
            "{limit} rows per page is outside 1-{MAX_PAGE_ROWS}"
        )));
    }
    let (checkpoint, checkpoint_problem) = match params.checkpoint.trim() {
        "" => (None, None),
        text => match Checkpoint::parse(text) {
            Ok(checkpoint) => (Some(checkpoint), None),
            Err(why) => (None, Some(format!("The checkpoint was not read: {why}"))),
        },
    };
    // A checkpoint opens the page at its row, so the browser re-hashes the row it names.
    let cursor = params.cursor.or_else(|| {
        checkpoint
            .as_ref()
            .and_then(|c| c.id)
            .map(|id| id.saturating_add(1))
    });
    let query = AuditQuery {
        limit: Some(limit),
        cursor,
        ..filters.query()?
    };
    let mut rows = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    store.query_audit(&query, |row| {
        if ids.last() != Some(&row.id) {
            ids.push(row.id);
        }
        rows.push(shown(row));
        Ok::<(), Error>(())
    })?;
    // With the rows just before and after the page, which the browser checks the page's
    // first and last rows link to: an edit just outside the page shows at its edges.
    let edges: Vec<i64> = match (ids.iter().min(), ids.iter().max()) {
        (Some(&first), Some(&last)) => vec![first - 1, last + 1],
        _ => Vec::new(),
    };
    let stored = stored_rows(store, &[ids.as_slice(), &edges].concat())?;
    let here = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = filters.pairs().to_vec();
        pairs.extend_from_slice(extra);
        query_string(pairs)
    };
    let limit_text = limit.to_string();
    let limit_pair = if limit == PAGE_ROWS { "" } else { &limit_text };
    let older_href = (rows.len() as i64 >= limit)
        .then(|| ids.last().copied())
        .flatten()
        .map(|last| {
            let cursor = last.to_string();
            format!(
                "/ui/audit{}",
                here(&[("limit", limit_pair), ("cursor", &cursor)])
            )
        });
    let checkpoint = checkpoint.and_then(|c| {
        let id = c.id?;
        Some(CheckpointShown {
            id,
            stored: stored.iter().find(|r| r.id == id).map(|r| r.hash.clone()),
            hash: c.hash,
        })
    });
    let stored_json = serde_json::to_string(
        &stored
            .iter()
            .map(|row| {
                let mut json = stored_json(row);
                json["edge"] = (!ids.contains(&row.id)).into();
                json
            })
            .collect::<Vec<_>>(),
    )
    .map_err(|e| Refusal::Failed(e.to_string()))?;
    page.rows = rows;
    page.stored_json = stored_json;
    page.older_href = older_href;
    page.newest_href = format!("/ui/audit{}", here(&[("limit", limit_pair)]));
    page.csv_href = format!("/ui/audit/export{}", here(&[("format", "csv")]));
    page.jsonl_href = format!("/ui/audit/export{}", here(&[("format", "jsonl")]));
    page.checkpoint = checkpoint;
    page.checkpoint_problem = checkpoint_problem;
    Ok(())
}

fn shown(row: AuditRow) -> ShownRow {
    // Shown as the CLI's table shows them: a bidirectional override or zero-width character
    // in a key or an actor is spelled out, not applied to the page.
    let context = row.context_key.map(|key| {
        (
            format!("/ui/context?key={}", encoded(&key)),
            crate::output::escaped(&key),
        )
    });
    ShownRow {
        id: row.id,
        ts: row.ts.to_string(),
        kind: row.kind.into_owned(),
        actor: crate::output::escaped(&row.actor),
        flag: row.flag.as_deref().map(FlagLink::new),
        context,
        result: row.result.map(|r| r == 1),
        reason: crate::output::escaped(&row.reason.unwrap_or_default()),
    }
}

/// The stored rows with these ids (in any order), read a run of consecutive ids at a time.
fn stored_rows(store: &Store, ids: &[i64]) -> Result<Vec<AuditRow>, Refusal> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut rows = Vec::with_capacity(sorted.len());
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start;
        while end + 1 < sorted.len() && sorted[end + 1] == sorted[end] + 1 {
            end += 1;
        }
        rows.extend(store.stored_audit_rows(sorted[start], sorted[end])?);
        start = end + 1;
    }
    Ok(rows)
}

/// A stored row with every hashed column exactly as stored (`detail` as its text).
fn stored_json(row: &AuditRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.id,
        "ts": row.ts,
        "kind": row.kind,
        "actor": row.actor,
        "action": row.action,
        "flag": row.flag,
        "context_key": row.context_key,
        "result": row.result,
        "source": row.source,
        "reason": row.reason,
        "detail": row.detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}
