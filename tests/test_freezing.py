"""Unfreezing schedules: which blocks and whether the embeddings train at each epoch.

Block 0 is the bottom block. Every expected plan below is written out by hand
from the rules in autoft/freezing.py's docstring, not computed by the code under test.
"""

from __future__ import annotations

import pytest

from autoft.freezing import (
    FreezePlan,
    GradualUnfreezing,
    NoUnfreezing,
    StepUnfreezing,
    UnfreezeSchedule,
    never_trained_prefix,
    plan_for_epoch,
    schedule_for,
    unfreezes_after,
)
from autoft.recipe import Recipe


def recipe(schedule: str = "none", frozen: int = 0, every: int = 1, epochs: int = 3,
           freeze_embeddings: bool = True) -> Recipe:
    return Recipe(unfreeze_schedule=schedule, num_frozen_layers=frozen, unfreeze_every=every,
                  epochs=epochs, freeze_embeddings=freeze_embeddings)


def blocks_per_epoch(r: Recipe, num_layers: int) -> list[tuple[int, ...]]:
    return [plan_for_epoch(r, num_layers, e).training_blocks for e in range(r.epochs)]


def embeddings_per_epoch(r: Recipe, num_layers: int) -> list[bool]:
    return [plan_for_epoch(r, num_layers, e).embeddings_train for e in range(r.epochs)]


# --------------------------------------------------------------------------- schedule_for


@pytest.mark.parametrize(
    ("schedule", "every", "expected"),
    [
        ("none", 1, NoUnfreezing()),
        ("none", 3, NoUnfreezing()),
        ("gradual", 1, GradualUnfreezing(1)),
        ("gradual", 2, GradualUnfreezing(2)),
        ("step", 1, StepUnfreezing(1)),
        ("step", 3, StepUnfreezing(3)),
    ],
)
def test_schedule_for_maps_the_recipe(schedule: str, every: int, expected: UnfreezeSchedule) -> None:
    assert schedule_for(recipe(schedule, every=every)) == expected


# --------------------------------------------------------------------------- blocks per epoch

# (schedule, num_frozen_layers, unfreeze_every, epochs, num_layers, blocks training at each epoch)
BLOCK_CASES = [
    # none: every block above the floor trains from the first epoch.
    ("none", 0, 1, 3, 2, [(0, 1), (0, 1), (0, 1)]),
    ("none", 1, 1, 2, 2, [(1,), (1,)]),
    ("none", 2, 1, 2, 2, [(), ()]),
    ("none", 4, 1, 2, 6, [(4, 5), (4, 5)]),
    ("none", 0, 3, 1, 6, [(0, 1, 2, 3, 4, 5)]),
    ("none", 9, 1, 2, 6, [(), ()]),  # floor above depth: capped, nothing trains
    # gradual: head only first, then one more block (top down) every `every` epochs.
    ("gradual", 0, 1, 4, 2, [(), (1,), (0, 1), (0, 1)]),
    ("gradual", 0, 1, 2, 6, [(), (5,)]),
    ("gradual", 0, 2, 6, 2, [(), (), (1,), (1,), (0, 1), (0, 1)]),
    ("gradual", 3, 1, 6, 6, [(), (5,), (4, 5), (3, 4, 5), (3, 4, 5), (3, 4, 5)]),
    ("gradual", 4, 2, 7, 6, [(), (), (5,), (5,), (4, 5), (4, 5), (4, 5)]),
    ("gradual", 6, 1, 3, 6, [(), (), ()]),
    ("gradual", 0, 3, 3, 4, [(), (), ()]),  # never reaches the first unfreeze
    # step: head only for `every` epochs, then every block above the floor at once.
    ("step", 0, 1, 3, 2, [(), (0, 1), (0, 1)]),
    ("step", 0, 2, 4, 6, [(), (), (0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 4, 5)]),
    ("step", 2, 1, 3, 6, [(), (2, 3, 4, 5), (2, 3, 4, 5)]),
    ("step", 1, 3, 3, 2, [(), (), ()]),  # the step comes after the last epoch
    ("step", 2, 1, 3, 2, [(), (), ()]),
]


