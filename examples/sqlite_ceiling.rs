//! How fast SQLite alone can take the rows a batch evaluation writes, with no evaluation,
//! hashing or lookups: the ceiling the schema puts on `flagstore bench eval`.
//!
//! `cargo run --release --example sqlite_ceiling -- [KEYS] [ROUNDS] [DIR]`
//!
//! Each variant fills a fresh store holding `flagstore bench`'s flags (created and migrated by
//! flagstore, so the schema is the real one) with KEYS keys' decision records shaped like the
//! real ones (one row per key, same columns and detail length, 64 rows per INSERT, as many keys
//! per BEGIN IMMEDIATE ... COMMIT as a batch, one `audit_ranges` row per transaction naming
//! its set of flags), first with the assignment every enabled flag stores for a fresh key, then
//! audit rows alone as on a second pass. Variants run in turn, ROUNDS times, and the
//! medians are printed. Only `as built` is what flagstore promises; the others show what each
//! relaxation of the schema or of durability would buy (see `Rows`).

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use flagstore::bench::{bench_flags, with_temporary_store};
use flagstore::store::keys_per_transaction;
use rusqlite::{Connection, OptionalExtension, ToSql, params_from_iter};

/// Rows per multi-row INSERT, as `store.rs` writes them.
const ROWS_PER_INSERT: usize = 64;
const TS: &str = "2026-11-23T20:45:37.123Z";
const HASH: &str = "9775efa881c6c9bf5b7a39f0f82cea3c56b318bb1ac96432d5cb7e5e465e179a";

struct Variant {
    name: &'static str,
    setup: &'static str,
    rows: Rows,
}

/// What one audit row holds.
enum Rows {
    /// One decision record per key, as flagstore writes them: what the schema promises.
    Records,
    /// One `audit_log` row per evaluation, as schema 1 wrote them.
    PerEvaluation,
    /// One row per evaluation in `compact_log` (see COMPACT_SCHEMA): numbers where the schema
    /// has text, contexts stored once, reason and detail left to be derived, 32-byte hashes.
    Compact,
}

/// `detail` of a row per evaluation, and of a row holding all of a key's evaluations.
const PER_EVALUATION_DETAIL: &str = r#"{"bucket":42,"assigned":["enrich"]}"#;
/// A decision record of `bench_flags` for a fresh key, as `record::encode` writes it.
const RECORD_DETAIL: &str = r#"{"requested":5,"decisions":[{"flag":"dedupe","result":1,"source":"rollout","bucket":42,"rollout_pct":"100","assigned":1},{"flag":"enrich","result":1,"source":"rollout","bucket":42,"rollout_pct":"50","assigned":1},{"flag":"export_v2","result":0,"source":"rollout","bucket":42,"rollout_pct":"12.5","assigned":1},{"flag":"ingest","result":1,"source":"rollout","bucket":42,"rollout_pct":"100","assigned":1},{"flag":"legacy_export","result":0,"source":"disabled"}]}"#;

