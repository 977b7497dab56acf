"""Fault injection, Ray-style marker files: every fault is survived and recorded."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray

FAULTS = {1: "raise", 2: "sigkill", 3: "hang", 4: "nan", 5: "torn"}


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory, tiny_model, tiny_data):
    import ray

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("faults")
    markers = root / "markers"
    markers.mkdir()
    for number, kind in FAULTS.items():
        (markers / f"{number}.{kind}").touch()
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOFT_FAULTS_DIR", str(markers))  # inherited by the Ray workers started below
    # The workers' checkpoint scratch folders go in the storage folder, one per PID namespace.
    scratch_root = root / "runs" / ".scratch"
    ray.shutdown()
    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", "train.epochs=3", "train.batch_size=16",
        "train.max_length=32", f"storage={root / 'runs'}", "name=faults", "search.num_trials=6",
        "search.max_concurrent=2", "pruning.scheduler=none", "search.max_failures=1",
        "search.keep_checkpoints=2", "search.trial_timeout_s=20", "search.metric=eval_loss", "search.mode=min",
    ])
    lines: list[str] = []
    try:
        result = run_search(cfg, echo=lines.append)
    finally:
        ray.shutdown()
        mp.undo()
    yield result, markers, scratch_root


def _runs_by_number(result):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'", max_results=100)
    return {int(r.data.tags["autoft.optuna_trial"]): r for r in runs}


def test_every_fault_fired_and_the_search_finished(faulty_search):
    result, markers, _ = faulty_search
    assert not list(markers.iterdir()), "every injected fault fired once"
    assert result.n_trials == 6
    runs = _runs_by_number(result)
    assert sorted(runs) == list(range(6))
    assert all(r.info.status != "RUNNING" for r in runs.values())


@pytest.mark.parametrize(("number", "needle"), [
    (1, "injected failure"), (2, ""), (3, "timed out"), (5, "torn"),
])
def test_crashed_trials_were_retried_from_checkpoint_and_completed(faulty_search, number, needle):
    result, _, _ = faulty_search
    run = _runs_by_number(result)[number]
    assert run.data.tags["autoft.status"] == "completed", run.data.tags
    assert run.data.tags["autoft.retries"] == "1"
    assert needle.lower() in run.data.tags["autoft.last_error"].lower()
    assert run.data.tags["autoft.last_error"]


def test_nan_trial_failed_with_reason_in_mlflow_and_optuna(faulty_search):
    import optuna

    result, _, _ = faulty_search
    run = _runs_by_number(result)[4]
    assert run.info.status == "FAILED"
    assert run.data.tags["autoft.status"] == "failed"
    assert "nan" in run.data.tags["autoft.reason"].lower()
    study = optuna.load_study(study_name=result.search_id,
                              storage=f"sqlite:///{result.storage_dir.rsplit('/', 1)[0]}/optuna.db")
    states = {t.number: t.state for t in study.trials}
    assert states[4] == optuna.trial.TrialState.FAIL
    assert study.trials[4].user_attrs["autoft_status"] == "failed"
    assert all(states[n] == optuna.trial.TrialState.COMPLETE for n in (0, 1, 2, 3, 5))


def test_killed_workers_leave_no_checkpoint_scratch(faulty_search):
    """Trials 2 (SIGKILL) and 3 (killed at its timeout) die holding a scratch folder with a
    checkpoint; the next trial on the machine removes it."""
    _, markers, scratch_root = faulty_search
    assert not list(markers.iterdir())
    from autoft import scratch

    [node] = scratch_root.iterdir()  # where the trials wrote their checkpoints
    assert [p.name for p in node.glob(f"{scratch.PREFIX}*")] == []
