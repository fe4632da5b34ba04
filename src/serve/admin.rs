//! `/api/admin/v1`: flags, their history and the audit log as JSON, and flag changes guarded
//! by version, for operators' tools and the web UI. Bearer or X-API-Key tokens only; reads
//! append nothing to the audit log.
//!
//! A flag's version is the id of its newest change row; `GET .../flags/{name}` returns it as
//! `version` and as the `ETag`, and `PATCH` must send it back as `If-Match`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{json_response, presented_token, unauthorized};
use super::{Read, Refusal, Shared, as_caller, as_reader};
use crate::audit::{AuditQuery, parse_time_bound};
use crate::error::Error;
use crate::flag::Flag;
use crate::store::{Store, View};
use crate::token::{self, Role};

/// Audit rows per page when the caller names no limit, and the most it may ask for.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// A successful answer: a JSON body and, for a flag, its version as the ETag.
struct Reply {
    body: Value,
    version: Option<i64>,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/admin/v1/flags", get(list_flags))
        .route(
            "/api/admin/v1/flags/{name}",
            get(show_flag).patch(change_flag),
        )
        .route("/api/admin/v1/audit", get(audit))
        .route("/api/admin/v1/stale", get(stale))
        .route("/api/admin/v1/graph", get(graph))
        .route("/api/admin/v1/explain", get(explain))
        .route("/api/admin/v1/context", get(context))
        .route("/api/admin/v1/tokens", get(list_tokens).post(create_token))
        .route(
            "/api/admin/v1/tokens/{name}",
            axum::routing::delete(revoke_token),
        )
        .route_layer(axum::middleware::from_fn(private_answers))
}

/// Admin answers name flags, contexts and actors: no cache keeps them, and no browser reads
/// them as anything but the JSON they are.
async fn private_answers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The token a request presents, hashed.
fn token_sha256(headers: &HeaderMap) -> Option<String> {
    presented_token(headers).map(token::sha256_hex)
}

/// The answer to a request that presents no token.
fn no_token() -> Response {
    unauthorized("a token is required: Authorization: Bearer TOKEN or X-API-Key: TOKEN")
}

/// Runs `work` on the writer's store if the presented token's role is at least `needed`;
/// `work` gets the token's name, the actor of what it writes.
async fn call(
    shared: &Shared,
    headers: &HeaderMap,
    needed: Role,
    work: impl FnOnce(&mut Store, &str) -> Result<Reply, Refusal> + Send + 'static,
) -> Response {
    let Some(sha256) = token_sha256(headers) else {
        return no_token();
    };
    respond(
        as_caller(shared, sha256, needed, move |store, caller| {
            work(store, &caller.name)
        })
        .await,
    )
}

/// Runs read-only `work` on one of the readers, for any active token.
async fn read(
    shared: &Shared,
    headers: &HeaderMap,
    work: impl FnOnce(&mut Store) -> Result<Reply, Refusal> + Send + 'static,
) -> Response {
    let Some(sha256) = token_sha256(headers) else {
        return no_token();
    };
    respond(
        as_reader(
            shared,
            sha256,
            Role::Viewer,
            Read::Interactive,
            move |store, _| work(store),
        )
        .await,
    )
}

fn respond(answer: Result<Reply, Refusal>) -> Response {
    match answer {
        Ok(Reply { body, version }) => {
            let mut response = json_response(StatusCode::OK, &body);
            if let Some(etag) =
                version.and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok())
            {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
        }
        Err(refusal) => {
            let (status, details) = match refusal {
                Refusal::Unauthorized => {
                    return unauthorized("the token is not an active flagstore token");
                }
                Refusal::Forbidden(role) => (
                    StatusCode::FORBIDDEN,
                    format!("this needs a token with role {} or above", role.as_str()),
                ),
                Refusal::NotFound(details) => (StatusCode::NOT_FOUND, details),
                Refusal::BadRequest(details) => (StatusCode::BAD_REQUEST, details),
                Refusal::PreconditionRequired => (
                    StatusCode::PRECONDITION_REQUIRED,
                    "send the flag's version as If-Match (its ETag from GET)".to_string(),
                ),
                Refusal::Conflict(details) => (StatusCode::PRECONDITION_FAILED, details),
                Refusal::Busy => return super::busy(),
                Refusal::Failed(details) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    super::internal_error(&details),
                ),
            };
            json_response(status, &json!({ "errorDetails": details }))
        }
    }
}

/// A flag as the API shows it, with its version: both from `view`, so the version names the
/// state shown and an edit made from it is refused if the flag has changed since.
fn flag_json(view: &View, name: &str) -> Result<Option<(Value, i64)>, Refusal> {
    let version = view.flag_version(name)?;
    let Some(record) = view.flag(name)? else {
        return Ok(None);
    };
    let mut body =
        serde_json::to_value(&record.flag).map_err(|e| Refusal::Failed(e.to_string()))?;
    body["required_by"] = json!(record.required_by);
    body["created_at"] = json!(record.created_at);
    body["updated_at"] = json!(record.updated_at);
    body["version"] = json!(version);
    Ok(Some((body, version)))
}

