//! `flagstore._flagstore`: the flagstore library for the Python package, which keeps the
//! prototype's API in `flagstore/__init__.py`. Every call releases the GIL while the store
//! works; values cross as Python tuples, lists and dicts, or as JSON text where the library
//! already writes JSON (explain, audit rows), so both sides read one format.
//!
//! Evaluations from many threads share transactions (group commit, as `serve` does): a
//! caller queues its request; if no caller is leading, it leads: it runs everything queued in
//! one transaction, then whatever was queued meanwhile in the next, until the queue is empty.
//! The others wait for their answers, never for the store, so a commit serves every thread
//! that arrived during the one before.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstore::audit::{AuditQuery, parse_time_bound};
use flagstore::error::Fault;
use flagstore::eval::ContextEvaluation;
use flagstore::heads::{HeadKey, check_key_for};
use flagstore::prototype::{python_number, trail};
use flagstore::store::{Location, Publisher, Publishing, Request, keys_per_transaction};
use flagstore::{Error, FlagSet, Selection};
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

// The extension module's Rust allocations (a batch's decisions, records and bound values)
// went to glibc's allocator, whose functions were 16% of `evaluate_many`'s samples in perf
// (SQLite's own allocations among them, which stay with glibc), as they once were in the
// binary (src/main.rs). Python's objects keep Python's allocator; nothing allocated on one
// side is freed on the other.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Named as `flagstore.StoreError`, where the package exports it: pickle finds an exception's
// class by its module and name, so one raised in a multiprocessing worker reaches the parent.
create_exception!(
    flagstore,
    StoreError,
    PyOSError,
    "The store could not be opened, read or written; the message names it."
);

/// A flagstore error as Python raises it: a mistake in what was given is a `ValueError`,
/// a store that cannot be used a `StoreError` (an `OSError`), anything else a `RuntimeError`;
/// the message is the CLI's one line.
fn raised(error: Error) -> PyErr {
    let message = error.to_string();
    match error.fault() {
        Fault::Input => PyValueError::new_err(message),
        Fault::Storage => StoreError::new_err(message),
        Fault::Other => PyRuntimeError::new_err(message),
    }
}

/// Per flag the store defines otherwise than given: its name and (field, given, stored).
type Differences = Vec<(String, Vec<(String, String, String)>)>;

/// A flag as Python sees it: name, enabled, rollout_pct, requires, sticky.
type FlagTuple = (String, bool, f64, Vec<String>, String);

fn flag_tuple(flag: &flagstore::Flag) -> FlagTuple {
    (
        flag.name.clone(),
        flag.enabled,
        flag.rollout_pct,
        flag.requires.clone(),
        flag.sticky.as_str().to_string(),
    )
}

/// What a queued evaluation gets back: the flags of its transaction and its decisions, or the
/// error raised for it (its own, or the store's that every request of the group shares).
type Evaluated = PyResult<(Arc<FlagSet>, Option<ContextEvaluation>)>;

/// An evaluation waiting for a transaction.
struct Queued {
    selection: Selection,
    key: String,
    reply: mpsc::Sender<Evaluated>,
}

/// Evaluations waiting for a transaction, and whether a caller is running them.
#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    leading: bool,
}

/// Lets the next caller lead if a leader panics, rather than leave every caller waiting on a
/// leader that is gone (the panic reaches Python; the requests it held fail).
struct StepDown<'a>(&'a Mutex<Queue>);

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).leading = false;
        }
    }
}

