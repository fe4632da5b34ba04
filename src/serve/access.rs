//! Who may call: callers and their roles, the token cache, the refusals a surface renders,
//! and the readers beside the writer (`as_reader`) or the writer itself (`as_caller`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{CallerWork, EXPORT_READERS, Job, READER_WAIT, READERS, Shared, TOKEN_REFRESH};
use crate::error::Error;
use crate::store::{Location, Store, TokenRecord};
use crate::token::Role;

/// Who presented an active token.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub name: String,
    pub role: Role,
}

/// Why work asked of the writer was not done.
#[derive(Debug)]
pub(super) enum Refusal {
    Unauthorized,
    Forbidden(Role),
    NotFound(String),
    BadRequest(String),
    PreconditionRequired,
    Conflict(String),
    /// Every reader of its kind was busy for [`READER_WAIT`].
    Busy,
    Failed(String),
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        match error {
            Error::UnknownFlag { .. } | Error::UnknownToken { .. } => {
                Refusal::NotFound(error.to_string())
            }
            Error::StaleVersion { .. } => Refusal::Conflict(error.to_string()),
            Error::RolloutOutOfRange { .. }
            | Error::InvalidTime { .. }
            | Error::FutureTime { .. }
            | Error::OutOfRange { .. }
            | Error::InvalidFilter { .. }
            | Error::InvalidTokenName { .. }
            | Error::TokenExists { .. }
            | Error::UnknownRole { .. }
            | Error::InvalidContextKey { .. } => Refusal::BadRequest(error.to_string()),
            other => Refusal::Failed(other.to_string()),
        }
    }
}

/// Connections that answer reads beside the writer, so that a long read (a stale scan over
/// millions of decisions, a whole-log export) never holds up evaluations or changes. Each
/// sees what is committed, as SQLite's WAL and PostgreSQL let a reader do while a writer
/// works.
pub(super) struct Readers {
    /// Where the writer's store is; `None` in memory, where reads stay on the writer.
    location: Option<Location>,
    idle: Mutex<Vec<Store>>,
    permits: tokio::sync::Semaphore,
    export_permits: tokio::sync::Semaphore,
}

/// What a read is, for the reader slots it may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Read {
    /// A page or an API answer, short.
    Interactive,
    /// A whole-log download, as long as its client takes to read it.
    Export,
}

impl Readers {
    pub(super) fn new(location: Option<Location>) -> Readers {
        Readers {
            location,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(READERS),
            export_permits: tokio::sync::Semaphore::new(EXPORT_READERS),
        }
    }

    /// Runs `work` on an idle reader, or a new one.
    pub(super) fn run<T>(
        &self,
        location: &Location,
        work: impl FnOnce(&mut Store) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // An idle reader whose connection the server closed (a restart) connects again; one
        // that cannot is replaced, and the new one's error says why (connection refused, the
        // database system is shutting down).
        let mut store = match idle {
            Some(store) if store.reconnect_if_lost().is_ok() => store,
            _ => Store::open_existing(location)?,
        };
        let answer = work(&mut store);
        // A reader whose work failed in the store may have lost its connection: it is not
        // kept. A refusal (a bad parameter, an unknown token) says nothing about it.
        if !matches!(answer, Err(Refusal::Failed(_))) {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(store);
        }
        answer
    }

