"""autoft.trial.run_trial and autoft.checkpoint on the tiny BERT and the tiny SMS data.

Everything runs on CPU with one thread so that two runs of the same recipe are
bit-for-bit comparable (the resume test relies on it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from autoft import checkpoint as ckpt
from autoft.config import ExperimentConfig, load_config
from autoft.controller import plan_search, tokenize_for
from autoft.data import PreparedData
from autoft.trial import RunOptions, TrialResult, epoch_progress, evals_in_epoch, run_trial

EPOCH_KEYS = {"train_loss", "eval_loss", "eval_accuracy", "eval_f1", "learning_rate",
              "trainable_params", "epoch_seconds"}
# Everything a run computes (not wall-clock timings): must match between runs.
COMPARED = ("epoch", "epochs_total", "train_loss", "eval_loss", "eval_accuracy", "eval_f1",
            "learning_rate", "trainable_params", "blocks_training", "train_samples")


class ListReporter:
    def __init__(self) -> None:
        self.reports: list[tuple[dict[str, Any], Path | None]] = []
        self.dir_contents: list[set[str]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append((dict(metrics), checkpoint_dir))
        self.dir_contents.append({p.name for p in checkpoint_dir.iterdir()} if checkpoint_dir else set())

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [m for m, _ in self.reports]


class Interrupt(Exception):
    pass


class StopAfter(ListReporter):
    """Raise after ``n`` reports, as a killed worker would stop between epochs."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if len(self.reports) >= self.n:
            raise Interrupt


class Setup:
    def __init__(self, cfg: ExperimentConfig, data: PreparedData, model_path: Path) -> None:
        self.cfg, self.data, self.model_path = cfg, data, model_path

    def recipe(self, **overrides: Any):
        return self.cfg.base_recipe(overrides)

    def run(self, reporter: Any = None, checkpoint_dir: Path | None = None, keep: int = 1,
            resume_from: Path | None = None, metric: str = "eval_f1", mode: str = "max",
            evals_per_epoch: int = 1, overlap: bool = True, save_optimizer_state: bool = True,
            **recipe: Any) -> TrialResult:
        options = RunOptions(device="cpu", precision="fp32", threads=1, checkpoint_dir=checkpoint_dir,
                             keep_checkpoints=keep, metric=metric, mode=mode, evals_per_epoch=evals_per_epoch,
                             overlap_checkpoints=overlap, save_optimizer_state=save_optimizer_state)
        return run_trial(self.recipe(**recipe), self.data, self.model_path, reporter or ListReporter(),
                         options, resume_from=resume_from)


@pytest.fixture()
def setup(tiny_overrides: list[str]) -> Setup:
    cfg = load_config(None, tiny_overrides)
    plan = plan_search(cfg)
    return Setup(cfg, tokenize_for(plan), plan.model_path)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_tensors_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def assert_history_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for ma, mb in zip(a, b):
        for key in COMPARED:
            assert ma[key] == pytest.approx(mb[key], abs=1e-6), (ma["epoch"], key)


# --------------------------------------------------------------------------- (1) one trial


def test_trial_reports_once_per_epoch(setup: Setup, tmp_path: Path) -> None:
    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=tmp_path / "ckpt", epochs=2)
    assert result.status == "completed" and result.reason == ""
    assert len(rep.reports) == 2
    for i, (metrics, cdir) in enumerate(rep.reports, start=1):
        assert metrics.keys() >= EPOCH_KEYS
        assert metrics["epoch"] == i and metrics["epochs_total"] == 2
        assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
        assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_f1"] <= 1
        assert metrics["train_samples"] == len(setup.data.train)
        assert metrics["epoch_seconds"] > 0 and metrics["learning_rate"] >= 0
        assert 0 < metrics["checkpoint_seconds"] < metrics["epoch_seconds"] + 60
        assert cdir == tmp_path / "ckpt" / f"checkpoint-epoch-{i}"
    assert [m["autoft_status"] for m in rep.metrics] == ["running", "completed"]
    # Nothing frozen: every parameter trains.
    model_params = sum(t.numel() for t in weights(result.last_checkpoint).values())
    assert rep.metrics[0]["trainable_params"] == model_params
    # The linear schedule decays to 0 at the last step.
    assert rep.metrics[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert result.best is not None
    assert result.best["eval_f1"] == max(m["eval_f1"] for m in result.history)
    assert result.best_checkpoint is not None and result.best_checkpoint.is_dir()
    assert result.last_checkpoint == tmp_path / "ckpt" / "checkpoint-epoch-2"
    # Only a checkpoint that may be resumed carries the optimizer state.
    assert (tmp_path / "ckpt" / "checkpoint-epoch-1" / "optimizer.safetensors").is_file()
    assert not (tmp_path / "ckpt" / "checkpoint-epoch-2" / "optimizer.safetensors").exists()


def test_trial_without_checkpoint_dir_hands_temporary_checkpoints(setup: Setup) -> None:
    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=None, epochs=1)
    (metrics, cdir), = rep.reports
    assert cdir is not None
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= rep.dir_contents[0]
    assert not cdir.exists()  # removed once the reporter has had it
    assert result.status == "completed"