@pytest.mark.parametrize(("schedule", "frozen", "every", "epochs", "num_layers", "expected"), BLOCK_CASES)
def test_training_blocks_per_epoch(schedule: str, frozen: int, every: int, epochs: int, num_layers: int,
                                   expected: list[tuple[int, ...]]) -> None:
    r = recipe(schedule, frozen, every, epochs)
    assert blocks_per_epoch(r, num_layers) == expected


@pytest.mark.parametrize(("schedule", "frozen", "every", "epochs", "num_layers", "expected"), BLOCK_CASES)
def test_freeze_embeddings_does_not_change_blocks(schedule: str, frozen: int, every: int, epochs: int,
                                                  num_layers: int, expected: list[tuple[int, ...]]) -> None:
    r = recipe(schedule, frozen, every, epochs, freeze_embeddings=False)
    assert blocks_per_epoch(r, num_layers) == expected


def test_plan_is_a_value() -> None:
    assert plan_for_epoch(recipe("gradual", epochs=3), 2, 1) == FreezePlan((1,), False)


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    ("schedule", "frozen", "every", "epochs", "num_layers", "expected"),
    [
        # Embeddings train only in epochs where every block trains.
        ("none", 0, 1, 2, 2, [True, True]),
        ("none", 1, 1, 2, 2, [False, False]),
        ("none", 2, 1, 2, 6, [False, False]),
        ("gradual", 0, 1, 4, 2, [False, False, True, True]),
        ("gradual", 0, 2, 6, 2, [False, False, False, False, True, True]),
        ("gradual", 0, 1, 3, 6, [False, False, False]),
        ("gradual", 1, 1, 4, 2, [False, False, False, False]),
        ("step", 0, 1, 3, 2, [False, True, True]),
        ("step", 0, 2, 3, 6, [False, False, True]),
        ("step", 1, 1, 3, 6, [False, False, False]),
    ],
)
def test_frozen_embeddings_train_only_with_every_block(schedule: str, frozen: int, every: int, epochs: int,
                                                        num_layers: int, expected: list[bool]) -> None:
    r = recipe(schedule, frozen, every, epochs, freeze_embeddings=True)
    assert embeddings_per_epoch(r, num_layers) == expected


@pytest.mark.parametrize("schedule", ["none", "gradual", "step"])
@pytest.mark.parametrize(("frozen", "every", "num_layers"), [(0, 1, 2), (1, 2, 2), (2, 1, 6), (6, 3, 6)])
def test_unfrozen_embeddings_train_every_epoch(schedule: str, frozen: int, every: int, num_layers: int) -> None:
    r = recipe(schedule, frozen, every, epochs=5, freeze_embeddings=False)
    assert embeddings_per_epoch(r, num_layers) == [True] * 5


# --------------------------------------------------------------------------- never_trained_prefix


@pytest.mark.parametrize(
    ("schedule", "frozen", "every", "epochs", "num_layers", "freeze_embeddings", "expected"),
    [
        ("none", 0, 1, 3, 2, True, 0),  # everything trains
        ("none", 1, 1, 3, 2, True, 1),  # embeddings + block 0 never train
        ("none", 2, 1, 3, 2, True, 2),  # only the head trains
        ("none", 4, 1, 3, 6, True, 4),
        ("none", 9, 1, 3, 6, True, 6),
        ("none", 4, 1, 3, 6, False, 0),  # embeddings train, so nothing can be cached
        ("gradual", 0, 1, 4, 2, True, 0),  # the last epochs train everything
        ("gradual", 0, 1, 2, 6, True, 5),  # only block 5 is ever reached
        ("gradual", 0, 1, 1, 6, True, 6),  # head only
        ("gradual", 0, 2, 4, 6, True, 5),
        ("gradual", 3, 1, 6, 6, True, 3),
        ("gradual", 0, 1, 2, 6, False, 0),
        ("step", 0, 1, 2, 2, True, 0),
        ("step", 0, 2, 2, 6, True, 6),  # the step comes too late
        ("step", 2, 1, 3, 6, True, 2),
        ("step", 2, 1, 3, 6, False, 0),
    ],
)
def test_never_trained_prefix(schedule: str, frozen: int, every: int, epochs: int, num_layers: int,
                              freeze_embeddings: bool, expected: int) -> None:
    r = recipe(schedule, frozen, every, epochs, freeze_embeddings=freeze_embeddings)
    assert never_trained_prefix(r, num_layers) == expected


