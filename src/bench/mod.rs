//! `flagstore bench`: batch evaluation throughput on a fresh store and again on the same keys,
//! so anyone can reproduce the figures the README quotes. Keys are loaded as users send them:
//! random (UUID-shaped, in no order) on a store that already holds `Load::preload` contexts,
//! since keys that count up on a new store are the kindest case for every index.

mod load;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::audit::AuditQuery;
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet, StickyPolicy};
use crate::output::write_batch_line;
use crate::serve::{Limits, ServeConfig, serve_until};
use crate::store::{BatchReport, Location, ScratchSchema, Selection, Store, keys_per_transaction};
use load::LoadReport;

/// A pipeline-like flag set: a chain of dependencies, partial rollouts, one kill switch. The
/// partial rollouts store every decision, so the second pass is all sticky hits.
pub fn bench_flags() -> FlagSet {
    let flag = |name: &str, rollout_pct: f64, requires: &[&str], sticky: StickyPolicy| Flag {
        rollout_pct,
        requires: requires.iter().map(|r| r.to_string()).collect(),
        sticky,
        ..Flag::new(name)
    };
    [
        flag("ingest", 100.0, &[], StickyPolicy::OnOnly),
        flag("dedupe", 100.0, &["ingest"], StickyPolicy::OnOnly),
        flag("enrich", 50.0, &["dedupe"], StickyPolicy::All),
        flag("export_v2", 12.5, &["dedupe"], StickyPolicy::All),
        Flag {
            enabled: false,
            ..flag("legacy_export", 100.0, &[], StickyPolicy::OnOnly)
        },
    ]
    .into_iter()
    .collect()
}

/// Where a bench keeps its throw-away store.
#[derive(Debug, Clone, PartialEq)]
pub enum Scratch {
    /// An SQLite file in this directory.
    Directory(PathBuf),
    /// A new schema in the PostgreSQL database at this URL.
    Postgres(String),
}

/// How a bench's keys arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub order: KeyOrder,
    /// Contexts the store holds before the measured passes (one flag each, not timed).
    pub preload: u64,
}

impl Load {
    /// The key of the `i`th measured request or key, after the preloaded ones.
    fn key(&self, i: u64) -> String {
        ordered_key(self.preload + i, self.order)
    }

    /// The key of the `i`th request of the pass that repeats the `count` keys of the first:
    /// with random keys, the same keys in another order, as contexts come back in life (in
    /// the first pass's order, the contexts numbered together in it would come back
    /// together, flattering every index kept by context number); with sequential keys, the
    /// same order, the kind case.
    fn repeated_key(&self, i: u64, count: u64) -> String {
        match self.order {
            KeyOrder::Sequential => self.key(i),
            // A stride prime to any count a bench uses visits each index once.
            KeyOrder::Random => {
                self.key((u128::from(i) * REPEAT_STRIDE % u128::from(count.max(1))) as u64)
            }
        }
    }

    /// Fills the store with [`Load::preload`] contexts, a decision of one flag each, in batch
    /// transactions, and says so on `out`.
    fn preload(&self, store: &mut Store, out: &mut impl Write) -> Result<()> {
        if self.preload == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let one_flag = Selection::Flags(vec![PRELOAD_FLAG.to_string()]);
        let keys = (0..self.preload).map(|i| Ok(ordered_key(i, self.order)));
        store.evaluate_batch(&one_flag, "bench", keys, |_, _| Ok(()))?;
        writeln!(
            out,
            "preloaded {} contexts (flag {PRELOAD_FLAG}) in {:.1} s",
            self.preload,
            started.elapsed().as_secs_f64()
        )
        .map_err(write_error)
    }
}

/// A prime (Knuth's multiplicative hash constant) larger than any bench's key count.
const REPEAT_STRIDE: u128 = 2_654_435_761;

/// The flag the preloaded contexts are evaluated for: the cheapest, one decision each.
const PRELOAD_FLAG: &str = "ingest";

