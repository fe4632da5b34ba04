//! Explain at a past time: the steps `flagstore explain --at` prints, and a link to the
//! decision recorded nearest before that time.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use crate::explain::{Report, explain};
use crate::serve::Shared;
use crate::serve::web::{Chrome, PageQuery, bad_query, encoded, page, query_string};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/ui/explain", get(explain_page))
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
