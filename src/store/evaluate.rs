//! Evaluation inside the store: which flags a request evaluates, which assignments it reads,
//! and how a transaction's keys are decided (on a second thread, in steps) and written back
//! with one decision record per key and one range of them naming the requested flags.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use crate::audit::Entry;
use crate::change::Change;
use crate::error::{Error, Result};
use crate::eval::{self, ContextEvaluation, Evaluation, StoredAssignment};
use crate::flag::{Flag, FlagSet};
use crate::record;

use super::backend::FoundAssignment;
use super::chain::{Chain, linked_rows};
use super::flags::edit_flags;
use super::ranges::flag_set_json;
use super::{
    AssignmentRef, BatchReport, Reads, Request, RequestResult, Selection, Store, WriteTx,
    keys_per_transaction,
};

impl Store {
    /// Applies `edit` as [`Store::modify`] does, then evaluates `selection` for `context`
    /// against the flags as edited, all in one transaction. `confirm` sees the result before it
    /// commits; an error from it (say, the output file cannot be written) rolls everything
    /// back, so a refused run leaves the store as it was.
    pub fn modify_and_evaluate(
        &mut self,
        actor: &str,
        via: &str,
        edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
        selection: &Selection,
        context: &str,
        confirm: impl FnOnce(&FlagSet, &[Change], &ContextEvaluation) -> Result<()>,
    ) -> Result<(Vec<Change>, ContextEvaluation)> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let (next, changes) = edit_flags(&tx, edit, Some((actor, via, ts.as_str())))?;
        let keys = [context.to_string()];
        let evaluated = EvaluationPlan::new(&next, selection)
            .evaluate_keys(&tx, &keys, actor, &ts)?
            .pop()
            .unwrap_or_default();
        confirm(&next, &changes, &evaluated)?;
        tx.commit()?;
        Ok((changes, evaluated))
    }

    /// Evaluates the selected flags for one context key, storing sticky decisions and one
    /// decision record.
    pub fn evaluate(
        &mut self,
        selection: &Selection,
        context: &str,
        actor: &str,
    ) -> Result<Vec<Evaluation>> {
        Ok(self
            .evaluate_context(selection, context, actor)?
            .evaluations)
    }

    /// [`Store::evaluate`], also returning the requirements decided on the way, in the order
    /// they were decided: what the decision record holds, and what a caller that reports
    /// every decision (the prototype's audit trail) needs.
    pub fn evaluate_context(
        &mut self,
        selection: &Selection,
        context: &str,
        actor: &str,
    ) -> Result<ContextEvaluation> {
        let keys = [context.to_string()];
        let mut results = self.retried_on_new_connection(|store| {
            let tx = store.evaluation_transaction()?;
            let ts = store.now();
            let flags = tx.load_flags()?;
            let results =
                EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &keys, actor, &ts)?;
            tx.commit()?;
            Ok(results)
        })?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Evaluates the selected flags for every key, about [`BATCH_EVALUATIONS`](super::BATCH_EVALUATIONS) evaluations
    /// per transaction. Keys are read before the write lock is taken, so a slow producer never
    /// holds other writers up; results are handed to `emit` only once their transaction has
    /// committed, so nothing is reported that was not persisted.
    pub fn evaluate_batch(
        &mut self,
        selection: &Selection,
        actor: &str,
        keys: impl IntoIterator<Item = Result<String>>,
        emit: impl FnMut(&str, &[Evaluation]) -> Result<()>,
    ) -> Result<BatchReport> {
        self.backend.limit_wal(super::BATCH_WAL_PAGES)?;
        let evaluated = self.evaluate_chunks(selection, actor, keys, emit);
        let restored = self.backend.limit_wal(super::WAL_PAGES);
        let report = evaluated?;
        restored?;
        Ok(report)
    }

    /// [`Store::evaluate_batch`], with the WAL limit of a batch in place.
    fn evaluate_chunks(
        &mut self,
        selection: &Selection,
        actor: &str,
        keys: impl IntoIterator<Item = Result<String>>,
        mut emit: impl FnMut(&str, &[Evaluation]) -> Result<()>,
    ) -> Result<BatchReport> {
        let flags_per_key = match selection {
            Selection::All => self.flags()?.len(),
            Selection::Flags(names) => names.len(),
            Selection::AllAfter(first) => self.flags()?.len().max(first.len()),
        };
        let chunk_keys = keys_per_transaction(flags_per_key);
        let mut keys = keys.into_iter();
        let mut chunk: Vec<String> = Vec::with_capacity(chunk_keys);
        let mut report = BatchReport::default();
        loop {
            chunk.clear();
            for key in keys.by_ref().take(chunk_keys) {
                chunk.push(key?);
            }
            if chunk.is_empty() {
                return Ok(report);
            }
            let started = Instant::now();
            let results = self.retried_on_new_connection(|store| {
                let tx = store.evaluation_transaction()?;
                let ts = store.now();
                // Flags are re-read for every chunk so that a kill switch thrown during a long
                // run takes effect within one chunk.
                let flags = tx.load_flags()?;
                let results = EvaluationPlan::new(&flags, selection)
                    .evaluate_keys(&tx, &chunk, actor, &ts)?;
                tx.commit()?;
                Ok(results)
            })?;
            report.batch_latencies.push(started.elapsed());
            for (key, evaluated) in chunk.iter().zip(&results) {
                emit(key, &evaluated.evaluations)?;
                report.evaluations += evaluated.evaluations.len() as u64;
            }
        }
    }

    /// Evaluates many requests, each for one context and by its own actor, in one transaction:
    /// the group commit of `flagstore serve` and of the Python package's threads, where one
    /// writer answers many callers with one fsync. Requests with the same selection and actor
    /// are evaluated together, a key repeated among them seeing what an earlier one stored. A
    /// request naming a single flag that does not exist is not evaluated (`Ok(None)`): there
    /// is no decision to record. Returns the flags as they were in the transaction, too. A
    /// group cut off with its connection (a PostgreSQL restart) is evaluated once more on a
    /// new one, unless its COMMIT landed.
    ///
    /// One caller's fault stays its own: a request whose key no store takes is answered with
    /// its error and never joins the transaction, so the others are evaluated as if it had
    /// not been sent. The outer error is the store's, and every request shares it.
    pub fn evaluate_requests(
        &mut self,
        requests: &[Request],
    ) -> Result<(FlagSet, Vec<RequestResult>)> {
        let mut results: Vec<RequestResult> = Vec::with_capacity(requests.len());
        let mut admitted: Vec<Request> = Vec::with_capacity(requests.len());
        for request in requests {
            match crate::contexts::key_problem(request.context) {
                Some(why) => results.push(Err(Error::InvalidContextKey {
                    key: request.context.to_string(),
                    why,
                })),
                None => {
                    admitted.push(*request);
                    results.push(Ok(None));
                }
            }
        }
        let (flags, evaluated) =
            self.retried_on_new_connection(|store| store.evaluate_requests_once(&admitted))?;
        let mut evaluated = evaluated.into_iter();
        for result in results.iter_mut().filter(|result| result.is_ok()) {
            *result = Ok(evaluated.next().flatten());
        }
        Ok((flags, results))
    }

    fn evaluate_requests_once(
        &mut self,
        requests: &[Request],
    ) -> Result<(FlagSet, Vec<Option<ContextEvaluation>>)> {
        let tx = self.evaluation_transaction()?;
        let ts = self.now();
        let flags = tx.load_flags()?;
        let mut results: Vec<Option<ContextEvaluation>> = vec![None; requests.len()];
        let mut groups: Vec<(&Selection, &str, Vec<usize>)> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            if let Selection::Flags(names) = request.selection
                && names.iter().any(|name| !flags.contains(name))
            {
                continue;
            }
            match groups.iter_mut().find(|(selection, actor, _)| {
                *selection == request.selection && *actor == request.actor
            }) {
                Some((_, _, members)) => members.push(index),
                None => groups.push((request.selection, request.actor, vec![index])),
            }
        }
        for (selection, actor, members) in groups {
            let keys: Vec<String> = members
                .iter()
                .map(|&i| requests[i].context.to_string())
                .collect();
            let evaluated =
                EvaluationPlan::new(&flags, selection).evaluate_keys(&tx, &keys, actor, &ts)?;
            for (index, evaluated) in members.into_iter().zip(evaluated) {
                results[index] = Some(evaluated);
            }
        }
        tx.commit()?;
        Ok((flags, results))
    }

    /// The current flags and the stored assignments of `context` for `flag` and everything
    /// it requires, read in one snapshot, without writing anything.
    pub fn evaluation_state(
        &mut self,
        flag: &str,
        context: &str,
    ) -> Result<(FlagSet, HashMap<String, StoredAssignment>)> {
        let tx = self.read_transaction()?;
        let flags = tx.load_flags()?;
        let selection = Selection::Flags(vec![flag.to_string()]);
        let plan = EvaluationPlan::showing_all_assignments(&flags, &selection);
        let mut stored = HashMap::new();
        tx.fetch_assignments(&plan.lookups, &[context], &mut |found| {
            stored.insert(plan.lookups[found.flag].to_string(), found.to_stored());
        })?;
        Ok((flags, stored))
    }
}