/// Runs both passes over `keys` generated keys in a fresh store, which is removed afterwards,
/// and prints one line per pass.
pub fn run(keys: u64, arrival: Load, scratch: &Scratch, out: &mut impl Write) -> Result<()> {
    in_scratch_location(scratch, |store, location| {
        run_in(store, location, keys, arrival, out)
    })
}

/// Fills a fresh log with `rows` evaluation rows of random keys, prints the bytes each wrote
/// and grew the store by, and the median time of each query.
pub fn run_audit(rows: u64, scratch: &Scratch, out: &mut impl Write) -> Result<()> {
    in_scratch_location(scratch, |store, location| {
        run_audit_in(store, location, rows, out)
    })
}

/// Runs `bench` on a fresh store holding [`bench_flags`] and removes the store afterwards,
/// whether or not `bench` succeeded; tells `bench` where the store is, so it can measure the
/// files and open more connections to it.
fn in_scratch_location(
    scratch: &Scratch,
    bench: impl FnOnce(&mut Store, &Location) -> Result<()>,
) -> Result<()> {
    match scratch {
        Scratch::Directory(dir) => with_temporary_store(dir, |store, path| {
            bench(store, &Location::Sqlite(path.to_path_buf()))
        }),
        Scratch::Postgres(url) => {
            let schema = ScratchSchema::create(url, "flagstore_bench")?;
            let location = Location::Postgres(schema.url().to_string());
            bench(&mut seeded(Store::open(&location))?, &location)
        }
    }
}

/// The flag every `bench serve` request asks for: it requires two others, so a fresh context
/// stores three decisions and a repeated one reads three.
const SERVED_FLAG: &str = "enrich";

/// `bench serve`: `requests` single-flag OFREP requests over `connections` keep-alive
/// connections, first to a handler that does no store work (this machine's HTTP ceiling),
/// then to `flagstore serve` with a new context per request (sticky misses), then with the
/// same contexts again (hits). Server and load generator share this process and its cores.
pub fn run_serve(
    requests: u64,
    connections: usize,
    arrival: Load,
    scratch: &Scratch,
    signed: bool,
    out: &mut impl Write,
) -> Result<()> {
    let witness = signed.then(BenchWitness::create).transpose()?;
    in_scratch_location(scratch, |store, location| {
        arrival.preload(store, out)?;
        if let Some(witness) = &witness {
            // As a store that has been signed all along: serve extends the head it finds.
            store.publish_head(&witness.key, &witness.heads())?;
        }
        writeln!(
            out,
            "{requests} requests of flag {SERVED_FLAG} over {connections} keep-alive connections, \
             database {}",
            store.path()
        )
        .map_err(write_error)?;
        writeln!(
            out,
            "{:<22} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8}",
            "pass", "requests", "seconds", "requests/s", "p50", "p99", "failed"
        )
        .map_err(write_error)?;
        let path = format!("/ofrep/v1/evaluate/flags/{SERVED_FLAG}");
        let request = |key: String| format!(r#"{{"context":{{"targetingKey":"{key}"}}}}"#);
        let body = move |i: u64| request(arrival.key(i));
        let repeated_body = move |i: u64| request(arrival.repeated_key(i, requests));
        let ceiling = with_server(ServerKind::Ceiling, |address| {
            load::run(address, connections, requests, &path, body)
        })?;
        writeln!(out, "{}", load_line("ceiling (no store)", &ceiling)).map_err(write_error)?;
        let config = ServeConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            no_auth: true,
            limits: Limits::default(),
            publishing: witness.as_ref().map(BenchWitness::publishing),
        };
        let size = StoreSize::of(location);
        let before = size.measure(store);
        let passes = with_server(
            ServerKind::Flagstore(Store::open(location)?, Box::new(config)),
            |address| {
                let fresh = load::run(address, connections, requests, &path, body)?;
                let after_fresh = size.measure(store);
                let again = load::run(address, connections, requests, &path, repeated_body)?;
                Ok((fresh, after_fresh, again))
            },
        )?;
        let (fresh, after_fresh, again) = passes;
        let after_again = size.measure(store);
        writeln!(out, "{}", load_line("fresh (misses)", &fresh)).map_err(write_error)?;
        writeln!(out, "{}", load_line("again (hits)", &again)).map_err(write_error)?;
        writeln!(
            out,
            "per fresh request: {}; per repeated request: {}",
            before.per(&after_fresh, requests),
            after_fresh.per(&after_again, requests)
        )
        .map_err(write_error)?;
        writeln!(
            out,
            "grown per request by table and index: fresh: {}; again: {}",
            before.grown_by_object(&after_fresh, requests),
            after_fresh.grown_by_object(&after_again, requests)
        )
        .map_err(write_error)?;
        let rss = peak_rss_kib().map_or("unknown".to_string(), |kib| {
            format!("{:.1} MB", kib as f64 / 1024.0)
        });
        writeln!(out, "peak RSS {rss} (server and load generator)").map_err(write_error)?;
        if let Some(witness) = &witness {
            witness.report(store, 2 * requests, out)?;
        }
        Ok(())
    })
}

