"""Benchmarks of the Python package, side by side in one process with the prototype's
algorithm in memory (tests/conftest.py's Reference, written from its rules).

    python python/bench/bench.py [--keys 100000] [--rounds 5] [--memory-keys 0]

Prints medians of --rounds alternating runs:
- evaluate_many over KEYS keys x 5 flags on a fresh SQLite store, and again on the stored
  keys, against the prototype's evaluate_all loop: keys per second and the ratio;
- one durable is_enabled on SQLite: median latency;
- is_enabled calls per second from 1 and from 8 threads;
- with --memory-keys N, peak RSS after N keys through evaluate_many from a generator.
"""

import argparse
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from conftest import Reference  # noqa: E402
from flagstore import Flag, FlagManager  # noqa: E402

FLAGS = [
    Flag("ingest"),
    Flag("dedupe", requires=["ingest"]),
    Flag("enrich", rollout_pct=50, requires=["dedupe"]),
    Flag("score", rollout_pct=30, sticky="all"),
    Flag("legacy", enabled=False),
]


def per_second(count, work):
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def batch(keys, rounds):
    prototype, fresh, stored = [], [], []
    names = [flag.name for flag in FLAGS]
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as directory:
            manager = FlagManager(FLAGS, db=os.path.join(directory, "bench.db"), actor="bench")
            tenants = [f"tenant:{i}" for i in range(keys)]
            reference = Reference(FLAGS)

            def in_memory():
                for key in tenants:
                    reference.evaluate_all(key)
                    reference.audit_log.clear()

            prototype.append(per_second(keys, in_memory))
            fresh.append(per_second(keys, lambda: sum(1 for _ in manager.evaluate_many(tenants, names))))
            stored.append(per_second(keys, lambda: sum(1 for _ in manager.evaluate_many(tenants, names))))
    p, f, s = (statistics.median(x) for x in (prototype, fresh, stored))
    print(f"evaluate_many, {keys} keys x {len(FLAGS)} flags, median of {rounds}:")
    print(f"  prototype in memory {p:,.0f} keys/s; fresh {f:,.0f} ({f / p:.2f}x); stored {s:,.0f} ({s / p:.2f}x)")


def single(calls):
    with tempfile.TemporaryDirectory() as directory:
        manager = FlagManager(FLAGS, db=os.path.join(directory, "bench.db"), actor="bench")
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            manager.is_enabled("enrich", f"tenant:{i}")
            latencies.append(time.perf_counter() - started)
        print(f"is_enabled, durable, SQLite: median {statistics.median(latencies) * 1000:.3f} ms over {calls} calls")

        def calls_per_second(threads, each):
            def work(worker):
                for i in range(each):
                    manager.is_enabled("enrich", f"t{threads}-{worker}-{i}")

            pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
            started = time.perf_counter()
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            return threads * each / (time.perf_counter() - started)

        one = statistics.median(calls_per_second(1, 2000) for _ in range(3))
        eight = statistics.median(calls_per_second(8, 500) for _ in range(3))
        print(f"is_enabled calls/s: 1 thread {one:,.0f}; 8 threads {eight:,.0f} ({eight / one:.2f}x)")


def memory(keys):
    with tempfile.TemporaryDirectory() as directory:
        manager = FlagManager(FLAGS, db=os.path.join(directory, "bench.db"), actor="bench")
        started = time.perf_counter()
        count = sum(1 for _ in manager.evaluate_many(f"tenant:{i}" for i in range(keys)))
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"evaluate_many from a generator: {count:,} keys in {seconds:.1f} s, peak RSS {peak:.0f} MB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-keys", type=int, default=0)
    args = parser.parse_args()
    if args.memory_keys:
        memory(args.memory_keys)
        return
    batch(args.keys, args.rounds)
    single(1000)


main()
