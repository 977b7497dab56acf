"""Ctrl-C in the middle of ``autoft search`` leaves no MLflow run RUNNING.

``autoft search`` runs as a real process in its own session. Once a trial's run
exists in the SQLite MLflow store, SIGINT goes either to the main process only
(``kill -INT pid``) or to the whole process group, as a terminal sends Ctrl-C to
the foreground group (Ray's raylet and GCS are in that group; its workers are not).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

START_TIMEOUT_S = 120  # imports, Ray start and the first trial, on a loaded 2-core machine
EXIT_TIMEOUT_S = 60


def _trial_runs(db: Path) -> int:
    """Child runs in the store, read-only, without MLflow (whose client would migrate the db)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT COUNT(*) FROM tags WHERE key = 'mlflow.parentRunId'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0  # not created or not migrated yet
    return int(row[0])


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _interrupted_search(tmp_path: Path, tiny_model: Path, tiny_data: dict, whole_group: bool):
    storage = tmp_path / "runs"
    sets = [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", "train.epochs=30", "train.batch_size=16",
        "train.max_length=32", "search.metric=eval_loss", "search.mode=min", "pruning.scheduler=none",
    ]
    cmd = [sys.executable, "-m", "autoft.cli", "search", "--trials", "8", "--max-concurrent", "2",
           "--name", "sigint", "--storage", str(storage)]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=tmp_path, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while _trial_runs(storage / "mlflow.db") < 1:
                if proc.poll() is not None:
                    pytest.fail(f"search exited ({proc.returncode}) before any trial started:\n"
                                + err_path.read_text(errors="replace")[-3000:])
                if time.monotonic() > deadline:
                    pytest.fail(f"no trial run after {START_TIMEOUT_S} s:\n" + err_path.read_text(errors="replace")[-3000:])
                time.sleep(0.5)
            time.sleep(2)  # let the trial get into its epochs
            assert proc.poll() is None, "the search must still be running when Ctrl-C comes"
            if whole_group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGINT)
            t0 = time.monotonic()
            try:
                rc = proc.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                pytest.fail(f"search did not exit within {EXIT_TIMEOUT_S} s of SIGINT:\n"
                            + err_path.read_text(errors="replace")[-3000:])
            exit_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    return rc, exit_s, storage, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


@pytest.mark.parametrize("whole_group", [False, True], ids=["kill-pid", "killpg"])
def test_ctrl_c_leaves_no_run_running(tmp_path, tiny_model, tiny_data, whole_group):
    from mlflow import MlflowClient

    rc, exit_s, storage, stdout, stderr = _interrupted_search(tmp_path, tiny_model, tiny_data, whole_group)
    context = f"exit code {rc} after {exit_s:.1f} s\n--- stderr (tail) ---\n{stderr[-4000:]}"

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sigint")
    assert exp is not None, context
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("autoft.role") == "search"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and children, context
    table = "\n".join(f"{r.info.run_name!r}: {r.info.status} autoft.status={r.data.tags.get('autoft.status')}"
                      for r in runs)
    context += f"\n--- runs ---\n{table}"

    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == [], context
    parent = parents[0]
    assert parent.info.status == "KILLED", context
    assert parent.data.tags.get("autoft.status") == "killed", context
    # Trials cut short by Ctrl-C are KILLED; any that ended before it keep their own status.
    interrupted = [c for c in children if c.data.tags.get("autoft.status") not in ("completed", "pruned", "failed")]
    assert interrupted, context
    for c in interrupted:
        assert c.info.status == "KILLED" and c.data.tags.get("autoft.status") == "killed", context
    assert rc == 130, context
    assert "Traceback (most recent call last)" not in stderr, context
