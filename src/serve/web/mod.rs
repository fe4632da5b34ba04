//! The web UI under `/ui`: server-rendered HTML for operators and reviewers, on the same
//! listener and the same writer as OFREP and the admin API.
//!
//! Signing in exchanges an API token for a session kept in memory (the cookie holds only a
//! random id, HttpOnly, SameSite=Strict). Every page asks the writer with the session's token,
//! so a revoked token ends its sessions within a second. Every form carries the session's CSRF
//! token and every POST must come from this origin. Pages work without JavaScript; htmx and
//! `app.js` (served from here, never a CDN) only improve them, under a CSP that allows no
//! inline script or style.

mod audit;
mod flags;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Caller, Read, Refusal, Shared, as_caller, as_reader};
use crate::store::Store;
use crate::token::{self, Role};

/// htmx 2.0.11, `dist/htmx.min.js` of the npm package `htmx.org` (integrity
/// sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==,
/// file SHA-256 in `assets/README.md`, held to it by a test), embedded so that `cargo install`
/// users need neither Node nor a CDN.
const HTMX: &[u8] = include_bytes!("../../../assets/htmx.min.js");
const APP_JS: &[u8] = include_bytes!("../../../assets/app.js");
const STYLE: &[u8] = include_bytes!("../../../assets/style.css");
const FAVICON: &[u8] = include_bytes!("../../../assets/favicon.svg");

const SESSION_COOKIE: &str = "flagstore_session";
/// The session cookie's name over TLS: browsers keep a `__Host-` cookie to this host, path /
/// and Secure, so a sibling subdomain cannot plant or overwrite it.
const SESSION_COOKIE_TLS: &str = "__Host-flagstore_session";
/// How long a session lasts after sign-in, however active.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// No inline script or style anywhere, so an injected one never runs. Browsers report
/// violations to [`CSP_REPORTS`], counted in `/metrics`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'; report-uri /ui/csp-report";
const CSP_REPORTS: &str = "/ui/csp-report";
/// The most of a violation report logged.
const REPORT_LOGGED: usize = 2_000;
/// The largest violation report taken; a browser's are a few hundred bytes.
const REPORT_BYTES: usize = 16 * 1024;
/// Violation reports logged per minute at most, whoever sends them: every one is counted.
const REPORTS_LOGGED_PER_MINUTE: u32 = 10;

/// Signed-in browsers, by session id.
#[derive(Default)]
pub(super) struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    /// When the current minute of CSP-report logging began, and how many it has logged.
    reports_logged: Mutex<Option<(Instant, u32)>>,
}

#[derive(Debug, Clone)]
struct Session {
    token_sha256: String,
    csrf: String,
    started: Instant,
}

impl Sessions {
    /// Whether one more violation report may be logged this minute.
    fn report_may_be_logged(&self) -> bool {
        let mut logged = self
            .reports_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (since, count) = logged.get_or_insert((Instant::now(), 0));
        if since.elapsed() >= Duration::from_secs(60) {
            (*since, *count) = (Instant::now(), 0);
        }
        *count += 1;
        *count <= REPORTS_LOGGED_PER_MINUTE
    }

    /// Forgets sessions past their lifetime: run at each sign-in and on a timer, so memory
    /// holds only live ones even when nobody signs in.
    pub(super) fn prune(&self) {
        let mut sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, session| session.started.elapsed() < SESSION_LIFETIME);
    }

    fn start(&self, token_sha256: String) -> Result<String, Refusal> {
        let random = || token::random_hex().map_err(|e| Refusal::Failed(e.to_string()));
        let (id, csrf) = (random()?, random()?);
        self.prune();
        let mut sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        sessions.insert(
            id.clone(),
            Session {
                token_sha256,
                csrf,
                started: Instant::now(),
            },
        );
        Ok(id)
    }

    fn find(&self, id: &str) -> Option<Session> {
        let sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|session| session.started.elapsed() < SESSION_LIFETIME)
            .cloned()
    }

    fn end(&self, id: &str) {
        let mut sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(id);
    }
}

