//! The writer thread: it owns the store, takes every job queued at that moment, evaluates the
//! requests among them in one transaction and answers each only after the commit.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{ANONYMOUS_ACTOR, Answer, Health, IDLE_CHECKPOINT, Job, MAX_GROUP, Metrics, Tokens};
use crate::store::{Publisher, Request, Store};

/// What the writer thread shares with the handlers.
pub(super) struct Writer {
    pub(super) no_auth: bool,
    pub(super) tokens: Arc<Mutex<Tokens>>,
    pub(super) health: Arc<Health>,
    pub(super) metrics: Arc<Metrics>,
    /// For waiting on the queue with a deadline.
    pub(super) runtime: tokio::runtime::Handle,
    /// Nudged every `every_rows` requests recorded; dropped with the writer, which makes it
    /// publish a last head and stop.
    pub(super) publisher: Option<Publisher>,
    pub(super) every_rows: u64,
}

impl Writer {
    /// Takes every job queued, evaluates them in one transaction, answers each after the
    /// commit; checkpoints when idle. Returns its store when every handler is gone and the
    /// queue is empty.
    pub(super) fn run(self, mut store: Store, mut queue: mpsc::Receiver<Job>) -> Store {
        let mut written = false;
        let mut unsigned = 0;
        loop {
            let next = match written {
                true => self
                    .runtime
                    .block_on(async { tokio::time::timeout(IDLE_CHECKPOINT, queue.recv()).await }),
                false => Ok(queue.blocking_recv()),
            };
            let first = match next {
                Ok(Some(job)) => job,
                Ok(None) => return store,
                Err(_idle) => {
                    // A failure here (a reader's snapshot in the way, a full disk) leaves the
                    // WAL for the next checkpoint; the next write reports a real fault.
                    let _ = store.checkpoint();
                    written = false;
                    continue;
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let recorded = self.serve_group(&mut store, jobs);
            written |= recorded > 0;
            unsigned += recorded as u64;
            if let Some(publisher) = self
                .publisher
                .as_ref()
                .filter(|_| unsigned >= self.every_rows)
            {
                publisher.nudge();
                unsigned = 0;
            }
        }
    }

    /// Does `jobs`, evaluations in one transaction; returns how many requests it recorded.
    fn serve_group(&self, store: &mut Store, jobs: Vec<Job>) -> usize {
        let lookup = |store: &Store, sha256: &str| {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.lookup(store, sha256)
        };
        let mut pending = Vec::new();
        for job in jobs {
            match job {
                Job::Health { reply } => {
                    let probed = store
                        .probe_write()
                        .map_err(|e| e.at_database(store.path()).to_string());
                    self.health.set(probed.clone());
                    let _ = reply.send(probed);
                }
                Job::AsCaller { token_sha256, work } => {
                    let caller = lookup(store, &token_sha256);
                    work(store, caller.as_ref());
                }
                Job::Evaluate {
                    selection,
                    context,
                    token_sha256,
                    reply,
                } => {
                    let actor = match (&token_sha256, self.no_auth) {
                        (_, true) => Some(ANONYMOUS_ACTOR.to_string()),
                        (Some(sha), false) => lookup(store, sha).map(|caller| caller.name),
                        (None, false) => None,
                    };
                    match actor {
                        Some(actor) => pending.push((selection, context, actor, reply)),
                        None => {
                            let _ = reply.send(Answer::Unauthorized);
                        }
                    }
                }
            }
        }
        if pending.is_empty() {
            return 0;
        }
        let requests: Vec<Request> = pending
            .iter()
            .map(|(selection, context, actor, _)| Request {
                selection,
                context,
                actor,
            })
            .collect();
        let started = Instant::now();
        let outcome = store
            .evaluate_requests(&requests)
            .map_err(|e| e.at_database(store.path()).to_string());
        self.metrics.record_commit(started.elapsed(), pending.len());
        self.health
            .set(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        match outcome {
            Ok((flags, results)) => {
                let recorded = pending.len();
                let flags = Arc::new(flags);
                for ((_, _, _, reply), result) in pending.into_iter().zip(results) {
                    let answer = match result {
                        Ok(Some(evaluated)) => {
                            self.metrics.count_evaluations(evaluated.evaluations.len());
                            Answer::Evaluated {
                                flags: Arc::clone(&flags),
                                evaluations: evaluated.evaluations,
                            }
                        }
                        Ok(None) => Answer::FlagNotFound,
                        // The handlers check the targeting key first; this is the library's
                        // own check, answering only the request at fault.
                        Err(refused) => Answer::Failed(refused.to_string()),
                    };
                    let _ = reply.send(answer);
                }
                recorded
            }
            Err(message) => {
                for (_, _, _, reply) in pending {
                    let _ = reply.send(Answer::Failed(message.clone()));
                }
                0
            }
        }
    }
}
