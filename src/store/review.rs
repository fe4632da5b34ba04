//! Reading the audit log back: verifying its chain and rebuilding past states from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

use chrono::TimeDelta;

use crate::audit::{AuditQuery, AuditRow, ChainVerifier, Checkpoint, Verified, timestamp};
use crate::error::{Error, Result};
use crate::eval::StoredAssignment;
use crate::flag::{Flag, FlagSet};

use super::query::{Reader, query_audit};
use super::sticky_audit::{EvaluationRow, Removals, Replay, StickyAudit, StickyReport};
use super::tokens::{token_history, unexplained_tokens};
use super::{Location, PageCheck, Store};

/// The stale period, in days, wherever none is given.
pub const DEFAULT_STALE_DAYS: u32 = 30;

/// The longest stale period, in days: a century, far past any audit trail.
pub const MAX_STALE_DAYS: u32 = 36_500;

/// A flag nobody changed for the stale period and that gave every context the same answer
/// through it: a candidate for removal from the code and the store. Serialized as
/// `flag list --stale --json` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StaleFlag {
    pub name: String,
    /// The time of its newest change row.
    pub changed_at: String,
    /// The one answer it gave in the period; `None` when nothing evaluated it.
    pub answer: Option<bool>,
    /// Decisions recorded for it in the period.
    pub decisions: i64,
}

impl StaleFlag {
    /// What it answered in the stale period, in words.
    pub fn answer_text(&self) -> &'static str {
        match self.answer {
            Some(true) => "always on",
            Some(false) => "always off",
            None => "not evaluated",
        }
    }
}

/// Why a scan of a flag's decisions stopped early.
enum Scan {
    /// Two different answers: the flag is not stale.
    Varied,
    Failed(Error),
}

impl From<Error> for Scan {
    fn from(error: Error) -> Scan {
        Scan::Failed(error)
    }
}

impl Store {
    /// The flags that are stale `days` days back from now (the store's clock), from the audit
    /// trail: not exempt (`stale_exempt`), no change row in the period, and one answer in
    /// every decision recorded for them in it (or none recorded), in definition order.
    ///
    /// A flag's decisions are read through its index and stop at the first answer that
    /// differs, so a partial rollout costs little; a flag that gave the same answer a million
    /// times in the period is read a million decisions deep.
    pub fn stale_flags(&self, days: u32) -> Result<Vec<StaleFlag>> {
        if days > MAX_STALE_DAYS {
            return Err(Error::OutOfRange {
                what: "stale period (days)",
                value: days.to_string(),
                range: format!("0-{MAX_STALE_DAYS}"),
            });
        }
        let since = timestamp((self.clock)() - TimeDelta::days(i64::from(days)));
        let mut stale = Vec::new();
        for flag in self.flags()?.iter().filter(|flag| !flag.stale_exempt) {
            let newest_change = AuditQuery {
                flag: Some(flag.name.clone()),
                kind: Some("change".to_string()),
                limit: Some(1),
                ..AuditQuery::default()
            };
            let mut changed_at = None;
            self.query_audit(&newest_change, |row| {
                changed_at = Some(row.ts.to_string());
                Ok::<(), Error>(())
            })?;
            let Some(changed_at) = changed_at.filter(|ts| *ts < since) else {
                continue;
            };
            let decisions_since = AuditQuery {
                flag: Some(flag.name.clone()),
                kind: Some("evaluation".to_string()),
                since: Some(since.clone()),
                ..AuditQuery::default()
            };
            let (mut answer, mut decisions) = (None, 0);
            let scanned = self.query_audit(&decisions_since, |row| {
                let result = row.result == Some(1);
                if answer.is_some_and(|first| first != result) {
                    return Err(Scan::Varied);
                }
                answer = Some(result);
                decisions += 1;
                Ok(())
            });
            match scanned {
                Ok(()) => stale.push(StaleFlag {
                    name: flag.name.clone(),
                    changed_at,
                    answer,
                    decisions,
                }),
                Err(Scan::Varied) => {}
                Err(Scan::Failed(error)) => return Err(error),
            }
        }
        Ok(stale)
    }