/// What a set of evaluations needs to know once per flag definition, not once per key.
struct EvaluationPlan<'a> {
    flags: &'a FlagSet,
    requested: Vec<&'a str>,
    /// Flags whose assignment the evaluation may consult.
    lookups: Vec<&'a str>,
}

impl<'a> EvaluationPlan<'a> {
    /// A plan for evaluating: a disabled flag is decided before its assignment is consulted
    /// (the kill switch wins), so only enabled flags are looked up.
    fn new(flags: &'a FlagSet, selection: &'a Selection) -> EvaluationPlan<'a> {
        EvaluationPlan::looking_up(flags, selection, |flag| flag.enabled)
    }

    /// A plan for explaining, which shows every stored assignment, relevant or not.
    fn showing_all_assignments(flags: &'a FlagSet, selection: &'a Selection) -> EvaluationPlan<'a> {
        EvaluationPlan::looking_up(flags, selection, |_| true)
    }

    fn looking_up(
        flags: &'a FlagSet,
        selection: &'a Selection,
        consulted: impl Fn(&Flag) -> bool,
    ) -> EvaluationPlan<'a> {
        let requested = selection.names(flags);
        let lookups = flags
            .closure(requested.iter().copied())
            .into_iter()
            .filter(|name| flags.get(name).is_some_and(&consulted))
            .collect();
        EvaluationPlan {
            flags,
            requested,
            lookups,
        }
    }

    /// Evaluates every key within the caller's transaction and writes the new assignments and
    /// one decision record per key, with one range covering them that names the requested
    /// flags. A key may repeat: a later occurrence sees what an earlier one stored.
    ///
    /// Keys go through in steps (`Backend::keys_per_step`). The store is read and written on this
    /// thread, and steps are evaluated, recorded and hashed on another meanwhile: the
    /// evaluator sees every assignment stored before the transaction (all reads come first)
    /// and remembers what it decided itself, so the answers are those of one key at a time.
    fn evaluate_keys(
        &self,
        tx: &WriteTx,
        keys: &[String],
        actor: &str,
        ts: &str,
    ) -> Result<Vec<ContextEvaluation>> {
        // Callers that can name where a key came from (a file's line, an HTTP request) check
        // it first; this is the guard for every other caller of the library.
        for key in keys {
            if let Some(why) = crate::contexts::key_problem(key) {
                return Err(Error::InvalidContextKey {
                    key: key.clone(),
                    why,
                });
            }
        }
        let audited = !self.requested.is_empty() && !keys.is_empty();
        let chain = if audited {
            Some(Chain::at_tail(tx.reads())?)
        } else {
            None
        };
        let first_id = chain.as_ref().map_or(0, |chain| chain.next_id);
        let steps: Vec<&[String]> = keys.chunks(tx.keys_per_step()).collect();
        let mut writer = StepWriter {
            tx,
            actor,
            ts,
            results: Vec::with_capacity(keys.len()),
            steps_left: steps.len(),
            // One range of every record, naming the requested flags.
            range: audited.then(|| {
                (
                    flag_set_json(self.requested.iter().copied()),
                    first_id,
                    first_id + keys.len() as i64 - 1,
                )
            }),
        };
        let mut evaluator = KeyEvaluator {
            plan: self,
            actor,
            ts,
            chain,
            stored: foldhash::HashMap::default(),
        };
        let mut seen: foldhash::HashSet<&str> = foldhash::HashSet::default();
        let mut fetch = |step| self.fetch_step(tx.reads(), step, &mut seen);
        // Several steps are evaluated on a second thread while this one reads and writes; one
        // step, or a process that can start no thread (at its limit), on this thread alone.
        let threaded = steps.len() > 1
            && std::thread::scope(|scope| -> Result<bool> {
                let (to_evaluate, fetched_steps) = std::sync::mpsc::channel();
                let (to_write, evaluated_steps) = std::sync::mpsc::channel();
                let evaluating = std::thread::Builder::new().spawn_scoped(scope, {
                    let evaluator = &mut evaluator;
                    move || {
                        for (step, fetched) in fetched_steps {
                            let evaluated = evaluator.evaluate(step, fetched);
                            if to_write.send((step, evaluated)).is_err() {
                                break;
                            }
                        }
                    }
                });
                if evaluating.is_err() {
                    return Ok(false);
                }
                for &step in &steps {
                    // Fails only if the evaluator panicked, which the scope raises again.
                    let _ = to_evaluate.send((step, fetch(step)?));
                }
                drop(to_evaluate);
                for (step, evaluated) in evaluated_steps {
                    writer.write(step, evaluated)?;
                }
                Ok(true)
            })?;
        if !threaded {
            for step in steps {
                let evaluated = evaluator.evaluate(step, fetch(step)?);
                writer.write(step, evaluated)?;
            }
        }
        Ok(writer.results)
    }

    /// The stored assignments of the keys of `step` not `seen` before in the transaction.
    fn fetch_step<'k>(
        &self,
        tx: &dyn Reads,
        step: &'k [String],
        seen: &mut foldhash::HashSet<&'k str>,
    ) -> Result<Fetched<'k>> {
        let mut fetched = Fetched {
            keys: step
                .iter()
                .map(String::as_str)
                .filter(|key| seen.insert(key))
                .collect(),
            ..Fetched::default()
        };
        if !self.lookups.is_empty() && !fetched.keys.is_empty() {
            tx.fetch_assignments(&self.lookups, &fetched.keys, &mut |found| {
                let start = fetched.times.len();
                fetched.times.push_str(found.assigned_at);
                fetched
                    .assignments
                    .push(found.with_time(start..fetched.times.len()));
            })?;
        }
        Ok(fetched)
    }
}

