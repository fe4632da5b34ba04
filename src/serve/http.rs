//! What every JSON surface shares: the response with its headers, the 401 that names the
//! scheme, and the token a request presents (Bearer or X-API-Key).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        // Only a map with keys that are not strings fails, and no body has one.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}\n"),
        )
            .into_response(),
    }
}

pub(super) fn unauthorized(details: &str) -> Response {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "errorDetails": details }),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The token presented as `Authorization: Bearer TOKEN` or `X-API-Key: TOKEN`.
pub(super) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        // The scheme is case-insensitive (RFC 7235): "bearer" and "BEARER" too.
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
    bearer
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// serde_json refuses a map whose keys are not strings: the client gets a 500 that says
    /// so, not a half-written body.
    #[test]
    fn a_body_that_cannot_be_encoded_is_a_500_naming_why() {
        let response = json_response(StatusCode::OK, &BTreeMap::from([((1, 2), 3)]));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(response.into_body(), 1024))
                .unwrap()
                .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            "cannot encode the response: key must be a string\n"
        );
    }
}
