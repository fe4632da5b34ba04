"""Shared helpers: the prototype's rules as a small reference, the flagstore binary, and
PostgreSQL scratch schemas (skipped, saying so, without $FLAGSTORE_TEST_POSTGRES); and a
watchdog that ends a test that hangs."""

import faulthandler
import hashlib
import os
import pathlib
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Longer than any test takes on a slow, shared machine; far shorter than CI's budget.
HANG_SECONDS = 300


_real_stderr = None


def pytest_configure(config):
    # A copy of stderr as it is before pytest captures it for each test, for the watchdog's
    # stacks to reach the terminal: the process ends before a capture would be shown.
    global _real_stderr
    _real_stderr = os.dup(2)


@pytest.fixture(autouse=True)
def watchdog():
    """A test still running after HANG_SECONDS ends the process with every thread's stack on
    stderr: a deadlock between threads of a manager once hung the suite, and CI with it,
    until CI's own limit, saying nothing of where."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=_real_stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def bucket(name, key):
    return int(hashlib.md5(f"{name}:{key}".encode()).hexdigest(), 16) % 100


class Reference:
    """The prototype's evaluation, written from the rules in the developers' guide: unknown,
    disabled, each requirement (recursively, its entries first), then the rollout bucket."""

    def __init__(self, flags):
        self.flags = {flag.name: flag for flag in flags}
        self.audit_log = []

    def _log(self, flag, result, reason):
        self.audit_log.append({"flag": flag, "result": result, "reason": reason})
        return result

    def is_enabled(self, name, context_key=""):
        flag = self.flags.get(name)
        if flag is None:
            return self._log(name, False, "unknown flag")
        if not flag.enabled:
            return self._log(name, False, "disabled")
        for dependency in flag.requires:
            if not self.is_enabled(dependency, context_key):
                return self._log(name, False, f"dependency {dependency} not met")
        if bucket(name, context_key) < flag.rollout_pct:
            return self._log(name, True, "ok")
        return self._log(name, False, f"rollout {flag.rollout_pct}%")

    def evaluate_all(self, context_key=""):
        return {name: self.is_enabled(name, context_key) for name in self.flags}

    def stats(self):
        enabled = sum(1 for flag in self.flags.values() if flag.enabled)
        return {"total": len(self.flags), "enabled": enabled, "disabled": len(self.flags) - enabled}


@pytest.fixture
def flagstore_bin():
    path = pathlib.Path(os.environ.get("FLAGSTORE_BIN", ROOT / "target" / "debug" / "flagstore"))
    if not path.exists():
        pytest.skip(f"skipped: no flagstore binary at {path} (cargo build, or set FLAGSTORE_BIN)")
    return path


def run_cli(binary, *args):
    done = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env={**os.environ, "FLAGSTORE_ACTOR": "cli"}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def postgres_url():
    """A URL to a new schema of its own on $FLAGSTORE_TEST_POSTGRES, dropped afterwards."""
    base = os.environ.get("FLAGSTORE_TEST_POSTGRES")
    if not base:
        pytest.skip("skipped: FLAGSTORE_TEST_POSTGRES is unset (.ci/run sets it)")
    schema = f"flagstore_py_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", base, "-qc", f'CREATE SCHEMA "{schema}"'], check=True)
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-c%20search_path%3D{schema}"
    subprocess.run(["psql", base, "-qc", f'DROP SCHEMA "{schema}" CASCADE'], check=True)