/// `bench serve --signed`: a signing key and heads file of the bench's own, in a temporary
/// directory removed when the bench ends.
struct BenchWitness {
    dir: PathBuf,
    key: std::sync::Arc<crate::heads::HeadKey>,
}

impl BenchWitness {
    fn create() -> Result<BenchWitness> {
        let dir =
            std::env::temp_dir().join(format!("flagstore-bench-heads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let key = crate::heads::HeadKey::generate(&dir.join("heads.key"))?;
        Ok(BenchWitness {
            dir,
            key: std::sync::Arc::new(key),
        })
    }

    fn heads(&self) -> PathBuf {
        self.dir.join("heads.jsonl")
    }

    /// serve's defaults: a head every second, or after 10,000 requests.
    fn publishing(&self) -> crate::store::Publishing {
        crate::store::Publishing {
            key: std::sync::Arc::clone(&self.key),
            heads: self.heads(),
            every: Duration::from_secs(1),
            every_rows: 10_000,
            witness: None,
        }
    }

    /// How many heads serve published over `requests` requests, what they cost in bytes, and
    /// that its last head, at shutdown, covers every row.
    fn report(&self, store: &Store, requests: u64, out: &mut impl Write) -> Result<()> {
        let text = std::fs::read_to_string(self.heads()).map_err(|source| Error::Read {
            path: self.heads().display().to_string(),
            source,
        })?;
        let newest = crate::heads::newest_head(&self.heads())?.map_or(0, |head| head.size);
        writeln!(
            out,
            "signed heads: {} published ({} bytes, {:.1} per request); the last covers {newest} \
             of {} audit rows",
            text.lines().count(),
            text.len(),
            text.len() as f64 / requests as f64,
            store.last_audit_id()?
        )
        .map_err(write_error)
    }
}

impl Drop for BenchWitness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

enum ServerKind {
    /// A handler answering every request with the same decision, touching no store.
    Ceiling,
    Flagstore(Store, Box<ServeConfig>),
}

/// Starts a server on a free loopback port in a thread of its own, runs `load` against its
/// address, then stops it and waits for it.
fn with_server<T>(
    kind: ServerKind,
    load: impl FnOnce(SocketAddr) -> std::io::Result<T>,
) -> Result<T> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, address) = std::sync::mpsc::channel();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let server = std::thread::spawn(move || match kind {
        ServerKind::Flagstore(store, config) => serve_until(
            store,
            &config,
            |address| {
                let _ = ready.send(address);
            },
            shutdown,
        ),
        ServerKind::Ceiling => serve_ceiling(ready, shutdown),
    });
    let loaded = match address.recv() {
        Ok(address) => load(address).map_err(|source| Error::Write {
            path: "the load generator's connections".to_string(),
            source,
        }),
        // The server failed before it listened: its own error says why.
        Err(_) => Err(Error::System {
            message: "the bench server did not start".to_string(),
        }),
    };
    let _ = stop.send(());
    let served = server.join().map_err(|_| Error::System {
        message: "the bench server panicked".to_string(),
    })?;
    served.and(loaded)
}