    /// The flag definitions in force just before `until` (a normalized, exclusive bound), rebuilt
    /// from the full before/after states the change rows hold.
    pub fn flags_as_of(&self, until: &str) -> Result<FlagSet> {
        self.replayed_flags(Some(until))
    }

    /// The flag definitions the change rows (before `until`, or all of them) leave.
    fn replayed_flags(&self, until: Option<&str>) -> Result<FlagSet> {
        let mut flags = FlagSet::new();
        self.query_audit(&AuditQuery::changes(until), |row| {
            replay_change(&mut flags, &row)
        })?;
        Ok(flags)
    }

    /// Where the live state is not the one the chain explains: a stored flag that is not the
    /// one its change rows leave (a writer with SQL access who ran `UPDATE flags SET enabled
    /// = 0` changed what is served with no change row), an API token row its change rows do
    /// not leave (see `unexplained_tokens`), or an audit row filed under another context's
    /// number (the first found; the assignments are [`Store::unexplained_assignments`]'s).
    /// One line per difference, naming the table, the key and both values; none when the
    /// chain explains the state. Compared at one head of the log: a change made meanwhile starts it again.
    pub fn unexplained_state(&self) -> Result<Vec<String>> {
        for _ in 0..3 {
            let head = self.read_transaction()?.audit_tail()?;
            let stored = self.flags()?;
            let (tokens, history) = {
                let tx = self.read_transaction()?;
                let digests = tx.may_read_token_digests()?;
                (tx.list_tokens(digests)?, token_history(&*tx)?)
            };
            let replayed = self.replayed_flags(None)?;
            if self.read_transaction()?.audit_tail()? != head {
                continue;
            }
            let mut found = Vec::new();
            for flag in stored.iter() {
                match replayed.get(&flag.name) {
                    None => found.push(format!(
                        "flags: flag {:?} is stored, but no change row created it",
                        flag.name
                    )),
                    Some(explained) => {
                        for (field, live, recorded) in crate::change::differences(flag, explained) {
                            found.push(format!(
                                "flags: flag {:?}: {field} is {live} in the table, {recorded} by its \
                                 change rows",
                                flag.name
                            ));
                        }
                    }
                }
            }
            for flag in replayed.iter().filter(|f| !stored.contains(&f.name)) {
                found.push(format!(
                    "flags: flag {:?} is missing from the table, but its change rows leave it defined",
                    flag.name
                ));
            }
            found.extend(unexplained_tokens(&tokens, &history));
            if let Some((id, key)) = self.read_transaction()?.misfiled_context()? {
                let context =
                    key.map_or("no context".to_string(), |key| format!("context {key:?}"));
                found.push(format!(
                    "audit_log: row {id}, of {context}, is filed under another context number: \
                     queries by context do not find it"
                ));
            }
            return Ok(found);
        }
        Err(Error::Inconsistent {
            path: self.path().to_string(),
            problem: "flags kept changing while they were compared with their change rows; run \
                      check again"
                .to_string(),
        })
    }

    /// Where the schema is not the one the migrations make (compared with them run anew in an
    /// empty database): a trigger, view or index, or what defines one, dropped, altered or
    /// added, one line each; none when it is theirs. A dropped or no-op trigger lets rows be
    /// rewritten, a redefined view changes what reviewers' SQL answers, and neither leaves a
    /// row in the chain. `Err` says why they could not be compared (a PostgreSQL role that may
    /// not create a schema).
    pub fn schema_differences(&self) -> Result<std::result::Result<Vec<String>, String>> {
        let objects = self.backend.schema_objects()?;
        let made = match objects.made {
            Ok(made) => made,
            Err(why) => return Ok(Err(why)),
        };
        let keyed = |objects: Vec<(String, String, String)>| -> BTreeMap<(String, String), String> {
            objects
                .into_iter()
                .map(|(kind, name, definition)| ((kind, name), definition))
                .collect()
        };
        let (live, made) = (keyed(objects.live), keyed(made));
        let mut found = Vec::new();
        for ((kind, name), definition) in &made {
            match live.get(&(kind.clone(), name.clone())) {
                None => found.push(format!(
                    "schema: {kind} {name} is missing (the migrations made it)"
                )),
                Some(live) if live != definition => found.push(format!(
                    "schema: {kind} {name} is not the one the migrations made"
                )),
                Some(_) => {}
            }
        }
        for (kind, name) in live.keys().filter(|key| !made.contains_key(*key)) {
            found.push(format!(
                "schema: {kind} {name} was added (the migrations made no such {kind})"
            ));
        }
        Ok(Ok(found))
    }