async fn list_flags(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    read(&shared, &headers, |store| {
        store.read(|view| {
            let names: Vec<String> = view.flags()?.names().map(str::to_string).collect();
            let mut flags = Vec::with_capacity(names.len());
            for name in names {
                if let Some((flag, _)) = flag_json(view, &name)? {
                    flags.push(flag);
                }
            }
            Ok(Reply {
                body: json!({ "flags": flags }),
                version: None,
            })
        })
    })
    .await
}

async fn show_flag(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    read(&shared, &headers, move |store| {
        store.read(|view| {
            let Some((mut body, version)) = flag_json(view, &name)? else {
                return Err(Refusal::NotFound(view.unknown_flag(&name)?.to_string()));
            };
            let changes = AuditQuery {
                flag: Some(name.clone()),
                kind: Some("change".to_string()),
                ascending: true,
                ..AuditQuery::default()
            };
            let mut history = Vec::new();
            view.query_audit(&changes, |row| {
                history.push(row);
                Ok::<(), Error>(())
            })?;
            body["history"] = json!(history);
            Ok(Reply {
                body,
                version: Some(version),
            })
        })
    })
    .await
}

/// What `PATCH .../flags/{name}` may change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagPatch {
    enabled: Option<bool>,
    rollout_pct: Option<f64>,
    stale_exempt: Option<bool>,
}

/// Every token, active and revoked, without its hash: the admin role's view of who may call.
async fn list_tokens(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    call(&shared, &headers, Role::Admin, |store, _| {
        let tokens: Vec<Value> = store
            .tokens()?
            .into_iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "role": t.role.as_str(),
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                })
            })
            .collect();
        body(json!({ "tokens": tokens }))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    role: Option<String>,
}

/// Creates a token (role viewer unless named), audited under the caller's name; the answer
/// holds the token's text, which is shown this once and stored only as its SHA-256.
async fn create_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body_bytes: Bytes,
) -> Response {
    let asked: Result<NewToken, String> = serde_json::from_slice(&body_bytes)
        .map_err(|e| format!("the body is not a new token ({{\"name\", \"role\"}}): {e}"));
    change_tokens(&shared, &headers, move |store, actor| {
        let asked = asked.map_err(Refusal::BadRequest)?;
        let role: Role = asked.role.as_deref().unwrap_or("viewer").parse()?;
        let secret = token::generate()?;
        store.create_token(&asked.name, &token::sha256_hex(&secret), role, actor)?;
        body(json!({ "name": asked.name, "role": role.as_str(), "token": secret }))
    })
    .await
}

/// Revokes an active token, audited under the caller's name; it stops working at once on
/// this server and within a second on the others.
async fn revoke_token(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    change_tokens(&shared, &headers, move |store, actor| {
        store.revoke_token(&name, actor)?;
        body(json!({ "name": name, "revoked": true }))
    })
    .await
}

/// Runs `work`, a change of tokens, as an admin; then this server reads the tokens again, so
/// the change takes effect here at once.
async fn change_tokens(
    shared: &Shared,
    headers: &HeaderMap,
    work: impl FnOnce(&mut Store, &str) -> Result<Reply, Refusal> + Send + 'static,
) -> Response {
    let answer = call(shared, headers, Role::Admin, work).await;
    super::forget_tokens(shared);
    answer
}

async fn change_flag(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected: Option<Result<i64, String>> = headers.get(header::IF_MATCH).map(|value| {
        value
            .to_str()
            .ok()
            .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|tag| tag.parse().ok())
            .ok_or_else(|| "If-Match must be a flag version, as its ETag gives it".to_string())
    });
    let patch: Result<FlagPatch, String> =
        serde_json::from_slice(&body).map_err(|e| format!("the body is not a flag change: {e}"));
    call(&shared, &headers, Role::Operator, move |store, actor| {
        let expected = expected
            .ok_or(Refusal::PreconditionRequired)?
            .map_err(Refusal::BadRequest)?;
        let patch = patch.map_err(Refusal::BadRequest)?;
        let (_, version) = store.modify_flag_at_version(&name, expected, actor, "api", |flag| {
            if let Some(pct) = patch.rollout_pct {
                crate::flag::validate_rollout(&flag.name, pct)?;
            }
            Ok(Flag {
                enabled: patch.enabled.unwrap_or(flag.enabled),
                rollout_pct: patch.rollout_pct.unwrap_or(flag.rollout_pct),
                stale_exempt: patch.stale_exempt.unwrap_or(flag.stale_exempt),
                ..flag.clone()
            })
        })?;
        let (body, _) = store
            .read(|view| flag_json(view, &name))?
            .ok_or_else(|| Refusal::NotFound(format!("flag {name:?} does not exist")))?;
        Ok(Reply {
            body,
            version: Some(version),
        })
    })
    .await
}

/// The rows a page holds: `limit`, or [`DEFAULT_PAGE`] without one.
fn page_size(limit: Option<i64>) -> Result<i64, Refusal> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Refusal::BadRequest(format!(
            "limit {limit} is outside 1-{MAX_PAGE}"
        )))
    }
}

