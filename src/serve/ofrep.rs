//! The HTTP routes: OFREP's single and bulk evaluation, health and metrics.
//!
//! Reasons are OpenFeature's codes ([`crate::eval::Source::openfeature_reason`]); `metadata`
//! carries flagstore's own `source` and reason text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::http::{json_response, presented_token, unauthorized};
use super::targeting::targeting_key;
use super::{Answer, Job, Shared};
use crate::eval::Evaluation;
use crate::flag::FlagSet;
use crate::store::Selection;
use crate::token;

/// One flag's answer, serialized as declared: every evaluation request builds one, so it is
/// written straight to the body instead of through a `serde_json::Value` map.
#[derive(Serialize)]
struct DecisionBody<'a> {
    key: &'a str,
    value: bool,
    variant: &'static str,
    reason: &'static str,
    metadata: DecisionMetadata,
}

#[derive(Serialize)]
struct DecisionMetadata {
    source: &'static str,
    reason: String,
}

impl<'a> DecisionBody<'a> {
    fn of(evaluation: &'a Evaluation) -> DecisionBody<'a> {
        let decision = &evaluation.decision;
        DecisionBody {
            key: &evaluation.flag,
            value: decision.enabled,
            variant: if decision.enabled { "on" } else { "off" },
            reason: decision.source.openfeature_reason(),
            metadata: DecisionMetadata {
                source: decision.source.as_str(),
                reason: decision.reason(),
            },
        }
    }
}

/// The bulk endpoint's body.
#[derive(Serialize)]
struct BulkBody<'a> {
    flags: Vec<DecisionBody<'a>>,
}

/// An OFREP error body; `key` is left out for the bulk endpoint, as the spec shapes it.
fn error(status: StatusCode, key: Option<&str>, code: &str, details: &str) -> Response {
    let mut body = json!({ "errorCode": code, "errorDetails": details });
    if let Some(key) = key {
        body["key"] = json!(key);
    }
    json_response(status, &body)
}

/// Authenticates, queues the request to the writer and waits for its committed answer.
async fn ask(
    shared: &Shared,
    headers: &HeaderMap,
    selection: Selection,
    context: String,
) -> Result<Answer, Response> {
    let token_sha256 = match (shared.no_auth, presented_token(headers)) {
        (true, _) => None,
        (false, Some(token)) => Some(token::sha256_hex(token)),
        (false, None) => {
            return Err(unauthorized(
                "a token is required: Authorization: Bearer TOKEN or X-API-Key: TOKEN",
            ));
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job::Evaluate {
        selection,
        context,
        token_sha256,
        reply,
    };
    if shared.jobs.send(job).await.is_err() {
        return Ok(Answer::Failed("the server is stopping".to_string()));
    }
    Ok(answer
        .await
        .unwrap_or_else(|_| Answer::Failed("the writer stopped".to_string())))
}

pub(super) async fn evaluate_flag(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = match targeting_key(&body) {
        Ok(context) => context,
        Err((code, details)) => return error(StatusCode::BAD_REQUEST, Some(&key), code, &details),
    };
    let selection = Selection::Flags(vec![key.clone()]);
    match ask(&shared, &headers, selection, context).await {
        Err(response) => response,
        Ok(Answer::Evaluated { evaluations, .. }) => match evaluations.first() {
            Some(evaluation) => json_response(StatusCode::OK, &DecisionBody::of(evaluation)),
            None => internal("no decision was made"),
        },
        Ok(Answer::FlagNotFound) => error(
            StatusCode::NOT_FOUND,
            Some(&key),
            "FLAG_NOT_FOUND",
            &format!("flag {key:?} does not exist"),
        ),
        Ok(Answer::Unauthorized) => unauthorized("the token is not an active flagstore token"),
        Ok(Answer::Failed(message)) => internal(&message),
    }
}

pub(super) async fn evaluate_all(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = match targeting_key(&body) {
        Ok(context) => context,
        Err((code, details)) => return error(StatusCode::BAD_REQUEST, None, code, &details),
    };
    match ask(&shared, &headers, Selection::All, context.clone()).await {
        Err(response) => response,
        Ok(Answer::Evaluated { flags, evaluations }) => {
            let body = BulkBody {
                flags: evaluations.iter().map(DecisionBody::of).collect(),
            };
            let etag = etag(&flags, &context, &body.flags);
            if if_none_match(&headers, &etag) {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
            }
            let mut response = json_response(StatusCode::OK, &body);
            if let Ok(value) = HeaderValue::from_str(&etag) {
                response.headers_mut().insert(header::ETAG, value);
            }
            response
        }
        Ok(Answer::FlagNotFound) => internal("no flags were selected"),
        Ok(Answer::Unauthorized) => unauthorized("the token is not an active flagstore token"),
        Ok(Answer::Failed(message)) => internal(&message),
    }
}

/// A strong ETag over the flag definitions in force, the context key and the decisions (each
/// flag's value, variant and reason): any change to one of them changes it. The metadata is
/// left out: a repeated request turns "rollout: bucket 20 < 50" into "sticky: on since ...",
/// but the client's cached answer is as valid as it was.
fn etag(flags: &FlagSet, context: &str, decisions: &[DecisionBody]) -> String {
    let definitions: Vec<_> = flags.iter().collect();
    let decisions: Vec<Value> = decisions
        .iter()
        .map(|decision| {
            json!([
                decision.key,
                decision.value,
                decision.variant,
                decision.reason
            ])
        })
        .collect();
    let covered = json!({ "flags": definitions, "context": context, "decisions": decisions });
    format!("\"{}\"", &token::sha256_hex(&covered.to_string())[..32])
}

/// Whether `If-None-Match` lists `etag` (weak or strong) or is `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn internal(details: &str) -> Response {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({ "errorDetails": super::internal_error(details) }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_either_header_and_bearer_wins() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static("fst_key"));
        assert_eq!(presented_token(&headers), Some("fst_key"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer fst_bearer"),
        );
        assert_eq!(presented_token(&headers), Some("fst_bearer"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_token(&headers), Some("fst_key"));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let value = HeaderValue::from_str(&format!("{scheme} fst_any_case")).unwrap();
            headers.insert(header::AUTHORIZATION, value);
            assert_eq!(presented_token(&headers), Some("fst_any_case"));
        }
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let mut headers = HeaderMap::new();
        assert!(!if_none_match(&headers, "\"a\""));
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"b\", W/\"a\""),
        );
        assert!(if_none_match(&headers, "\"a\""));
        assert!(!if_none_match(&headers, "\"c\""));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&headers, "\"c\""));
    }
}
