//! A thread that publishes signed tree heads of a store while others write it: at least every
//! [`Publishing::every`], sooner when nudged (`serve`'s writer does so every
//! [`Publishing::every_rows`] requests), and once more when its handle is dropped, so the rows
//! written until then are signed too. It reads the new rows' links on a connection of its own,
//! beside the writers, never holding them up.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::heads::{HeadKey, SignedHead, hand_to_witness};

use super::{Location, Store};

/// How heads are published: with which key, where, and how often.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub key: Arc<HeadKey>,
    pub heads: PathBuf,
    /// Publish at least this often while rows are written.
    pub every: Duration,
    /// For a writer that nudges: publish as soon as this many requests were recorded since
    /// the last head.
    pub every_rows: u64,
    /// A witness each head is handed to as well (see [`hand_to_witness`]); a head it does not
    /// take is reported as not published, though it is in the heads file.
    pub witness: Option<String>,
}

/// The publishing thread's handle: [`Publisher::nudge`] asks for a head now; dropping it
/// publishes a last head and waits for the thread to end.
pub struct Publisher {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts publishing heads of the store at `location`; `report` is told of every head
    /// published and every one that could not be, on the publishing thread.
    pub fn start(
        location: &Location,
        publishing: &Publishing,
        report: impl FnMut(Result<SignedHead>) + Send + 'static,
    ) -> Result<Publisher> {
        let (nudge, nudges) = std::sync::mpsc::sync_channel(1);
        let (location, publishing) = (location.clone(), publishing.clone());
        let thread = std::thread::Builder::new()
            .name("flagstore-publisher".to_string())
            .spawn(move || publish_until_dropped(&location, &publishing, &nudges, report))
            .map_err(|e| Error::System {
                message: format!("cannot start the tree head publisher: {e}"),
            })?;
        Ok(Publisher {
            nudges: Some(nudge),
            thread: Some(thread),
        })
    }

    /// Asks for a head now; a nudge not yet taken already asks, so this never waits.
    pub fn nudge(&self) {
        if let Some(nudges) = &self.nudges {
            let _ = nudges.try_send(());
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.nudges.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the thread has nothing left to publish; it was reported as it
            // happened.
            let _ = thread.join();
        }
    }
}

fn publish_until_dropped(
    location: &Location,
    publishing: &Publishing,
    nudges: &Receiver<()>,
    mut report: impl FnMut(Result<SignedHead>),
) {
    let store = match Store::open_existing(location) {
        Ok(store) => store,
        Err(e) => return report(Err(e)),
    };
    loop {
        let stopping = matches!(
            nudges.recv_timeout(publishing.every),
            Err(RecvTimeoutError::Disconnected)
        );
        match store.publish_head(&publishing.key, &publishing.heads) {
            Ok(Some(head)) => report(match &publishing.witness {
                Some(url) => hand_to_witness(url, &head).map(|()| head),
                None => Ok(head),
            }),
            Ok(None) => {}
            Err(e) => report(Err(e.at_database(store.path()))),
        }
        if stopping {
            break;
        }
    }
    if let Err(e) = store.close() {
        report(Err(e));
    }
}
