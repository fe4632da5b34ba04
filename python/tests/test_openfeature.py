"""The in-process OpenFeature provider answers as `flagstore serve` answers OFREP, through the
real SDK (`openfeature-sdk`)."""

import json
import subprocess
import urllib.request

import pytest

from conftest import run_cli

openfeature = pytest.importorskip("openfeature", reason="skipped: openfeature-sdk is not installed")

from openfeature import api  # noqa: E402
from openfeature.evaluation_context import EvaluationContext  # noqa: E402
from openfeature.exception import ErrorCode  # noqa: E402

from flagstore import Flag, FlagManager  # noqa: E402
from flagstore.openfeature import FlagstoreProvider  # noqa: E402

FLAGS = [
    Flag("ingest"),
    Flag("legacy", enabled=False),
    Flag("enrich", rollout_pct=50, requires=["ingest"]),
    Flag("report", requires=["legacy"]),
]


def served(binary, db):
    """`flagstore serve` on `db` with a token: its URL, the token and the process."""
    token = run_cli(binary, "--db", db, "token", "create", "sdk").strip()
    process = subprocess.Popen(
        [str(binary), "--db", db, "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = process.stdout.readline().strip().removeprefix("listening on ")
    return url, token, process


def ofrep(url, token, flag, key):
    request = urllib.request.Request(
        f"{url}/ofrep/v1/evaluate/flags/{flag}",
        data=json.dumps({"context": {"targetingKey": key}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def test_the_provider_answers_as_serve_does(tmp_path, flagstore_bin):
    mine, theirs = str(tmp_path / "mine.db"), str(tmp_path / "served.db")
    FlagManager(FLAGS, db=mine)
    FlagManager(FLAGS, db=theirs)
    api.set_provider_and_wait(FlagstoreProvider(db=mine, actor="sdk"), "flagstore-test")
    client = api.get_client("flagstore-test")
    url, token, server = served(flagstore_bin, theirs)
    try:
        for flag in ["ingest", "legacy", "enrich", "report"]:
            for i in range(20):
                key = f"tenant:{i}"
                details = client.get_boolean_details(flag, False, EvaluationContext(targeting_key=key))
                over_http = ofrep(url, token, flag, key)
                assert details.error_code is None, details.error_message
                assert (details.value, details.variant, details.reason) == (
                    over_http["value"],
                    over_http["variant"],
                    over_http["reason"],
                )
                assert details.flag_metadata == over_http["metadata"]
    finally:
        server.terminate()
        server.wait()
    rows = FlagManager(db=mine).audit(limit=0)
    assert sum(1 for row in rows if row["kind"] == "evaluation") == 80


def test_unknown_flags_and_other_types_give_the_default_with_their_error_code(tmp_path):
    db = str(tmp_path / "flags.db")
    FlagManager(FLAGS, db=db)
    api.set_provider_and_wait(FlagstoreProvider(db=db), "flagstore-errors")
    client = api.get_client("flagstore-errors")
    context = EvaluationContext(targeting_key="k")
    missing = client.get_boolean_details("no_such_flag", True, context)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    text = client.get_string_details("ingest", "fallback", context)
    assert (text.value, text.error_code) == ("fallback", ErrorCode.TYPE_MISMATCH)
    number = client.get_integer_details("ingest", 7, context)
    assert (number.value, number.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    keyless = client.get_boolean_details("ingest", False, EvaluationContext())
    assert (keyless.value, keyless.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)
    evaluations = [row for row in FlagManager(db=db).audit(limit=0) if row["kind"] == "evaluation"]
    assert evaluations == [], "nothing was decided, so nothing was recorded"