/// What every page's frame shows: who is signed in, and the token its forms carry.
#[derive(Debug, Clone)]
pub(super) struct Chrome {
    pub name: String,
    pub role: &'static str,
    pub csrf: String,
    pub can_operate: bool,
    pub can_administer: bool,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/flags") }))
        .route("/ui", get(|| async { Redirect::to("/ui/flags") }))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/assets/{name}", get(asset))
        .route(
            CSP_REPORTS,
            post(csp_report).layer(axum::extract::DefaultBodyLimit::max(REPORT_BYTES)),
        )
        .merge(flags::routes())
        .merge(audit::routes())
        .merge(tokens::routes())
        // Route layers: a path no route matches is the server's fallback's, which answers in
        // the shape of the API the path is under.
        .route_layer(middleware::from_fn(same_origin_posts))
        .route_layer(middleware::from_fn(security_headers))
}

/// The answer for a path under /ui that no page has.
pub(super) fn not_found(path: &str) -> Response {
    let mut response = problem(
        StatusCode::NOT_FOUND,
        None,
        &format!("There is no page {path:?} here."),
    );
    add_security_headers(&mut response, false);
    response
}

async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let over_tls = over_tls(request.headers());
    let mut response = next.run(request).await;
    add_security_headers(&mut response, is_asset);
    if over_tls {
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

fn add_security_headers(response: &mut Response, is_asset: bool) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Refuses a POST whose `Origin` (or, without one, `Referer`) is not this server: a form on
/// another site cannot act for a signed-in operator, even before its CSRF token is checked.
async fn same_origin_posts(request: Request, next: Next) -> Response {
    // Violation reports come from the browser itself, without this page's Origin; they
    // change nothing but a counter.
    let is_report = request.uri().path() == CSP_REPORTS;
    if request.method() == Method::POST && !is_report && !from_this_origin(request.headers()) {
        return problem(
            StatusCode::FORBIDDEN,
            None,
            "This form was not sent from this flagstore's own pages (its Origin does not match), \
             so it was refused.",
        );
    }
    next.run(request).await
}

fn from_this_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(host) = text(header::HOST) else {
        return false;
    };
    let origins = [format!("http://{host}"), format!("https://{host}")];
    match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) => origins.iter().any(|o| o == origin),
        (None, Some(referer)) => origins.iter().any(|o| {
            referer
                .strip_prefix(o.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        }),
        (None, None) => false,
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return problem(StatusCode::NOT_FOUND, None, "There is no such file."),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// A browser's report of a Content-Security-Policy violation: counted, and logged to stderr
/// (a page that breaks its own policy is a defect, and an injection attempt is news).
/// Anyone can send one, so the log takes at most [`REPORTS_LOGGED_PER_MINUTE`], escaped, and
/// none over [`REPORT_BYTES`] is read.
async fn csp_report(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> StatusCode {
    shared.metrics.count_csp_violation();
    if shared.sessions.report_may_be_logged() {
        let report = String::from_utf8_lossy(&body);
        let shown: String = report.chars().take(REPORT_LOGGED).collect();
        super::log(&format!(
            "a browser reported a Content-Security-Policy violation: {shown}"
        ));
    }
    StatusCode::NO_CONTENT
}

/// The session id in the request's cookie, if any.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE || *name == SESSION_COOKIE_TLS)
        .map(|(_, value)| value)
}

/// What a visitor's request does: read a page, which runs on one of the readers, or send a
/// form, which writes (on the writer) and must carry the session's CSRF token.
#[derive(Debug, Clone, Copy)]
pub(super) enum Visit<'a> {
    Page,
    /// A whole-log download: a page on a reader kept for downloads.
    Export,
    Form {
        csrf: &'a str,
    },
}