/// The assignments one step read from the store, for keys met for the first time in the
/// transaction, as read: flags as indexes into the plan's lookups and times as ranges of one
/// buffer, so that the store's thread, the busier one, allocates nothing per row and the
/// evaluating thread makes them [`StoredAssignment`]s.
#[derive(Default)]
struct Fetched<'k> {
    keys: Vec<&'k str>,
    assignments: Vec<FoundAssignment<Range<usize>>>,
    times: String,
}

/// What the evaluating thread made of one step's keys, in their order.
struct Evaluated {
    evaluations: Vec<ContextEvaluation>,
    /// Their decision records, when the request is audited.
    records: Option<Records>,
}

/// Decision records linked into the chain: the first one's id, the hash it follows, and each
/// record's `detail` with its hash.
struct Records {
    first_id: i64,
    prev_hash: String,
    linked: Vec<(String, String)>,
}

/// The evaluating side of [`EvaluationPlan::evaluate_keys`]: pure work, no store.
struct KeyEvaluator<'a, 'k> {
    plan: &'a EvaluationPlan<'a>,
    actor: &'a str,
    ts: &'a str,
    /// Where the next decision record links in, when the request is audited.
    chain: Option<Chain>,
    /// Every key's assignments: as read, then as this transaction stored them. Hashed with
    /// foldhash, as the evaluator's maps are (see `eval::evaluate_context`): the keys come from
    /// callers, but foldhash is seeded at random and a map lives for one transaction's keys.
    stored: foldhash::HashMap<&'k str, foldhash::HashMap<String, StoredAssignment>>,
}

