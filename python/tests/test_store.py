"""Persistence, the CLI and Python on one store, threads, PostgreSQL, and bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import warnings

import pytest

from conftest import run_cli
from flagstore import Flag, FlagManager, StoreError

PIPELINE = [Flag("ingest"), Flag("dedupe", requires=["ingest"]), Flag("enrich", rollout_pct=50, requires=["dedupe"])]


def test_decisions_persist_across_processes(tmp_path):
    db = tmp_path / "flags.db"
    first = FlagManager(PIPELINE, db=db, actor="job-1").evaluate_all("tenant:1")
    script = (
        "import json, sys; from flagstore import FlagManager; "
        "m = FlagManager(db=sys.argv[1], actor='job-2'); "
        "print(json.dumps([m.evaluate_all('tenant:1'), m.verify()['rows']]))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True, check=True)
    again, rows = json.loads(out.stdout)
    assert again == first
    assert rows == 3 + 2, "three creations, two decision records"


def test_the_cli_and_python_share_one_store_and_one_chain(tmp_path, flagstore_bin):
    db = str(tmp_path / "flags.db")
    manager = FlagManager(PIPELINE, db=db, actor="python")
    python_said = {key: manager.is_enabled("enrich", key) for key in ["a", "b", "c", "d"]}
    for key, answer in python_said.items():
        assert run_cli(flagstore_bin, "--db", db, "eval", "enrich", "--context", key).strip() == str(answer).lower()
    run_cli(flagstore_bin, "--db", db, "flag", "set", "enrich", "--rollout", "0")
    run_cli(flagstore_bin, "--db", db, "eval", "--all", "--context", "e")
    assert manager.is_enabled("enrich", "e") is False
    assert manager.is_enabled("enrich", "a") == python_said["a"], "sticky across the CLI's change"
    verified = run_cli(flagstore_bin, "--db", db, "audit", "verify")
    assert verified.split()[-1] == manager.verify()["head"]
    actors = {row["actor"] for row in manager.audit(limit=0)}
    assert actors == {"python", "cli"}


def test_threads_run_while_the_store_works_and_every_call_is_recorded_once(tmp_path):
    manager = FlagManager(PIPELINE, db=tmp_path / "flags.db")
    answers = {}

    def work(worker):
        for i in range(50):
            key = f"w{worker}-{i}"
            answers[key] = manager.is_enabled("enrich", key)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 400
    records = [row for row in manager.audit(limit=0) if row["kind"] == "evaluation"]
    assert sorted(row["context_key"] for row in records) == sorted(answers)
    for row in records:
        assert bool(row["result"]) == answers[row["context_key"]]


def test_the_actor_is_the_one_given_else_flagstore_actor(monkeypatch):
    monkeypatch.setenv("FLAGSTORE_ACTOR", "from-env")
    assert FlagManager(PIPELINE).audit(limit=1)[0]["actor"] == "from-env"
    assert FlagManager(PIPELINE, actor="given").audit(limit=1)[0]["actor"] == "given"


def test_the_store_wins_and_a_warning_names_the_flag_and_fields(tmp_path):
    db = tmp_path / "flags.db"
    FlagManager(PIPELINE, db=db)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = FlagManager([Flag("enrich", rollout_pct=10, requires=["dedupe"])], db=db)
    assert [str(w.message) for w in caught] == [
        "flag 'enrich': given rollout_pct 10, the store has 50; the store's definition is used"
    ]
    assert all(w.category is UserWarning for w in caught)
    assert manager.explain("enrich", "k")["definition"]["rollout_pct"] == 50


def test_bad_input_is_refused_in_the_clis_words(tmp_path):
    with pytest.raises(StoreError, match="missing.db: no such database") as raised:
        FlagManager(db=tmp_path / "missing.db")
    assert isinstance(raised.value, OSError)
    with pytest.raises(ValueError, match=r'flags\[0\] \("x"\): rollout_pct must be a number from 0 to 100'):
        FlagManager([Flag("x", rollout_pct=150)])
    with pytest.raises(ValueError, match='flag "x" requires unknown flag "nope"'):
        FlagManager([Flag("x", requires=["nope"])])
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        FlagManager([Flag("a", requires=["b"]), Flag("b", requires=["a"])])
    with pytest.raises(ValueError, match="sticky"):
        FlagManager([Flag("x", sticky="sometimes")])
    with pytest.raises(ValueError, match="in the future"):
        FlagManager(PIPELINE).explain("enrich", "k", at="2999-01-01")
    with pytest.raises(StoreError):
        FlagManager(db=tmp_path)  # a directory


def test_postgres_behaves_as_sqlite(postgres_url, flagstore_bin):
    manager = FlagManager(PIPELINE, db=postgres_url, actor="python")
    answers = manager.evaluate_all("tenant:1")
    assert answers == FlagManager(PIPELINE).evaluate_all("tenant:1")
    assert run_cli(flagstore_bin, "--db", postgres_url, "eval", "enrich", "--context", "tenant:1").strip() == str(
        answers["enrich"]
    ).lower()
    assert FlagManager(db=postgres_url).verify()["rows"] == 3 + 2


def test_a_flag_deleted_elsewhere_is_answered_as_unknown_and_recorded(tmp_path, flagstore_bin):
    db = str(tmp_path / "flags.db")
    manager = FlagManager(PIPELINE + [Flag("legacy")], db=db)
    run_cli(flagstore_bin, "--db", db, "flag", "delete", "legacy")
    answers = manager.evaluate_all("k")
    assert answers["legacy"] is False
    assert manager.audit_log[-1] == {"flag": "legacy", "result": False, "reason": "unknown flag"}
    record = manager.audit(limit=1)[0]
    assert record["context_key"] == "k" and record["kind"] == "evaluation"


def test_a_forked_child_that_drops_the_manager_exits(tmp_path):
    # A process that forks after committing (multiprocessing's default start on Linux) hands
    # the child a copy of the manager, but none of its threads: the SQLite checkpointer, started
    # at the second commit, runs only in the parent.
    script = """
