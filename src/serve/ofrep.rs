//! The HTTP routes: OFREP's single and bulk evaluation, health and metrics.
//!
//! Reasons are OpenFeature's codes ([`crate::eval::Source::openfeature_reason`]); `metadata`
//! carries flagstore's own `source` and reason text.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{json_response, presented_token, unauthorized};
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

/// The shape of the usual request, read without building a `serde_json::Value` (whose maps
/// every request paid for). Nothing else may be in it: serde skips an unknown field's value
/// without the checks a full reading makes (half a surrogate pair in an escape, a number out
/// of range), so a body with one goes to the full reading.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluationRequest<'a> {
    #[serde(borrow)]
    context: Option<RequestContext<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestContext<'a> {
    #[serde(rename = "targetingKey", borrow)]
    targeting_key: Option<Cow<'a, str>>,
}

/// The context key of a request body: `context.targetingKey`, or the OFREP error code and
/// details that refuse it.
fn targeting_key(body: &[u8]) -> Result<String, (&'static str, String)> {
    // A body of the usual shape with a key is answered from the typed reading; anything else
    // (not JSON, another shape, another field, a repeated one, no key) goes through the full
    // reading, which alone decides what is refused and how.
    if let Ok(EvaluationRequest {
        context: Some(RequestContext {
            targeting_key: Some(key),
        }),
    }) = serde_json::from_slice(body)
        && !key.is_empty()
    {
        return checked_key(&key);
    }
    targeting_key_of_any_body(body)
}

fn checked_key(key: &str) -> Result<String, (&'static str, String)> {
    match crate::contexts::key_problem(key) {
        None => Ok(key.to_string()),
        Some(why) => Err(("INVALID_CONTEXT", format!("context.targetingKey: {why}"))),
    }
}

fn targeting_key_of_any_body(body: &[u8]) -> Result<String, (&'static str, String)> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ("PARSE_ERROR", format!("the body is not JSON: {e}")))?;
    match request
        .get("context")
        .and_then(|context| context.get("targetingKey"))
    {
        // An empty key is a missing one: an unset variable in a client would otherwise put
        // every caller on one sticky decision.
        None | Some(Value::Null) => Err((
            "TARGETING_KEY_MISSING",
            "context.targetingKey is required: it is the context key decisions stick to"
                .to_string(),
        )),
        Some(Value::String(key)) if key.is_empty() => Err((
            "TARGETING_KEY_MISSING",
            "context.targetingKey is empty: it is the context key decisions stick to".to_string(),
        )),
        Some(Value::String(key)) => checked_key(key),
        Some(other) => Err((
            "INVALID_CONTEXT",
            format!("context.targetingKey must be a string, not {other}"),
        )),
    }
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
            let etag = etag(&flags, &context, &evaluations);
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
fn etag(flags: &FlagSet, context: &str, evaluations: &[Evaluation]) -> String {
    let definitions: Vec<_> = flags.iter().collect();
    let decisions: Vec<Value> = evaluations
        .iter()
        .map(|e| {
            let decision = DecisionBody::of(e);
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
    fn the_targeting_key_is_required_and_must_be_text() {
        for (body, key) in [
            (
                &br#"{"context": {"targetingKey": "t:1", "plan": "pro"}}"#[..],
                "t:1",
            ),
            (
                br#"{"flag": 1, "context": {"targetingKey": "t\u003a1"}}"#,
                "t:1",
            ),
            // A repeated name: the last one counts, as a JSON object read whole has it.
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": "b"}}"#,
                "b",
            ),
            (
                br#"{"context": {"targetingKey": "a"}, "context": {"targetingKey": "c"}}"#,
                "c",
            ),
        ] {
            assert_eq!(targeting_key(body), Ok(key.to_string()), "{body:?}");
        }
        for (body, code) in [
            (&b"not json"[..], "PARSE_ERROR"),
            // Not UTF-8, a bad escape, half a surrogate pair, a number out of range, each in a
            // field nobody reads: still not JSON.
            (
                b"{\"context\": {\"targetingKey\": \"a\", \"plan\": \"\xff\"}}",
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a", "plan": "\q"}}"#,
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a", "plan": "\ud800"}}"#,
                "PARSE_ERROR",
            ),
            (
                br#"{"context": {"targetingKey": "a"}, "n": 1e400}"#,
                "PARSE_ERROR",
            ),
            (b"", "PARSE_ERROR"),
            (b"{}", "TARGETING_KEY_MISSING"),
            (
                br#"{"context": {"targetingKey": ""}}"#,
                "TARGETING_KEY_MISSING",
            ),
            (br#"{"context": {}}"#, "TARGETING_KEY_MISSING"),
            (br#"{"context": 5}"#, "TARGETING_KEY_MISSING"),
            (
                br#"[{"context": {"targetingKey": "a"}}]"#,
                "TARGETING_KEY_MISSING",
            ),
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": null}}"#,
                "TARGETING_KEY_MISSING",
            ),
            (
                br#"{"context": {"targetingKey": "a", "targetingKey": 7}}"#,
                "INVALID_CONTEXT",
            ),
            (br#"{"context": {"targetingKey": 7}}"#, "INVALID_CONTEXT"),
            (
                br#"{"context": {"targetingKey": "a\u0000b"}}"#,
                "INVALID_CONTEXT",
            ),
            (
                format!(
                    r#"{{"context": {{"targetingKey": "{}"}}}}"#,
                    "k".repeat(1025)
                )
                .into_bytes()
                .leak(),
                "INVALID_CONTEXT",
            ),
        ] {
            assert_eq!(
                targeting_key(body).map_err(|(code, _)| code),
                Err(code),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The typed reading is only a shortcut: for any body, the answer is the full reading's.
    #[test]
    fn the_typed_reading_never_answers_otherwise_than_the_full_one() {
        let keys = [
            "t:1",
            "",
            "a\\u0000b",
            "\\u00e9t\\u00e9",
            "\\ud83d\\ude00",
            "\\ud800",
            "x\\q",
        ];
        let mut bodies = vec![
            b"".to_vec(),
            b"null".to_vec(),
            b"{\"context\": {\"targetingKey\": \"\xff\"}}".to_vec(),
            format!(
                r#"{{"context": {{"targetingKey": "{}"}}}}"#,
                "k".repeat(1025)
            )
            .into_bytes(),
        ];
        for key in keys {
            for body in [
                format!(r#"{{"context": {{"targetingKey": "{key}"}}}}"#),
                format!(r#"{{"context":{{"targetingKey":"{key}"}}}} "#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}}} trailing"#),
                format!(r#"{{"context": {{"targetingKey": "{key}", "plan": "pro"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}", "targetingKey": "b"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "b", "targetingKey": "{key}"}}}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}, "n": 1e400}}"#),
                format!(r#"{{"context": {{"targetingKey": "{key}"}}, "context": null}}"#),
                format!(r#"{{"context": null, "context": {{"targetingKey": "{key}"}}}}"#),
                format!(r#"[{{"context": {{"targetingKey": "{key}"}}}}]"#),
                format!(r#"{{"context": {{"targetingKey": ["{key}"]}}}}"#),
            ] {
                bodies.push(body.into_bytes());
            }
        }
        for body in &bodies {
            assert_eq!(
                targeting_key(body),
                targeting_key_of_any_body(body),
                "{}",
                String::from_utf8_lossy(body)
            );
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