/// Runs `work` as the signed-in visitor (on a reader for a page, on the writer for a form),
/// if their token's role is at least `needed` and a form carries their session's CSRF
/// token. Otherwise the response to send: the sign-in page for a visitor without a session,
/// a problem page for the rest (with the navigation, once the visitor is known).
async fn as_visitor<T: Send + 'static>(
    shared: &Shared,
    headers: &HeaderMap,
    needed: Role,
    visit: Visit<'_>,
    work: impl FnOnce(&mut Store, Chrome) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Response> {
    let Some((id, session)) =
        session_id(headers).and_then(|id| Some((id, shared.sessions.find(id)?)))
    else {
        return Err(Redirect::to("/ui/sign-in").into_response());
    };
    if let Visit::Form { csrf: sent } = visit
        && !same_secret(sent, &session.csrf)
    {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            "This form's security token is not this session's (the form is older than your \
             sign-in, or was not made by this flagstore). Reload the page and try again.",
        ));
    }
    let csrf = session.csrf.clone();
    // What `work` refuses is shown in the visitor's frame; a refusal before it (a revoked
    // token, too low a role) has no frame to show.
    let work = move |store: &mut Store, caller: &Caller| {
        let chrome = chrome(caller, csrf);
        Ok(work(store, chrome.clone()).map_err(|refusal| (refusal, chrome)))
    };
    let answer = match visit {
        Visit::Page => {
            as_reader(
                shared,
                session.token_sha256,
                needed,
                Read::Interactive,
                work,
            )
            .await
        }
        Visit::Export => as_reader(shared, session.token_sha256, needed, Read::Export, work).await,
        Visit::Form { .. } => as_caller(shared, session.token_sha256, needed, work).await,
    };
    match answer {
        Ok(Ok(done)) => Ok(done),
        Ok(Err((refusal, chrome))) => Err(refused(refusal, Some(chrome))),
        Err(refusal) => {
            if matches!(refusal, Refusal::Unauthorized) {
                shared.sessions.end(id);
            }
            Err(refused(refusal, None))
        }
    }
}

fn chrome(caller: &Caller, csrf: String) -> Chrome {
    Chrome {
        name: caller.name.clone(),
        role: caller.role.as_str(),
        csrf,
        can_operate: caller.role >= Role::Operator,
        can_administer: caller.role >= Role::Admin,
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A page rendered, or the problem page for a template that failed.
fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &format!("The page could not be rendered: {error}"),
        ),
    }
}

/// Renders the page `work` builds for the signed-in visitor.
async fn page<T: Template + Send + 'static>(
    shared: &Shared,
    headers: &HeaderMap,
    work: impl FnOnce(&mut Store, Chrome) -> Result<T, Refusal> + Send + 'static,
) -> Response {
    match as_visitor(shared, headers, Role::Viewer, Visit::Page, work).await {
        Ok(page) => render(&page),
        Err(response) => response,
    }
}

fn refused(refusal: Refusal, chrome: Option<Chrome>) -> Response {
    let (status, message) = match refusal {
        Refusal::Unauthorized => return Redirect::to("/ui/sign-in").into_response(),
        Refusal::Forbidden(role) => (
            StatusCode::FORBIDDEN,
            format!(
                "This needs a token with role {} or above; yours cannot do it.",
                role.as_str()
            ),
        ),
        Refusal::NotFound(message) => (StatusCode::NOT_FOUND, message),
        Refusal::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
        Refusal::PreconditionRequired => (
            StatusCode::PRECONDITION_REQUIRED,
            "The form did not say which version of the flag it was made from.".to_string(),
        ),
        Refusal::Conflict(message) => (StatusCode::CONFLICT, message),
        Refusal::Busy => return super::busy(),
        Refusal::Failed(message) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            super::internal_error(&message),
        ),
    };
    problem(status, chrome, &message)
}

#[derive(Template)]
#[template(path = "problem.html")]
struct ProblemPage<'a> {
    chrome: Option<Chrome>,
    status: u16,
    message: &'a str,
}

/// A page that says what went wrong, with `status`.
fn problem(status: StatusCode, chrome: Option<Chrome>, message: &str) -> Response {
    let page = ProblemPage {
        chrome,
        status: status.as_u16(),
        message,
    };
    let body = page
        .render()
        .unwrap_or_else(|_| format!("{} {message}", status.as_u16()));
    (status, Html(body)).into_response()
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Option<Chrome>,
    problem: Option<String>,
}

