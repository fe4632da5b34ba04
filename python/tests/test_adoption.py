"""What a Python team meets in its first afternoon: errors it can handle (and pickle), one
caller's bad input kept its own, config as code, and the manager as a resource."""

import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import flagstore
from conftest import run_cli
from flagstore import Flag, FlagManager, StoreError, flags_from_config

PIPELINE = [Flag("ingest"), Flag("dedupe", requires=["ingest"]), Flag("export", rollout_pct=50, requires=["dedupe"])]
BAD_KEYS = ["k" * 1025, "nul\0key", "é" * 513]


def open_missing(path):
    """Run in a worker process: a store that does not exist."""
    FlagManager(db=path)


def test_store_error_is_flagstores_own_and_crosses_processes(tmp_path):
    assert StoreError.__module__ == "flagstore"
    assert issubclass(StoreError, OSError)
    missing = str(tmp_path / "missing.db")
    with pytest.raises(StoreError) as raised:
        open_missing(missing)
    again = pickle.loads(pickle.dumps(raised.value))
    assert type(again) is StoreError and str(again) == str(raised.value)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        with pytest.raises(StoreError, match="missing.db: no such database"):
            pool.apply(open_missing, (missing,))
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        with pytest.raises(StoreError, match="missing.db: no such database"):
            executor.submit(open_missing, missing).result()


def test_a_db_path_that_is_not_a_file_is_named_and_left_alone(tmp_path):
    """A FIFO blocked or failed with "disk I/O error", /dev/null got a journal written beside it
    (as root), and /dev/zero was read for ever."""
    fifo = tmp_path / "store.fifo"
    os.mkfifo(fifo)
    for db, kind in [(str(tmp_path), "a directory"), (str(fifo), "a FIFO"),
                     ("/dev/null", "a character device"), ("/dev/zero", "a character device")]:
        with pytest.raises(StoreError, match=f"^{db} is {kind}, not a database file$"):
            FlagManager(PIPELINE, db=db)
        assert not os.path.exists(f"{db}-journal")


def test_a_bad_key_is_a_value_error_from_every_method():
    manager = FlagManager(PIPELINE)
    for key in BAD_KEYS:
        with pytest.raises(ValueError, match="context key"):
            manager.is_enabled("export", key)
        with pytest.raises(ValueError, match="context key"):
            manager.evaluate_all(key)
        with pytest.raises(ValueError, match="context key"):
            list(manager.evaluate_many(["fine", key]))
    assert manager.audit_log == []
    assert [row for row in manager.audit(limit=0) if row["kind"] == "evaluation"] == []


def test_a_string_where_an_iterable_belongs_is_a_type_error():
    manager = FlagManager(PIPELINE)
    with pytest.raises(TypeError, match="context_keys must be an iterable of str, got str"):
        manager.evaluate_many("tenant:acme")
    with pytest.raises(TypeError, match="names must be an iterable of str, got str"):
        manager.evaluate_many(["tenant:acme"], names="export")
    with pytest.raises(TypeError, match="flags must be a list of Flag objects, got str"):
        FlagManager("export")
    with pytest.raises(TypeError, match="flags must be a list of Flag objects, got dict"):
        FlagManager({"name": "export"})
    with pytest.raises(TypeError, match=r"flags\[1\] must be a Flag, got dict"):
        FlagManager([Flag("a"), {"name": "b"}])
    with pytest.raises(TypeError):
        manager.is_enabled("export", None)


