//! The whole server's routes in one router: OFREP, health and metrics, the admin API and the
//! web UI nested side by side, a fallback answering in the shape of the API a path is under,
//! the response counter, and `--no-auth`'s local-only guard.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::Shared;
use super::health::{health, metrics};
use super::http::json_response;
use super::ofrep::{evaluate_all, evaluate_flag};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_all))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .merge(super::admin::routes())
        .merge(super::web::routes())
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            count_response,
        ));
    let router = match shared.no_auth {
        true => router.layer(middleware::from_fn(local_only)),
        false => router,
    };
    router.with_state(shared)
}

/// Without authentication (`--no-auth`), answers only what a local program sends: a web page
/// the developer visits could otherwise POST to the loopback port (a `text/plain` POST needs
/// no CORS preflight), or read the answers through DNS rebinding (a foreign `Host`).
async fn local_only(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST).unwrap_or_default();
    if !is_loopback_authority(host) {
        return refused_locally(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not a loopback name; --no-auth answers local clients only"),
        );
    }
    if let Some(origin) = text(header::ORIGIN) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !authority.is_some_and(is_loopback_authority) {
            return refused_locally(
                StatusCode::FORBIDDEN,
                format!("Origin {origin:?} is not local; --no-auth answers local clients only"),
            );
        }
    }
    let json = text(header::CONTENT_TYPE).is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if request.method() == axum::http::Method::POST && !json {
        return refused_locally(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "--no-auth takes POST bodies sent as Content-Type: application/json only".to_string(),
        );
    }
    next.run(request).await
}

/// Whether `authority` (`host` or `host:port`) names this machine's loopback interface.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn refused_locally(status: StatusCode, details: String) -> Response {
    json_response(status, &json!({ "errorDetails": details }))
}

/// A path no route has, answered in the shape of the API it is under: a mistyped OFREP or
/// admin URL gets JSON, a /ui one a page.
async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path == "/ui" || path.starts_with("/ui/") {
        return super::web::not_found(path);
    }
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "errorDetails": format!("no route {method} {path}") }),
    )
}

async fn count_response(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    shared.metrics.count_response(response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities_are_the_local_names_with_or_without_a_port() {
        for local in [
            "localhost",
            "LOCALHOST:8016",
            "127.0.0.1:80",
            "127.9.9.9",
            "[::1]:8016",
            "[::1]",
        ] {
            assert!(is_loopback_authority(local), "{local}");
        }
        for foreign in [
            "",
            "evil.example",
            "evil.example:8016",
            "localhost.evil.example",
            "10.0.0.1:8016",
            "[::2]:80",
        ] {
            assert!(!is_loopback_authority(foreign), "{foreign}");
        }
    }
}