fn serve_ceiling(
    ready: std::sync::mpsc::Sender<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::routing::post;
    const DECISION: &str = r#"{"key":"enrich","value":true,"variant":"on","reason":"SPLIT","metadata":{"source":"rollout","reason":"rollout: bucket 20 < 50"}}"#;
    let failed = |source: std::io::Error| Error::Listen {
        address: "127.0.0.1:0".to_string(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(failed)?;
        let _ = ready.send(listener.local_addr().map_err(failed)?);
        let router = axum::Router::new().route(
            "/ofrep/v1/evaluate/flags/{key}",
            post(|| async { ([("content-type", "application/json")], DECISION) }),
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(failed)
    })
}

fn load_line(pass: &str, report: &LoadReport) -> String {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    format!(
        "{:<22} {:>9} {:>9.2} {:>10.0} {:>10} {:>10} {:>8}",
        pass,
        report.requests,
        report.elapsed.as_secs_f64(),
        report.per_second(),
        ms(report.p50),
        ms(report.p99),
        report.failures
    )
}

fn seeded(store: Result<Store>) -> Result<Store> {
    let mut store = store?;
    store.modify("bench", "bench", false, |_| Ok(bench_flags()))?;
    Ok(store)
}

/// Runs `bench` on a fresh SQLite store under `dir` holding [`bench_flags`], and removes the
/// store (with its WAL and shared-memory files) afterwards, whether or not `bench` succeeded.
pub fn with_temporary_store(
    dir: &Path,
    bench: impl FnOnce(&mut Store, &Path) -> Result<()>,
) -> Result<()> {
    let path = dir.join(format!("flagstore-bench-{}.db", std::process::id()));
    let result = seeded(Store::open(&Location::Sqlite(path.clone())))
        .and_then(|mut store| bench(&mut store, &path));
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        // Best effort: a leftover file in a temporary directory is harmless.
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
    result
}

fn write_error(source: io::Error) -> Error {
    Error::Write {
        path: "stdout".to_string(),
        source,
    }
}

/// In what order `bench eval` generates its context keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyOrder {
    /// `tenant-000000000`, `tenant-000000001`, ...: each key sorts after the one before, so
    /// every index grows at its end, the kindest case for a B-tree.
    Sequential,
    /// The same count of distinct keys in no order, as real tenant ids arrive: each key lands
    /// anywhere in the indexes that are sorted by key.
    Random,
}

/// The `i`th key: `tenant-000000042`, or a UUID-shaped key of 32 hex digits that are a
/// bijection of `i` (its first 16) and a second scramble of it, so distinct `i` give distinct
/// keys in no order, 36 characters long as the UUIDs users send.
pub fn ordered_key(i: u64, order: KeyOrder) -> String {
    match order {
        KeyOrder::Sequential => format!("tenant-{i:09}"),
        KeyOrder::Random => {
            let (high, low) = (scramble(i), scramble(!i));
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                high >> 32,
                (high >> 16) & 0xffff,
                high & 0xffff,
                low >> 48,
                low & 0xffff_ffff_ffff
            )
        }
    }
}

