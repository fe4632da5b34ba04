//! `/healthz`, answered from the last write's outcome without waiting for the writer, and
//! `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Job, Shared};

/// Whether the writer's last write failed, when and why: what `/healthz` answers without
/// waiting for the writer. For [`HEALTH_HOLD`] after a failure it answers 503 at once, so a
/// load balancer sees the fault even when a small write would still fit; after that it asks
/// the writer to try a write that changes nothing ([`Store::probe_write`]), so an instance
/// taken out of service comes back by itself once the fault (a full disk, a database server
/// down) is gone, with no evaluation sent to it.
#[derive(Default)]
pub(super) struct Health {
    failure: Mutex<Option<(Instant, String)>>,
}

/// How long `/healthz` answers 503 after a failed write before it tries a write of its own.
const HEALTH_HOLD: Duration = Duration::from_secs(5);

impl Health {
    /// Why the last write failed, and whether that was within [`HEALTH_HOLD`].
    pub(super) fn failure(&self) -> Option<(String, bool)> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .map(|(at, why)| (why.clone(), at.elapsed() < HEALTH_HOLD))
    }

    pub(super) fn set(&self, outcome: Result<(), String>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
            outcome.err().map(|why| (Instant::now(), why));
    }
}

/// 200 while the writer's last write succeeded; after a failed one, 503 until a write
/// succeeds again (see [`super::Health`]).
pub(super) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let writable = match shared.health.failure() {
        None => Ok(()),
        Some((why, true)) => Err(why),
        Some((_, false)) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            match shared.jobs.send(Job::Health { reply }).await {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Err("the writer stopped".to_string())),
                Err(_) => Err("the server is stopping".to_string()),
            }
        }
    };
    match writable {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(message) => (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response(),
    }
}

pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        shared.metrics.render(),
    )
        .into_response()
}
