#!/usr/bin/env python3
"""Wall time of one `flagstore eval FLAG --context K` process, median of N runs.

Usage: python3 bench/single_eval.py [RUNS]   (builds nothing: run `cargo build --release` first)

Each run is a whole process, as a pipeline step would start it: open the store (migrations
check only), evaluate, write the assignment and audit row, commit. Half the runs hit a stored
assignment, half decide a new key.
"""
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "flagstore"


def timed(args):
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000.0


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing: run `cargo build --release` first")
    with tempfile.TemporaryDirectory() as scratch:
        db = str(pathlib.Path(scratch) / "bench.db")
        base = [str(BINARY), "--db", db, "--actor", "bench"]
        subprocess.run(base + ["import", str(ROOT / "examples" / "pipeline.json")],
                       stdout=subprocess.DEVNULL, check=True)
        subprocess.run(base + ["eval", "enrich", "--context", "warm"],
                       stdout=subprocess.DEVNULL, check=True)
        hits = [timed(base + ["eval", "enrich", "--context", "warm"]) for _ in range(runs)]
        misses = [timed(base + ["eval", "enrich", "--context", f"new-{i}"]) for i in range(runs)]
        baseline = [timed([str(BINARY), "--version"]) for _ in range(runs)]
    for name, samples in [("eval, sticky hit", hits), ("eval, new key", misses),
                          ("--version (process start only)", baseline)]:
        print(f"{name:<32} median {statistics.median(samples):6.2f} ms   "
              f"p90 {statistics.quantiles(samples, n=10)[-1]:6.2f} ms   ({runs} runs)")


if __name__ == "__main__":
    main()