def test_a_bad_definition_is_named_in_the_clis_words():
    with pytest.raises(ValueError, match=r'flags\[0\] \("x"\): requires must be a list of flag names, got null'):
        FlagManager([Flag("x", requires=None)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r'flags\[0\] \("x"\): requires must be a list of flag names, got the string'):
        FlagManager([Flag("x", requires="ingest")])  # type: ignore[arg-type]
    for bad in [math.nan, math.inf]:
        with pytest.raises(ValueError, match=r"flags\[1\] \('x'\): rollout_pct must be a number from 0 to 100"):
            FlagManager([Flag("a"), Flag("x", rollout_pct=bad)])
    with pytest.raises(ValueError, match="flags: must be a list of flag objects, got dict"):
        flags_from_config({"flags": {"name": "x"}})
    with pytest.raises(ValueError, match='flag "x" lists requirement "a" twice'):
        FlagManager([Flag("a"), Flag("x", requires=["a", "a"])])


def test_audit_log_is_a_copy_as_the_prototypes_property_was():
    manager = FlagManager(PIPELINE)
    manager.is_enabled("ingest", "k")
    log = manager.audit_log
    log.clear()
    manager.audit_log[0]["result"] = "changed"
    assert manager.audit_log == [{"flag": "ingest", "result": True, "reason": "ok"}]


def test_a_manager_closes_and_is_a_context_manager(tmp_path):
    db = tmp_path / "flags.db"
    with FlagManager(PIPELINE, db=db, actor="etl") as manager:
        assert repr(manager) == f"FlagManager(db={str(db)!r}, actor='etl')"
        assert manager.is_enabled("ingest", "k")
    with pytest.raises(ValueError, match="the FlagManager is closed"):
        manager.is_enabled("ingest", "k")
    with pytest.raises(ValueError, match="the FlagManager is closed"):
        manager.evaluate_all("k")
    with pytest.raises(ValueError, match="the FlagManager is closed"):
        manager.stats()
    manager.close()
    assert not os.path.exists(f"{db}-wal"), "closing moved the WAL into the file"
    assert FlagManager(db=db).verify()["rows"] == 4
    assert flagstore.__version__ == "0.1.0"
    assert repr(Flag("x")) == "Flag(name='x', enabled=True, rollout_pct=100.0, requires=[], sticky='on_only')"


def test_apply_makes_the_file_the_truth_and_delete_removes_a_flag(tmp_path, flagstore_bin):
    db = str(tmp_path / "flags.db")
    manager = FlagManager(PIPELINE, db=db)
    with pytest.warns(UserWarning, match="the store's definition is used"):
        FlagManager([Flag("export", rollout_pct=10, requires=["dedupe"])], db=db)
    manager.apply([Flag("export", rollout_pct=10, requires=["dedupe"]), Flag("late")])
    assert manager.explain("export", "k")["definition"]["rollout_pct"] == 10
    assert list(manager.evaluate_all("k")) == ["ingest", "dedupe", "export", "late"]
    changes = [row for row in manager.audit(limit=0) if row["kind"] == "change"]
    assert [(row["action"], row["flag"]) for row in changes[:2]] == [("create", "late"), ("update", "export")]
    assert {row["ts"] for row in changes[:2]} == {changes[0]["ts"]}, "one change"

    with pytest.raises(ValueError, match='cannot delete flag "ingest": required by dedupe'):
        manager.delete("ingest")
    with pytest.raises(ValueError, match='unknown flag "lat" \\(did you mean "late"\\?\\)'):
        manager.delete("lat")
    manager.delete("late")
    assert list(manager.evaluate_all("k")) == ["ingest", "dedupe", "export"]

    manager.apply([Flag("export"), Flag("ingest")], replace=True)
    assert list(manager.evaluate_all("k")) == ["export", "ingest"]
    moves = [row for row in manager.audit(limit=0) if row["kind"] == "change"][:2]
    assert [(row["action"], row["flag"], row["detail"]) for row in moves] == [
        ("move", "ingest", {"order": ["export", "ingest"]}),
        ("move", "export", {"order": ["export", "ingest"]}),
    ]
    assert manager.stats() == {"total": 2, "enabled": 2, "disabled": 0}
    assert manager.verify()["rows"] > 0


def valid_and_bad_callers(manager, bad_calls):
    """Six threads of valid calls beside one sending every kind of bad input; the valid
    callers' errors and answers."""
    errors, answered = [], []
    start = threading.Barrier(7)

    def valid(worker):
        start.wait()
        for i in range(150):
            try:
                key = f"w{worker}-{i}"
                if i % 3 == 0:
                    answered.append((key, manager.evaluate_all(key)["export"]))
                else:
                    answered.append((key, manager.is_enabled("export", key)))
            except Exception as error:  # noqa: BLE001 - every error is what is counted
                errors.append(error)

    def bad():
        start.wait()
        for i in range(150):
            for call in bad_calls:
                try:
                    call(i)
                except (ValueError, TypeError):
                    pass

    threads = [threading.Thread(target=valid, args=(w,)) for w in range(6)] + [threading.Thread(target=bad)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, answered


def bad_calls_on(manager):
    calls = []
    for key in BAD_KEYS:
        calls.append(lambda i, key=key: manager.is_enabled("export", key))
        calls.append(lambda i, key=key: manager.evaluate_all(key))
    calls.append(lambda i: manager.is_enabled("export", None))
    calls.append(lambda i: manager.is_enabled("ghost", f"ghost-{i}"))
    calls.append(lambda i: list(manager.evaluate_many("tenant")))
    return calls


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
def test_one_callers_bad_input_stays_its_own(backend, tmp_path, request):
    db = {
        "memory": lambda: None,
        "sqlite": lambda: tmp_path / "flags.db",
        "postgres": lambda: request.getfixturevalue("postgres_url"),
    }[backend]()
    manager = FlagManager(PIPELINE, db=db)
    errors, answered = valid_and_bad_callers(manager, bad_calls_on(manager))
    assert errors == []
    assert len(answered) == 900
    recorded = {
        row["context_key"]: bool(row["result"])
        for row in manager.audit(flag="export", limit=0)
        if row["kind"] == "evaluation" and (row["context_key"] or "").startswith("w")
    }
    assert recorded == dict(answered), "each valid call recorded, as it was answered"


def test_the_provider_answers_a_bad_key_with_invalid_context(tmp_path):
    pytest.importorskip("openfeature", reason="skipped: openfeature-sdk is not installed")
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode

    from flagstore.openfeature import FlagstoreProvider

    db = tmp_path / "flags.db"
    FlagManager(PIPELINE, db=db).close()
    provider = FlagstoreProvider(db=db)
    for key in BAD_KEYS:
        details = provider.resolve_boolean_details("export", False, EvaluationContext(key))
        assert details.error_code == ErrorCode.INVALID_CONTEXT, key
        assert "context key" in details.error_message
    assert provider.resolve_boolean_details("export", False, EvaluationContext("ok")).error_code is None


def test_a_read_only_store_is_named_by_every_method():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("skipped: reading as an unprivileged user needs root and setpriv")
    # Not under pytest's tmp_path, whose parent only root may enter.
    with tempfile.TemporaryDirectory(prefix="flagstore-read-only-") as home:
        check_every_method_on_a_read_only_store(home)


def check_every_method_on_a_read_only_store(home):
    db = os.path.join(home, "flags.db")
    FlagManager(PIPELINE, db=db).close()
    os.chmod(home, 0o755)
    os.chmod(db, 0o444)
    script = """
import sys
from flagstore import Flag, FlagManager, StoreError
manager = FlagManager(db=sys.argv[1])
calls = {
    "is_enabled": lambda: manager.is_enabled("export", "k"),
    "evaluate_all": lambda: manager.evaluate_all("k"),
    "evaluate_many": lambda: list(manager.evaluate_many(["k"])),
    "register": lambda: manager.register(Flag("new")),
    "apply": lambda: manager.apply([Flag("new")]),
    "delete": lambda: manager.delete("export"),
}
for name, call in calls.items():
    try:
        call()
        print(name, "answered")
    except StoreError as error:
        print(name, sys.argv[1] in str(error) and "read-only" in str(error))
print("stats", manager.stats()["total"])
"""
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script, str(db)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [
        "is_enabled True",
        "evaluate_all True",
        "evaluate_many True",
        "register True",
        "apply True",
        "delete True",
        "stats 3",
    ]


@contextlib.contextmanager
def lock_held(backend, db):
    """Another process holding the store's write lock: SQLite's, or flagstore's advisory lock
    on PostgreSQL ("flag" in ASCII and a hash of the schema's name), held by psql."""
    if backend == "sqlite":
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("COMMIT")
        return
    hold = "BEGIN; SELECT pg_advisory_xact_lock(1718378855, hashtext(current_schema())); SELECT pg_sleep(60)"
    holder = subprocess.Popen(["psql", db, "-qc", hold], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # psql has the lock by now
        yield
    finally:
        holder.terminate()  # its connection closes, and the lock goes with it
        holder.wait(timeout=30)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ctrl_c_ends_a_wait_for_another_processs_lock_within_200_ms(backend, tmp_path, request):
    db = str(tmp_path / "flags.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    FlagManager(PIPELINE, db=db).close()
    script = """
import sys
from flagstore import FlagManager
manager = FlagManager(db=sys.argv[1])
print("ready", flush=True)
try:
    manager.is_enabled("export", "interrupted-key")
    print("answered", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
    with lock_held(backend, db):
        child = subprocess.Popen([sys.executable, "-c", script, db], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n"
            time.sleep(0.5)  # the child is waiting for the lock by now
            signalled = time.monotonic()
            child.send_signal(signal.SIGINT)
            said = child.stdout.readline()
            waited = time.monotonic() - signalled
        finally:
            child.kill()
            child.wait(timeout=30)
    assert said == "interrupted\n"
    assert waited < 0.2, f"KeyboardInterrupt {waited * 1000:.0f} ms after Ctrl-C"
    manager = FlagManager(db=db)
    assert manager.audit(context_key="interrupted-key", limit=0) == [], "nothing written"
    assert manager.verify()["rows"] == 3


def test_evaluate_all_follows_the_order_given_then_the_stores(tmp_path, flagstore_bin):
    db = str(tmp_path / "flags.db")
    run_cli(flagstore_bin, "--db", db, "flag", "create", "b")
    run_cli(flagstore_bin, "--db", db, "flag", "create", "a")
    manager = FlagManager([Flag("a"), Flag("b")], db=db)
    run_cli(flagstore_bin, "--db", db, "flag", "create", "c")
    assert list(manager.evaluate_all("k")) == ["a", "b", "c"]
    assert [entry["flag"] for entry in manager.audit_log] == ["a", "b", "c"]
    assert list(FlagManager(db=db).evaluate_all("k")) == ["b", "a", "c"], "the store's order"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_manager_given_a_key_publishes_signed_heads(backend, tmp_path, request, flagstore_bin):
    db = str(tmp_path / "flags.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    key, heads = tmp_path / "heads.key", tmp_path / "heads.jsonl"
    run_cli(flagstore_bin, "keys", "generate", str(key))
    with FlagManager(PIPELINE, db=db, signing_key=key, heads=heads) as manager:
        for i in range(20):
            manager.is_enabled("export", f"tenant-{i}")
        rows, head = manager._store.verify()
    # The last head, at close, covers every row, ending in the chain's head.
    newest = json.loads(heads.read_text().splitlines()[-1])
    assert (newest["size"], newest["last"]) == (rows, head)
    verified = run_cli(
        flagstore_bin, "--db", db, "audit", "verify", "--heads", str(heads), "--public-key", f"{key}.pub"
    )
    assert f"covers rows 1..={rows}" in verified

    with pytest.raises(ValueError, match="signing_key and heads go together"):
        FlagManager(PIPELINE, db=db, signing_key=key)
    with pytest.raises(ValueError, match="needs a store that outlives the process"):
        FlagManager(PIPELINE, signing_key=key, heads=heads)
    with pytest.raises(ValueError, match="heads.key.pub: not an Ed25519 private key"):
        FlagManager(PIPELINE, db=db, signing_key=f"{key}.pub", heads=heads)

    # A new key signs into a new heads file: the old one's is refused before anything is
    # written, not even a store that was not there.
    new_key = tmp_path / "new.key"
    run_cli(flagstore_bin, "keys", "generate", str(new_key))
    new_db = str(tmp_path / "new.db")
    with pytest.raises(StoreError, match="not by this signing key .*a new key publishes to a new heads file"):
        FlagManager(PIPELINE, db=new_db, signing_key=new_key, heads=heads)
    assert not os.path.exists(new_db)
