"""A search that ends on its time budget: the trials it cut short still count.

Ray Tune stops running trials when ``time_budget_s`` runs out without telling any
callback or searcher; their reported epochs (each with a checkpoint) must still be
ranked, closed in MLflow with their best value, and told to Optuna.
"""

from __future__ import annotations

import optuna
import pytest
from conftest import search_children as _children
from mlflow import MlflowClient

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def budget_search(tiny_model, tiny_data, tmp_path_factory):
    import ray

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("budget")
    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", "train.batch_size=16", "train.max_length=32",
        # Far more epochs than the budget allows: whichever trial runs last is cut short.
        "train.epochs=400", "search.time_budget_s=20", "search.max_concurrent=1",
        "search.metric=eval_loss", "search.mode=min", "pruning.scheduler=none",
        "tracking.log_best_model=false", f"storage={root / 'runs'}", "name=budget",
    ])
    lines: list[str] = []
    result = run_search(cfg, echo=lines.append)
    yield result, lines
    ray.shutdown()


def test_trials_cut_by_the_budget_are_closed_with_their_best(budget_search):
    result, _ = budget_search
    client, runs = _children(result)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    cut = [r for r in runs if r.data.tags["autoft.status"] == "killed"]
    assert cut, "with 400 epochs per trial the budget must cut one short"
    assert result.n_killed == len(cut)
    assert result.n_completed + result.n_pruned + result.n_failed + result.n_killed == result.n_trials
    for r in cut:
        assert "time budget" in r.data.tags["autoft.reason"]
        history = [m.value for m in client.get_metric_history(r.info.run_id, "eval_loss")]
        if history:
            assert r.data.metrics["best_eval_loss"] == pytest.approx(min(history))


def test_best_value_counts_every_reported_epoch(budget_search):
    result, _ = budget_search
    client, runs = _children(result)
    every = [m.value for r in runs for m in client.get_metric_history(r.info.run_id, "eval_loss")]
    assert result.best_value == pytest.approx(min(every))
    assert result.best_checkpoint is not None


def test_optuna_holds_no_running_trial(budget_search):
    result, _ = budget_search
    storage = f"sqlite:///{result.storage_dir.rsplit('/', 1)[0]}/optuna.db"
    study = optuna.load_study(study_name=result.search_id, storage=storage)
    assert study.trials
    assert not [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    killed = [t for t in study.trials if t.user_attrs.get("autoft_status") == "killed"]
    assert killed and all(t.state == optuna.trial.TrialState.PRUNED for t in killed)


# --------------------------------------------------------------------------- resumed, then cut by the budget


@pytest.fixture(scope="module")
def killed_then_resumed_with_budget(tiny_model, tiny_data, tmp_path_factory):
    """A budgeted search whose driver is killed mid-trial, resumed with `autoft resume`:
    the restored run's budget cuts the trial again, and only the restored searcher can
    tell Optuna so."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("budget-resume")
    storage = root / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_LOGGING_LEVEL="WARNING")
    env.pop("MLFLOW_TRACKING_URI", None)
    autoft = [sys.executable, "-m", "autoft.cli"]
    args = ["search", "--name", "budgetresume", "--storage", str(storage), "--time-budget", "25",
            "--max-concurrent", "1", "--set", f"model.path={tiny_model}",
            "--set", f"data.train={tiny_data['train']}", "--set", f"data.validation={tiny_data['validation']}",
            "--set", "train.epochs=400", "--set", "train.batch_size=16", "--set", "train.max_length=32",
            "--set", "pruning.scheduler=none", "--set", "search.metric=eval_loss", "--set", "search.mode=min",
            "--set", "tracking.log_best_model=false"]
    proc = subprocess.Popen(autoft + args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        # Kill once the first trial has a checkpoint and Ray has saved its state (every 2 s).
        while not list(storage.glob("budgetresume-*/trial_*/checkpoint_00000[2-9]")):
            if proc.poll() is not None:
                pytest.fail("search ended before it could be killed:\n" + proc.stderr.read()[-2000:])
            if time.time() > deadline:
                pytest.fail("search made no progress")
            time.sleep(0.5)
        time.sleep(2.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    search_id = next(p.name for p in storage.iterdir() if p.name.startswith("budgetresume-"))
    resumed = subprocess.run(autoft + ["resume", search_id, "--storage", str(storage), "--json"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads(resumed.stdout.strip().splitlines()[-1]), storage


def test_resumed_search_cut_by_its_budget_leaves_no_running_optuna_trial(killed_then_resumed_with_budget):
    result, storage = killed_then_resumed_with_budget
    study = optuna.load_study(study_name=result["search_id"], storage=f"sqlite:///{storage / 'optuna.db'}")
    assert study.trials
    assert not [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    killed = [t for t in study.trials if t.user_attrs.get("autoft_status") == "killed"]
    assert killed and all(t.state == optuna.trial.TrialState.PRUNED for t in killed)
    assert all("time budget" in t.user_attrs["autoft_reason"] for t in killed)
    client = MlflowClient(result["tracking_uri"] if "tracking_uri" in result else f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([result["mlflow_experiment_id"]], "tags.`autoft.role` = 'trial'", max_results=100)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert result["best_value"] is not None