import os, sys
from flagstore import Flag, FlagManager
manager = FlagManager([Flag("ingest")], db=sys.argv[1])
for i in range(3):
    manager.is_enabled("ingest", f"k{i}")
if os.fork() == 0:
    del manager
    os._exit(7)
_, status = os.wait()
print(os.waitstatus_to_exitcode(status))
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "flags.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the child hung dropping the manager it was forked with")
    # Joining the checkpointer, which the child does not have, panicked (Python printed it as
    # an ignored exception and went on); closing the copied connection could wait for ever
    # on a lock the parent's checkpointer held at the fork (1 run in 200).
    assert err == ""
    assert out.strip() == "7"


def test_a_forked_child_is_told_to_open_its_own_manager(tmp_path):
    # SQLite says a connection used on both sides of a fork can corrupt the database (and a
    # PostgreSQL socket would carry two processes' messages): a child given the parent's
    # manager by fork (a multiprocessing pool's worker) is refused with the fix, and nothing
    # is written. An in-memory manager is the child's own copy, and goes on.
    script = """
import os, sys
from flagstore import Flag, FlagManager
on_disk = FlagManager([Flag("ingest")], db=sys.argv[1])
in_memory = FlagManager([Flag("ingest")])
on_disk.is_enabled("ingest", "parent")
if os.fork() == 0:
    try:
        on_disk.is_enabled("ingest", "child")
    except ValueError as refused:
        print(refused)
    try:
        on_disk.audit(limit=1)
    except ValueError as refused:
        print(refused)
    print(in_memory.is_enabled("ingest", "child"))
    on_disk.close()
    os._exit(0)
os.wait()
print(len(on_disk.audit(limit=10)))
"""
    db = tmp_path / "flags.db"
    out = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=60
    )
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    refused = (
        f"{db}: this FlagManager was opened by process {{}} and cannot be used in process {{}}, "
        "forked from it (a database connection does not survive a fork): open a new "
        "FlagManager in the child"
    )
    assert len(lines) == 4, lines
    for line in lines[:2]:
        parent, child = re.findall(r"process (\d+)", line)
        assert parent != child
        assert line == refused.format(parent, child)
    assert lines[2] == "True"
    # The parent's store holds its own decision, and the child's close() left it open.
    assert lines[3] == "2"


def test_a_pipeline_that_changes_directory_still_has_its_wal_checkpointed(tmp_path):
    # The checkpointer opens the database again at the second commit, by the path the store
    # was opened with: a relative one must still name the same file after a chdir. In WAL mode
    # only a checkpoint writes the database file, and these commits stay far below the WAL's
    # limit, so the file grows while the manager is open only if the checkpointer found it.
    script = """
import os, sys, time
from flagstore import Flag, FlagManager
home, elsewhere = sys.argv[1], sys.argv[2]
os.chdir(home)
manager = FlagManager([Flag("ingest"), Flag("enrich", rollout_pct=50)], db="flags.db")
before = os.path.getsize(os.path.join(home, "flags.db"))
os.chdir(elsewhere)
for _ in manager.evaluate_many(f"tenant-{i}" for i in range(5000)):
    pass
deadline = time.monotonic() + 10
while os.path.getsize(os.path.join(home, "flags.db")) == before and time.monotonic() < deadline:
    time.sleep(0.01)
print(os.path.getsize(os.path.join(home, "flags.db")) > before, os.listdir(elsewhere))
"""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", script, str(home), str(elsewhere)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "[]"], out.stdout + out.stderr
