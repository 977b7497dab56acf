"""``./run test`` goes through tests/run_suite.py, which ends the process itself: pytest's
verdict must still be the process's exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("run_suite.py")


@pytest.mark.parametrize(("body", "status"), [("assert 1 + 1 == 2", 0), ("assert 1 + 1 == 3", 1)])
def test_exit_status_is_pytests(tmp_path: Path, body: str, status: int) -> None:
    (tmp_path / "test_one.py").write_text(f"def test_one():\n    {body}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stdout + done.stderr
    # Output written just before the exit still arrives (the runner flushes before os._exit).
    assert ("1 passed" if status == 0 else "1 failed") in done.stdout