impl<'k> KeyEvaluator<'_, 'k> {
    fn evaluate(&mut self, step: &'k [String], fetched: Fetched<'k>) -> Evaluated {
        for found in fetched.assignments {
            let time = &fetched.times[found.assigned_at.clone()];
            let key = fetched.keys[found.key];
            let flag = self.plan.lookups[found.flag].to_string();
            let assignment = found.with_time(time).to_stored();
            self.stored.entry(key).or_default().insert(flag, assignment);
        }
        let mut evaluated = Evaluated {
            evaluations: Vec::with_capacity(step.len()),
            records: self.chain.as_ref().map(|chain| Records {
                first_id: chain.next_id,
                prev_hash: chain.prev_hash.clone(),
                linked: Vec::with_capacity(step.len()),
            }),
        };
        for key in step {
            let of_key = self.stored.entry(key).or_default();
            let evaluation =
                eval::evaluate_context(self.plan.flags, key, of_key, &self.plan.requested);
            for assignment in evaluation
                .evaluations
                .iter()
                .flat_map(|e| &e.new_assignments)
            {
                of_key.insert(
                    assignment.flag.clone(),
                    StoredAssignment {
                        decision: assignment.decision,
                        bucket: assignment.bucket,
                        rollout_pct: assignment.rollout_pct,
                        assigned_at: self.ts.to_string(),
                    },
                );
            }
            if let (Some(chain), Some(records)) = (&mut self.chain, &mut evaluated.records) {
                let detail = record::encode(&evaluation);
                let hash = chain.link(&decision_record(self.ts, self.actor, key, &detail));
                records.linked.push((detail, hash));
            }
            evaluated.evaluations.push(evaluation);
        }
        evaluated
    }
}

