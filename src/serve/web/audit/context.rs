//! What one context got: its stored assignments and its newest decisions.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::{ShownRow, shown};
use crate::audit::AuditQuery;
use crate::error::Error;
use crate::serve::Shared;
use crate::serve::web::flags::FlagLink;
use crate::serve::web::{Chrome, PageQuery, bad_query, page, query_string};
use crate::store::AssignmentRow;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/ui/context", get(context_page))
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
    // One snapshot: an evaluation landing meanwhile shows in both parts or in neither.
    page(&shared, &headers, move |store, chrome| {
        store.read(|view| {
            let key = params.key;
            let assignments = if key.is_empty() {
                Vec::new()
            } else {
                view.assignments(None, Some(&key))?
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
                view.query_audit(&query, |row| {
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
    })
    .await
}
