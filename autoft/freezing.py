"""Unfreezing schedules as pure functions of the epoch.

A schedule answers one question: at epoch ``e``, how many of the *top* blocks
train? Blocks below ``num_frozen_layers`` never train (the floor), so the
answer is capped at ``num_layers - num_frozen_layers``. The head always trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from autoft.recipe import Recipe


class UnfreezeSchedule(ABC):
    @abstractmethod
    def top_blocks_training(self, epoch: int, trainable_max: int) -> int:
        """Number of top blocks that train at ``epoch`` (0-based), at most ``trainable_max``."""


@dataclass(frozen=True)
class NoUnfreezing(UnfreezeSchedule):
    def top_blocks_training(self, epoch: int, trainable_max: int) -> int:
        return trainable_max


@dataclass(frozen=True)
class GradualUnfreezing(UnfreezeSchedule):
    """ULMFiT (Howard & Ruder 2018): head first, then one more block every ``every`` epochs."""

    every: int = 1

    def top_blocks_training(self, epoch: int, trainable_max: int) -> int:
        return min(trainable_max, epoch // self.every)


@dataclass(frozen=True)
class StepUnfreezing(UnfreezeSchedule):
    """Linear probe, then fine-tune (LP-FT, Kumar et al. 2022): head only for
    ``every`` epochs, then every block above the floor at once."""

    every: int = 1

    def top_blocks_training(self, epoch: int, trainable_max: int) -> int:
        return trainable_max if epoch >= self.every else 0


def schedule_for(recipe: Recipe) -> UnfreezeSchedule:
    if recipe.unfreeze_schedule == "gradual":
        return GradualUnfreezing(recipe.unfreeze_every)
    if recipe.unfreeze_schedule == "step":
        return StepUnfreezing(recipe.unfreeze_every)
    return NoUnfreezing()


@dataclass(frozen=True)
class FreezePlan:
    """Which blocks (0 = bottom) and whether the embeddings train at one epoch."""

    training_blocks: tuple[int, ...]
    embeddings_train: bool


def plan_for_epoch(recipe: Recipe, num_layers: int, epoch: int) -> FreezePlan:
    floor = min(recipe.num_frozen_layers, num_layers)
    top = schedule_for(recipe).top_blocks_training(epoch, num_layers - floor)
    blocks = tuple(range(num_layers - top, num_layers))
    if recipe.freeze_embeddings:
        # Embeddings feed block 0: they train only when every block does.
        embeddings_train = len(blocks) == num_layers
    else:
        embeddings_train = True
    return FreezePlan(blocks, embeddings_train)


def never_trained_prefix(recipe: Recipe, num_layers: int) -> int:
    """Depth of the bottom stack (embeddings + blocks) that stays frozen all trial.

    0 means the embeddings train at some point; ``k`` means embeddings and
    blocks ``0..k-1`` never do, so their outputs can be computed once and cached.
    """
    lowest = num_layers
    any_embeddings = False
    for epoch in range(recipe.epochs):
        plan = plan_for_epoch(recipe, num_layers, epoch)
        if plan.training_blocks:
            lowest = min(lowest, plan.training_blocks[0])
        any_embeddings = any_embeddings or plan.embeddings_train
    return 0 if any_embeddings else lowest


def unfreezes_after(recipe: Recipe, num_layers: int, epochs_done: int) -> bool:
    """True when the epoch after ``epochs_done`` trains more than the one just done:
    the trial stands at a stage boundary, where its score says least about its future."""
    if epochs_done <= 0 or epochs_done >= recipe.epochs:
        return False
    before = plan_for_epoch(recipe, num_layers, epochs_done - 1)
    after = plan_for_epoch(recipe, num_layers, epochs_done)
    return len(after.training_blocks) > len(before.training_blocks) or (after.embeddings_train
                                                                        and not before.embeddings_train)