async fn sign_in_page() -> Response {
    render(&SignInPage {
        chrome: None,
        problem: None,
    })
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

/// Whether the browser reached us over TLS, which serve learns from the TLS-terminating
/// proxy's `X-Forwarded-Proto: https` (serve itself speaks plain HTTP); a client faking the
/// header only makes its own cookie stricter.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The session cookie's name and attributes: over TLS, `__Host-` and `Secure`.
fn session_cookie(headers: &HeaderMap) -> (&'static str, &'static str) {
    if over_tls(headers) {
        (
            SESSION_COOKIE_TLS,
            "Path=/; HttpOnly; SameSite=Strict; Secure",
        )
    } else {
        (SESSION_COOKIE, "Path=/; HttpOnly; SameSite=Strict")
    }
}

async fn sign_in(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let sha256 = token::sha256_hex(form.token.trim());
    let checked = as_caller(&shared, sha256.clone(), Role::Viewer, |_, _| Ok(())).await;
    let refusal = match checked.and_then(|()| shared.sessions.start(sha256)) {
        Ok(id) => {
            let (name, attributes) = session_cookie(&headers);
            let cookie = format!("{name}={id}; {attributes}");
            return ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/flags")).into_response();
        }
        Err(refusal) => refusal,
    };
    let (status, message) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "That is not an active flagstore token.".to_string(),
        ),
        other => return refused(other, None),
    };
    let page = SignInPage {
        chrome: None,
        problem: Some(message),
    };
    (status, render(&page)).into_response()
}

#[derive(Deserialize)]
struct SignOutForm {
    csrf: String,
}

async fn sign_out(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Response {
    if let Some(id) = session_id(&headers)
        && let Some(session) = shared.sessions.find(id)
        && same_secret(&form.csrf, &session.csrf)
    {
        shared.sessions.end(id);
    }
    let (name, attributes) = session_cookie(&headers);
    let expired = format!("{name}=; {attributes}; Max-Age=0");
    ([(header::SET_COOKIE, expired)], Redirect::to("/ui/sign-in")).into_response()
}

/// `text` for a URL path segment or query value: everything but RFC 3986's unreserved
/// characters percent-encoded.
pub(super) fn encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query string of the pairs whose value is not empty, `?` included (or nothing).
pub(super) fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let joined: Vec<String> = pairs
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={}", encoded(value)))
        .collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("?{}", joined.join("&"))
    }
}

/// The query of a page, read leniently: a parameter that does not parse is a 400 page.
pub(super) type PageQuery<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn bad_query(rejection: &axum::extract::rejection::QueryRejection) -> Response {
    problem(StatusCode::BAD_REQUEST, None, &rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_embedded_htmx_is_the_published_file() {
        const HTMX_SHA256: &str =
            "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717";
        assert_eq!(crate::hex::lowercase(&Sha256::digest(HTMX)), HTMX_SHA256);
    }

    #[test]
    fn only_unreserved_characters_stay_unencoded() {
        assert_eq!(encoded("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encoded("x/y z?&é"), "x%2Fy%20z%3F%26%C3%A9");
        assert_eq!(
            query_string([("flag", "a b"), ("context", "")]),
            "?flag=a%20b"
        );
        assert_eq!(query_string([("flag", "")]), "");
    }

    #[test]
    fn posts_must_come_from_this_origin() {
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let host = (header::HOST, "127.0.0.1:8016");
        assert!(from_this_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:8016")
        ])));
        assert!(!from_this_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://evil.example")
        ])));
        assert!(from_this_origin(&headers(&[
            host.clone(),
            (header::REFERER, "http://127.0.0.1:8016/ui/flags")
        ])));
        assert!(!from_this_origin(&headers(&[
            host.clone(),
            (header::REFERER, "http://127.0.0.1:8016.evil.example/")
        ])));
        assert!(!from_this_origin(&headers(&[host])));
    }
}