/// SplitMix64's finalizer: a bijection of u64, so distinct numbers give distinct keys, whose
/// order has nothing to do with the numbers'.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn run_in(
    store: &mut Store,
    location: &Location,
    keys: u64,
    arrival: Load,
    out: &mut impl Write,
) -> Result<()> {
    let flag_count = bench_flags().len();
    let order_name = match arrival.order {
        KeyOrder::Sequential => "sequential",
        KeyOrder::Random => "random",
    };
    writeln!(
        out,
        "{keys} {order_name} keys x {flag_count} flags, {} keys per transaction, database {}",
        keys_per_transaction(flag_count),
        store.path()
    )
    .map_err(write_error)?;
    arrival.preload(store, out)?;
    writeln!(
        out,
        "{:<18} {:>12} {:>9} {:>12} {:>11} {:>11}  per key",
        "pass", "evaluations", "seconds", "evals/s", "batch p50", "batch p99"
    )
    .map_err(write_error)?;
    let size = StoreSize::of(location);
    let mut grown = Vec::new();
    for (pass, repeated) in [("fresh (misses)", false), ("again (hits)", true)] {
        let before = size.measure(store);
        let started = Instant::now();
        let mut sink = io::sink();
        let key = |i| match repeated {
            false => arrival.key(i),
            true => arrival.repeated_key(i, keys),
        };
        let report = store.evaluate_batch(
            &Selection::All,
            "bench",
            (0..keys).map(|i| Ok(key(i))),
            |key, evaluations| write_batch_line(&mut sink, key, evaluations).map_err(write_error),
        )?;
        let elapsed = started.elapsed();
        let after = size.measure(store);
        let per_key = before.per(&after, keys);
        writeln!(out, "{}  {per_key}", pass_line(pass, &report, elapsed)).map_err(write_error)?;
        grown.push(format!(
            "{}: {}",
            pass.split(' ').next().unwrap_or(pass),
            before.grown_by_object(&after, keys)
        ));
    }
    writeln!(
        out,
        "grown per key by table and index: {}",
        grown.join("; ")
    )
    .map_err(write_error)?;
    let rss = peak_rss_kib().map_or("unknown".to_string(), |kib| {
        format!("{:.1} MB", kib as f64 / 1024.0)
    });
    writeln!(out, "peak RSS {rss}").map_err(write_error)?;
    Ok(())
}

/// A flag asked for in one request of [`RARE_EVERY`], for the sparse end of the audit queries.
const RARE_FLAG: &str = "rare_stage";
const RARE_EVERY: u64 = 1_000;