    /// The assignments `context` had just before `until`, replayed from the log as `check`
    /// replays them: each stored by the decision record (or schema-1 evaluation row) that
    /// lists it as assigned, less those a later reset of its flag (for every context or this
    /// one) or the flag's deletion removed. With each, the id of the row that stored it. Read
    /// in one snapshot.
    pub fn assignments_as_of(
        &self,
        context: &str,
        until: &str,
    ) -> Result<HashMap<String, (StoredAssignment, i64)>> {
        let tx = self.read_transaction()?;
        let reader = Reader::Within(&*tx);
        let removals = Removals::read(&reader, Some(until))?;
        let storing = AuditQuery {
            context: Some(context.to_string()),
            kind: Some("evaluation".to_string()),
            until: Some(until.to_string()),
            ascending: true,
            ..AuditQuery::default()
        };
        let mut replay = Replay::default();
        let mut last_record = None;
        query_audit(&reader, &storing, |row| {
            // A record is shown as a row per decision; its facts are read once.
            if last_record != Some(row.id) {
                last_record = Some(row.id);
                replay.take(&EvaluationRow::of(&row, context))?;
            }
            Ok::<(), Error>(())
        })?;
        Ok(replay
            .finish()
            .into_iter()
            .filter(|(flag, (id, _))| removals.after(flag, context, *id).is_none())
            .map(|(flag, (id, assignment))| (flag, (assignment, id)))
            .collect())
    }

    /// The evaluation of `flag` for `context` recorded last before `until` (exclusive), if any.
    pub fn decision_before(
        &self,
        flag: &str,
        context: &str,
        until: &str,
    ) -> Result<Option<AuditRow>> {
        let nearest = AuditQuery {
            flag: Some(flag.to_string()),
            context: Some(context.to_string()),
            kind: Some("evaluation".to_string()),
            until: Some(until.to_string()),
            limit: Some(1),
            ..AuditQuery::default()
        };
        let mut found = None;
        self.query_audit(&nearest, |row| {
            found = Some(row);
            Ok::<(), Error>(())
        })?;
        Ok(found)
    }

