"""Which trial the search picks, and that its checkpoint survives the pruned-checkpoint janitor.

A trial ASHA stops is judged against its rung, not against the search: its best evaluation can
still be the best of the search, and the search then exports that trial's checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoft.callbacks import PrunedCheckpointJanitor, TrialLog
from autoft.outcome import best_row
from autoft.space import TRIAL_NUMBER_KEY

METRIC = "eval_f1"


def _row(log: TrialLog, number: int, status: str, values: list[float], closed: bool = True) -> dict:
    row = log.row(number)
    row.update(trial_id=f"id{number}", status=status,
               history=[{METRIC: v, "epoch": i + 1, "step": i + 1} for i, v in enumerate(values)])
    if closed:
        row["best"] = max(values) if values and status != "failed" else None
    return row


def _checkpoints(search_dir: Path, number: int) -> Path:
    trial_dir = search_dir / f"trial_id{number}"
    for i in range(2):
        (trial_dir / f"checkpoint_00000{i}").mkdir(parents=True)
        (trial_dir / f"checkpoint_00000{i}" / "model.safetensors").write_bytes(b"x")
    return trial_dir


def _complete(janitor: PrunedCheckpointJanitor, number: int) -> None:
    janitor.on_trial_complete(0, [], SimpleNamespace(config={TRIAL_NUMBER_KEY: number}))


def test_best_row_counts_pruned_and_running_trials_not_failed_ones() -> None:
    log = TrialLog()
    _row(log, 0, "completed", [0.70, 0.78])
    pruned = _row(log, 1, "pruned", [0.81])
    _row(log, 2, "failed", [0.95])
    rows = log.in_order()
    assert best_row(rows, METRIC, "max") is pruned
    running = _row(log, 3, "running", [0.60, 0.83], closed=False)
    rows = log.in_order()
    assert best_row(rows, METRIC, "max") is running
    assert best_row(rows, METRIC, "min")["number"] == 3  # 0.60 is the lowest of any that did not fail
    assert best_row([], METRIC, "max") is None


def test_best_row_ties_go_to_the_earliest_trial() -> None:
    log = TrialLog()
    first = _row(log, 0, "pruned", [0.8])
    _row(log, 1, "completed", [0.8])
    assert best_row([log.rows[0], log.rows[1]], METRIC, "max") is first


def test_janitor_keeps_a_leading_pruned_trial_until_it_is_overtaken(tmp_path: Path) -> None:
    log = TrialLog()
    janitor = PrunedCheckpointJanitor(log, tmp_path, METRIC, "max")
    dirs = {n: _checkpoints(tmp_path, n) for n in range(4)}

    _row(log, 0, "completed", [0.70, 0.78])
    _complete(janitor, 0)
    _row(log, 1, "pruned", [0.30])
    _complete(janitor, 1)
    assert not list(dirs[1].glob("checkpoint_*")), "a pruned trial that does not lead is freed at once"

    _row(log, 2, "pruned", [0.81])
    _complete(janitor, 2)
    assert len(list(dirs[2].glob("checkpoint_*"))) == 2, "the leading pruned trial's checkpoint is the export"

    _row(log, 3, "completed", [0.79, 0.85])
    _complete(janitor, 3)
    assert not list(dirs[2].glob("checkpoint_*")), "freed once another trial leads"
    assert len(list(dirs[0].glob("checkpoint_*"))) == 2, "completed trials are not the janitor's"
    assert len(list(dirs[3].glob("checkpoint_*"))) == 2


def test_janitor_frees_a_pruned_trial_a_running_one_already_beats(tmp_path: Path) -> None:
    log = TrialLog()
    janitor = PrunedCheckpointJanitor(log, tmp_path, METRIC, "max")
    pruned_dir = _checkpoints(tmp_path, 1)
    _row(log, 0, "running", [0.9], closed=False)
    _row(log, 1, "pruned", [0.8])
    _complete(janitor, 1)
    assert not list(pruned_dir.glob("checkpoint_*"))


def test_janitor_of_a_resumed_search_holds_pruned_trials_from_before(tmp_path: Path) -> None:
    log = TrialLog()
    old_dir = _checkpoints(tmp_path, 0)
    _row(log, 0, "pruned", [0.8])
    janitor = PrunedCheckpointJanitor(log, tmp_path, METRIC, "max")
    _row(log, 1, "completed", [0.9])
    _complete(janitor, 1)
    assert not list(old_dir.glob("checkpoint_*"))


@pytest.mark.ray
@pytest.mark.parametrize(("step", "doing"), [("export_best", "exporting the best checkpoint"),
                                             ("score_test", "scoring the test split")])
def test_a_search_that_fails_after_its_trials_ends_its_mlflow_run_failed(tiny_overrides, tiny_data, monkeypatch,
                                                                         step, doing) -> None:
    """A step after the trials fails: the search's run ends FAILED naming that step."""
    import ray
    from mlflow import MlflowClient

    from autoft import controller
    from autoft.config import load_config
    from autoft.tracking import default_tracking_uri

    def lost(*args, **kwargs):
        raise FileNotFoundError("checkpoint_000001")

    monkeypatch.setattr(controller, step, lost)
    cfg = load_config(None, [*tiny_overrides, "name=lost", "search.num_trials=2", "search.max_concurrent=2",
                             "train.epochs=1", f"data.test={tiny_data['validation']}",
                             f"tracking.log_best_model={str(step == 'score_test').lower()}"])
    try:
        with pytest.raises(FileNotFoundError):
            controller.run_search(cfg, echo=lambda line: None)
    finally:
        ray.shutdown()
    client = MlflowClient(default_tracking_uri(Path(cfg.storage)))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10)
    search = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(search) == 1 and len(trials) == 2
    assert search[0].info.status == "FAILED"
    assert search[0].data.tags["autoft.status"] == "failed"
    reason = search[0].data.tags["autoft.reason"]
    assert doing in reason and "checkpoint_000001" in reason, reason
    assert all(r.info.status != "RUNNING" for r in trials), "the trials stay recorded and closed"