fn run_audit_in(
    store: &mut Store,
    location: &Location,
    requests: u64,
    out: &mut impl Write,
) -> Result<()> {
    store.modify("bench", "bench", false, |flags| {
        let mut flags = flags.clone();
        flags.insert(Flag::new(RARE_FLAG));
        Ok(flags)
    })?;
    let busy = Selection::Flags(bench_flags().names().map(str::to_string).collect());
    let rare = Selection::Flags(vec![RARE_FLAG.to_string()]);
    let key = |i| ordered_key(i, KeyOrder::Random);
    let size = StoreSize::of(location);
    let before = size.measure(store);
    let started = Instant::now();
    let mut done = 0;
    while done < requests {
        let batch = (RARE_EVERY - 1).min(requests - done);
        store.evaluate_batch(
            &busy,
            "bench",
            (done..done + batch).map(|i| Ok(key(i))),
            |_, _| Ok(()),
        )?;
        done += batch;
        if done < requests {
            store.evaluate(&rare, &key(done), "bench")?;
            done += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_request = before.per(&size.measure(store), requests);
    let rows = store.audit_len()?;
    writeln!(
        out,
        "filled {rows} audit rows ({requests} requests of random keys, each of {} flags but one \
         in {RARE_EVERY} of {RARE_FLAG} alone) in {seconds:.1} s, {per_request} per request, \
         database {}",
        bench_flags().len(),
        store.path()
    )
    .map_err(write_error)?;
    let middle_key = key(requests / 2);
    let newest = AuditQuery {
        limit: Some(100),
        ..AuditQuery::default()
    };
    let flag = |name: &str| AuditQuery {
        flag: Some(name.to_string()),
        ..newest.clone()
    };
    let queries = [
        ("newest 100 decisions of a busy flag", flag("enrich")),
        ("newest 100 decisions of a rare flag", flag(RARE_FLAG)),
        (
            "newest 100 rows of one context",
            AuditQuery {
                context: Some(middle_key.clone()),
                ..newest.clone()
            },
        ),
        (
            "busy flag, page from the log's middle",
            AuditQuery {
                cursor: Some(rows / 2),
                ..flag("enrich")
            },
        ),
        (
            "one flag and context, since a date",
            AuditQuery {
                context: Some(middle_key),
                since: Some("2000-01-01T00:00:00.000Z".to_string()),
                ..flag("enrich")
            },
        ),
    ];
    writeln!(
        out,
        "{:<40} {:>8} {:>12}",
        "query (median of 21 runs)", "rows", "median"
    )
    .map_err(write_error)?;
    for (name, query) in queries {
        let mut timings = Vec::new();
        let mut count = 0;
        for _ in 0..21 {
            count = 0;
            let started = Instant::now();
            store.query_audit(&query, |_| {
                count += 1;
                Ok::<(), Error>(())
            })?;
            timings.push(started.elapsed());
        }
        timings.sort();
        writeln!(
            out,
            "{:<40} {:>8} {:>9.3} ms",
            name,
            count,
            timings[timings.len() / 2].as_secs_f64() * 1000.0
        )
        .map_err(write_error)?;
    }
    let started = Instant::now();
    let verified = store.verify_audit(None)?;
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "verify: {} rows in {:.1} s ({:.0} rows/s)",
        verified.rows,
        seconds,
        verified.rows as f64 / seconds
    )
    .map_err(write_error)?;
    Ok(())
}

fn pass_line(pass: &str, report: &BatchReport, elapsed: Duration) -> String {
    let mut latencies = report.batch_latencies.clone();
    latencies.sort();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let seconds = elapsed.as_secs_f64();
    format!(
        "{:<18} {:>12} {:>9.2} {:>12.0} {:>8.2} ms {:>8.2} ms",
        pass,
        report.evaluations,
        seconds,
        report.evaluations as f64 / seconds,
        percentile(50),
        percentile(99)
    )
}

/// What a bench's writes cost a store. SQLite: bytes this process wrote to disk (Linux's
/// `/proc/self/io`, WAL and database together, checkpoints included) and the bytes its files
/// grew by, each measure taken after a checkpoint that moves the WAL into the database and
/// empties it, so what grew is the database itself. PostgreSQL, whose server writes in
/// processes of its own: the bytes its write-ahead log grew by (every database of the
/// server's, so a bench is alone on it or counts its neighbours too; the tables' pages reach
/// their files from there) and the bytes the store's tables and indexes grew by.
struct StoreSize<'a> {
    file: Option<&'a Path>,
}

#[derive(Debug, Clone)]
struct Measured {
    written: Option<u64>,
    on_disk: Option<u64>,
    /// Bytes by table and index (`Store::space_by_object`), both backends.
    objects: BTreeMap<String, i64>,
}

impl<'a> StoreSize<'a> {
    fn of(location: &'a Location) -> StoreSize<'a> {
        StoreSize {
            file: match location {
                Location::Sqlite(path) => Some(path),
                Location::Postgres(_) => None,
            },
        }
    }

    /// Checkpoints through `store` (a connection of the bench's own, beside a server's), then
    /// measures.
    fn measure(&self, store: &Store) -> Measured {
        let Some(file) = self.file else {
            let objects = objects_of(store);
            return Measured {
                written: store.log_position().ok().flatten(),
                on_disk: (!objects.is_empty())
                    .then(|| objects.values().map(|bytes| *bytes as u64).sum()),
                objects,
            };
        };
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let mut wal = file.as_os_str().to_owned();
        wal.push("-wal");
        // The store's own checkpointer, on a connection of its own, can be in the way of a
        // TRUNCATE checkpoint for a moment: tried until the WAL is empty, for up to a second
        // (the WAL is counted with the database if it never empties).
        for _ in 0..100 {
            if store.checkpoint().is_ok() && size(Path::new(&wal)) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let io = std::fs::read_to_string("/proc/self/io").ok();
        let written = io.as_deref().and_then(|io| {
            let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        });
        Measured {
            written,
            on_disk: Some(size(file) + size(Path::new(&wal))),
            objects: objects_of(store),
        }
    }
}

/// The bytes of each table and index of `store`; none if they cannot be read (a bench reports
/// speed first, and says "n/a" for what it could not measure).
fn objects_of(store: &Store) -> BTreeMap<String, i64> {
    store
        .space_by_object()
        .map_or_else(|_| BTreeMap::new(), |objects| objects.into_iter().collect())
}

impl Measured {
    /// From this measure to `after`, per one of `count`: "N bytes written, M grown".
    fn per(&self, after: &Measured, count: u64) -> String {
        let per = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(before), Some(after)) if count > 0 => {
                format!("{:.0}", (after as f64 - before as f64) / count as f64)
            }
            _ => "n/a".to_string(),
        };
        format!(
            "{} bytes written, {} grown on disk",
            per(self.written, after.written),
            per(self.on_disk, after.on_disk)
        )
    }