@pytest.mark.parametrize("schedule", ["none", "gradual", "step"])
@pytest.mark.parametrize("freeze_embeddings", [True, False])
@pytest.mark.parametrize(("frozen", "every", "epochs", "num_layers"),
                         [(0, 1, 1, 2), (0, 1, 5, 2), (1, 2, 6, 6), (3, 1, 2, 6), (6, 1, 3, 6), (0, 3, 4, 12)])
def test_never_trained_prefix_agrees_with_the_plans(schedule: str, freeze_embeddings: bool, frozen: int,
                                                    every: int, epochs: int, num_layers: int) -> None:
    """What the prefix says is never trained is exactly what no epoch's plan trains."""
    r = recipe(schedule, frozen, every, epochs, freeze_embeddings=freeze_embeddings)
    plans = [plan_for_epoch(r, num_layers, e) for e in range(epochs)]
    k = never_trained_prefix(r, num_layers)
    ever_blocks = {b for p in plans for b in p.training_blocks}
    if any(p.embeddings_train for p in plans):
        assert k == 0
    else:
        assert not ever_blocks & set(range(k))
        assert k == num_layers or k in ever_blocks


# --------------------------------------------------------------------------- schedule contract


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def _instances() -> list[UnfreezeSchedule]:
    made: list[UnfreezeSchedule] = []
    for cls in _all_subclasses(UnfreezeSchedule):
        made.append(cls())
        if "every" in getattr(cls, "__dataclass_fields__", {}):
            made.extend(cls(every=e) for e in (2, 3, 5))
    return made


def test_every_shipped_schedule_is_covered() -> None:
    names = {type(s).__name__ for s in _instances()}
    assert {"NoUnfreezing", "GradualUnfreezing", "StepUnfreezing"} <= names


class TestScheduleContract:
    """Every UnfreezeSchedule subclass, present and future, must pass these."""

    @pytest.fixture(params=_instances(), ids=repr)
    def schedule(self, request: pytest.FixtureRequest) -> UnfreezeSchedule:
        return request.param

    @pytest.mark.parametrize("trainable_max", [0, 1, 2, 6, 24])
    def test_within_bounds(self, schedule: UnfreezeSchedule, trainable_max: int) -> None:
        for epoch in range(40):
            n = schedule.top_blocks_training(epoch, trainable_max)
            assert isinstance(n, int)
            assert 0 <= n <= trainable_max

    @pytest.mark.parametrize("trainable_max", [0, 1, 2, 6, 24])
    def test_monotone_in_epoch(self, schedule: UnfreezeSchedule, trainable_max: int) -> None:
        counts = [schedule.top_blocks_training(e, trainable_max) for e in range(40)]
        assert counts == sorted(counts)

    def test_reaches_the_maximum_eventually(self, schedule: UnfreezeSchedule) -> None:
        assert schedule.top_blocks_training(1000, 6) == 6

    def test_is_a_pure_function(self, schedule: UnfreezeSchedule) -> None:
        first = [schedule.top_blocks_training(e, 6) for e in range(10)]
        assert [schedule.top_blocks_training(e, 6) for e in range(10)] == first
        assert hash(schedule) == hash(schedule)  # frozen dataclass: safe to share between trials


@pytest.mark.parametrize(("r", "expected"), [
    # epochs done 1, 2 (of 3): does the next epoch train more?
    (recipe("none"), [False, False]),
    (recipe("step", every=1), [True, False]),          # head only, then everything
    (recipe("step", every=2), [False, True]),
    (recipe("gradual", every=1), [True, True]),        # one more block each epoch
    (recipe("gradual", every=2), [False, True]),
    (recipe("gradual", every=1, frozen=5), [True, False]),  # 1 trainable block: opens at epoch 2
    (recipe("step", every=1, freeze_embeddings=False), [True, False]),
])
def test_unfreezes_after(r: Recipe, expected: list[bool]) -> None:
    assert [unfreezes_after(r, 6, done) for done in (1, 2)] == expected
    assert not unfreezes_after(r, 6, 0) and not unfreezes_after(r, 6, 3)