    /// Closes the idle readers: done before the writer closes, so that on SQLite the
    /// writer's connection is the last and checkpoints the WAL into the database file.
    pub(super) fn close(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Forgets the active tokens read so far (see [`Tokens::forget`]).
pub(super) fn forget_tokens(shared: &Shared) {
    shared
        .tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .forget();
}

/// The holder of an active token (`caller`) if its role is at least `needed`.
pub(super) fn admitted(caller: Option<&Caller>, needed: Role) -> Result<&Caller, Refusal> {
    match caller {
        None => Err(Refusal::Unauthorized),
        Some(caller) if caller.role < needed => Err(Refusal::Forbidden(needed)),
        Some(caller) => Ok(caller),
    }
}

/// Runs read-only `work` as the holder of the token with this SHA-256, if its role is at
/// least `needed`, on one of the readers for its kind of `read`: nothing of it waits for the
/// writer, and a read that finds every such reader busy for [`READER_WAIT`] is refused as
/// [`Refusal::Busy`] instead of hanging.
pub(super) async fn as_reader<T: Send + 'static>(
    shared: &Shared,
    token_sha256: String,
    needed: Role,
    read: Read,
    work: impl FnOnce(&mut Store, &Caller) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let Some(location) = shared.readers.location.clone() else {
        return as_caller(shared, token_sha256, needed, work).await;
    };
    let permits = match read {
        Read::Interactive => &shared.readers.permits,
        Read::Export => &shared.readers.export_permits,
    };
    let _permit = match tokio::time::timeout(READER_WAIT, permits.acquire()).await {
        Err(_waited) => return Err(Refusal::Busy),
        Ok(permit) => permit.map_err(|_| Refusal::Failed("the server is stopping".to_string()))?,
    };
    let (readers, tokens) = (Arc::clone(&shared.readers), Arc::clone(&shared.tokens));
    tokio::task::spawn_blocking(move || {
        readers.run(&location, |store| {
            let caller = tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lookup(store, &token_sha256);
            work(store, admitted(caller.as_ref(), needed)?)
        })
    })
    .await
    .unwrap_or_else(|e| Err(Refusal::Failed(format!("a reader failed: {e}"))))
}

/// Runs `work` on the writer's store as the holder of the token with this SHA-256, if its
/// role is at least `needed`.
pub(super) async fn as_caller<T: Send + 'static>(
    shared: &Shared,
    token_sha256: String,
    needed: Role,
    work: impl FnOnce(&mut Store, &Caller) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let (reply, answer) = oneshot::channel();
    let work: CallerWork = Box::new(move |store, caller| {
        let answer = admitted(caller, needed).and_then(|caller| work(store, caller));
        let _ = reply.send(answer);
    });
    let job = Job::AsCaller { token_sha256, work };
    match shared.jobs.send(job).await {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err(Refusal::Failed("the writer stopped".to_string()))),
        Err(_) => Err(Refusal::Failed("the server is stopping".to_string())),
    }
}

/// Active tokens by SHA-256, re-read from the store at most every [`TOKEN_REFRESH`], so a
/// revocation reaches a running server within it.
#[derive(Default)]
pub(super) struct Tokens {
    /// Name and role of each active token.
    by_sha256: HashMap<String, Caller>,
    read_at: Option<Instant>,
    /// Set while a token row cannot be read, so the log says so once, not every second.
    refusing_all: bool,
}

impl Tokens {
    /// Makes the next lookup read the tokens again: after a token is created or revoked
    /// through this server, it takes effect at once here.
    pub(super) fn forget(&mut self) {
        self.read_at = None;
    }

    pub(super) fn lookup(&mut self, store: &Store, sha256: &str) -> Option<Caller> {
        if self.read_at.is_none_or(|at| at.elapsed() >= TOKEN_REFRESH) {
            // A connection the server closed is opened again here: requests refused as
            // unauthorized never reach the evaluation that would reconnect. A store that is
            // down keeps the last list: the evaluation's own transaction reports it.
            // Only tokens the chain explains: a row inserted or raised by SQL is refused.
            let read = store
                .explained_tokens()
                .or_else(|error| match store.reconnect_if_lost() {
                    Ok(true) => store.explained_tokens(),
                    _ => Err(error),
                });
            match read {
                // A row SQL made unreadable is no outage: keeping the last list would keep
                // accepting every token revoked from then on.
                Err(error @ (Error::UnreadableRow { .. } | Error::UnreadableAuditRow { .. })) => {
                    if !self.refusing_all {
                        super::log(&format!(
                            "every token refused until the tokens can be read: {error}"
                        ));
                        self.refusing_all = true;
                    }
                    self.by_sha256.clear();
                    self.read_at = Some(Instant::now());
                }
                Err(_) => {}
                Ok(tokens) => self.replace(tokens),
            }
        }
        self.by_sha256.get(sha256).cloned()
    }

    fn replace(&mut self, tokens: Vec<TokenRecord>) {
        if self.refusing_all {
            super::log("the tokens can be read again");
            self.refusing_all = false;
        }
        self.by_sha256 = tokens
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .map(|t| {
                let caller = Caller {
                    name: t.name,
                    role: t.role,
                };
                (t.sha256, caller)
            })
            .collect();
        self.read_at = Some(Instant::now());
    }
}