#[pyclass(frozen)]
struct Store {
    /// `None` once closed.
    store: Mutex<Option<flagstore::Store>>,
    queue: Mutex<Queue>,
    actor: String,
    /// The store as messages name it, kept for those made after it is closed.
    path: String,
    /// What Python raised when it ran its signal handlers while a call waited for another
    /// process's lock (Ctrl-C's KeyboardInterrupt), for that call to raise.
    interrupted: Arc<Mutex<Option<PyErr>>>,
    /// Publishes signed tree heads, given a signing key; its last head at `close()`.
    publisher: Mutex<Option<Publisher>>,
    /// Why the newest head could not be published, for `close()` to raise.
    unpublished: Arc<Mutex<Option<String>>>,
    /// The process that opened the store.
    opened_by: u32,
    /// The store is a file or a server, reached through a connection a fork would share.
    reached: bool,
    /// Each flag's rollout as the manager was given it: the number, and Python's `str` of it
    /// (`50`, `50.0`, `12.5`), which the prototype's trail wrote in `rollout P%`.
    rollouts_given: Mutex<HashMap<String, (f64, String)>>,
}

impl Drop for Store {
    /// A process forked from the one that opened the store (multiprocessing's default start
    /// on Linux) holds a copy of it without the threads that worked for it: the SQLite
    /// checkpointer, the heads publisher. Joining them panicked there, and closing the copied
    /// connection could wait for ever on a lock one of them held at the fork (1 run in 200).
    /// The store stays the parent's: the child leaves it as it is, calling nothing of it.
    fn drop(&mut self) {
        if std::process::id() != self.opened_by {
            leave(&mut self.store);
            leave(&mut self.publisher);
        }
    }
}

/// Forgets what `slot` holds without dropping it; `get_mut` takes no lock, which a thread
/// the fork left behind might have held.
fn leave<T>(slot: &mut Mutex<Option<T>>) {
    std::mem::forget(slot.get_mut().unwrap_or_else(|e| e.into_inner()).take());
}

/// How often a manager given a signing key publishes a head while it records decisions.
const HEAD_EVERY: Duration = Duration::from_secs(1);

/// The signing key at `key` and the heads file `heads`, both or neither, as a publisher of
/// heads of the store at `location` would use them.
fn publishing(
    location: Option<&Location>,
    key: Option<String>,
    heads: Option<String>,
) -> PyResult<Option<(Location, Publishing)>> {
    let (key, heads) = match (key, heads) {
        (None, None) => return Ok(None),
        (Some(key), Some(heads)) => (key, heads),
        _ => {
            return Err(PyValueError::new_err(
                "signing_key and heads go together: the key signs heads, the file keeps them",
            ));
        }
    };
    let location = location.ok_or_else(|| {
        PyValueError::new_err("signing heads needs a store that outlives the process (db=...)")
    })?;
    let key = HeadKey::load(Path::new(&key)).map_err(raised)?;
    // Before the store is opened (or made): a manager that could not sign writes nothing.
    check_key_for(Path::new(&heads), &key.public()).map_err(raised)?;
    Ok(Some((
        location.clone(),
        Publishing {
            key: Arc::new(key),
            heads: heads.into(),
            every: HEAD_EVERY,
            every_rows: u64::MAX,
            witness: None,
        },
    )))
}

/// A manager used after `close()`: the caller's mistake, as with a closed file.
fn closed(path: &str) -> PyErr {
    PyValueError::new_err(format!("{path}: the FlagManager is closed"))
}

impl Store {
    /// Refuses a store on a file or a server in a process forked from the one that opened it:
    /// SQLite warns that a connection used on both sides of a fork can corrupt the database,
    /// and a PostgreSQL socket would carry both processes' messages. An in-memory store is
    /// the child's own copy.
    fn in_its_process(&self) -> PyResult<()> {
        let now = std::process::id();
        if self.reached && now != self.opened_by {
            return Err(PyValueError::new_err(format!(
                "{}: this FlagManager was opened by process {} and cannot be used in process \
                 {now}, forked from it (a database connection does not survive a fork): open a \
                 new FlagManager in the child",
                self.path, self.opened_by
            )));
        }
        Ok(())
    }

