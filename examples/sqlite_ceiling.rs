//! How fast SQLite alone can take the rows a batch evaluation writes, with no evaluation,
//! hashing or lookups: the ceiling the schema puts on `flagstore bench eval`.
//!
//! `cargo run --release --example sqlite_ceiling -- [KEYS] [ROUNDS] [DIR]`
//!
//! Each variant fills a fresh store holding `flagstore bench`'s flags (created and migrated by
//! flagstore, so the schema is the real one) with KEYS random UUID-shaped keys' decision
//! records shaped like the real ones (one row per key, same columns and detail, 64 rows per
//! INSERT, as many keys per BEGIN IMMEDIATE ... COMMIT as a batch, one `audit_ranges` row per
//! transaction naming its set of flags), first with the assignment every enabled flag stores
//! for a fresh key, then audit rows alone as on a second pass. Variants run in turn, ROUNDS
//! times, and the medians are printed, with the bytes the process wrote and the bytes the
//! store grew by, per key. Only `as built` is what flagstore promises; the others show what
//! a relaxation of durability, or the rows that docs/design/chain-format-2.md proposes,
//! would buy (see `Rows`).

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use flagstore::bench::{KeyOrder, bench_flags, ordered_key, with_temporary_store};
use flagstore::store::keys_per_transaction;
use rusqlite::{Connection, ToSql, params_from_iter};

/// Rows per multi-row INSERT, as `store.rs` writes them.
const ROWS_PER_INSERT: usize = 64;
const TS: &str = "2026-11-23T20:45:37.123Z";
/// `TS` in milliseconds, as `audit_rows` stores it.
const TS_MS: i64 = 1_795_466_737_123;
const HASH: [u8; 32] = [0x97; 32];

struct Variant {
    name: &'static str,
    setup: &'static str,
    rows: Rows,
}

/// What one decision record is.
enum Rows {
    /// An `audit_rows` row, as flagstore writes them (schema 14): what the schema promises.
    Records,
    /// A row of `format_2` (FORMAT_2_SCHEMA), as the design note proposes: numbers where
    /// `audit_log` has text, the key by its context's number, one 32-byte hash, and this
    /// payload for the decisions.
    Format2(&'static [u8]),
}

/// A decision record of `bench_flags` for a fresh key, as `record::encode` writes it (schema 13).
const RECORD_DETAIL: &str = r#"{"requested":5,"decisions":[["dedupe",1,"rollout",42,"100",1],["enrich",1,"rollout",42,"50",1],["export_v2",0,"rollout",42,"12.5",1],["ingest",1,"rollout",42,"100",1],["legacy_export",0,"disabled"]]}"#;

/// The design note's 2 bytes a flag: its number, then result, source and stored-an-assignment.
const TWO_BYTES_A_FLAG: [u8; 10] = [1, 0x13, 2, 0x13, 3, 0x12, 4, 0x13, 5, 0x20];

/// Context keys are numbered in the store's own `contexts` table, as assignments are.
const FORMAT_2_SCHEMA: &str = "
    CREATE TABLE format_2 (
        id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, actor_id INTEGER NOT NULL,
        context_id INTEGER NOT NULL, decisions BLOB NOT NULL, hash BLOB NOT NULL);
    CREATE INDEX format_2_context ON format_2 (context_id, id);";

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
        name: "format 2, arrays",
        setup: FORMAT_2_SCHEMA,
        rows: Rows::Format2(RECORD_DETAIL.as_bytes()),
    },
    Variant {
        name: "format 2, 2 B a flag",
        setup: FORMAT_2_SCHEMA,
        rows: Rows::Format2(&TWO_BYTES_A_FLAG),
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
    let mut passes = vec![[Vec::new(), Vec::new()]; VARIANTS.len()];
    for _ in 0..rounds {
        for (i, variant) in VARIANTS.iter().enumerate() {
            let [fresh, hits] = fill(&dir, &workload, variant, keys)?;
            passes[i][0].push(fresh);
            passes[i][1].push(hits);
        }
    }
    println!(
        "{keys} random keys x {} flags, {} keys per transaction, {rounds} round(s), medians \
         of evaluations per second, and of bytes written and grown per key",
        workload.flags.len(),
        workload.keys_per_transaction
    );
    println!(
        "{:<22} {:>30} {:>30}",
        "variant", "fresh (+ assignments)", "hits (records alone)"
    );
    for (variant, [fresh, hits]) in VARIANTS.iter().zip(&mut passes) {
        println!(
            "{:<22} {:>30} {:>30}",
            variant.name,
            Pass::medians(fresh),
            Pass::medians(hits)
        );
    }
    Ok(())
}

/// One pass's evaluations per second, and bytes written and grown on disk per key.
#[derive(Clone, Copy)]
struct Pass {
    rate: f64,
    written: f64,
    grown: f64,
}

