"""``./run test`` goes through .ci/run_suite.py, which ends the process itself: pytest's
verdict must still be the process's exit status, and a crash during a test must still fail."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / ".ci" / "run_suite.py"


def run_one_test(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_one.py").write_text(f"def test_one():\n    {body}\n", encoding="utf-8")
    return subprocess.run([sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("body", "status"), [("assert 1 + 1 == 2", 0), ("assert 1 + 1 == 3", 1)])
def test_exit_status_is_pytests(tmp_path: Path, body: str, status: int) -> None:
    done = run_one_test(tmp_path, body)
    assert done.returncode == status, done.stdout + done.stderr
    # Output written just before the exit still arrives (the runner flushes before os._exit).
    assert ("1 passed" if status == 0 else "1 failed") in done.stdout


def test_a_crash_during_a_test_fails_the_run(tmp_path: Path) -> None:
    done = run_one_test(tmp_path, "import ctypes; ctypes.string_at(0)")
    assert done.returncode == -signal.SIGSEGV, done.stdout + done.stderr
    assert "test_one" in done.stderr  # pytest's faulthandler names where it happened
