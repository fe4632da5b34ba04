//! `flagstore serve`: flag evaluations over HTTP with the OpenFeature remote evaluation
//! protocol (OFREP), recorded exactly as the CLI records them.
//!
//! One writer thread owns the store. HTTP handlers (on tokio) queue their requests to it and
//! wait; it takes every request queued at that moment, evaluates them in one transaction
//! ([`Store::evaluate_requests`]) and answers each only after the commit. So every decision is
//! durable before its response is sent, and many concurrent requests share one fsync (group
//! commit).

mod access;
mod admin;
mod health;
mod http;
mod listener;

mod metrics;
mod ofrep;
mod router;
mod targeting;
mod web;
mod writer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::eval::Evaluation;
use crate::flag::FlagSet;
use crate::store::{Publisher, Publishing, Selection, Store};
use access::{Caller, Read, Readers, Refusal, Tokens, as_caller, as_reader, forget_tokens};
use health::Health;
pub use listener::Limits;
use metrics::Metrics;
use writer::Writer;

/// Requests evaluated in one transaction at most: enough to amortise a commit over many
/// connections, few enough that the first of them is not kept waiting long.
const MAX_GROUP: usize = 512;

/// Requests waiting for the writer before handlers wait to queue (backpressure).
const QUEUE: usize = 4_096;

/// Reads (pages, the admin API's GETs) running at once beside the writer, each on a
/// connection of its own.
const READERS: usize = 4;

/// Whole-log exports running at once, on connections of their own: a download whose client
/// stops reading holds its slot until [`web`]'s stall deadline, and never one of [`READERS`].
const EXPORT_READERS: usize = 2;

/// How often sessions past their lifetime are forgotten.
const SESSION_PRUNE: Duration = Duration::from_secs(60);

/// How long a read waits for a free reader before it is answered 503 with Retry-After.
const READER_WAIT: Duration = Duration::from_secs(2);

/// How long a token revocation may take to reach a running server.
const TOKEN_REFRESH: Duration = Duration::from_secs(1);

/// How long the writer waits without work before it empties the WAL into the database file
/// (an SQLite TRUNCATE checkpoint), so that an idle server holds everything in the one file.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// The actor of evaluations made without authentication (`--no-auth`).
pub const ANONYMOUS_ACTOR: &str = "serve (no auth)";

/// How the server is started.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Accept requests without a token. Only on a loopback address.
    pub no_auth: bool,
    pub limits: Limits,
    /// Sign tree heads of the audit log as requests are recorded.
    pub publishing: Option<Publishing>,
}

/// What a handler asks the writer.
enum Job {
    Evaluate {
        selection: Selection,
        context: String,
        /// SHA-256 of the presented token; `None` under `--no-auth`.
        token_sha256: Option<String>,
        reply: oneshot::Sender<Answer>,
    },
    /// Tries a write, after one failed: see [`Health`].
    Health {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Work done as the holder of a token (an admin API call, a web page): `work` runs on
    /// the writer's store with the token's name and role, or `None` for a token that is not
    /// active, and answers on a channel of its own.
    AsCaller {
        token_sha256: String,
        work: CallerWork,
    },
}

type CallerWork = Box<dyn FnOnce(&mut Store, Option<&Caller>) + Send>;

/// Writes one line to the server's log (stderr) with control characters and bidirectional
/// overrides escaped, so that nothing a client sent (a context key, a CSP report) can forge a
/// line or drive the operator's terminal.
fn log(line: &str) {
    eprintln!("flagstore serve: {}", crate::output::escaped(line));
}

/// What a client is told of a failure inside the server: an id to quote. The detail, which
/// may name the database server, database, role or file, goes to the server's log only.
fn internal_error(details: &str) -> String {
    let mut id = [0u8; 4];
    // Without randomness the ids still tell lines apart by time; never worth a failure.
    let _ = getrandom::fill(&mut id);
    let id = crate::hex::lowercase(&id);
    log(&format!("internal error {id}: {details}"));
    format!("internal error {id} (the server's log has the detail)")
}

/// The answer to a read that found every reader busy: try again in a second.
fn busy() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        "every reader is busy; try again\n",
    )
        .into_response()
}

/// The writer's answer to one evaluation request.
enum Answer {
    Evaluated {
        flags: Arc<FlagSet>,
        evaluations: Vec<Evaluation>,
    },
    FlagNotFound,
    Unauthorized,
    Failed(String),
}

/// State shared by the handlers.
struct Shared {
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    no_auth: bool,
    sessions: web::Sessions,
    readers: Arc<Readers>,
    /// Shared by the writer and the readers, so a read needs the writer for nothing.
    tokens: Arc<Mutex<Tokens>>,
    health: Arc<Health>,
}

/// Runs the server on `store` until SIGTERM or SIGINT: then it stops accepting connections,
/// answers the requests in flight, commits, and returns. `ready` is told the bound address
/// (useful with port 0) before the first request is accepted.
pub fn serve(store: Store, config: &ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    serve_until(store, config, ready, shutdown_signal())
}