impl Pass {
    fn medians(passes: &mut [Pass]) -> String {
        let of =
            |field: fn(&Pass) -> f64| median(&mut passes.iter().map(field).collect::<Vec<_>>());
        format!(
            "{:>9.0} /s {:>6.0} B {:>5.0} B",
            of(|p| p.rate),
            of(|p| p.written),
            of(|p| p.grown)
        )
    }
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

/// Fills a fresh store twice over and returns what each pass cost.
fn fill(
    dir: &Path,
    workload: &Workload,
    variant: &Variant,
    keys: usize,
) -> flagstore::Result<[Pass; 2]> {
    let mut passes = [Pass {
        rate: 0.0,
        written: 0.0,
        grown: 0.0,
    }; 2];
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
            conn.query_row("SELECT max(id) FROM audit_rows", [], |row| row.get(0))?;
        for (pass, assign) in passes.iter_mut().zip([true, false]) {
            let (written, size) = (written_bytes(), store_bytes(&conn)?);
            let rate = insert_pass(&conn, workload, variant, keys, &mut last_id, assign)?;
            // Folded into the database, as the store's own checkpointer does, before measuring.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            *pass = Pass {
                rate,
                written: (written_bytes() - written) as f64 / keys as f64,
                grown: (store_bytes(&conn)? - size) as f64 / keys as f64,
            };
        }
        Ok(())
    })?;
    Ok(passes)
}

/// Bytes this process has written to disk (Linux's `/proc/self/io`; 0 where there is none).
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|bytes| bytes.trim().parse().ok())
        .unwrap_or(0)
}

/// The database's size, its WAL folded into it.
fn store_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
        [],
        |row| row.get(0),
    )
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
        "INSERT OR ROLLBACK INTO audit_rows (id, ts_ms, actor_id, action, flag, context_key, \
         result, source, reason, detail, hash, context_id)",
        12,
    );
    let format_2_sql = multi_row_insert(
        "INSERT OR ROLLBACK INTO format_2 (id, ts_ms, actor_id, context_id, decisions, hash)",
        6,
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
        // In the first pass's order again on the second: its keys are in no order either way.
        let names: Vec<String> = (first_key..keys.min(first_key + per_transaction))
            .map(|k| ordered_key(k as u64, KeyOrder::Random))
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
        let first_id = *id + 1;
        match variant.rows {
            Rows::Records => insert_audit_rows(conn, &audit_sql, &names, &context_ids, id)?,
            Rows::Format2(decisions) => {
                insert_format_2_rows(conn, &format_2_sql, &context_ids, decisions, id)?
            }
        }
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
        conn.execute_batch("COMMIT")?;
    }
    Ok((keys * workload.flags.len()) as f64 / started.elapsed().as_secs_f64())
}

/// A decision record for each of `names` (numbered `context_ids`), ROWS_PER_INSERT per INSERT.
fn insert_audit_rows(
    conn: &Connection,
    audit_sql: &[String],
    names: &[String],
    context_ids: &[i64],
    id: &mut i64,
) -> rusqlite::Result<()> {
    let rows: Vec<(i64, &String, &i64)> = names
        .iter()
        .zip(context_ids)
        .map(|(key, number)| {
            *id += 1;
            (*id, key, number)
        })
        .collect();
    conn.execute(
        "INSERT INTO actors (name) VALUES ('bench') ON CONFLICT (name) DO NOTHING",
        [],
    )?;
    let actor: i64 = conn.query_row("SELECT id FROM actors WHERE name = 'bench'", [], |row| {
        row.get(0)
    })?;
    for group in rows.chunks(ROWS_PER_INSERT) {
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(group.len() * 12);
        for (id, key, number) in group {
            values.extend([
                id as &dyn ToSql,
                &TS_MS,
                &actor,
                &None::<&str>,
                &None::<&str>,
                *key,
                &None::<i64>,
                &None::<&str>,
                &None::<&str>,
                &RECORD_DETAIL,
                &HASH,
                *number,
            ]);
        }
        conn.prepare_cached(&audit_sql[group.len()])?
            .execute(params_from_iter(values))?;
    }
    Ok(())
}

/// A format-2 record of `decisions` for each of `context_ids`, ROWS_PER_INSERT per INSERT.
fn insert_format_2_rows(
    conn: &Connection,
    format_2_sql: &[String],
    context_ids: &[i64],
    decisions: &[u8],
    id: &mut i64,
) -> rusqlite::Result<()> {
    let rows: Vec<(i64, &i64)> = context_ids
        .iter()
        .map(|number| {
            *id += 1;
            (*id, number)
        })
        .collect();
    for group in rows.chunks(ROWS_PER_INSERT) {
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(group.len() * 6);
        for (id, number) in group {
            values.extend([id as &dyn ToSql, &TS_MS, &1, *number, &decisions, &HASH]);
        }
        conn.prepare_cached(&format_2_sql[group.len()])?
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