    /// Checks that the stored data is well formed: on SQLite the pages `scope` names (see
    /// [`PageCheck`]), and for [`PageCheck::Everything`] also that every index holds
    /// exactly its table's rows (`integrity_check`, slower). Reads only. Returns what was
    /// checked, in words.
    pub fn check_storage(&self, scope: PageCheck) -> Result<&'static str> {
        self.read_transaction()?.check_storage(scope)
    }

    /// [`Store::check_storage`] beside `work` (see [`Store::beside`]): the check reads much
    /// of the file, and beside work that reads it too it takes little time of its own on a
    /// second core. A damaged page is the error, before whatever `work` met (maybe the same
    /// damage, said less clearly). Where there is no file to check (PostgreSQL) the check
    /// runs first, as alone.
    pub fn with_storage_checked<T>(
        &self,
        scope: PageCheck,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<(&'static str, T)> {
        let check = |store: &Store| store.check_storage(scope);
        match self.location() {
            Some(Location::Sqlite(_)) => self.beside(check, work),
            _ => {
                let storage = check(self)?;
                Ok((storage, work()?))
            }
        }
    }

    /// Runs `other` on a connection of its own to this store, on another thread, while `work`
    /// runs on this one: for reviews that each read much of the store, which a second core
    /// then serves at once. Each sees its own snapshot, as steps in their own transactions
    /// would. `other`'s error comes first. Where there is no connection to open again (a store
    /// in memory), or no thread to be had, `other` runs first on this one; where the second
    /// connection is refused (a role allowed one connection), after `work`, on this one.
    pub fn beside<U: Send, T>(
        &self,
        other: impl Fn(&Store) -> Result<U> + Sync,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<(U, T)> {
        std::thread::scope(|scope| {
            let other = &other;
            let thread = self.location().and_then(|location| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || {
                        Store::open_existing(location)
                            .ok()
                            .map(|store| other(&store))
                    })
                    .ok()
            });
            match thread {
                Some(thread) => {
                    let worked = work();
                    let beside = thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    let beside = beside.unwrap_or_else(|| other(self))?;
                    Ok((beside, worked?))
                }
                None => {
                    let beside = other(self)?;
                    Ok((beside, work()?))
                }
            }
        })
    }

    /// Checks what the database cannot: every foreign key holds (an SQLite file edited with
    /// foreign keys off).
    pub fn check_references(&self) -> Result<()> {
        if let Some((table, row, parent)) = self.read_transaction()?.broken_reference()? {
            return Err(Error::Inconsistent {
                path: self.path().to_string(),
                problem: format!("{table} row {row} refers to a missing row of {parent}"),
            });
        }
        Ok(())
    }

    /// Where the assignments table is not what the decision records stored, less what audited
    /// resets and flag deletions removed after them: an assignment no record stored (or one
    /// a later change row removed), one whose decision, bucket, rollout or time is not its
    /// record's, and one a record stored that is missing (a context silently flipped). Read
    /// in one snapshot, one context at a time.
    pub fn unexplained_assignments(&self) -> Result<StickyReport> {
        let tx = self.read_transaction()?;
        let removals = Removals::read(&Reader::Within(&*tx), None)?;
        let mut audit = StickyAudit::new(removals);
        tx.for_each_context_item(&mut |starts_context, item| audit.visit(starts_context, item))?;
        Ok(audit.finish())
    }

    /// Verifies the whole audit log of `store`, and that it still contains `checkpoint`.
    pub fn verify_audit(&self, checkpoint: Option<&Checkpoint>) -> Result<Verified> {
        self.verify_audit_visiting(checkpoint, |_| Ok(()))
    }

    /// [`Store::verify_audit`], handing each row to `visit` once its link is verified.
    pub(super) fn verify_audit_visiting(
        &self,
        checkpoint: Option<&Checkpoint>,
        visit: impl FnMut(&AuditRow) -> Result<()>,
    ) -> Result<Verified> {
        self.verify_chain_from(ChainVerifier::default(), checkpoint, visit)
    }

    /// [`Store::verify_audit_visiting`] from where `verifier` stands: the rows after those it
    /// has verified, the first linked to its head.
    pub(super) fn verify_chain_from(
        &self,
        mut verifier: ChainVerifier,
        checkpoint: Option<&Checkpoint>,
        mut visit: impl FnMut(&AuditRow) -> Result<()>,
    ) -> Result<Verified> {
        let first_id = verifier.rows() + 1;
        let mut checkpoint_seen = false;
        let mut check_page = |(page, hashes_match): (Vec<AuditRow>, Vec<bool>)| {
            for (row, hash_matches) in page.iter().zip(hashes_match) {
                verifier
                    .check_hashed(row, hash_matches)
                    .map_err(|broken| Error::AuditChain {
                        id: broken.id,
                        why: broken.why,
                    })?;
                if let Some(checkpoint) = checkpoint
                    && checkpoint.id.is_none_or(|id| id == row.id)
                    && checkpoint.hash == row.hash
                {
                    checkpoint_seen = true;
                }
                visit(row)?;
            }
            Ok::<(), Error>(())
        };
        // Rows are hashed on a thread of their own while the next page is read: hashing (SHA-256
        // and hex) is about a quarter of walking the chain, the rest reading rows.
        let hash_page = |page: Vec<AuditRow>| {
            let hashes_match: Vec<bool> = page.iter().map(AuditRow::hash_matches).collect();
            (page, hashes_match)
        };
        std::thread::scope(|scope| {
            let (to_hasher, pages) = mpsc::sync_channel::<Vec<AuditRow>>(1);
            let (from_hasher, hashed) = mpsc::sync_channel(1);
            let hasher = std::thread::Builder::new().spawn_scoped(scope, move || {
                for page in pages {
                    if from_hasher.send(hash_page(page)).is_err() {
                        return;
                    }
                }
            });
            if hasher.is_err() {
                // No thread to be had (a process at its limit): hashed here, between reads.
                return self.for_each_audit_page(first_id, |page| check_page(hash_page(page)));
            }
            let mut hashing = 0;
            self.for_each_audit_page(first_id, |page| {
                // The hasher ends only when a channel closes, which happens only below.
                to_hasher.send(page).expect("the hasher is running");
                hashing += 1;
                if hashing > 1 {
                    check_page(hashed.recv().expect("the hasher is running"))?;
                    hashing -= 1;
                }
                Ok::<(), Error>(())
            })?;
            drop(to_hasher);
            hashed.into_iter().try_for_each(&mut check_page)
        })?;
        if let Some(checkpoint) = checkpoint.filter(|_| !checkpoint_seen) {
            let at = checkpoint
                .id
                .map_or(String::new(), |id| format!(" at row {id}"));
            return Err(Error::CheckpointMissing {
                hash: checkpoint.hash.clone(),
                at,
                rows: verifier.rows(),
            });
        }
        Ok(Verified {
            rows: verifier.rows(),
            head: verifier.head().to_string(),
        })
    }
}

