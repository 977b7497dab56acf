"""A real Ray Tune search with a tiny model, checked through MLflow's and Optuna's own clients."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_SEARCH_TRIALS, search_children

pytestmark = pytest.mark.ray

N_TRIALS = TINY_SEARCH_TRIALS


@pytest.fixture(scope="module")
def finished_search(tiny_search):
    result, cfg, lines, _, (env_before, env_after) = tiny_search
    # Logging the model uses MLflow's fluent API: no URI may leak to child processes.
    assert ("MLFLOW_TRACKING_URI" in env_after) == ("MLFLOW_TRACKING_URI" in env_before)
    # Nor may the Ray Tune settings a search needs outlive it.
    for key in ("TUNE_GLOBAL_CHECKPOINT_S", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_AIR_NEW_OUTPUT"):
        assert env_after.get(key) == env_before.get(key), key
    return result, cfg, lines


def _client(result):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=result.tracking_uri)


def _children(result):
    return search_children(result)[1]


def test_parent_and_exactly_one_child_per_trial(finished_search):
    result, _, _ = finished_search
    parent = _client(result).get_run(result.mlflow_run_id)
    assert parent.data.tags["autoft.role"] == "search"
    assert parent.info.status == "FINISHED"
    children = _children(result)
    assert len(children) == N_TRIALS == result.n_trials
    assert {c.data.tags["autoft.role"] for c in children} == {"trial"}
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)
    assert parent.data.metrics["n_trials"] == N_TRIALS
    # The random start TPE used: max(3, min(10, 6 trials // 3)).
    assert parent.data.params["startup_trials"] == "3"
    # How ASHA treated ties, for comparing searches in the MLflow UI.
    assert (parent.data.params["stop_ties"], parent.data.params["tie_breaker"]) == ("False", "eval_loss")


def test_children_have_aligned_params_metrics_and_status(finished_search):
    result, _, _ = finished_search
    client = _client(result)
    children = _children(result)
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1, "every trial must log the same param keys"
    assert {"learning_rate", "num_frozen_layers", "unfreeze_schedule", "unfreeze_every", "model"} <= set(next(iter(keys)))
    for c in children:
        status = c.data.tags["autoft.status"]
        assert status in ("completed", "pruned", "failed")
        history = client.get_metric_history(c.info.run_id, "eval_loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)), "one eval_loss per epoch, step = epoch"
        if status == "completed":
            assert len(steps) == 3
        if status == "pruned":
            assert len(steps) < 3
            assert int(c.data.tags["autoft.pruned_at_epoch"]) == len(steps)
        if c.data.params["unfreeze_schedule"] == "none":
            assert c.data.params["unfreeze_every"] == "n/a"
            # Blocks frozen for the whole trial are read from the prefix cache, and MLflow says so.
            assert c.data.metrics["cached_prefix_depth"] == int(c.data.params["num_frozen_layers"])


def test_asha_pruned_some_and_optuna_agrees(finished_search):
    import optuna

    result, cfg, _ = finished_search
    children = _children(result)
    pruned_mlflow = {int(c.data.tags["autoft.optuna_trial"]) for c in children
                     if c.data.tags["autoft.status"] == "pruned"}
    assert pruned_mlflow, "ASHA should stop at least one of 6 trials"
    study = optuna.load_study(study_name=result.search_id,
                              storage=f"sqlite:///{result.storage_dir.rsplit('/', 1)[0]}/optuna.db")
    pruned_optuna = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned_optuna == pruned_mlflow
    assert len(study.trials) == N_TRIALS
    assert result.n_pruned == len(pruned_mlflow)


def test_warm_start_points_run_first(finished_search):
    import optuna

    result, _, _ = finished_search
    study = optuna.load_study(study_name=result.search_id,
                              storage=f"sqlite:///{result.storage_dir.rsplit('/', 1)[0]}/optuna.db")
    first = sorted(study.trials, key=lambda t: t.number)[0]
    assert first.params["learning_rate"] == pytest.approx(5e-5)
    assert first.params["num_frozen_layers"] == 0


def test_best_checkpoint_loads_and_predicts(finished_search):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, _, _ = finished_search
    assert result.best_checkpoint
    model = AutoModelForSequenceClassification.from_pretrained(result.best_checkpoint)
    tok = AutoTokenizer.from_pretrained(result.best_checkpoint)
    assert set(model.config.id2label.values()) == {"ham", "spam"}
    out = model(**tok(["free prize call now"], return_tensors="pt")).logits
    assert out.shape == (1, 2)
    arts = {a.path for a in _client(result).list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "space.yaml", "best_config.yaml"} <= arts


def test_best_model_registered_with_alias_and_predicts_label_names(finished_search):
    import mlflow
    import pandas as pd

    result, cfg, _ = finished_search
    client = _client(result)
    version = client.get_model_version_by_alias(cfg.name, "best")
    assert version.run_id == result.mlflow_run_id
    assert len(client.search_model_versions(f"name = '{cfg.name}'")) == 1, "only the best is logged"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", result.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{cfg.name}@best")
    mlflow.set_tracking_uri(None)
    preds = model.predict(pd.DataFrame({"text": ["WINNER!! claim your free prize now", "see you at lunch"]}))
    assert list(preds) and set(preds) <= {"ham", "spam"} and len(preds) == 2


def test_result_json_and_dataframe(finished_search):
    from pathlib import Path

    result, _, lines = finished_search
    assert len(result.trials) == N_TRIALS
    assert set(result.trials["status"]) <= {"completed", "pruned", "failed"}
    saved = json.loads((Path(result.storage_dir) / "search.json").read_text())
    assert saved["search_id"] == result.search_id
    assert saved["best_value"] == pytest.approx(result.best_value)
    assert any("done 6/6" in line for line in lines)


def test_phase_seconds_account_for_the_driver_wall_time(finished_search):
    result, cfg, _ = finished_search
    phases = result.phase_seconds
    # This search has no test split, so no "test" phase.
    assert set(phases) == {"prepare", "ray_start", "tune", "export", "register", "finish"}, phases
    assert all(v >= 0 for v in phases.values())
    # Phases follow one another: together they are the search's wall time, less the untimed end.
    assert 0.9 * result.wall_seconds - 1 <= sum(phases.values()) <= result.wall_seconds + 0.05
    assert phases["tune"] > 0 and phases["register"] > 0
    parent = _client(result).get_run(result.mlflow_run_id).data.metrics
    assert parent["phase_register_seconds"] == pytest.approx(phases["register"])
    assert parent["phase_tune_seconds"] == pytest.approx(phases["tune"])


def test_optuna_sees_every_epoch_and_the_best_value(finished_search):
    import optuna

    result, _, _ = finished_search
    client = _client(result)
    study = optuna.load_study(study_name=result.search_id,
                              storage=f"sqlite:///{result.storage_dir.rsplit('/', 1)[0]}/optuna.db")
    by_number = {t.number: t for t in study.trials}
    for c in _children(result):
        trial = by_number[int(c.data.tags["autoft.optuna_trial"])]
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "eval_loss"))
        assert sorted(trial.intermediate_values) == steps, "the final (or pruning) epoch reaches Optuna too"
        if c.data.tags["autoft.status"] == "completed":
            assert trial.value == pytest.approx(c.data.metrics["best_eval_loss"])


def test_autoft_runs_shows_what_the_search_searched_and_says_what_it_left_out(tiny_search):
    from typer.testing import CliRunner

    from autoft.cli import app

    result, _, _, storage, _ = tiny_search
    out = CliRunner().invoke(app, ["runs", result.search_id, "--storage", str(storage), "--top", "2"])
    assert out.exit_code == 0, out.output
    assert f"the best 2 of {result.n_trials} trials; --top 0 shows them all" in out.output
    assert "learning_rate" in out.output and "num_frozen_layers" in out.output
    # Logged on every trial run, but not searched by the quickstart space.
    assert "dropout" not in out.output and "layerwise_lr_decay" not in out.output
    every = CliRunner().invoke(app, ["runs", result.search_id, "--storage", str(storage), "--top", "0"])
    assert every.exit_code == 0, every.output
    assert "the best" not in every.output
    assert all(f"t{n:02d}" in every.output for n in range(result.n_trials))
