//! `flagstore bench`: batch evaluation throughput on a fresh store and again on the same keys,
//! so anyone can reproduce the figures the README quotes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::write_batch_line;
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet, StickyPolicy};
use crate::store::{BATCH_KEYS, BatchReport, Selection, Store};

/// A pipeline-like flag set: a chain of dependencies, partial rollouts, one kill switch. The
/// partial rollouts store every decision, so the second pass is all sticky hits.
pub fn bench_flags() -> FlagSet {
    let flag = |name: &str, rollout_pct: f64, requires: &[&str], sticky: StickyPolicy| Flag {
        name: name.to_string(),
        enabled: true,
        rollout_pct,
        requires: requires.iter().map(|r| r.to_string()).collect(),
        sticky,
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

/// Runs both passes over `keys` generated keys in a fresh database under `dir`, which is
/// removed afterwards, and prints one line per pass.
pub fn run(keys: u64, dir: &Path, out: &mut impl Write) -> Result<()> {
    let path = dir.join(format!("flagstore-bench-{}.db", std::process::id()));
    let result = run_in(&path, keys, out);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        // Best effort: a leftover file in a temporary directory is harmless.
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
    result
}

fn run_in(path: &Path, keys: u64, out: &mut impl Write) -> Result<()> {
    let write_error = |source| Error::Write {
        path: "stdout".to_string(),
        source,
    };
    let mut store = Store::open(path)?;
    let flags = bench_flags();
    let flag_count = flags.len();
    store.modify("bench", "bench", false, |_| Ok(flags))?;
    writeln!(
        out,
        "{keys} keys x {flag_count} flags, {BATCH_KEYS} keys per transaction, database {}",
        path.display()
    )
    .map_err(write_error)?;
    writeln!(
        out,
        "{:<18} {:>12} {:>9} {:>12} {:>11} {:>11}",
        "pass", "evaluations", "seconds", "evals/s", "batch p50", "batch p99"
    )
    .map_err(write_error)?;
    for pass in ["fresh (misses)", "again (hits)"] {
        let started = Instant::now();
        let mut sink = io::sink();
        let report = store.evaluate_batch(
            &Selection::All,
            "bench",
            (0..keys).map(|i| Ok(format!("tenant-{i:09}"))),
            |key, evaluations| write_batch_line(&mut sink, key, evaluations).map_err(write_error),
        )?;
        let elapsed = started.elapsed();
        writeln!(out, "{}", pass_line(pass, &report, elapsed)).map_err(write_error)?;
    }
    let rss = peak_rss_kib().map_or("unknown".to_string(), |kib| {
        format!("{:.1} MB", kib as f64 / 1024.0)
    });
    writeln!(out, "peak RSS {rss}").map_err(write_error)?;
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
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        run(300, dir.path(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[2].starts_with("fresh (misses)") && lines[2].contains(" 1500 "));
        assert!(lines[3].starts_with("again (hits)") && lines[3].contains(" 1500 "));
        assert!(lines[4].starts_with("peak RSS"));
        // The database is cleaned up.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
