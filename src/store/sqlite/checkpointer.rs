//! Checkpoints off the writer's path. The commit that finds the WAL at its limit checkpoints it
//! itself (SQLite's autocheckpoint): it copies every page the WAL holds into the database file
//! and syncs both before its writer can go on, about a tenth of a batch's time and the tail of
//! serve's latencies. A process that commits again and again (a batch, serve, a Python
//! pipeline) hands that copying to a thread with a connection of its own, woken by its
//! commits (at most every [`MIN_INTERVAL`]), so the commit that reaches the limit finds the
//! pages already copied and only has the WAL restarted. The limit stays where it was: a
//! checkpointer that falls behind, or fails, leaves the writer doing what it did before.

use std::cell::{Cell, OnceCell};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// Commits after which a connection starts its checkpointer: one `flagstore eval` commits
/// once and would only pay for a thread and a connection it never uses.
const COMMITS_BEFORE_START: u32 = 2;

/// The least time between two checkpoints. serve commits a group every millisecond or so, and
/// a checkpoint after each (two syncs, and the CPU the handlers need) cost it 10% of its
/// throughput; one in 20 ms gave that back and kept the lower p99 (`bench serve`).
const MIN_INTERVAL: Duration = Duration::from_millis(20);

/// The checkpointing of one writing connection's database file, started on demand.
#[derive(Default)]
pub(super) struct Checkpoints {
    commits: Cell<u32>,
    started: OnceCell<Option<Checkpointer>>,
}

impl Checkpoints {
    /// Called after each commit of the writing connection to `file`.
    pub(super) fn committed(&self, file: &Path) {
        let commits = self.commits.get().saturating_add(1);
        self.commits.set(commits);
        if commits < COMMITS_BEFORE_START {
            return;
        }
        if let Some(checkpointer) = self.started.get_or_init(|| Checkpointer::start(file)) {
            checkpointer.wake();
        }
    }
}

struct Checkpointer {
    /// Holds at most one wake-up: commits made while a checkpoint runs ask for one more.
    wake: Option<SyncSender<()>>,
    /// Whether a commit has asked for a checkpoint that has not begun yet. serve commits
    /// dozens of times within one [`MIN_INTERVAL`]: only the first of them wakes the thread
    /// (a futex call on the writer, a context switch on the checkpointer), the rest see this.
    asked: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// `None` if the file cannot be opened a second time (it was removed, a descriptor limit):
    /// the writer then checkpoints as it would without one.
    fn start(file: &Path) -> Option<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file, flags).ok()?;
        let (wake, woken) = mpsc::sync_channel(1);
        let asked = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_string())
            .spawn({
                let asked = Arc::clone(&asked);
                move || checkpoint_when_woken(&conn, &woken, &asked)
            })
            .ok()?;
        Some(Checkpointer {
            wake: Some(wake),
            asked,
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        if self.asked.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(wake) = &self.wake {
            // Full: a checkpoint is asked for already, and will see this commit too.
            let _ = wake.try_send(());
        }
    }
}

