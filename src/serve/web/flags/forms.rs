//! The flag page's forms: the kill switch (with its confirmation when other flags would go
//! off with it), the rollout and the stale exemption, each checked against the version the
//! page showed.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use serde::Deserialize;

use super::{FlagLink, parse_rollout};
use crate::flag::Flag;
use crate::serve::web::{Chrome, Visit, as_visitor, problem, render};
use crate::serve::{Refusal, Shared};
use crate::store::Store;
use crate::token::Role;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui/flags/{name}/enabled", post(set_enabled))
        .route("/ui/flags/{name}/rollout", post(set_rollout))
        .route("/ui/flags/{name}/stale-exempt", post(set_stale_exempt))
}

/// A flag a kill switch would turn off along with the one thrown, and its contexts stored on.
struct Dependent {
    link: FlagLink,
    stored_on: i64,
}

#[derive(Template)]
#[template(path = "confirm_off.html")]
struct ConfirmPage {
    chrome: Option<Chrome>,
    link: FlagLink,
    version: i64,
    stored_on: i64,
    dependents: Vec<Dependent>,
}

#[derive(Debug, Deserialize)]
struct EnabledForm {
    csrf: String,
    version: i64,
    enabled: bool,
    /// "yes" once the operator has seen which dependent flags turn off with this one.
    #[serde(default)]
    confirm: String,
}

/// What a flag change did: a redirect back to the flag, or a page to show instead.
enum Outcome {
    Changed,
    Confirm(ConfirmPage),
}

/// A form that changes one flag; its CSRF token is checked before anything else.
trait FlagForm: Send + 'static {
    fn csrf(&self) -> &str;
}

impl FlagForm for EnabledForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

#[derive(Debug, Deserialize)]
struct ExemptForm {
    csrf: String,
    version: i64,
    stale_exempt: bool,
}

impl FlagForm for ExemptForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn set_stale_exempt(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ExemptForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "stale exemption",
        |store, chrome, name, form| {
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    stale_exempt: form.stale_exempt,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

impl FlagForm for RolloutForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Runs `work` with a flag form as an operator, then answers as [`answer`] does. `what`
/// names the form in the message for one that is incomplete.
async fn operate<F: FlagForm>(
    shared: &Shared,
    headers: &HeaderMap,
    name: String,
    form: Result<Form<F>, axum::extract::rejection::FormRejection>,
    what: &str,
    work: impl FnOnce(&mut Store, Chrome, &str, F) -> Result<Outcome, Refusal> + Send + 'static,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            &format!("The {what} form was incomplete: reload the flag's page and try again."),
        );
    };
    let csrf = form.csrf().to_string();
    let flag_href = FlagLink::new(&name).href;
    let done = as_visitor(
        shared,
        headers,
        Role::Operator,
        Visit::Form { csrf: &csrf },
        move |store, chrome| work(store, chrome, &name, form),
    )
    .await;
    answer(done, &flag_href)
}

async fn set_enabled(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<EnabledForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "kill switch",
        |store, chrome, name, form| {
            if !form.enabled && form.confirm != "yes" {
                let dependents = store.flags()?.all_dependents_of(name);
                if !dependents.is_empty() {
                    return confirmation(store, chrome, name, form.version, &dependents);
                }
            }
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    enabled: form.enabled,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

fn confirmation(
    store: &Store,
    chrome: Chrome,
    name: &str,
    version: i64,
    dependents: &[String],
) -> Result<Outcome, Refusal> {
    let stored_on =
        |flag: &str| -> Result<i64, Refusal> { Ok(store.assignment_tally(flag, 0.0)?.on) };
    let dependents = dependents
        .iter()
        .map(|flag| {
            Ok(Dependent {
                link: FlagLink::new(flag),
                stored_on: stored_on(flag)?,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(Outcome::Confirm(ConfirmPage {
        chrome: Some(chrome),
        link: FlagLink::new(name),
        version,
        stored_on: stored_on(name)?,
        dependents,
    }))
}

#[derive(Debug, Deserialize)]
struct RolloutForm {
    csrf: String,
    version: i64,
    rollout_pct: String,
}

async fn set_rollout(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<RolloutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    operate(
        &shared,
        &headers,
        name,
        form,
        "rollout",
        |store, chrome, name, form| {
            let pct = parse_rollout(name, &form.rollout_pct)?;
            change(store, &chrome, name, form.version, |flag| {
                Ok(Flag {
                    rollout_pct: pct,
                    ..flag.clone()
                })
            })
        },
    )
    .await
}

/// Applies `edit` to the flag as the visitor, if it is still at `version`: one audited change
/// row whose actor is the visitor's token name.
fn change(
    store: &mut Store,
    chrome: &Chrome,
    name: &str,
    version: i64,
    edit: impl FnOnce(&Flag) -> crate::error::Result<Flag>,
) -> Result<Outcome, Refusal> {
    store.modify_flag_at_version(name, version, &chrome.name, "web", edit)?;
    Ok(Outcome::Changed)
}

/// The response to a flag change: back to the flag's page (303, so a reload does not post
/// again), the confirmation page, or why it was refused.
fn answer(done: Result<Outcome, Response>, flag_href: &str) -> Response {
    match done {
        Ok(Outcome::Changed) => Redirect::to(flag_href).into_response(),
        Ok(Outcome::Confirm(page)) => render(&page),
        Err(response) => response,
    }
}
