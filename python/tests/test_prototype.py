"""The manager answers, logs and counts as the prototype did, for random flag sets and keys,
and adds what the prototype lacked: stickiness, persistence and the audit chain."""

import json
import random

import pytest

from conftest import ROOT, Reference
from flagstore import Flag, FlagManager, flags_from_config

# Every way Python prints a number: integers, floats written with ".0", fractions in fixed
# notation and the small ones it writes in scientific notation (1e-05).
ROLLOUTS = [0, 100, 50, 12.5, 50.0, 33, 99.5, 1, 0.0001, 1e-05, 2.5e-07, 33.3, 0.1 + 0.2]


def random_flags(rng):
    flags = []
    for i in range(rng.randint(1, 7)):
        earlier = [flag.name for flag in flags]
        # In a random order: both check them in the order listed.
        requires = rng.sample(earlier, rng.randint(0, min(3, len(earlier))))
        flags.append(
            Flag(
                name=f"f{i}",
                enabled=rng.random() > 0.15,
                rollout_pct=rng.choice(ROLLOUTS),
                requires=requires,
                sticky=rng.choice(["on_only", "all", "none"]),
            )
        )
    return flags


@pytest.mark.parametrize("seed", range(60))
def test_decisions_audit_log_and_stats_are_the_prototypes(seed):
    rng = random.Random(seed)
    flags = random_flags(rng)
    keys = [rng.choice(["", "tenant:acme", "batch-7", "ü", str(rng.random())]) for _ in range(6)]
    manager, reference = FlagManager(flags), Reference(flags)
    for key in keys:
        for name in [rng.choice(flags).name, "ghost"]:
            assert manager.is_enabled(name, key) == reference.is_enabled(name, key), (name, key)
        assert list(manager.evaluate_all(key).items()) == list(reference.evaluate_all(key).items())
    assert manager.audit_log == reference.audit_log
    assert manager.stats() == reference.stats()
    assert manager.verify()["rows"] > 0


def test_a_decision_sticks_when_the_rollout_moves():
    # Python: int(hashlib.md5(b"score:k9").hexdigest(), 16) % 100 == 10.
    manager = FlagManager([Flag("score", rollout_pct=30)])
    assert manager.is_enabled("score", "k9")
    manager.register(Flag("score", rollout_pct=5))
    assert manager.is_enabled("score", "k9"), "on_only keeps a stored on"
    assert Reference([Flag("score", rollout_pct=5)]).is_enabled("score", "k9") is False


@pytest.mark.parametrize("seed", range(10))
def test_a_rollout_the_store_holds_alone_is_worded_as_a_flags_file_gives_it(tmp_path, seed):
    # A manager given no flags words each rollout as Python prints the number a flags file
    # would hold for it: 50, not 50.0; 1e-05 as Python writes it.
    rng = random.Random(seed)
    flags = random_flags(rng) + [Flag("tiny", rollout_pct=rng.choice([1e-05, 2.5e-07, 0.0001]))]
    FlagManager(flags, db=tmp_path / "flags.db").close()
    as_in_a_file = [
        Flag(f.name, f.enabled, int(f.rollout_pct) if float(f.rollout_pct).is_integer() else f.rollout_pct,
             f.requires, f.sticky)
        for f in flags
    ]
    manager, reference = FlagManager(db=tmp_path / "flags.db"), Reference(as_in_a_file)
    for key in ["", "tenant:acme", "ü", str(rng.random())]:
        assert manager.evaluate_all(key) == reference.evaluate_all(key)
    assert manager.audit_log == reference.audit_log
    assert any(entry["reason"].startswith("rollout") for entry in manager.audit_log)


def test_flags_from_config_takes_the_files_shape_and_refuses_a_misspelt_field():
    raw = {"context_key": "t", "flags": [{"name": "a"}, {"name": "b", "rollout_pct": 12.5, "requires": ["a"]}]}
    assert flags_from_config(raw) == [Flag("a"), Flag("b", rollout_pct=12.5, requires=["a"])]
    assert flags_from_config(raw["flags"]) == flags_from_config(raw)
    with pytest.raises(ValueError, match="unknown field 'rollout'"):
        flags_from_config([{"name": "a", "rollout": 50}])


def test_evaluate_many_streams_chunks_as_the_batch_path():
    manager = FlagManager([Flag("ingest"), Flag("enrich", rollout_pct=50, requires=["ingest"])])
    reference = Reference([Flag("ingest"), Flag("enrich", rollout_pct=50, requires=["ingest"])])
    produced = []

    def keys():
        for i in range(3000):
            produced.append(i)
            yield f"tenant:{i}"

    results = manager.evaluate_many(keys())
    first = next(results)
    assert len(produced) < 3000, "keys are read a chunk at a time, not all at once"
    rest = list(results)
    assert len(rest) == 2999
    for i, answers in enumerate([first] + rest):
        assert answers == reference.evaluate_all(f"tenant:{i}")
    assert manager.audit(limit=1)[0]["context_key"] == "tenant:2999"


def shared_vectors():
    """The team's recorded runs of the prototype (tests/fixtures, copied from shared/)."""
    return json.loads((ROOT / "tests" / "fixtures" / "prototype_run_vectors.json").read_text())


@pytest.mark.parametrize("index", range(30))
def test_the_prototypes_recorded_runs_are_reproduced(index):
    vector = shared_vectors()[index]
    config = vector["config"]
    summary = json.loads(vector["run_output"])
    manager = FlagManager(flags_from_config(config))
    answers = manager.evaluate_all(config.get("context_key", "default"))
    assert list(answers.items()) == list(summary["evaluations"].items())
    assert manager.audit_log == vector["audit_log"]
    assert manager.stats() == summary["stats"]
    assert len(manager.audit_log) == summary["audit_entries"]
