//! The tokens page, for admins: who may call this flagstore, a new token shown once, and
//! revocation. The same store calls as `flagstore token` and the admin API's token routes.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Chrome, Visit, as_visitor, encoded, problem, render};
use crate::serve::{Refusal, Shared, forget_tokens};
use crate::store::Store;
use crate::token::{self, Role};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/tokens", get(list).post(create))
        .route("/ui/tokens/{name}/revoke", post(revoke))
}

struct TokenRow {
    name: String,
    role: &'static str,
    created_at: String,
    revoked_at: Option<String>,
    revoke_href: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Option<Chrome>,
    csrf: String,
    tokens: Vec<TokenRow>,
    /// The token just created, name and text: shown this once.
    created: Option<(String, String)>,
    /// Why the new-token form was refused, with what it held kept in the form.
    problem: Option<String>,
    name: String,
    role: &'static str,
    roles: [&'static str; 3],
}

impl TokensPage {
    fn read(store: &Store, chrome: Chrome) -> Result<TokensPage, Refusal> {
        let tokens = store
            .tokens()?
            .into_iter()
            .map(|t| TokenRow {
                // Spelled out as the CLI's tables show names: no look-alikes.
                name: crate::output::escaped(&t.name),
                role: t.role.as_str(),
                created_at: t.created_at,
                revoked_at: t.revoked_at,
                revoke_href: format!("/ui/tokens/{}/revoke", encoded(&t.name)),
            })
            .collect();
        Ok(TokensPage {
            csrf: chrome.csrf.clone(),
            chrome: Some(chrome),
            tokens,
            created: None,
            problem: None,
            name: String::new(),
            role: Role::Viewer.as_str(),
            roles: [Role::Viewer, Role::Operator, Role::Admin].map(Role::as_str),
        })
    }
}

async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let read = |store: &mut Store, chrome| TokensPage::read(store, chrome);
    match as_visitor(&shared, &headers, Role::Admin, Visit::Page, read).await {
        Ok(page) => render(&page),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewTokenForm {
    csrf: String,
    name: String,
    role: String,
}

/// Creates a token as the signed-in admin and shows its text this once; a name in use or not
/// allowed, or an unknown role, comes back on the page with the form as it was sent.
async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Form<NewTokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            "The new-token form was incomplete: reload the tokens page and try again.",
        );
    };
    let csrf = form.csrf.clone();
    let done = as_visitor(
        &shared,
        &headers,
        Role::Admin,
        Visit::Form { csrf: &csrf },
        move |store, chrome| {
            let actor = chrome.name.clone();
            let created = (|| {
                let role: Role = form.role.parse()?;
                let secret = token::generate()?;
                store.create_token(&form.name, &token::sha256_hex(&secret), role, &actor)?;
                Ok::<_, crate::error::Error>(secret)
            })();
            let mut page = TokensPage::read(store, chrome)?;
            match created {
                Ok(secret) => {
                    page.created = Some((crate::output::escaped(&form.name), secret));
                    Ok((StatusCode::OK, page))
                }
                Err(error) => match Refusal::from(error) {
                    Refusal::BadRequest(why) => {
                        page.problem = Some(why);
                        page.name = form.name;
                        page.role = Role::Viewer.as_str();
                        if let Some(role) = page.roles.iter().find(|r| **r == form.role) {
                            page.role = role;
                        }
                        Ok((StatusCode::BAD_REQUEST, page))
                    }
                    other => Err(other),
                },
            }
        },
    )
    .await;
    forget_tokens(&shared);
    match done {
        Ok((status, page)) => (status, render(&page)).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: String,
}

/// Revokes a token as the signed-in admin: it stops working at once on this server.
async fn revoke(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            "The revoke form was incomplete: reload the tokens page and try again.",
        );
    };
    let done = as_visitor(
        &shared,
        &headers,
        Role::Admin,
        Visit::Form { csrf: &form.csrf },
        move |store, chrome| Ok(store.revoke_token(&name, &chrome.name)?),
    )
    .await;
    forget_tokens(&shared);
    match done {
        Ok(()) => Redirect::to("/ui/tokens").into_response(),
        Err(response) => response,
    }
}