/// [`serve`], stopping when `shutdown` completes instead of on a signal.
pub fn serve_until(
    store: Store,
    config: &ServeConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if config.no_auth && !config.listen.ip().is_loopback() {
        return Err(Error::Usage {
            message: format!(
                "--no-auth serves only a loopback address (127.0.0.1 or ::1), not {}",
                config.listen.ip()
            ),
        });
    }
    if !config.no_auth && !store.tokens()?.iter().any(|t| t.revoked_at.is_none()) {
        return Err(Error::Usage {
            message: "no active API token: create one with `flagstore token create NAME` \
                      (or serve --no-auth on a loopback address)"
                .to_string(),
        });
    }
    let listener = std::net::TcpListener::bind(config.listen).map_err(|source| Error::Listen {
        address: config.listen.to_string(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Listen {
            address: config.listen.to_string(),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| Error::Listen {
        address: config.listen.to_string(),
        source,
    })?;

    let (jobs, queue) = mpsc::channel(QUEUE);
    let metrics = Arc::new(Metrics::default());
    let readers = Arc::new(Readers::new(store.location().cloned()));
    let shared = Arc::new(Shared {
        jobs,
        metrics: Arc::clone(&metrics),
        no_auth: config.no_auth,
        sessions: web::Sessions::default(),
        readers: Arc::clone(&readers),
        tokens: Arc::default(),
        health: Arc::default(),
    });
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_workers(cores))
        .enable_all()
        .build()
        .map_err(|e| Error::System {
            message: format!("cannot start the HTTP runtime: {e}"),
        })?;
    // Owned by the writer, whose end drops it: a last head over its last commit.
    let publisher = match (&config.publishing, store.location()) {
        (Some(publishing), Some(location)) => {
            metrics.publishing_heads();
            let metrics = Arc::clone(&metrics);
            Some(Publisher::start(
                location,
                publishing,
                move |published| match published {
                    Ok(head) => metrics.head_published(head.size),
                    Err(e) => {
                        log(&format!("cannot publish a tree head: {e}"));
                        metrics.head_failed();
                    }
                },
            )?)
        }
        _ => None,
    };
    // The writer holds no sender (so not `shared`): it stops once the handlers are gone.
    let writer = {
        let writer = Writer {
            no_auth: config.no_auth,
            tokens: Arc::clone(&shared.tokens),
            health: Arc::clone(&shared.health),
            metrics,
            runtime: runtime.handle().clone(),
            publisher,
            every_rows: config.publishing.as_ref().map_or(0, |p| p.every_rows),
        };
        std::thread::Builder::new()
            .name("flagstore-writer".to_string())
            .spawn(move || writer.run(store, queue))
            .map_err(|e| Error::System {
                message: format!("cannot start the writer thread: {e}"),
            })?
    };
    let limits = config.limits;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // Polled once before anyone is told the address, so that the signal handlers are in
        // place: a SIGTERM sent as soon as the address is printed drains instead of killing.
        let sessions = Arc::downgrade(&shared);
        tokio::spawn(async move {
            // Held weakly: the server's state goes when the router does.
            while let Some(shared) = sessions.upgrade() {
                shared.sessions.prune();
                drop(shared);
                tokio::time::sleep(SESSION_PRUNE).await;
            }
        });
        let mut shutdown = Box::pin(shutdown);
        let stopped = futures_util::FutureExt::now_or_never(&mut shutdown).is_some();
        ready(address);
        if stopped {
            return Ok(());
        }
        listener::serve(listener, router::router(shared), limits, shutdown).await;
        Ok::<(), std::io::Error>(())
    });
    // The router, and with it the last sender, is gone: the writer answers what is queued and
    // returns its store. Dropping the runtime waits for the readers' work; then the stores
    // close, outside the runtime (a PostgreSQL client cannot close inside one) and in order:
    // readers first, the writer last.
    drop(runtime);
    let store = writer.join().map_err(|_| Error::System {
        message: "the writer thread panicked".to_string(),
    })?;
    readers.close();
    store.close()?;
    served.map_err(|source| Error::Listen {
        address: address.to_string(),
        source,
    })
}

/// Threads of the HTTP runtime on a machine of `cores` cores: one per core but the writer's.
/// Under load the writer is busy most of the time, and a runtime with a worker on every core
/// as well only took turns with it: on 2 cores, one worker answered 4-14% more evaluations
/// than two (`docs/benchmarks.md`).
fn http_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: SIGINT keeps its default action (exit), and
            // this branch must not end the server by itself.
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::http_workers;

    #[test]
    fn the_writer_keeps_a_core_of_its_own_where_there_is_one_to_spare() {
        assert_eq!(http_workers(1), 1);
        assert_eq!(http_workers(2), 1);
        assert_eq!(http_workers(8), 7);
        assert_eq!(http_workers(0), 1);
    }
}
