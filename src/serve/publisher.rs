//! The publisher thread: signs a tree head over the rows `serve` wrote, at least every
//! [`Publishing::every`] and sooner when the writer has written [`Publishing::every_rows`]
//! records since the last, so a head is never far behind a busy server. It reads the new rows
//! on a connection of its own, beside the writer, never holding it up.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::log;
use super::metrics::Metrics;
use crate::heads::HeadKey;
use crate::store::{Location, Store};

/// How `serve` publishes signed tree heads.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub key: Arc<HeadKey>,
    pub heads: PathBuf,
    /// Publish at least this often while rows are written.
    pub every: Duration,
    /// Publish as soon as the writer has recorded this many requests since the last head.
    pub every_rows: u64,
}

/// Publishes until `nudges` is closed (the writer has stopped), then once more, so the rows
/// of the last requests answered are signed too.
pub(super) fn run(
    location: &Location,
    publishing: &Publishing,
    nudges: &Receiver<()>,
    metrics: &Metrics,
) {
    let store = match Store::open_existing(location) {
        Ok(store) => store,
        Err(e) => {
            log(&format!("cannot publish tree heads: {e}"));
            metrics.head_failed();
            return;
        }
    };
    loop {
        let stopping = matches!(
            nudges.recv_timeout(publishing.every),
            Err(RecvTimeoutError::Disconnected)
        );
        match store.publish_head(&publishing.key, &publishing.heads) {
            Ok(Some(head)) => metrics.head_published(head.size),
            Ok(None) => {}
            Err(e) => {
                log(&format!(
                    "cannot publish a tree head: {}",
                    e.at_database(store.path())
                ));
                metrics.head_failed();
            }
        }
        if stopping {
            break;
        }
    }
    if let Err(e) = store.close() {
        log(&format!("closing the publisher's connection: {e}"));
    }
}
