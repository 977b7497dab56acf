"""UnfreezeAlignedASHA against Ray's own ASHA bookkeeping, with hand-made trials and results."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from autoft.pruning import TIME_ATTR, UnfreezeAlignedASHA, make_scheduler

pytestmark = pytest.mark.ray

CONTINUE, STOP = "CONTINUE", "STOP"


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def scheduler(aligned: bool):
    # Trials with "unfreeze_at": n unfreeze more blocks after n epochs.
    oracle = (lambda config, done: config.get("unfreeze_at") == done) if aligned else None
    s = make_scheduler("asha", max_t=4, grace_period=1, reduction_factor=2, unfreezes_after=oracle)
    s.set_search_properties("m", "max")
    return s


def feed(s, trial: FakeTrial, epoch: int, value: float) -> str:
    return s.on_trial_result(None, trial, {TIME_ATTR: epoch, "m": value})


def add(s, *trials: FakeTrial) -> None:
    for t in trials:
        s.on_trial_add(None, t)


@pytest.mark.parametrize("aligned", [False, True])
def test_a_trial_before_its_unfreeze_skips_that_rung_once(aligned: bool) -> None:
    s = scheduler(aligned)
    assert isinstance(s, UnfreezeAlignedASHA) == aligned
    a, b, lp = FakeTrial("a"), FakeTrial("b"), FakeTrial("lp", {"unfreeze_at": 1})
    add(s, a, b, lp)
    # Asynchronous halving: each result is cut against those already recorded at its rung.
    assert feed(s, a, 1, 0.70) == CONTINUE
    assert feed(s, b, 1, 0.80) == CONTINUE
    # Head only so far: plain ASHA cuts it at rung 1; aligned ASHA lets it unfreeze first.
    assert feed(s, lp, 1, 0.30) == (CONTINUE if aligned else STOP)
    if aligned:
        # Judged one epoch later, at the rung it skipped (rung 2 holds nobody yet).
        assert feed(s, lp, 2, 0.90) == CONTINUE


def test_the_skip_is_granted_once_and_the_rung_still_judges() -> None:
    s = scheduler(True)
    a, b, g = FakeTrial("a"), FakeTrial("b"), FakeTrial("g", {"unfreeze_at": 1})
    add(s, a, b, g)
    feed(s, a, 1, 0.70)
    feed(s, b, 1, 0.80)
    feed(s, a, 2, 0.75)
    feed(s, b, 2, 0.85)
    assert feed(s, g, 1, 0.10) == CONTINUE  # skipped
    # Still poor after unfreezing: the rung-2 cutoff (0.80) stops it.
    assert feed(s, g, 2, 0.20) == STOP


def test_a_trial_that_unfreezes_every_epoch_is_still_judged() -> None:
    s = scheduler(True)
    oracle_all = FakeTrial("every", {"unfreeze_at": 1})
    a, b = FakeTrial("a"), FakeTrial("b")
    add(s, a, b, oracle_all)
    feed(s, a, 1, 0.7)
    feed(s, b, 1, 0.8)
    feed(s, a, 2, 0.84)
    feed(s, b, 2, 0.85)
    assert feed(s, oracle_all, 1, 0.1) == CONTINUE
    oracle_all.config["unfreeze_at"] = 2  # would ask to skip again at rung 2
    assert feed(s, oracle_all, 2, 0.1) == STOP


@pytest.mark.parametrize("evals_per_epoch", [1, 2])
def test_controller_oracle_counts_evaluations(evals_per_epoch: int) -> None:
    """With two evaluations per epoch, the unfreeze after epoch 1 comes after evaluation 2;
    evaluation 1 (mid-epoch) never stands before an unfreeze."""
    from types import SimpleNamespace

    from autoft.config import ExperimentConfig
    from autoft.controller import _unfreeze_oracle
    from autoft.freezing import unfreezes_after

    cfg = ExperimentConfig.model_validate({"train": {"epochs": 3, "evals_per_epoch": evals_per_epoch}})
    base = cfg.base_recipe({"num_frozen_layers": 4, "unfreeze_schedule": "gradual", "unfreeze_every": 1})
    oracle = _unfreeze_oracle(SimpleNamespace(cfg=cfg, base_recipe=base, num_layers=6, evals_per_epoch=evals_per_epoch))
    config = {"num_frozen_layers": 4, "unfreeze_schedule": "gradual", "unfreeze_every": 1}
    got = [oracle(config, done) for done in range(1, 3 * evals_per_epoch + 1)]
    epochs = [unfreezes_after(base, 6, e) for e in (1, 2, 3)]
    assert any(epochs)
    want = epochs if evals_per_epoch == 1 else [x for e in epochs for x in (False, e)]
    assert got == want