def fail_loss_at(monkeypatch: pytest.MonkeyPatch, call: int, fail: Any) -> dict[str, int]:
    """CrossEntropyLoss's ``call``-th call returns ``fail(loss)`` (or raises from it); returns the call count."""
    calls = {"n": 0}
    original = nn.CrossEntropyLoss.forward

    def forward(self: nn.CrossEntropyLoss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = original(self, logits, target)
        return fail(loss) if calls["n"] == call else loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", forward)
    return calls


def nan(loss: torch.Tensor) -> torch.Tensor:
    return loss * float("nan")


def interrupt(loss: torch.Tensor) -> torch.Tensor:
    raise Interrupt  # e.g. CUDA out of memory


class WeightsReporter(ListReporter):
    """Keeps the weights of every checkpoint handed to it; optionally holds each report until
    the trial has taken another optimizer step (or ``hold`` seconds pass)."""

    def __init__(self, steps: dict[str, int] | None = None, hold: float = 0.0) -> None:
        super().__init__()
        self.steps, self.hold = steps, hold
        self.weights: list[dict[str, torch.Tensor]] = []
        self.trained_meanwhile: list[bool] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        self.weights.append(weights(checkpoint_dir) if checkpoint_dir else {})
        if self.steps is not None and metrics["autoft_status"] == "running":
            start, deadline = self.steps["n"], time.monotonic() + self.hold
            while self.steps["n"] == start and time.monotonic() < deadline:
                time.sleep(0.01)
            self.trained_meanwhile.append(self.steps["n"] > start)


@pytest.fixture()
def steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Optimizer steps the trial has taken so far."""
    count = {"n": 0}
    original = torch.optim.AdamW.step

    def step(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return count


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "wait"])
def test_handed_off_checkpoints_train_on_while_reported(setup: Setup, steps: dict[str, int], overlap: bool) -> None:
    rep = WeightsReporter(steps, hold=10 if overlap else 0.3)
    setup.run(rep, checkpoint_dir=None, epochs=2, overlap=overlap)
    # With overlap the trial's next steps ran while its first report was in flight; without,
    # the trial waited for the report (this reporter holds it 0.3 s).
    assert rep.trained_meanwhile == [overlap]
    assert not any(cdir.exists() for _, cdir in rep.reports)  # each removed once reported


def test_reports_stay_on_the_training_thread_unless_asked(setup: Setup) -> None:
    class ThreadReporter(ListReporter):
        def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            super().report(metrics, checkpoint_dir)
            self.thread = threading.current_thread()

    assert RunOptions().overlap_checkpoints is False
    assert load_config(None, []).train.overlap_checkpoints is False
    rep = ThreadReporter()
    setup.run(rep, checkpoint_dir=None, epochs=1, overlap=False)
    assert rep.thread is threading.current_thread()


def test_training_error_during_a_hand_off_leaves_the_checkpoint_to_the_reporter(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial fails while Ray would still be copying its checkpoint: the copy finishes from a
    whole folder, then the trial's own error comes out (not the reporter's, not lost)."""
    steps_per_epoch = math.ceil(len(setup.data.train) / setup.cfg.train.batch_size)
    fail_loss_at(monkeypatch, steps_per_epoch + 2, interrupt)  # in the second epoch

    class SlowReader(WeightsReporter):
        def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            time.sleep(1.0)  # still copying when the training thread fails
            super().report(metrics, checkpoint_dir)

    rep = SlowReader()
    with pytest.raises(Interrupt):
        setup.run(rep, checkpoint_dir=None, epochs=2, overlap=True)
    assert len(rep.weights) == 1 and rep.weights[0]  # read whole, after the trial had failed
    assert not rep.reports[0][1].parent.exists()  # and the scratch folder went afterwards


def test_divergence_with_overlap_reports_in_order(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    steps_per_epoch = math.ceil(len(setup.data.train) / setup.cfg.train.batch_size)
    fail_loss_at(monkeypatch, steps_per_epoch + 3, nan)
    rep = WeightsReporter()
    result = setup.run(rep, checkpoint_dir=None, epochs=3, overlap=True)
    assert result.status == "diverged" and result.reason == "loss became nan at epoch 2 step 3"
    assert [m["autoft_status"] for m in rep.metrics] == ["running", "diverged"]
    assert rep.weights[0] and rep.reports[1][1] is None


def test_overlapping_hand_offs_change_no_result(setup: Setup) -> None:
    recipe = {"epochs": 2, "dropout": 0.2, "seed": 7}
    runs = {}
    for overlap in (True, False):
        rep = WeightsReporter()
        result = setup.run(rep, checkpoint_dir=None, evals_per_epoch=2, overlap=overlap, **recipe)
        runs[overlap] = (rep, result)
    (a, ra), (b, rb) = runs[True], runs[False]
    assert_history_equal(ra.history, rb.history)
    assert_history_equal(a.metrics, b.metrics)
    assert len(a.weights) == len(b.weights) == 4
    for wa, wb in zip(a.weights, b.weights):
        assert_tensors_close(wa, wb)  # each checkpoint as of its own evaluation, not later


def test_trial_stopped_during_a_hand_off_stops_within_a_step(setup: Setup, steps: dict[str, int]) -> None:
    class StopOnFirst(ListReporter):
        def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            super().report(metrics, checkpoint_dir)
            self.at = steps["n"]
            raise SystemExit(0)  # what Ray's tune.report does once the scheduler stopped the trial

    rep = StopOnFirst()
    steps_per_epoch = math.ceil(len(setup.data.train) / setup.cfg.train.batch_size)
    with pytest.raises(SystemExit):
        setup.run(rep, checkpoint_dir=None, epochs=3)
    assert len(rep.reports) == 1
    assert steps["n"] - rep.at < steps_per_epoch  # stopped inside the second epoch, not after it
    assert not rep.reports[0][1].parent.exists()  # the trial's scratch folder went with it


# --------------------------------------------------------------------------- (2) divergence


def test_huge_learning_rate_diverges_without_raising(setup: Setup, tmp_path: Path) -> None:
    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=tmp_path / "ckpt", learning_rate=1e6, epochs=2)
    assert result.status == "diverged"
    assert "at epoch 1 step" in result.reason
    assert "nan" in result.reason or "inf" in result.reason
    assert len(rep.reports) == 1
    metrics, cdir = rep.reports[0]
    assert metrics["autoft_status"] == "diverged" and metrics["autoft_reason"] == result.reason
    assert metrics["eval_f1"] == 0.0  # the worst value of the metric, for the scheduler
    assert cdir is None
    assert not list((tmp_path / "ckpt").glob("checkpoint-epoch-*"))


def test_nan_loss_in_second_epoch_stops_there(setup: Setup, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    steps_per_epoch = math.ceil(len(setup.data.train) / setup.cfg.train.batch_size)
    calls = fail_loss_at(monkeypatch, steps_per_epoch + 3, nan)
    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=tmp_path / "ckpt", epochs=3)
    assert result.status == "diverged"
    assert result.reason == "loss became nan at epoch 2 step 3"
    assert calls["n"] == steps_per_epoch + 3  # stopped at once, no third epoch
    assert [m["autoft_status"] for m in rep.metrics] == ["running", "diverged"]
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert result.best is not None and result.best["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-epoch-1"]


# --------------------------------------------------------------------------- (3) resume


def test_resume_equals_uninterrupted_run(setup: Setup, tmp_path: Path) -> None:
    """accelerate's test_can_resume_training: stop after epoch 1, resume, compare."""
    recipe = {"epochs": 3, "dropout": 0.2, "seed": 7}
    a, b = tmp_path / "A", tmp_path / "B"
    full = setup.run(checkpoint_dir=a, keep=3, **recipe)

    stopper = StopAfter(1)
    with pytest.raises(Interrupt):
        setup.run(stopper, checkpoint_dir=b, keep=3, **recipe)
    assert sorted(p.name for p in b.iterdir()) == ["checkpoint-epoch-1"]
    assert ckpt.latest_complete(b) == b / "checkpoint-epoch-1"

    rep = ListReporter()
    resumed = setup.run(rep, checkpoint_dir=b, keep=3, resume_from=b / "checkpoint-epoch-1", **recipe)
    assert resumed.status == "completed"
    assert [m["epoch"] for m in rep.metrics] == [2, 3]  # epoch 1 is not trained again

    for epoch in (1, 2, 3):
        name = f"checkpoint-epoch-{epoch}"
        assert_tensors_close(weights(a / name), weights(b / name))
        if epoch < 3:  # the last epoch's checkpoint has no optimizer state
            assert_tensors_close(load_file(str(a / name / "optimizer.safetensors")),
                                 load_file(str(b / name / "optimizer.safetensors")))
        # Same RNG state after each epoch: the same dropout masks were drawn.
        assert torch.equal(load_file(str(a / name / "rng.safetensors"))["torch"],
                           load_file(str(b / name / "rng.safetensors"))["torch"])
    assert_history_equal(full.history, resumed.history)
    assert_history_equal(full.history[1:], rep.metrics)
    assert resumed.best is not None and full.best is not None
    assert resumed.best["epoch"] == full.best["epoch"]
    state_a, state_b = (ckpt.load_trainer_state(d / "checkpoint-epoch-3") for d in (a, b))
    assert state_a["scheduler"] == state_b["scheduler"]

    # Control: the comparison is sensitive to the RNG restore (dropout > 0).
    c = tmp_path / "C"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt, "restore_rng", lambda directory: None)
        no_rng = setup.run(checkpoint_dir=c, keep=3, resume_from=b / "checkpoint-epoch-1", **recipe)
    assert no_rng.history[1]["train_loss"] != pytest.approx(full.history[1]["train_loss"], abs=1e-6)
    wa, wc = weights(a / "checkpoint-epoch-3"), weights(c / "checkpoint-epoch-3")
    assert any(not torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_weights_only_checkpoints_resume_with_restarted_moments(setup: Setup, tmp_path: Path) -> None:
    """train.save_optimizer_state=false: no checkpoint holds AdamW's moments; a resume goes on
    from the weights with the moments restarted, so it is not the uninterrupted run."""
    recipe = {"epochs": 3, "seed": 7}
    a, b = tmp_path / "A", tmp_path / "B"
    setup.run(checkpoint_dir=a, keep=3, save_optimizer_state=False, **recipe)
    assert sorted(p.name for p in a.iterdir()) == [f"checkpoint-epoch-{e}" for e in (1, 2, 3)]
    assert not list(a.rglob("optimizer.safetensors"))
    assert "optimizer" not in ckpt.load_trainer_state(a / "checkpoint-epoch-1")
    with pytest.raises(Interrupt):
        setup.run(StopAfter(1), checkpoint_dir=b, keep=3, save_optimizer_state=False, **recipe)
    rep = ListReporter()
    with pytest.warns(UserWarning, match="moments restart from zero"):
        resumed = setup.run(rep, checkpoint_dir=b, keep=3, resume_from=b / "checkpoint-epoch-1",
                            save_optimizer_state=False, **recipe)
    assert resumed.status == "completed"
    assert [m["epoch"] for m in rep.metrics] == [2, 3]
    assert_tensors_close(weights(a / "checkpoint-epoch-1"), weights(b / "checkpoint-epoch-1"))
    wa, wb = weights(a / "checkpoint-epoch-2"), weights(b / "checkpoint-epoch-2")
    assert any(not torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def finished_run(setup: Setup, root: Path) -> tuple[TrialResult, TrialResult]:
    first = setup.run(checkpoint_dir=root, epochs=2)
    last = ckpt.latest_complete(root)
    assert last == root / "checkpoint-epoch-2"
    again = setup.run(checkpoint_dir=root, epochs=2, resume_from=last)
    return first, again


def test_resume_of_finished_trial_trains_nothing(setup: Setup, tmp_path: Path) -> None:
    first, again = finished_run(setup, tmp_path / "ckpt")
    assert again.status == "completed"
    assert_history_equal(first.history, again.history)
    assert again.best is not None and first.best is not None
    assert again.best["epoch"] == first.best["epoch"]


def test_resume_of_finished_trial_keeps_its_checkpoints(setup: Setup, tmp_path: Path) -> None:
    first, again = finished_run(setup, tmp_path / "ckpt")
    assert again.last_checkpoint == first.last_checkpoint
    assert again.best_checkpoint == first.best_checkpoint


def test_resume_prunes_like_uninterrupted_run(setup: Setup, tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    recipe = {"epochs": 4, "learning_rate": 3e-4, "metric": "eval_loss", "mode": "min", "keep": 1}
    full = setup.run(checkpoint_dir=a, **recipe)
    with pytest.raises(Interrupt):
        setup.run(StopAfter(2), checkpoint_dir=b, **recipe)
    resumed = setup.run(checkpoint_dir=b, resume_from=ckpt.latest_complete(b), **recipe)
    assert_history_equal(full.history, resumed.history)  # same metrics, so same survivors
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
    assert full.best_checkpoint is not None and resumed.best_checkpoint is not None
    assert resumed.best_checkpoint.name == full.best_checkpoint.name


def test_resume_of_finished_trial_last_status_completed(setup: Setup, tmp_path: Path) -> None:
    _, again = finished_run(setup, tmp_path / "ckpt")
    assert again.history[-1]["autoft_status"] == "completed"


# --------------------------------------------------------------------------- (4) frozen prefix


def test_frozen_prefix_keeps_pretrained_weights(setup: Setup, tmp_path: Path) -> None:
    import autoft.trial as trial
    from autoft.models import load_classifier

    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=tmp_path / "ckpt", epochs=1, num_frozen_layers=2, seed=3)
    saved = weights(result.last_checkpoint)
    pretrained = load_file(str(setup.model_path / "model.safetensors"))
    body = [k for k in pretrained if k.startswith(("embeddings.", "encoder."))]
    assert len(body) > 30
    for k in body:
        assert torch.equal(saved[f"bert.{k}"], pretrained[k]), k
    # The head started from the seeded initialisation and moved.
    trial.seed_everything(3)
    init = load_classifier(setup.model_path, setup.data.label_names).state_dict()
    for k in ("classifier.weight", "classifier.bias"):
        assert not torch.allclose(saved[k], init[k]), k
    # Only the head and the pooler (outside the block stack) trained.
    head_and_pooler = sum(v.numel() for k, v in saved.items() if k.startswith(("classifier.", "bert.pooler.")))
    assert rep.metrics[0]["trainable_params"] == head_and_pooler
    assert rep.metrics[0]["blocks_training"] == 0


# --------------------------------------------------------------------------- (5) unfreezing


@pytest.mark.parametrize(("schedule", "every", "frozen", "expected"), [
    ("gradual", 1, 0, [0, 1, 2]),
    ("gradual", 1, 1, [0, 1, 1]),
    ("step", 2, 0, [0, 0, 2]),
    ("none", 1, 1, [1, 1, 1]),
])
def test_unfreezing_schedule_per_epoch(setup: Setup, tmp_path: Path, schedule: str, every: int,
                                       frozen: int, expected: list[int]) -> None:
    rep = ListReporter()
    root = tmp_path / "ckpt"
    setup.run(rep, checkpoint_dir=root, keep=3, epochs=3, unfreeze_schedule=schedule,
              unfreeze_every=every, num_frozen_layers=frozen)
    assert [m["blocks_training"] for m in rep.metrics] == expected
    trainable = [m["trainable_params"] for m in rep.metrics]
    assert all(x <= y for x, y in zip(trainable, trainable[1:]))
    # Blocks wake up top down: a block that has not trained yet still holds pretrained weights.
    pretrained = load_file(str(setup.model_path / "model.safetensors"))
    for epoch in range(1, len(expected) + 1):
        saved = weights(root / f"checkpoint-epoch-{epoch}")
        woken = max(expected[:epoch])
        for block in range(2):
            same = all(torch.equal(saved[f"bert.{k}"], v) for k, v in pretrained.items()
                       if k.startswith(f"encoder.layer.{block}."))
            assert same == (block < 2 - woken), (epoch, block)


# --------------------------------------------------------------------------- (6) checkpoints


@pytest.fixture()
def classifier(setup: Setup) -> nn.Module:
    from autoft.models import load_classifier

    torch.manual_seed(0)
    return load_classifier(setup.model_path, setup.data.label_names)


def save(root: Path, epoch: int, model: nn.Module) -> Path:
    return ckpt.save_checkpoint(root / f"checkpoint-epoch-{epoch}", model, None, {"epoch": epoch})


def test_latest_complete_skips_torn_checkpoints(classifier: nn.Module, tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        save(tmp_path, epoch, classifier)
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-epoch-3"
    (tmp_path / "checkpoint-epoch-3" / ckpt.STATE_FILE).unlink()  # torn: no trainer_state.json
    assert not ckpt.is_complete(tmp_path / "checkpoint-epoch-3")
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-epoch-2"
    (tmp_path / "checkpoint-epoch-2" / ckpt.STATE_FILE).write_text('{"epoch": ')  # half-written
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-epoch-1"
    (tmp_path / "checkpoint-epoch-1" / "model.safetensors").unlink()
    assert ckpt.latest_complete(tmp_path) is None


# --------------------------------------------------------------------------- evaluations within an epoch


def test_evals_in_epoch_cut_near_equal_parts() -> None:
    assert evals_in_epoch(10, 1) == [10]
    assert evals_in_epoch(10, 2) == [5, 10]
    assert evals_in_epoch(7, 3) == [3, 5, 7]
    assert evals_in_epoch(3, 4) == [1, 2, 3]  # never more evaluations than steps
    assert [epoch_progress(0, p, 2) for p in (0, 1)] == [0.5, 1]
    assert isinstance(epoch_progress(1, 1, 2), int)


def test_two_evaluations_per_epoch(setup: Setup, tmp_path: Path) -> None:
    rep = ListReporter()
    result = setup.run(rep, checkpoint_dir=tmp_path / "ckpt", keep=4, epochs=2, evals_per_epoch=2)
    assert result.status == "completed"
    assert [m["epoch"] for m in rep.metrics] == [0.5, 1, 1.5, 2]
    assert [m["eval_step"] for m in rep.metrics] == [1, 2, 3, 4]
    assert [m["autoft_status"] for m in rep.metrics] == ["running"] * 3 + ["completed"]
    n = len(setup.data.train)
    assert [m["train_samples"] for m in rep.metrics] == [n // 2, n - n // 2] * 2  # 10 steps of 16: 5 + 5
    assert [c.name for _, c in rep.reports] == [f"checkpoint-epoch-{e}" for e in ("0.5", "1", "1.5", "2")]
    assert rep.metrics[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)
    assert "optimizer.safetensors" in rep.dir_contents[2] and "optimizer.safetensors" not in rep.dir_contents[3]
    assert ckpt.latest_complete(tmp_path / "ckpt") == tmp_path / "ckpt" / "checkpoint-epoch-2"
    # The epoch's training is the same, only looked at more often: same weights at its end.
    whole = setup.run(checkpoint_dir=tmp_path / "whole", epochs=2)
    assert_tensors_close(weights(tmp_path / "ckpt" / "checkpoint-epoch-2"), weights(whole.last_checkpoint))
    assert whole.history[-1]["eval_f1"] == pytest.approx(rep.metrics[-1]["eval_f1"], abs=1e-6)


def test_resume_mid_epoch_equals_uninterrupted_run(setup: Setup, tmp_path: Path) -> None:
    recipe = {"epochs": 2, "dropout": 0.2, "seed": 7, "num_frozen_layers": 1, "evals_per_epoch": 2}
    a, b = tmp_path / "A", tmp_path / "B"
    full = setup.run(checkpoint_dir=a, keep=4, **recipe)
    with pytest.raises(Interrupt):
        setup.run(StopAfter(3), checkpoint_dir=b, keep=4, **recipe)  # killed after epoch 1.5
    assert ckpt.latest_complete(b) == b / "checkpoint-epoch-1.5"
    rep = ListReporter()
    resumed = setup.run(rep, checkpoint_dir=b, keep=4, resume_from=b / "checkpoint-epoch-1.5", **recipe)
    assert [m["epoch"] for m in rep.metrics] == [2]
    assert_tensors_close(weights(a / "checkpoint-epoch-2"), weights(b / "checkpoint-epoch-2"))
    assert_history_equal(full.history, resumed.history)


def test_resume_mid_epoch_with_other_evals_per_epoch_is_refused(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(Interrupt):
        setup.run(StopAfter(1), checkpoint_dir=tmp_path, epochs=2, evals_per_epoch=2)
    with pytest.raises(ValueError, match="train.evals_per_epoch=2"):
        setup.run(checkpoint_dir=tmp_path, epochs=2, resume_from=tmp_path / "checkpoint-epoch-0.5")


def test_latest_complete_orders_epochs_numerically(classifier: nn.Module, tmp_path: Path) -> None:
    for epoch in (2, 10):
        save(tmp_path, epoch, classifier)
    (tmp_path / "checkpoint-epoch-final").mkdir()
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-epoch-10"


def test_save_checkpoint_is_atomic(classifier: nn.Module, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, 1, classifier)
    before = weights(tmp_path / "checkpoint-epoch-1")

    def crash(path: Path, data: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_json_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, classifier)
    with pytest.raises(OSError, match="disk full"):  # overwriting keeps the old one intact
        save(tmp_path, 1, classifier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-epoch-1"]  # no temp folders left
    assert ckpt.latest_complete(tmp_path) == tmp_path / "checkpoint-epoch-1"
    assert_tensors_close(before, weights(tmp_path / "checkpoint-epoch-1"))


@pytest.mark.parametrize("keep", [1, 2])
def test_keep_checkpoints_bounds_folders(setup: Setup, tmp_path: Path, keep: int) -> None:
    root = tmp_path / "ckpt"
    rep = ListReporter()
    # eval_loss (min) differs every epoch; eval_f1 often ties on data this small.
    result = setup.run(rep, checkpoint_dir=root, keep=keep, epochs=4, learning_rate=3e-4,
                       metric="eval_loss", mode="min")
    folders = sorted(p.name for p in root.iterdir())
    assert len(folders) <= keep + 1  # best `keep`, plus the newest for resuming
    assert "checkpoint-epoch-4" in folders
    assert result.best is not None and result.best_checkpoint is not None
    assert result.best_checkpoint.is_dir()
    assert ckpt.load_trainer_state(result.best_checkpoint)["epoch"] == result.best["epoch"]
    assert all(ckpt.is_complete(root / f) for f in folders)
    # Exactly the best `keep` epochs (earlier first on ties) and the newest survive.
    losses = [m["eval_loss"] for m in rep.metrics]
    assert len(set(losses)) == 4
    ranked = sorted(rep.metrics, key=lambda m: m["eval_loss"])
    assert result.best["epoch"] == ranked[0]["epoch"]
    expected = {m["epoch"] for m in ranked[:keep]} | {4}
    assert folders == sorted(f"checkpoint-epoch-{e}" for e in expected)


def test_checkpoint_loads_with_transformers(setup: Setup, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    result = setup.run(checkpoint_dir=tmp_path / "ckpt", epochs=1)
    folder = result.last_checkpoint
    assert folder is not None and ckpt.is_complete(folder)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                               use_safetensors=True)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.label2id == {"ham": 0, "spam": 1}
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "ham", "1": "spam"}
    state = model.state_dict()
    for k, v in weights(folder).items():
        assert torch.equal(state[k], v), k
    trainer_state = ckpt.load_trainer_state(folder)
    assert trainer_state["epoch"] == 1
    assert trainer_state["label_names"] == ["ham", "spam"]
    assert trainer_state["recipe"]["epochs"] == 1
