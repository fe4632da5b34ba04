//! Reviewer pages: the audit log with its filters, paging, exports and in-browser
//! verification; explain at a past time; what one context got.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::flags::FlagLink;
use super::{
    Chrome, PageQuery, Visit, as_visitor, bad_query, encoded, page, query_string, refused, render,
};
use crate::audit::{AuditQuery, AuditRow, COLUMNS, Checkpoint, parse_time_bound};
use crate::error::Error;
use crate::explain::{Report, explain};
use crate::serve::{Refusal, Shared};
use crate::store::{AssignmentRow, Store};
use crate::token::Role;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/audit", get(audit_page))
        .route("/ui/audit/export", get(export))
        .route("/ui/explain", get(explain_page))
        .route("/ui/context", get(context_page))
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
        ts: row.ts,
        kind: row.kind,
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExportFormat {
    format: String,
}

/// Bytes of an export sent at a time, and chunks waiting for a slow client at most: an
/// export of any size streams in constant memory.
const EXPORT_CHUNK: usize = 64 * 1024;
const EXPORT_CHUNKS_QUEUED: usize = 16;

/// How long an export waits for its client to take the next chunk before it gives up and
/// frees its reader: a download nobody reads must not hold a slot for ever.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// The export's body as it is written: chunks to the response stream. An error from the
/// client side (it went away) stops the scan.
struct ChunkWriter {
    buffer: Vec<u8>,
    chunks: mpsc::Sender<std::io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self, chunk: std::io::Result<Bytes>) -> std::io::Result<()> {
        let sent = match tokio::runtime::Handle::try_current() {
            // A reader's blocking thread, which may wait on the runtime.
            Ok(runtime) => runtime.block_on(async {
                tokio::time::timeout(EXPORT_STALL, self.chunks.send(chunk)).await
            }),
            // The writer's thread, for a store in memory, which has no readers.
            Err(_) => Ok(self.chunks.blocking_send(chunk)),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client left",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", EXPORT_STALL.as_secs()),
            )),
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.send(Ok(chunk))
    }
}

/// Writes every row `query` selects to `out` as CSV (with its header) or JSON lines.
fn write_export(
    store: &Store,
    query: &AuditQuery,
    csv: bool,
    out: &mut ChunkWriter,
) -> Result<(), Refusal> {
    let failed = |e: std::io::Error| Refusal::Failed(e.to_string());
    if csv {
        let mut writer = csv::Writer::from_writer(&mut *out);
        let csv_failed = |e: csv::Error| Refusal::Failed(e.to_string());
        writer.write_record(COLUMNS).map_err(csv_failed)?;
        store.query_audit(query, |row| {
            writer.write_record(row.csv_record()).map_err(csv_failed)
        })?;
        writer.flush().map_err(failed)?;
    } else {
        store.query_audit(query, |row| {
            serde_json::to_writer(&mut *out, &row).map_err(|e| Refusal::Failed(e.to_string()))?;
            std::io::Write::write_all(out, b"\n").map_err(failed)
        })?;
    }
    std::io::Write::flush(out).map_err(failed)
}