    /// Appends the prototype's `{flag, result, reason}` entries for `evaluated` to `log`, a
    /// rollout worded as the manager was given it when the store still has that number.
    fn log_trail(
        &self,
        py: Python<'_>,
        flags: &FlagSet,
        evaluated: &ContextEvaluation,
        log: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let requested: Vec<&str> = evaluated
            .evaluations
            .iter()
            .map(|e| e.flag.as_str())
            .collect();
        // Worded before any Python object is made: making one can collect garbage and so run
        // Python code, which lets another thread take the GIL; had this thread kept the lock,
        // that thread would wait for it holding the GIL this one needs (the threads of a
        // shared manager hung, 6 runs in 15).
        let worded: Vec<(&str, bool, String)> = {
            let given = self
                .rollouts_given
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            trail(flags, evaluated, &requested)
                .into_iter()
                .map(|entry| {
                    let reason = entry.reason.text(|pct| match given.get(entry.flag) {
                        Some((number, text)) if *number == pct => text.clone(),
                        _ => python_number(pct),
                    });
                    (entry.flag, entry.result, reason)
                })
                .collect()
        };
        for (flag, result, reason) in worded {
            let logged = PyDict::new(py);
            logged.set_item(intern!(py, "flag"), flag)?;
            logged.set_item(intern!(py, "result"), result)?;
            logged.set_item(intern!(py, "reason"), reason)?;
            log.append(logged)?;
        }
        Ok(())
    }

    /// Runs what is queued, a transaction at a time, until the queue is empty; then no caller
    /// leads until the next arrives (both decided under the queue's lock, so none is missed).
    fn lead(&self) {
        let _unless_it_panics = StepDown(&self.queue);
        loop {
            let queued = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if queue.waiting.is_empty() {
                    queue.leading = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let requests: Vec<Request> = queued
                .iter()
                .map(|q| Request {
                    selection: &q.selection,
                    context: &q.key,
                    actor: &self.actor,
                })
                .collect();
            let mut guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let Some(store) = guard.as_mut() else {
                for q in &queued {
                    let _ = q.reply.send(Err(closed(&self.path)));
                }
                continue;
            };
            match store.evaluate_requests(&requests) {
                Ok((flags, results)) => {
                    let flags = Arc::new(flags);
                    for (q, result) in queued.iter().zip(results) {
                        let answer = result
                            .map(|evaluated| (Arc::clone(&flags), evaluated))
                            .map_err(raised);
                        let _ = q.reply.send(answer);
                    }
                }
                Err(Error::Interrupted) => {
                    // The process was interrupted (Ctrl-C): every caller waiting hears it.
                    let message = Error::Interrupted.to_string();
                    for q in &queued {
                        let raised = self
                            .interruption()
                            .unwrap_or_else(|| PyKeyboardInterrupt::new_err(message.clone()));
                        let _ = q.reply.send(Err(raised));
                    }
                }
                Err(error) => {
                    let message = error.at_database(store.path()).to_string();
                    for q in &queued {
                        let _ = q.reply.send(Err(StoreError::new_err(message.clone())));
                    }
                }
            }
        }
    }

    /// Evaluates `selection` for `key` in a transaction shared with whatever other threads
    /// queued meanwhile. `None` for a single flag that does not exist (not recorded).
    fn evaluate_queued(
        &self,
        py: Python<'_>,
        selection: Selection,
        key: String,
    ) -> PyResult<(Arc<FlagSet>, Option<ContextEvaluation>)> {
        self.in_its_process()?;
        let (reply, answer) = mpsc::channel();
        py.detach(move || {
            let leads = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.waiting.push(Queued {
                    selection,
                    key,
                    reply,
                });
                !std::mem::replace(&mut queue.leading, true)
            };
            if leads {
                self.lead();
            }
            answer
                .recv()
                .unwrap_or_else(|_| Err(StoreError::new_err("the evaluation was dropped")))
        })
    }