/// Applies change row `row` to `flags`: a creation or update leaves the definition its detail
/// holds in full (`after`), a deletion removes the flag, a move puts the flags in the order
/// its detail holds; other rows change no definition.
fn replay_change(flags: &mut FlagSet, row: &AuditRow) -> Result<()> {
    let unreadable = |why: String| Error::UnreadableAuditRow { id: row.id, why };
    match row.action.as_deref() {
        Some("create" | "update") => {
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail).map_err(|e| unreadable(e.to_string()))?;
            let after: Flag = serde_json::from_value(detail["after"].clone())
                .map_err(|e| unreadable(format!("detail.after: {e}")))?;
            flags.insert(after);
        }
        Some("delete") => {
            if let Some(flag) = &row.flag {
                flags.remove(flag);
            }
        }
        Some("move") => {
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail).map_err(|e| unreadable(e.to_string()))?;
            let order = detail["order"]
                .as_array()
                .ok_or_else(|| unreadable("detail.order: not a list of names".to_string()))?;
            flags.reorder(order.iter().filter_map(serde_json::Value::as_str));
        }
        _ => {}
    }
    Ok(())
}

/// Decision records held, as a walk of the log in id order reaches them, to the definitions
/// the change rows before them leave: what a record says that those do not give (a flag
/// served from an `UPDATE flags` made without a change row, later put back) is named.
#[derive(Default)]
pub(super) struct DecisionWalk {
    flags: FlagSet,
    found: Vec<String>,
    /// Records that disagree beyond those whose lines fill [`DecisionWalk::SHOWN`].
    more: usize,
}

impl DecisionWalk {
    const SHOWN: usize = 10;

    pub(super) fn visit(&mut self, row: &AuditRow) -> Result<()> {
        match (&*row.kind, &row.flag, &row.context_key) {
            ("change", _, _) => replay_change(&mut self.flags, row),
            // A decision record (a schema-1 evaluation row names its flag and holds no
            // decisions to hold).
            ("evaluation", None, Some(context)) => {
                let found = crate::record::disagreements(&row.detail, context, &self.flags)
                    .map_err(|why| Error::UnreadableAuditRow { id: row.id, why })?;
                match (found.is_empty(), self.found.len() >= Self::SHOWN) {
                    (true, _) => {}
                    (false, true) => self.more += 1,
                    (false, false) => self.found.extend(found.into_iter().map(|line| {
                        format!("audit_log: record {}, context {context:?}: {line}", row.id)
                    })),
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One line per decision that disagrees (the first few), and how many records more.
    pub(super) fn lines(mut self) -> Vec<String> {
        if self.more > 0 {
            self.found.push(format!(
                "audit_log: {} more decision record{} disagree with the definitions in force then",
                self.more,
                if self.more == 1 { "" } else { "s" }
            ));
        }
        self.found
    }
}