def _fake_checkpoint(trial_dir: Path, name: str, value: float | None, complete: bool = True) -> Path:
    d = trial_dir / name
    d.mkdir(parents=True)
    if complete:
        (d / "model.safetensors").write_bytes(b"w")
        history = [{"eval_f1": 0.1}] + ([{"eval_f1": value}] if value is not None else [{}])
        (d / "trainer_state.json").write_text(json.dumps({"history": history}))
    return d


def test_best_complete_checkpoint_skips_torn_and_empty_ones(tmp_path: Path) -> None:
    """What the export falls back to when Ray names a checkpoint that is gone or an empty
    stand-in (a resume from a torn state save): the trial's best complete one on disk."""
    from autoft.checkpoint import best_complete

    _fake_checkpoint(tmp_path, "checkpoint_000000", 0.70)
    good = _fake_checkpoint(tmp_path, "checkpoint_000001", 0.80)
    _fake_checkpoint(tmp_path, "checkpoint_000002", 0.90, complete=False)  # empty stand-in
    _fake_checkpoint(tmp_path, "checkpoint_000003", None)  # saved no score
    assert best_complete(tmp_path, "eval_f1", "max") == good
    assert best_complete(tmp_path, "eval_f1", "min") == tmp_path / "checkpoint_000000"
    assert best_complete(tmp_path / "nowhere", "eval_f1", "max") is None


def test_the_best_trial_missing_from_rays_record_is_exported_from_its_folder(tmp_path: Path, tiny_model: Path) -> None:
    """A trial that finished after the Ray save a resume started from is in MLflow and Optuna
    but not in Ray's results (autoft.reconcile's ``lost``); when it is the best, its own
    folder gives the checkpoint."""
    from autoft.best_checkpoint import export_best, trial_folder

    folder = trial_folder(tmp_path, "abc")
    _fake_checkpoint(folder, "checkpoint_000000", 0.70)
    best = _fake_checkpoint(folder, "checkpoint_000001", 0.80)
    _fake_checkpoint(folder, "checkpoint_000002", 0.75)
    (best / "optimizer.safetensors").write_bytes(b"o")
    out = export_best([], "abc", METRIC, "max", tmp_path, tiny_model, False)
    assert out == tmp_path / "best_checkpoint"
    assert (out / "model.safetensors").read_bytes() == b"w" and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "trainer_state.json").read_text())["history"][-1][METRIC] == 0.80
    assert not (out / "optimizer.safetensors").exists()
    assert export_best([], "gone", METRIC, "max", tmp_path, tiny_model, False) is None
    _fake_checkpoint(trial_folder(tmp_path, "torn"), "checkpoint_000000", 0.9, complete=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint of trial torn"):
        export_best([], "torn", METRIC, "max", tmp_path, tiny_model, False)
