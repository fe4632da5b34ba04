"""Benchmarks of the Python package, side by side in one process with the prototype's
algorithm in memory (tests/conftest.py's Reference, written from its rules). Keys are random
(UUID v4, in no order), as tenant and user ids arrive.

    python python/bench/bench.py [--keys 100000] [--rounds 3] [--preload 1000000] [--memory-keys 0]

Prints medians of --rounds alternating runs:
- evaluate_many over KEYS new keys x 5 flags on an SQLite store already holding PRELOAD
  contexts, and again on the same (now stored) keys, against the prototype's evaluate_all
  loop: keys per second, the ratio, and bytes written (/proc/self/io) and grown on disk per key;
- evaluate_all per call on an in-memory manager (10,000 keys x 8 flags, as the prototype is
  used in process), first and once it has answered 100,000 calls, against the prototype's
  calls per second;
- one durable is_enabled on SQLite: median latency;
- is_enabled calls per second from 1 and from 8 threads;
- with --memory-keys N, peak RSS after N keys through evaluate_many from a generator.
"""

import argparse
import os
import pathlib
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid

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

IN_PROCESS_FLAGS = FLAGS + [
    Flag("sample", rollout_pct=10),
    Flag("report", requires=["enrich", "score"]),
    Flag("shadow", rollout_pct=75.5, sticky="none"),
]


def random_keys(count):
    return [str(uuid.uuid4()) for _ in range(count)]


def per_second(count, work):
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def written_bytes():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes:"))


def on_disk(db):
    return sum(os.path.getsize(path) for path in (db, f"{db}-wal") if os.path.exists(path))


def prototype_loop(flags, keys):
    reference = Reference(flags)

    def loop():
        for key in keys:
            reference.evaluate_all(key)
            reference.audit_log.clear()

    return loop


def batch(keys, rounds, preload):
    prototype, fresh, stored, written, grown = [], [], [], [], []
    names = [flag.name for flag in FLAGS]
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as directory:
            db = os.path.join(directory, "bench.db")
            manager = FlagManager(FLAGS, db=db, actor="bench")
            for start in range(0, preload, 100_000):
                for _ in manager.evaluate_many(random_keys(min(100_000, preload - start)), names):
                    pass
            tenants = random_keys(keys)
            prototype.append(per_second(keys, prototype_loop(FLAGS, tenants)))
            before_written, before_disk = written_bytes(), on_disk(db)
            fresh.append(per_second(keys, lambda: sum(1 for _ in manager.evaluate_many(tenants, names))))
            written.append((written_bytes() - before_written) / keys)
            grown.append((on_disk(db) - before_disk) / keys)
            # The same keys in another order, as contexts come back in life: in the first
            # pass's order, the contexts numbered together would come back together.
            again = random.sample(tenants, len(tenants))
            stored.append(per_second(keys, lambda: sum(1 for _ in manager.evaluate_many(again, names))))
            del manager  # closes the store, before its directory goes
    p, f, s = (statistics.median(x) for x in (prototype, fresh, stored))
    print(f"evaluate_many, {keys} random keys x {len(FLAGS)} flags on {preload:,} contexts, median of {rounds}:")
    print(f"  prototype in memory {p:,.0f} keys/s; fresh {f:,.0f} ({f / p:.2f}x); stored {s:,.0f} ({s / p:.2f}x)")
    print(
        f"  fresh keys: {statistics.median(written):,.0f} bytes written and "
        f"{statistics.median(grown):,.0f} bytes grown on disk per key (WAL and database)"
    )


def in_process(rounds, keys=10_000, later=100_000):
    """Also timed once the manager has answered `later` calls: a long-lived in-process manager
    must not slow down as its store grows."""
    prototype, first, after = [], [], []
    for _ in range(rounds):
        tenants = random_keys(keys)
        prototype.append(per_second(keys, prototype_loop(IN_PROCESS_FLAGS, tenants)))
        manager = FlagManager(IN_PROCESS_FLAGS)

        def calls(keys_now):
            def call_each():
                for key in keys_now:
                    manager.evaluate_all(key)

            return call_each

        first.append(per_second(keys, calls(tenants)))
        calls(random_keys(later - keys))()
        after.append(per_second(keys, calls(random_keys(keys))))
    p, f, a = statistics.median(prototype), statistics.median(first), statistics.median(after)
    print(f"evaluate_all in memory, {keys} random keys x {len(IN_PROCESS_FLAGS)} flags, median of {rounds}:")
    print(
        f"  prototype {p:,.0f} calls/s; FlagManager() {f:,.0f} calls/s ({f / p:.2f}x), "
        f"{a:,.0f} calls/s after {later:,} calls ({a / p:.2f}x)"
    )


def single(calls):
    with tempfile.TemporaryDirectory() as directory:
        manager = FlagManager(FLAGS, db=os.path.join(directory, "bench.db"), actor="bench")
        latencies = []
        for key in random_keys(calls):
            started = time.perf_counter()
            manager.is_enabled("enrich", key)
            latencies.append(time.perf_counter() - started)
        print(f"is_enabled, durable, SQLite: median {statistics.median(latencies) * 1000:.3f} ms over {calls} calls")

        def calls_per_second(threads, each):
            def work():
                for key in random_keys(each):
                    manager.is_enabled("enrich", key)

            pool = [threading.Thread(target=work) for _ in range(threads)]
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
        count = sum(1 for _ in manager.evaluate_many(str(uuid.uuid4()) for _ in range(keys)))
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"evaluate_many from a generator: {count:,} keys in {seconds:.1f} s, peak RSS {peak:.0f} MB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preload", type=int, default=1_000_000)
    parser.add_argument("--memory-keys", type=int, default=0)
    args = parser.parse_args()
    if args.memory_keys:
        memory(args.memory_keys)
        return
    batch(args.keys, args.rounds, args.preload)
    in_process(args.rounds)
    single(1000)


if __name__ == "__main__":
    main()
