"""Kill the search driver (SIGKILL) mid-search, resume, and check that nothing was lost.

Invariant: trials in the Optuna study = trial runs in MLflow under the search =
trials in Ray's state = the requested count; each with one terminal status,
none RUNNING, no Ray trial id reused by two Optuna trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

N = 6
AUTOFT = [sys.executable, "-m", "autoft.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_LOGGING_LEVEL="WARNING")
    env.pop("AUTOFT_FAULTS_DIR", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _trial_runs(db: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("resumable")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'trial'", max_results=100)


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, tiny_model, tiny_data):
    root = tmp_path_factory.mktemp("resume")
    storage = root / "runs"
    args = ["search", "--name", "resumable", "--storage", str(storage), "--trials", str(N), "--max-concurrent", "2",
            "--set", f"model.path={tiny_model}", "--set", f"data.train={tiny_data['train']}",
            "--set", f"data.validation={tiny_data['validation']}", "--set", "train.epochs=40",
            "--set", "train.batch_size=16", "--set", "train.max_length=32", "--set", "pruning.scheduler=none",
            "--set", "search.metric=eval_loss", "--set", "search.mode=min"]
    proc = subprocess.Popen(AUTOFT + args, env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = storage / "mlflow.db"
    deadline = time.time() + 240
    try:
        # Kill once some trials have finished and others are mid-flight.
        while time.time() < deadline:
            # Open the store only once the search has created it (no concurrent schema migration).
            ready = any(storage.glob("resumable-*/autoft_search.json")) if storage.exists() else False
            runs = _trial_runs(db) if ready else []
            done = [r for r in runs if r.info.status != "RUNNING"]
            if len(done) >= 2 and any(r.info.status == "RUNNING" for r in runs):
                break
            if proc.poll() is not None:
                pytest.fail("search ended before it could be killed:\n" + proc.stderr.read()[-2000:])
            time.sleep(0.5)
        else:
            pytest.fail("search made no progress")
        os.killpg(proc.pid, signal.SIGKILL)  # driver, and the local Ray it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {r.data.tags["autoft.optuna_trial"]: r.info.status for r in _trial_runs(db)}
    search_id = next(p.name for p in storage.iterdir() if p.name.startswith("resumable-"))
    resumed = subprocess.run(AUTOFT + ["resume", search_id, "--storage", str(storage), "--json"], env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    return result, storage, search_id, before


def test_nothing_lost_nothing_twice(killed_then_resumed):
    import optuna
    from ray.tune import ExperimentAnalysis

    result, storage, search_id, before = killed_then_resumed
    assert "RUNNING" in before.values(), "the kill left trials running (the case resume must handle)"
    runs = _trial_runs(storage / "mlflow.db")
    numbers = sorted(int(r.data.tags["autoft.optuna_trial"]) for r in runs)
    assert numbers == list(range(N)), "exactly one MLflow run per Optuna trial"
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs), [r.info.status for r in runs]
    assert all(r.data.tags["autoft.status"] in ("completed", "pruned", "failed") for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"] for r in runs)

    study = optuna.load_study(study_name=search_id, storage=f"sqlite:///{storage / 'optuna.db'}")
    assert len(study.trials) == N
    assert all(t.state.is_finished() for t in study.trials)

    analysis = ExperimentAnalysis(str(storage / search_id))
    assert len(analysis.trials) == N
    ray_ids = [r.data.tags["autoft.ray_trial_id"] for r in runs]
    assert len(set(ray_ids)) == N
    assert {t.trial_id for t in analysis.trials} == set(ray_ids)
    assert result["n_trials"] == N


def test_one_parent_run_reattached(killed_then_resumed):
    from mlflow import MlflowClient

    result, storage, search_id, _ = killed_then_resumed
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resumable")
    parents = client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'search'")
    assert [p.info.run_id for p in parents] == [result["mlflow_run_id"]]
    assert parents[0].info.status == "FINISHED"
    assert Path(result["best_checkpoint"]).is_dir()


def test_finished_trials_were_not_run_again(killed_then_resumed):
    from mlflow import MlflowClient

    result, storage, _, before = killed_then_resumed
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    for r in _trial_runs(storage / "mlflow.db"):
        if before.get(r.data.tags["autoft.optuna_trial"]) == "FINISHED":
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")]
            assert steps == sorted(set(steps)), "a finished trial logged no epoch twice"


def test_resume_refuses_a_changed_objective(killed_then_resumed):
    from autoft.controller import resume_search
    from autoft.errors import InputError

    _, storage, search_id, _ = killed_then_resumed
    with pytest.raises(InputError, match="search.metric"):
        resume_search(search_id, str(storage), echo=lambda *_: None, overrides=["search.metric=eval_f1"])
    with pytest.raises(InputError, match="train.evals_per_epoch"):
        resume_search(search_id, str(storage), echo=lambda *_: None, overrides=["train.evals_per_epoch=2"])
    # The sampler comes back from Ray's saved state: a new random start would be ignored.
    with pytest.raises(InputError, match="search.startup_trials"):
        resume_search(search_id, str(storage), echo=lambda *_: None, overrides=["search.startup_trials=4"])


def test_resume_of_unknown_search_is_a_clear_error(tmp_path):
    res = subprocess.run(AUTOFT + ["resume", "nope", "--storage", str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: NAME_OR_PATH: no search 'nope'")
    assert "Traceback" not in res.stderr