    /// Runs `work` on the store without the GIL; callers in other threads queue on the lock.
    /// A fault of the store names it.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&mut flagstore::Store) -> flagstore::Result<T> + Send,
    ) -> PyResult<T> {
        self.in_its_process()?;
        py.detach(|| {
            let mut guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let store = guard.as_mut().ok_or_else(|| closed(&self.path))?;
            work(store).map_err(|error| match error {
                Error::Interrupted => self
                    .interruption()
                    .unwrap_or_else(|| PyKeyboardInterrupt::new_err(error.to_string())),
                error => raised(error.at_database(&self.path)),
            })
        })
    }

    /// The exception Python raised while a call waited, if it did.
    fn interruption(&self) -> Option<PyErr> {
        self.interrupted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Applies `edit` to the flags as one audited change by this manager's actor.
    fn modify(
        &self,
        py: Python<'_>,
        edit: impl FnOnce(&FlagSet) -> flagstore::Result<FlagSet> + Send,
    ) -> PyResult<()> {
        let actor = &self.actor;
        self.with(py, move |store| {
            store.modify(actor, "python", false, |current| {
                let next = edit(current)?;
                next.validate()?;
                Ok(next)
            })?;
            Ok(())
        })
    }
}

/// The flags of a flags file's JSON, checked as `import` checks them.
fn parsed(document: &str) -> flagstore::Result<Vec<flagstore::Flag>> {
    Ok(flagstore::document::Document::parse(document, "flags")?.flags)
}