/// Every row the filters select, newest first, as `flagstore audit --format csv|jsonl
/// --limit 0` prints them, streamed as it is read.
async fn export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    filters: PageQuery<Filters>,
    format: PageQuery<ExportFormat>,
) -> Response {
    let (filters, format) = match (filters, format) {
        (Ok(filters), Ok(format)) => (filters.0, format.0.format),
        (Err(rejection), _) | (_, Err(rejection)) => return bad_query(&rejection),
    };
    let (csv, content_type, file) = match format.as_str() {
        "csv" => (true, "text/csv; charset=utf-8", "audit.csv"),
        "jsonl" => (false, "application/x-ndjson", "audit.jsonl"),
        other => {
            return refused(
                Refusal::BadRequest(format!("export format {other:?} is neither csv nor jsonl")),
                None,
            );
        }
    };
    let query = match filters.query() {
        Ok(query) => query,
        Err(refusal) => return refused(refusal, None),
    };
    let (chunks, mut received) = mpsc::channel(EXPORT_CHUNKS_QUEUED);
    // The scan runs on a reader while the response streams; its first chunk (empty) says the
    // visitor was let in, so that a refusal is still answered with its own status.
    let scan = tokio::spawn(async move {
        as_visitor(
            &shared,
            &headers,
            Role::Viewer,
            Visit::Export,
            move |store, _| {
                let mut out = ChunkWriter {
                    buffer: Vec::with_capacity(EXPORT_CHUNK),
                    chunks,
                };
                out.send(Ok(Bytes::new()))
                    .map_err(|e| Refusal::Failed(e.to_string()))?;
                if let Err(refusal) = write_export(store, &query, csv, &mut out) {
                    // The status is sent already: the body ends in an error, so the client sees
                    // a failed download rather than a short file.
                    // Without waiting: a client that stopped reading has had its deadline.
                    let error = std::io::Error::other(format!("{refusal:?}"));
                    let _ = out.chunks.try_send(Err(error));
                }
                Ok(())
            },
        )
        .await
    });
    if received.recv().await.is_none() {
        return match scan.await {
            Ok(Err(response)) => response,
            _ => refused(
                Refusal::Failed("the export stopped before it began".to_string()),
                None,
            ),
        };
    }
    let body = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    });
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExplainParams {
    flag: String,
    context: String,
    at: String,
}

#[derive(Template)]
#[template(path = "explain.html")]
struct ExplainPage {
    chrome: Option<Chrome>,
    params: ExplainParams,
    report: Option<Report>,
    /// The audit page showing the decision recorded nearest before the time asked about.
    recorded_href: Option<String>,
    context_href: String,
}

async fn explain_page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: PageQuery<ExplainParams>,
) -> Response {
    let params = match params {
        Ok(params) => params.0,
        Err(rejection) => return bad_query(&rejection),
    };
    page(&shared, &headers, move |store, chrome| {
        let report = if params.flag.trim().is_empty() || params.context.is_empty() {
            None
        } else {
            let at = Some(params.at.trim()).filter(|at| !at.is_empty());
            Some(explain(store, params.flag.trim(), &params.context, at)?)
        };
        let recorded_href = report
            .as_ref()
            .and_then(|r| r.recorded.as_ref())
            .and_then(|row| row.as_ref())
            .map(|row| {
                let cursor = (row.id + 1).to_string();
                format!(
                    "/ui/audit{}",
                    query_string([
                        ("flag", params.flag.trim()),
                        ("context", params.context.as_str()),
                        ("cursor", cursor.as_str()),
                    ])
                )
            });
        Ok(ExplainPage {
            chrome: Some(chrome),
            context_href: format!("/ui/context?key={}", encoded(&params.context)),
            report,
            recorded_href,
            params,
        })
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContextParams {
    key: String,
}

/// The newest decisions shown for one context.
const CONTEXT_ROWS: i64 = 500;

#[derive(Template)]
#[template(path = "context.html")]
struct ContextPage {
    chrome: Option<Chrome>,
    key: String,
    assignments: Vec<(FlagLink, AssignmentRow)>,
    decisions: Vec<ShownRow>,
    audit_href: String,
}

async fn context_page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: PageQuery<ContextParams>,
) -> Response {
    let params = match params {
        Ok(params) => params.0,
        Err(rejection) => return bad_query(&rejection),
    };
    page(&shared, &headers, move |store, chrome| {
        let key = params.key;
        let assignments = if key.is_empty() {
            Vec::new()
        } else {
            store
                .assignments(None, Some(&key))?
                .into_iter()
                .map(|row| (FlagLink::new(&row.flag), row))
                .collect()
        };
        let mut decisions = Vec::new();
        if !key.is_empty() {
            let query = AuditQuery {
                context: Some(key.clone()),
                kind: Some("evaluation".to_string()),
                limit: Some(CONTEXT_ROWS),
                ..AuditQuery::default()
            };
            store.query_audit(&query, |row| {
                decisions.push(shown(row));
                Ok::<(), Error>(())
            })?;
        }
        Ok(ContextPage {
            chrome: Some(chrome),
            audit_href: format!("/ui/audit{}", query_string([("context", key.as_str())])),
            key,
            assignments,
            decisions,
        })
    })
    .await
}
