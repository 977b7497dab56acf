"""Half-epoch evaluation through a real search, chosen by train.evals_per_epoch=auto (the
default) for epochs of 20 steps: ASHA judges at half epochs, and MLflow, Optuna, the
leaderboard and the report all count evaluations, with the epoch beside each."""

from __future__ import annotations

import pytest
from conftest import search_children as _children

pytestmark = pytest.mark.ray

N_TRIALS = 5


@pytest.fixture(scope="module")
def half_search(tmp_path_factory, tiny_model, tiny_data):
    import ray

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("half")
    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        # 160 rows at batch 8: 20 steps an epoch, so auto evaluates every 10 steps.
        f"data.validation={tiny_data['validation']}", "train.epochs=2", "train.batch_size=8",
        "train.max_length=32", f"storage={root / 'runs'}", "name=half",
        f"search.num_trials={N_TRIALS}", "search.max_concurrent=1", "search.metric=eval_loss",
        "search.mode=min", "search.seed=5", "pruning.grace_period=1", "pruning.reduction_factor=2",
        "tracking.log_best_model=false",
        # On (off by default): ASHA's stops then reach trials while a report is in flight on
        # the hand-off thread, and the next trial reuses the stopped one's actor.
        "train.overlap_checkpoints=true",
    ])
    lines: list[str] = []
    result = run_search(cfg, echo=lines.append)
    yield result, root / "runs", lines
    ray.shutdown()


def test_mlflow_steps_count_evaluations_and_log_the_epoch(half_search):
    result, _, _ = half_search
    client, runs = _children(result)
    assert len(runs) == N_TRIALS
    pruned_early = 0
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        epochs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch")}
        assert steps == list(range(1, len(steps) + 1))
        assert epochs == {s: s / 2 for s in steps}
        status, last = run.data.tags["autoft.status"], run.data.tags["autoft.last_epoch"]
        assert float(last) == len(steps) / 2
        if status == "completed":
            assert len(steps) == 4 and last == "2"
        else:
            assert status == "pruned" and len(steps) < 4
            assert run.data.tags["autoft.reason"] == f"pruned at epoch {last}"
            pruned_early += last == "0.5"
    # ASHA's first rung is one evaluation: half an epoch.
    assert pruned_early >= 1, [r.data.tags["autoft.last_epoch"] for r in runs]


def test_optuna_intermediate_values_per_evaluation(half_search):
    import optuna

    result, storage, _ = half_search
    study = optuna.load_study(study_name=result.search_id, storage=f"sqlite:///{storage / 'optuna.db'}")
    assert len(study.trials) == N_TRIALS
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1))
        want = optuna.trial.TrialState.COMPLETE if len(steps) == 4 else optuna.trial.TrialState.PRUNED
        assert t.state == want


def test_report_plots_against_epochs(half_search):
    from autoft.report import build_model, load_search

    result, storage, _ = half_search
    rec = load_search(result.tracking_uri, result.search_id, storage)
    model = build_model(rec)
    assert model.best is not None and model.best.value == pytest.approx(result.best_value)
    for c in model.curves:
        assert c.epochs == [0.5 * (i + 1) for i in range(len(c.epochs))]
    assert {r.epochs_run for r in model.rows} <= {0.5, 1, 1.5, 2}
    assert result.trials["compute_seconds"].gt(0).all()


def test_the_search_says_and_records_the_cadence_auto_chose(half_search):
    from mlflow import MlflowClient

    result, _, lines = half_search
    assert lines[0].endswith("; evaluating every half epoch (train.evals_per_epoch=auto)"), lines[0]
    parent = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert parent.data.params["evals_per_epoch"] == "2"
