"""A search that ends on its time budget: the trials it cut short still count.

Ray Tune stops running trials when ``time_budget_s`` runs out without telling any
callback or searcher; their reported epochs (each with a checkpoint) must still be
ranked, closed in MLflow with their best value, and told to Optuna.
"""

from __future__ import annotations

import optuna
import pytest
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


def _children(result):
    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'", max_results=100)
    return client, runs


def test_trials_cut_by_the_budget_are_closed_with_their_best(budget_search):
    result, _ = budget_search
    client, runs = _children(result)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    cut = [r for r in runs if r.data.tags["autoft.status"] == "killed"]
    assert cut, "with 400 epochs per trial the budget must cut one short"
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