    /// The tables and indexes that grew from this measure to `after`, largest growth first,
    /// each with its growth per one of `count`: "audit_rows 456, contexts 45".
    fn grown_by_object(&self, after: &Measured, count: u64) -> String {
        let mut grown: Vec<(&str, i64)> = after
            .objects
            .iter()
            .map(|(name, bytes)| {
                let before = self.objects.get(name).copied().unwrap_or(0);
                (name.as_str(), bytes - before)
            })
            .filter(|(_, growth)| *growth != 0)
            .collect();
        grown.sort_by_key(|(name, growth)| (-growth, *name));
        if grown.is_empty() || count == 0 {
            return "n/a".to_string();
        }
        grown
            .iter()
            .map(|(name, growth)| match *growth as f64 / count as f64 {
                per if per.abs() < 1.0 => format!("{name} <1"),
                per => format!("{name} {per:.0}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The process's peak resident set size (Linux `VmHWM`), if the platform tells.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_flags_are_valid_and_realistic() {
        let flags = bench_flags();
        assert!(flags.validate().is_ok());
        assert!(flags.iter().any(|f| !f.enabled));
        assert!(
            flags
                .iter()
                .any(|f| f.rollout_pct > 0.0 && f.rollout_pct < 100.0)
        );
        assert!(flags.iter().any(|f| !f.requires.is_empty()));
    }

    #[test]
    fn bench_runs_and_reports_both_passes() {
        for (order, name) in [
            (KeyOrder::Sequential, "300 sequential keys"),
            (KeyOrder::Random, "300 random keys"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut out = Vec::new();
            let arrival = Load {
                order,
                preload: 200,
            };
            run(
                300,
                arrival,
                &Scratch::Directory(dir.path().to_path_buf()),
                &mut out,
            )
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 7, "{text}");
            assert!(lines[0].starts_with(name), "{text}");
            let grown = lines[5]
                .strip_prefix("grown per key by table and index: fresh: ")
                .unwrap_or_else(|| panic!("{text}"));
            // Every fresh key adds a decision record and numbers its context.
            for object in ["audit_rows ", "contexts "] {
                assert!(grown.contains(object), "{object}in {text}");
            }
            assert!(lines[1].starts_with("preloaded 200 contexts"), "{text}");
            for (line, pass) in lines[3..5].iter().zip(["fresh (misses)", "again (hits)"]) {
                assert!(line.starts_with(pass) && line.contains(" 1500 "), "{text}");
                let written: f64 = line
                    .split("  ")
                    .last()
                    .and_then(|per_key| per_key.split_whitespace().next())
                    .and_then(|bytes| bytes.parse().ok())
                    .unwrap_or_else(|| panic!("bytes written per key: {line}"));
                assert!(written >= 0.0, "{line}");
                assert!(line.ends_with("grown on disk"), "{line}");
            }
            assert!(lines[6].starts_with("peak RSS"));
            // The database is cleaned up.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn preloaded_and_measured_keys_are_distinct() {
        let arrival = Load {
            order: KeyOrder::Random,
            preload: 1_000,
        };
        let mut keys: Vec<String> = (0..1_000)
            .map(|i| ordered_key(i, KeyOrder::Random))
            .chain((0..1_000).map(|i| arrival.key(i)))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 2_000);
        assert!(keys.iter().all(|key| key.len() == 36), "UUID-shaped");
    }

    #[test]
    fn the_second_pass_repeats_every_key_once_in_another_order_when_keys_are_random() {
        for (order, count) in [(KeyOrder::Random, 1_000), (KeyOrder::Random, 997)] {
            let arrival = Load { order, preload: 10 };
            let first: Vec<String> = (0..count).map(|i| arrival.key(i)).collect();
            let again: Vec<String> = (0..count).map(|i| arrival.repeated_key(i, count)).collect();
            assert_ne!(first, again);
            let (mut first, mut again) = (first, again);
            first.sort();
            again.sort();
            again.dedup();
            assert_eq!(first, again, "{count} keys");
        }
        let sequential = Load {
            order: KeyOrder::Sequential,
            preload: 0,
        };
        assert!((0..100).all(|i| sequential.repeated_key(i, 100) == sequential.key(i)));
    }

    #[test]
    fn random_keys_are_distinct_and_unordered() {
        let keys: Vec<String> = (0..10_000)
            .map(|i| ordered_key(i, KeyOrder::Random))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len());
        let ascending = keys.windows(2).filter(|pair| pair[0] < pair[1]).count();
        assert!(
            (4_000..6_000).contains(&ascending),
            "{ascending} of 9,999 pairs ascend"
        );
    }

    #[test]
    fn serve_bench_runs_every_pass_and_every_request_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let arrival = Load {
            order: KeyOrder::Random,
            preload: 100,
        };
        run_serve(
            400,
            8,
            arrival,
            &Scratch::Directory(dir.path().to_path_buf()),
            true,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10, "{text}");
        // The last head, published at shutdown, covers every row: the preload's, 800 requests'
        // and the flags' creation.
        let rows = 100 + 800 + bench_flags().len();
        assert!(
            lines[9].starts_with("signed heads: ")
                && lines[9].ends_with(&format!("the last covers {rows} of {rows} audit rows")),
            "{text}"
        );
        assert!(lines[0].starts_with("preloaded 100 contexts"), "{text}");
        assert!(lines[6].starts_with("per fresh request: "), "{text}");
        assert!(
            lines[7].starts_with("grown per request by table and index: fresh: ")
                && lines[7].contains("audit_rows "),
            "{text}"
        );
        for (line, pass) in
            lines[3..6]
                .iter()
                .zip(["ceiling (no store)", "fresh (misses)", "again (hits)"])
        {
            assert!(line.starts_with(pass), "{text}");
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[fields.len() - 1], "0", "failed requests: {line}");
            assert!(line.contains(" 400 "), "{line}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn audit_bench_fills_the_log_and_times_each_query() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        run_audit(
            1_000,
            &Scratch::Directory(dir.path().to_path_buf()),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        // 1,000 decision records after the 6 change rows that created the flags.
        assert!(
            lines[0].starts_with("filled 1006 audit rows (1000 requests of random keys, each of 5 flags but one in 1000 of rare_stage alone)"),
            "{text}"
        );
        let written: f64 = lines[0]
            .split(" bytes written")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|bytes| bytes.parse().ok())
            .unwrap_or_else(|| panic!("bytes written per request: {text}"));
        assert!(written > 100.0, "{text}");
        let shown = |line: &str| line.split_whitespace().rev().nth(2).unwrap().to_string();
        assert!(lines[2].starts_with("newest 100 decisions of a busy flag"));
        assert_eq!(shown(lines[2]), "100", "{text}");
        // Its creation and its one decision.
        assert_eq!(shown(lines[3]), "2", "{text}");
        assert!(lines[4].starts_with("newest 100 rows of one context"));
        assert_eq!(shown(lines[4]), "5", "{text}");
        assert!(lines[7].starts_with("verify: 1006 rows"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