fn checkpoint_when_woken(conn: &Connection, woken: &Receiver<()>, asked: &AtomicBool) {
    let mut woken_while_pausing = false;
    loop {
        if !woken_while_pausing && woken.recv().is_err() {
            return;
        }
        // Before the checkpoint, so that a commit made while it runs asks for the next one.
        asked.store(false, Ordering::Release);
        // PASSIVE: copies what no reader still needs, never waits for a lock, and never
        // restarts the WAL (the writer does that as its next transaction begins). A failure
        // (a full disk) leaves the pages in the WAL, as durable there, for the writer's own
        // checkpoint at the limit, whose commit reports a real fault.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        woken_while_pausing = false;
        let resume = Instant::now() + MIN_INTERVAL;
        while let Some(left) = resume.checked_duration_since(Instant::now()) {
            match woken.recv_timeout(left) {
                Ok(()) => woken_while_pausing = true,
                Err(RecvTimeoutError::Timeout) => break,
                // The store is closing; its last connection checkpoints what is left.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the checkpoint it may be running.
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use rusqlite::{Connection, OpenFlags};

    use crate::flag::{Flag, FlagSet};
    use crate::store::{Location, Selection, Store, keys_per_transaction};

    fn store_of_two_flags(dir: &Path) -> (Store, PathBuf) {
        let path = dir.join("flags.db");
        let mut store = Store::open(&Location::Sqlite(path.clone())).unwrap();
        store
            .modify("test", "test", false, |_| {
                Ok([Flag::new("ingest"), Flag::new("enrich")]
                    .into_iter()
                    .collect::<FlagSet>())
            })
            .unwrap();
        (store, path)
    }

    /// Polls until `done`, failing with `what` after ten seconds.
    fn wait_until(what: impl Fn() -> String, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{}", what());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// In WAL mode the database file grows only when a checkpoint copies pages into it, and
    /// these transactions stay far below the WAL's limit (at which the writer checkpoints): a
    /// file that grows while the store is open was written by the checkpointer.
    #[test]
    fn a_writer_that_commits_again_has_its_wal_copied_in_and_the_last_close_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, path) = store_of_two_flags(dir.path());
        let before = std::fs::metadata(&path).unwrap().len();
        let keys = (0..3 * keys_per_transaction(2)).map(|i| Ok(format!("tenant-{i}")));
        store
            .evaluate_batch(&Selection::All, "test", keys, |_, _| Ok(()))
            .unwrap();
        wait_until(
            || format!("the database file stayed at {before} bytes: nothing was checkpointed"),
            || std::fs::metadata(&path).unwrap().len() != before,
        );
        drop(store);
        let wal = dir.path().join("flags.db-wal");
        assert!(!wal.exists(), "{} outlived the store", wal.display());
        let reopened = Store::open(&Location::Sqlite(path)).unwrap();
        assert_eq!(
            reopened.audit_len().unwrap(),
            2 + 3 * keys_per_transaction(2) as i64
        );
    }

    /// A writer of single decisions (the Python manager's calls, `flagstore eval`) checkpoints
    /// at SQLite's default of 1,000 pages: let grow to a batch's 10,000 (40 MB), the WAL was a
    /// file growing with every commit for its first thousand calls, and a commit that makes a
    /// file longer syncs its new length too (a durable call's median 0.49 ms, against 0.27 once
    /// the WAL was reused in place). Its WAL is cut back to that size after a batch.
    #[test]
    fn a_writer_of_single_decisions_keeps_its_wal_near_a_thousand_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, path) = store_of_two_flags(dir.path());
        let wal = dir.path().join("flags.db-wal");
        let page_size = || {
            let reader =
                Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            reader
                .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
                .unwrap() as u64
        };
        let most = 1_200 * (page_size() + 24);
        let single_decisions = |store: &mut Store, from: usize| {
            for i in from..from + 500 {
                store
                    .evaluate_context(&Selection::All, &format!("tenant-{i}"), "test")
                    .unwrap();
            }
        };
        single_decisions(&mut store, 0);
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(grown <= most, "the WAL grew to {grown} bytes");

        let keys = (0..20 * keys_per_transaction(2)).map(|i| Ok(format!("batch-{i}")));
        store
            .evaluate_batch(&Selection::All, "test", keys, |_, _| Ok(()))
            .unwrap();
        single_decisions(&mut store, 500);
        let after_batch = std::fs::metadata(&wal).unwrap().len();
        assert!(
            after_batch <= most,
            "after a batch, the WAL stayed at {after_batch} bytes"
        );
    }

    /// Commits come far more often than checkpoints, and only the first commit after a
    /// checkpoint begins wakes the checkpointer: the commits that find it asked already, the
    /// last among them included, must still be copied in without any commit after them. A
    /// fully checkpointed WAL leaves the file exactly as long as the database's pages.
    #[test]
    fn the_last_of_a_run_of_commits_is_checkpointed_without_another_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, path) = store_of_two_flags(dir.path());
        for i in 0..300 {
            store
                .evaluate_context(&Selection::All, &format!("tenant-{i}"), "test")
                .unwrap();
        }
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let pages: i64 = reader
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let page_size: i64 = reader
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        drop(reader);
        let (pages, page_size) = (pages as u64, page_size as u64);
        let file_len = || std::fs::metadata(&path).unwrap().len();
        wait_until(
            || {
                format!(
                    "the database file has {} of its {pages} pages: the last commits were never \
                     checkpointed",
                    file_len() / page_size
                )
            },
            || file_len() == pages * page_size,
        );
    }
}