#[pymethods]
impl Store {
    /// Opens `db` (an SQLite path or a PostgreSQL URL), creating it if `create`; without `db`,
    /// a new store in memory.
    #[new]
    #[pyo3(signature = (db, actor, create, signing_key=None, heads=None))]
    fn new(
        py: Python<'_>,
        db: Option<String>,
        actor: String,
        create: bool,
        signing_key: Option<String>,
        heads: Option<String>,
    ) -> PyResult<Store> {
        let location = db.map(|db| Location::parse(OsStr::new(&db)));
        let publishing = publishing(location.as_ref(), signing_key, heads)?;
        let mut store = py
            .detach(|| match &location {
                None => flagstore::Store::open_in_memory(),
                Some(location) if create => flagstore::Store::open(location),
                Some(location) => flagstore::Store::open_existing(location),
            })
            .map_err(raised)?;
        let unpublished: Arc<Mutex<Option<String>>> = Arc::default();
        let publisher = match publishing {
            None => None,
            Some((location, publishing)) => {
                let failure = Arc::clone(&unpublished);
                let publisher = Publisher::start(&location, &publishing, move |published| {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        published.err().map(|e| e.to_string());
                })
                .map_err(raised)?;
                Some(publisher)
            }
        };
        // While a call waits for another process's lock, Python runs its signal handlers
        // every few tens of milliseconds; one that raises (Ctrl-C) ends the wait, before
        // anything is written, and the call raises what it raised.
        let interrupted: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let slot = Arc::clone(&interrupted);
        store.set_keep_waiting(Arc::new(move || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => true,
                Err(raised) => {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(raised);
                    false
                }
            })
        }));
        Ok(Store {
            path: store.path().to_string(),
            store: Mutex::new(Some(store)),
            queue: Mutex::new(Queue::default()),
            actor,
            interrupted,
            publisher: Mutex::new(publisher),
            unpublished,
            opened_by: std::process::id(),
            reached: location.is_some(),
            rollouts_given: Mutex::default(),
        })
    }

    /// The store as messages name it.
    fn path(&self) -> String {
        self.path.clone()
    }

    /// Closes the store (an SQLite file's WAL is moved into it), after a last signed head
    /// over everything recorded when a signing key was given; later calls raise `ValueError`.
    /// Closing twice does nothing. Raises `StoreError` if the last head could not be published.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if std::process::id() != self.opened_by {
            // The store stays the parent's; the child's copy is left when it is dropped.
            return Ok(());
        }
        py.detach(|| {
            drop(
                self.publisher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            drop(self.store.lock().unwrap_or_else(|e| e.into_inner()).take());
        });
        match self
            .unpublished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(why) => Err(StoreError::new_err(format!(
                "cannot publish a tree head: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn flags(&self, py: Python<'_>) -> PyResult<Vec<FlagTuple>> {
        self.with(py, |store| {
            Ok(store.flags()?.iter().map(flag_tuple).collect())
        })
    }

    /// Creates, in one audited change, the flags of `document` (a flags file's JSON) that the
    /// store lacks; returns, for each flag it has with another definition, the fields that
    /// differ as (field, given, stored). The store's definitions stay.
    fn adopt(&self, py: Python<'_>, document: String) -> PyResult<Differences> {
        let actor = self.actor.clone();
        self.with(py, move |store| {
            let given = parsed(&document)?;
            let mut differing = Vec::new();
            store.modify(&actor, "python", false, |current| {
                differing.clear();
                let mut next = current.clone();
                for flag in &given {
                    match current.get(&flag.name) {
                        Some(stored) => {
                            let fields = flagstore::change::differences(flag, stored);
                            if !fields.is_empty() {
                                let fields = fields
                                    .into_iter()
                                    .map(|(field, a, b)| (field.to_string(), a, b))
                                    .collect();
                                differing.push((flag.name.clone(), fields));
                            }
                        }
                        None => next.insert(flag.clone()),
                    }
                }
                next.validate()?;
                Ok(next)
            })?;
            Ok(differing)
        })
    }

    /// Creates or redefines the flags of `document` (a flags file's JSON) in one audited
    /// change, as `import` does; with `replace`, as `import --replace`: the store then holds
    /// exactly those flags, in their order.
    fn apply(&self, py: Python<'_>, document: String, replace: bool) -> PyResult<()> {
        let given = parsed(&document).map_err(raised)?;
        self.modify(py, move |current| Ok(current.imported(&given, replace)))
    }

    /// Deletes flag `name`, audited, as `flag delete` does.
    fn delete(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.modify(py, move |current| {
            let mut next = current.clone();
            next.delete(&name)?;
            Ok(next)
        })
    }

    /// Evaluates `names` for `key`, durably recorded: the answers; the prototype's trail
    /// entries are appended to `log`.
    fn evaluate(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        key: String,
        log: &Bound<'_, PyList>,
    ) -> PyResult<Vec<bool>> {
        let selection = Selection::Flags(names.clone());
        let (flags, evaluated) = match self.evaluate_queued(py, selection.clone(), key.clone())? {
            (flags, Some(evaluated)) => (flags, evaluated),
            // A request naming a flag that does not exist, which a group leaves out: the prototype
            // answered it (false), so it is evaluated and recorded as `flagstore eval` does.
            // The flags for its trail are read right after, under the same lock, not taken
            // from the group's transaction, which may be older.
            (_, None) => {
                let actor = self.actor.clone();
                let (evaluated, flags) = self.with(py, move |store| {
                    let evaluated = store.evaluate_context(&selection, &key, &actor)?;
                    Ok((evaluated, Arc::new(store.flags()?)))
                })?;
                (flags, evaluated)
            }
        };
        self.log_trail(py, &flags, &evaluated, log)?;
        Ok(evaluated
            .evaluations
            .iter()
            .map(|e| e.decision.enabled)
            .collect())
    }

    /// Every flag for `key`, durably recorded: those of `first` in that order (the flags the
    /// manager was given), then the store's others, as read in the evaluating transaction;
    /// a dict of their answers in that order. The prototype's trail entries are appended to
    /// `log`. Both are built here, not in Python: that was a fifth of a call in memory.
    fn evaluate_all<'py>(
        &self,
        py: Python<'py>,
        first: Vec<String>,
        key: String,
        log: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (flags, evaluated) = self.evaluate_queued(py, Selection::AllAfter(first), key)?;
        // Only a request for one flag that does not exist goes unevaluated.
        let evaluated = evaluated.unwrap_or_default();
        self.log_trail(py, &flags, &evaluated, log)?;
        let answers = PyDict::new(py);
        for evaluation in &evaluated.evaluations {
            answers.set_item(&evaluation.flag, evaluation.decision.enabled)?;
        }
        Ok(answers)
    }

    /// Replaces the rollouts as the manager was given them: per flag, the number and
    /// Python's `str` of it.
    fn given_rollouts(&self, given: HashMap<String, (f64, String)>) {
        *self
            .rollouts_given
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = given;
    }

    /// One flag for `key` as `serve` answers OFREP: value, OpenFeature reason, flagstore's
    /// source and reason text; `None` for a flag that does not exist, which is not recorded.
    fn resolve(
        &self,
        py: Python<'_>,
        name: String,
        key: String,
    ) -> PyResult<Option<(bool, &'static str, &'static str, String)>> {
        let (_, evaluated) = self.evaluate_queued(py, Selection::Flags(vec![name]), key)?;
        Ok(evaluated.and_then(|evaluated| {
            evaluated.evaluations.into_iter().next().map(|e| {
                let d = e.decision;
                (
                    d.enabled,
                    d.source.openfeature_reason(),
                    d.source.as_str(),
                    d.reason(),
                )
            })
        }))
    }

    /// Keys per transaction of a batch of `flags` flags per key, as `eval --contexts-file`.
    fn batch_keys(&self, flags: usize) -> usize {
        keys_per_transaction(flags)
    }

    /// Evaluates `names` for each of `keys` in one transaction (a batch's chunk): each key's
    /// answers, in the order of `names`, once committed.
    fn evaluate_chunk(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        keys: Vec<String>,
    ) -> PyResult<Vec<Vec<bool>>> {
        let actor = self.actor.clone();
        self.with(py, move |store| {
            let mut answers = Vec::with_capacity(keys.len());
            store.evaluate_batch(
                &Selection::Flags(names),
                &actor,
                keys.into_iter().map(Ok),
                |_, evaluations| {
                    answers.push(evaluations.iter().map(|e| e.decision.enabled).collect());
                    Ok(())
                },
            )?;
            Ok(answers)
        })
    }

    /// `flagstore explain NAME --context KEY [--at AT] --json`, as JSON text.
    #[pyo3(signature = (name, key, at=None))]
    fn explain(
        &self,
        py: Python<'_>,
        name: String,
        key: String,
        at: Option<String>,
    ) -> PyResult<String> {
        self.with(py, move |store| {
            let report = flagstore::explain::explain(store, &name, &key, at.as_deref())?;
            Ok(report.json().to_string())
        })
    }

    /// `flagstore audit` with these filters, newest first, one JSON row per line.
    #[pyo3(signature = (flag=None, context_key=None, since=None, limit=100))]
    fn audit(
        &self,
        py: Python<'_>,
        flag: Option<String>,
        context_key: Option<String>,
        since: Option<String>,
        limit: i64,
    ) -> PyResult<Vec<String>> {
        self.with(py, move |store| {
            let query = AuditQuery {
                flag,
                context: context_key,
                since: since.map(|s| parse_time_bound(&s, false)).transpose()?,
                limit: (limit > 0).then_some(limit),
                ..AuditQuery::default()
            };
            let mut rows = Vec::new();
            store.query_audit(&query, |row| {
                let json = serde_json::to_string(&row).map_err(|e| Error::System {
                    message: format!("audit row {} as JSON: {e}", row.id),
                })?;
                rows.push(json);
                Ok::<(), Error>(())
            })?;
            Ok(rows)
        })
    }

    /// `flagstore audit verify`: the rows checked and the head hash.
    fn verify(&self, py: Python<'_>) -> PyResult<(i64, String)> {
        self.with(py, |store| {
            let verified = store.verify_audit(None)?;
            Ok((verified.rows, verified.head))
        })
    }
}

#[pymodule]
fn _flagstore(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Store>()?;
    module.add("StoreError", module.py().get_type::<StoreError>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
