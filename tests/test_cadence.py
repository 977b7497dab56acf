"""train.evals_per_epoch=auto: half-epoch evaluation only where half an epoch is a fair test."""

from __future__ import annotations

import pytest

from autoft.cadence import (
    MIN_STEPS_PER_EVAL,
    cadence_note,
    largest_batch_size,
    resolve_evals_per_epoch,
)
from autoft.space import ParamSpec


@pytest.mark.parametrize(("n_train", "n_val", "batch", "want"), [
    (800, 300, 32, 2),    # SST-2 in the benchmark: 25 steps an epoch, 12-13 per half
    (400, 300, 32, 1),    # TREC in the benchmark: 13 steps, 6 per half
    (600, 558, 32, 1),    # the Quickstart demo: 19 steps
    (4460, 558, 32, 2),   # the built-in SMS data whole: 140 steps
    (640, 320, 32, 2),    # exactly 2 x MIN_STEPS_PER_EVAL steps, validation exactly half
    (640, 321, 32, 1),    # validation more than half the training set
    (160, 64, 8, 2),      # the same rule at a small batch: 20 steps
    (160, 64, 16, 1),
    (100_000, 5_000, 32, 2),
])
def test_auto_halves_epochs_of_enough_steps(n_train, n_val, batch, want):
    assert resolve_evals_per_epoch("auto", n_train, n_val, batch) == want


def test_threshold_is_the_steps_per_evaluation():
    steps = 2 * MIN_STEPS_PER_EVAL
    assert resolve_evals_per_epoch("auto", steps * 32, 1, 32) == 2
    assert resolve_evals_per_epoch("auto", (steps - 1) * 32, 1, 32) == 1


@pytest.mark.parametrize("n", [1, 2, 5])
def test_an_explicit_value_is_kept_whatever_the_data(n):
    assert resolve_evals_per_epoch(n, 10, 10_000, 64) == n
    assert resolve_evals_per_epoch(n, 100_000, 10, 8) == n


def test_largest_batch_comes_from_the_space_then_fixed_then_base():
    choice = {"batch_size": ParamSpec("batch_size", "choice", choices=(16, 32))}
    ranged = {"batch_size": ParamSpec("batch_size", "int", low=8, high=64)}
    assert largest_batch_size(choice, {}, 8) == 32
    assert largest_batch_size(ranged, {}, 8) == 64
    assert largest_batch_size({}, {"batch_size": 48}, 8) == 48
    assert largest_batch_size({}, {}, 24) == 24


def test_note_only_when_evaluating_more_than_once_an_epoch():
    assert cadence_note(1, "auto") == ""
    assert cadence_note(2, "auto") == "; evaluating every half epoch (train.evals_per_epoch=auto)"
    assert cadence_note(4, 4) == "; evaluating 4 times an epoch"


def test_plan_resolves_auto_for_its_data_and_space(tiny_model, tiny_data):
    """The search's plan holds the resolved value: 160 training rows, 64 validation."""
    from autoft.config import load_config
    from autoft.controller import plan_search

    def plan(*sets: str):
        return plan_search(load_config(None, [f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
                                              f"data.validation={tiny_data['validation']}", *sets]))

    assert plan("train.batch_size=8").evals_per_epoch == 2
    assert plan("train.batch_size=16").evals_per_epoch == 1
    assert plan("train.batch_size=8", "train.evals_per_epoch=1").evals_per_epoch == 1
    # A space that may pick batch 16 gets the cadence of its shortest epochs.
    space = "space={params: {learning_rate: {float: [1.0e-5, 1.0e-3]}, batch_size: {choice: [8, 16]}}}"
    assert plan("train.batch_size=8", space).evals_per_epoch == 1


@pytest.mark.parametrize("value", ["often", "0", "21", "1.5", "true"])
def test_bad_value_is_one_line_naming_the_field(value):
    from autoft.config import load_config
    from autoft.errors import InputError

    with pytest.raises(InputError, match=r"train\.evals_per_epoch.*integer from 1 to 20, or auto"):
        load_config(None, [f"train.evals_per_epoch={value}"])