/// Context keys are numbered in the store's own `contexts` table, as assignments are.
const COMPACT_SCHEMA: &str = "
    CREATE TABLE compact_log (
        id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, flag_id INTEGER NOT NULL,
        context_id INTEGER NOT NULL, result INTEGER, source INTEGER, bucket INTEGER,
        prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
    CREATE INDEX compact_log_flag ON compact_log (flag_id, id);
    CREATE INDEX compact_log_context ON compact_log (context_id, id);";

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "as built",
        setup: "",
        rows: Rows::Records,
    },
    Variant {
        name: "no context index",
        setup: "DROP INDEX audit_log_context;",
        rows: Rows::Records,
    },
    Variant {
        name: "synchronous=NORMAL",
        setup: "PRAGMA synchronous = NORMAL;",
        rows: Rows::Records,
    },
    Variant {
        name: "row per evaluation",
        setup: "",
        rows: Rows::PerEvaluation,
    },
    Variant {
        name: "compact rows",
        setup: COMPACT_SCHEMA,
        rows: Rows::Compact,
    },
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sqlite_ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The positional argument `name`, a count of at least 1, or `default` when it is absent.
fn count_arg(arg: Option<String>, name: &str, default: usize) -> Result<usize, String> {
    match arg {
        None => Ok(default),
        Some(text) => match text.parse() {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(format!(
                "{name} must be a whole number of at least 1, not {text:?}"
            )),
        },
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let keys = count_arg(args.next(), "KEYS", 200_000)?;
    let rounds = count_arg(args.next(), "ROUNDS", 3)?;
    let dir = args.next().map_or(std::env::temp_dir(), Into::into);
    let workload = Workload::of_bench();
    let mut fresh = vec![Vec::new(); VARIANTS.len()];
    let mut hits = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..rounds {
        for (i, variant) in VARIANTS.iter().enumerate() {
            let (f, h) = fill(&dir, &workload, variant, keys)?;
            fresh[i].push(f);
            hits[i].push(h);
        }
    }
    println!(
        "{keys} keys x {} flags, {} keys per transaction, {rounds} round(s), \
         medians of evaluations per second",
        workload.flags.len(),
        workload.keys_per_transaction
    );
    println!(
        "{:<20} {:>22} {:>22}",
        "variant", "fresh (+ assignments)", "hits (audit alone)"
    );
    for (i, variant) in VARIANTS.iter().enumerate() {
        println!(
            "{:<20} {:>22.0} {:>22.0}",
            variant.name,
            median(&mut fresh[i]),
            median(&mut hits[i])
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What a batch over `bench_flags` writes per key.
struct Workload {
    flags: Vec<String>,
    /// Flags whose decision a fresh key stores: every enabled one (their rollouts are 100% with
    /// sticky `on_only`, or `all`).
    assigned: Vec<String>,
    keys_per_transaction: usize,
}

impl Workload {
    fn of_bench() -> Workload {
        let flags = bench_flags();
        Workload {
            flags: flags.names().map(str::to_string).collect(),
            assigned: flags
                .iter()
                .filter(|flag| flag.enabled)
                .map(|flag| flag.name.clone())
                .collect(),
            keys_per_transaction: keys_per_transaction(flags.len()),
        }
    }
}

/// Fills a fresh store twice over and returns evaluations per second for each pass.
fn fill(
    dir: &Path,
    workload: &Workload,
    variant: &Variant,
    keys: usize,
) -> flagstore::Result<(f64, f64)> {
    let mut passes = (0.0, 0.0);
    with_temporary_store(dir, |_, path| {
        let conn = Connection::open(path)?;
        // The pragmas flagstore sets on every connection that matter to writing; foreign keys
        // as its evaluating transactions leave them, unchecked (the rows refer to what the
        // transaction itself read or wrote).
        conn.execute_batch(
            "PRAGMA cache_size = -16384; PRAGMA temp_store = memory; \
             PRAGMA wal_autocheckpoint = 10000; PRAGMA foreign_keys = OFF;",
        )?;
        conn.execute_batch(variant.setup)?;
        let mut last_id: i64 =
            conn.query_row("SELECT max(id) FROM audit_log", [], |row| row.get(0))?;
        passes = (
            insert_pass(&conn, workload, variant, keys, &mut last_id, true)?,
            insert_pass(&conn, workload, variant, keys, &mut last_id, false)?,
        );
        Ok(())
    })?;
    Ok(passes)
}

fn insert_pass(
    conn: &Connection,
    workload: &Workload,
    variant: &Variant,
    keys: usize,
    id: &mut i64,
    assign: bool,
) -> rusqlite::Result<f64> {
    let audit_sql = multi_row_insert(
        "INSERT OR ROLLBACK INTO audit_log (id, ts, kind, actor, action, flag, context_key, \
         result, source, reason, detail, prev_hash, hash, context_id)",
        14,
    );
    let compact_sql = multi_row_insert(
        "INSERT OR ROLLBACK INTO compact_log (id, ts, flag_id, context_id, result, source, \
         bucket, prev_hash, hash)",
        9,
    );
    let context_sql = multi_row_insert("INSERT OR ROLLBACK INTO contexts (key)", 1);
    let assignment_sql = multi_row_insert(
        "INSERT OR ROLLBACK INTO assignment_rows \
         (context_id, flag, decision, bucket, rollout_pct, assigned_at)",
        6,
    );
    let started = Instant::now();
    let flags: Vec<&str> = workload.flags.iter().map(String::as_str).collect();
    let per_transaction = workload.keys_per_transaction;
    for first_key in (0..keys).step_by(per_transaction) {
        let names: Vec<String> = (first_key..keys.min(first_key + per_transaction))
            .map(|k| format!("tenant-{k:09}"))
            .collect();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Numbered as flagstore numbers new context keys, ROWS_PER_INSERT per statement; on
        // the second pass, looked up.
        let mut context_ids: Vec<i64> = Vec::with_capacity(names.len());
        if assign {
            for group in names.chunks(ROWS_PER_INSERT) {
                let mut number =
                    conn.prepare_cached(&format!("{} RETURNING id", context_sql[group.len()]))?;
                let mut rows = number.query(params_from_iter(group))?;
                while let Some(row) = rows.next()? {
                    context_ids.push(row.get(0)?);
                }
            }
        } else {
            let mut lookup = conn.prepare_cached("SELECT id FROM contexts WHERE key = ?1")?;
            for name in &names {
                context_ids.push(lookup.query_row([name], |row| row.get(0))?);
            }
        }
        if assign {
            let mut insert = conn.prepare_cached(&assignment_sql[workload.assigned.len()])?;
            for context_id in &context_ids {
                let mut values: Vec<&dyn ToSql> = Vec::new();
                for flag in &workload.assigned {
                    values.extend([context_id as &dyn ToSql, flag, &true, &42, &50.0, &TS]);
                }
                insert.execute(params_from_iter(values))?;
            }
        }
        match variant.rows {
            Rows::PerEvaluation => {
                insert_audit_rows(conn, &audit_sql, &names, &context_ids, &flags, id)?
            }
            Rows::Records => {
                let first_id = *id + 1;
                insert_audit_rows(conn, &audit_sql, &names, &context_ids, &[], id)?;
                let set = serde_json::to_string(&flags).expect("a list of names serializes");
                conn.prepare_cached(
                    "INSERT INTO audit_flag_sets (flags) VALUES (?1) ON CONFLICT (flags) DO NOTHING",
                )?
                .execute([&set])?;
                conn.prepare_cached(
                    "INSERT INTO audit_ranges (first_id, last_id, flag_set) \
                     SELECT ?2, ?3, id FROM audit_flag_sets WHERE flags = ?1",
                )?
                .execute((&set, first_id, *id))?;
            }
            Rows::Compact => {
                insert_compact_rows(conn, &compact_sql, &names, workload.flags.len(), id)?
            }
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok((keys * workload.flags.len()) as f64 / started.elapsed().as_secs_f64())
}

/// Audit rows for each of `names` (numbered `context_ids`) and each of `flags`, or one per name
/// (a decision record) when `flags` is empty, ROWS_PER_INSERT per INSERT.
fn insert_audit_rows(
    conn: &Connection,
    audit_sql: &[String],
    names: &[String],
    context_ids: &[i64],
    flags: &[&str],
    id: &mut i64,
) -> rusqlite::Result<()> {
    let (reason, detail) = if flags.is_empty() {
        (None, RECORD_DETAIL)
    } else {
        (Some("rollout: bucket 42 < 50"), PER_EVALUATION_DETAIL)
    };
    let per_key: Vec<Option<&str>> = if flags.is_empty() {
        vec![None]
    } else {
        flags.iter().copied().map(Some).collect()
    };
    let rows: Vec<(i64, Option<&str>, &String, &i64)> = names
        .iter()
        .zip(context_ids)
        .flat_map(|(key, number)| per_key.iter().map(move |flag| (*flag, key, number)))
        .map(|(flag, key, number)| {
            *id += 1;
            (*id, flag, key, number)
        })
        .collect();
    for group in rows.chunks(ROWS_PER_INSERT) {
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(group.len() * 14);
        for (id, flag, key, number) in group {
            values.extend([
                id as &dyn ToSql,
                &TS,
                &"evaluation",
                &"bench",
                &None::<&str>,
                flag,
                *key,
                if flag.is_some() {
                    &Some(1)
                } else {
                    &None::<i64>
                },
                if flag.is_some() {
                    &Some("rollout")
                } else {
                    &None::<&str>
                },
                &reason,
                &detail,
                &HASH,
                &HASH,
                *number,
            ]);
        }
        conn.prepare_cached(&audit_sql[group.len()])?
            .execute(params_from_iter(values))?;
    }
    Ok(())
}

/// Compact rows for each of `names` and each of `flags` flags, with each context stored once.
fn insert_compact_rows(
    conn: &Connection,
    compact_sql: &[String],
    names: &[String],
    flags: usize,
    id: &mut i64,
) -> rusqlite::Result<()> {
    let hash = [0x97u8; 32];
    let mut rows: Vec<(i64, i64, i64)> = Vec::with_capacity(names.len() * flags);
    for key in names {
        let known = conn
            .prepare_cached("SELECT id FROM contexts WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?;
        let context_id: i64 = match known {
            Some(context_id) => context_id,
            None => conn
                .prepare_cached("INSERT INTO contexts (key) VALUES (?1) RETURNING id")?
                .query_row([key], |row| row.get(0))?,
        };
        for flag_id in 0..flags as i64 {
            *id += 1;
            rows.push((*id, flag_id, context_id));
        }
    }
    for group in rows.chunks(ROWS_PER_INSERT) {
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(group.len() * 9);
        for (id, flag_id, context_id) in group {
            values.extend([
                id as &dyn ToSql,
                &1_795_000_000_123i64,
                flag_id,
                context_id,
                &1,
                &2,
                &42,
                &hash,
                &hash,
            ]);
        }
        conn.prepare_cached(&compact_sql[group.len()])?
            .execute(params_from_iter(values))?;
    }
    Ok(())
}

/// `insert` with 0..=ROWS_PER_INSERT rows of `columns` parameters, indexed by row count.
fn multi_row_insert(insert: &str, columns: usize) -> Vec<String> {
    let row = format!("({})", vec!["?"; columns].join(", "));
    (0..=ROWS_PER_INSERT)
        .map(|rows| format!("{insert} VALUES {}", vec![row.as_str(); rows].join(", ")))
        .collect()
}