/// The filters of `GET .../audit`, as the CLI's `audit` takes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    flag: Option<String>,
    context: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<i64>,
    order: Option<String>,
}

/// About the most an audit answer holds, in bytes of its rows: a decision record of many
/// flags is shown as a row per flag, each with the record's detail, so `limit` rows alone do
/// not bound an answer. A page ends after the record that passes this, however few rows it
/// holds, and `next_cursor` continues from there.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// An audit row's size in an answer beside its detail, about: ids, times, hashes, names.
const ROW_BYTES_BESIDE_DETAIL: usize = 400;

/// Why an audit scan stopped early.
enum Page {
    Full,
    Failed(Error),
}

impl From<Error> for Page {
    fn from(error: Error) -> Page {
        Page::Failed(error)
    }
}

async fn audit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    read(&shared, &headers, move |store| {
        let params = parsed(params)?;
        let bound = |value: &Option<String>, until: bool| {
            value
                .as_deref()
                .map(|v| parse_time_bound(v, until))
                .transpose()
        };
        let limit = page_size(params.limit)?;
        let ascending = match params.order.as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(other) => {
                return Err(Refusal::BadRequest(format!(
                    "order {other:?} is neither asc nor desc"
                )));
            }
        };
        let query = AuditQuery {
            flag: params.flag,
            context: params.context,
            kind: params.kind,
            actor: params.actor,
            since: bound(&params.since, false)?,
            until: bound(&params.until, true)?,
            limit: Some(limit),
            ascending,
            cursor: params.cursor,
        };
        let mut rows = Vec::new();
        let mut last_id = None;
        let mut bytes = 0;
        let scanned = store.query_audit(&query, |row| {
            // Past the budget, the page ends with the record that passed it.
            if bytes > MAX_ANSWER_BYTES && last_id != Some(row.id) {
                return Err(Page::Full);
            }
            last_id = Some(row.id);
            bytes += row.detail.len() + ROW_BYTES_BESIDE_DETAIL;
            rows.push(row);
            Ok(())
        });
        let full = match scanned {
            Ok(()) => rows.len() as i64 >= limit,
            Err(Page::Full) => true,
            Err(Page::Failed(error)) => return Err(error.into()),
        };
        // A full page may have more after it; the cursor continues after its last record.
        let next_cursor = last_id.filter(|_| full);
        Ok(Reply {
            body: json!({ "rows": rows, "next_cursor": next_cursor }),
            version: None,
        })
    })
    .await
}

/// A reply with this body and no version.
fn body(body: Value) -> Result<Reply, Refusal> {
    Ok(Reply {
        body,
        version: None,
    })
}

/// A query string's parameters, or the 400 naming what is wrong with them.
fn parsed<T>(
    params: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Refusal> {
    params
        .map(|Query(params)| params)
        .map_err(|e| Refusal::BadRequest(e.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaleParams {
    days: Option<u32>,
}

async fn stale(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: Result<Query<StaleParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    read(&shared, &headers, move |store| {
        let days = parsed(params)?
            .days
            .unwrap_or(crate::store::DEFAULT_STALE_DAYS);
        let flags = store.stale_flags(days)?;
        body(json!({ "days": days, "flags": flags }))
    })
    .await
}

/// Every flag with what it requires and what requires it: the dependency graph's edges.
async fn graph(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    read(&shared, &headers, |store| {
        let flags = store.flags()?;
        let nodes: Vec<Value> = flags
            .iter()
            .map(|flag| {
                json!({
                    "name": flag.name,
                    "enabled": flag.enabled,
                    "requires": flag.requires,
                    "required_by": flags.dependents_of(&flag.name),
                })
            })
            .collect();
        body(json!({ "flags": nodes }))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParams {
    flag: String,
    context: String,
    at: Option<String>,
}

/// The steps `flagstore explain --json` prints, with `--at` as `at`.
async fn explain(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: Result<Query<ExplainParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    read(&shared, &headers, move |store| {
        let params = parsed(params)?;
        let report =
            crate::explain::explain(store, &params.flag, &params.context, params.at.as_deref())?;
        body(report.json())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextParams {
    key: String,
    limit: Option<i64>,
}

/// What one context got: its stored assignments, and its newest decisions as audit rows.
async fn context(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: Result<Query<ContextParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    read(&shared, &headers, move |store| {
        let params = parsed(params)?;
        let limit = page_size(params.limit)?;
        let assignments = store.assignments(None, Some(&params.key))?;
        let query = AuditQuery {
            context: Some(params.key.clone()),
            kind: Some("evaluation".to_string()),
            limit: Some(limit),
            ..AuditQuery::default()
        };
        let mut decisions = Vec::new();
        store.query_audit(&query, |row| {
            decisions.push(row);
            Ok::<(), Error>(())
        })?;
        body(json!({
            "key": params.key,
            "assignments": assignments,
            "decisions": decisions,
        }))
    })
    .await
}