/// The writing side of [`EvaluationPlan::evaluate_keys`]: stores each evaluated step.
struct StepWriter<'t, 'a> {
    tx: &'t WriteTx<'t>,
    actor: &'a str,
    ts: &'a str,
    results: Vec<ContextEvaluation>,
    steps_left: usize,
    /// The transaction's range of records (its flag set's JSON, first and last id), written
    /// with its last step.
    range: Option<(String, i64, i64)>,
}

impl StepWriter<'_, '_> {
    fn write(&mut self, step: &[String], evaluated: Evaluated) -> Result<()> {
        let ts = self.ts;
        let new_assignments: Vec<AssignmentRef> = step
            .iter()
            .zip(&evaluated.evaluations)
            .flat_map(|(key, evaluated)| {
                evaluated
                    .evaluations
                    .iter()
                    .flat_map(|e| &e.new_assignments)
                    .map(move |assignment| AssignmentRef::new(key, assignment, ts))
            })
            .collect();
        let records = match &evaluated.records {
            Some(records) => linked_rows(
                records.first_id,
                &records.prev_hash,
                step.iter()
                    .zip(&records.linked)
                    .map(|(key, (detail, hash))| {
                        (decision_record(ts, self.actor, key, detail), hash)
                    }),
            ),
            None => Vec::new(),
        };
        self.steps_left -= 1;
        let range = match self.steps_left {
            0 => self.range.take(),
            _ => None,
        };
        self.tx.append_step(
            &new_assignments,
            &records,
            range
                .as_ref()
                .map(|(flags, first_id, last_id)| (flags.as_str(), *first_id, *last_id)),
        )?;
        self.results.extend(evaluated.evaluations);
        Ok(())
    }
}

/// The audit row of one key's decisions in an evaluation request.
fn decision_record<'a>(ts: &'a str, actor: &'a str, key: &'a str, detail: &'a str) -> Entry<'a> {
    Entry {
        ts,
        kind: "evaluation",
        actor,
        action: None,
        flag: None,
        context_key: Some(key),
        result: None,
        source: None,
        reason: None,
        detail,
    }
}
