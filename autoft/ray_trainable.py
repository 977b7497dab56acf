"""The Ray Tune function trainable: a thin adapter from Tune to :func:`autoft.trial.run_trial`.

Runs in Ray workers, so it imports neither MLflow nor the CLI. The tokenized
data arrives once through the object store (``tune.with_parameters``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

from autoft import checkpoint as ckpt
from autoft import faults, scratch, storage_fs
from autoft.data import PreparedData
from autoft.recipe import RECIPE_FIELDS, Recipe
from autoft.space import trial_number_of
from autoft.trial import RunOptions, run_trial


class _TuneReporter:
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray import tune

        # On the filesystem the controller gave Ray for storage, so Ray's copy is a hard link.
        checkpoint = tune.Checkpoint(str(checkpoint_dir), filesystem=storage_fs.linking_local()) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


# How long a reused actor waits for a stopped trial's thread before it takes the next trial.
# Ray's default, 2 s, suits a thread that ends inside ``tune.report``; with the report on the
# hand-off thread (train.overlap_checkpoints) it ends at its next optimizer step or validation
# batch, which on a CPU can take longer. Past the wait Ray refuses the reuse (measured, Ray 2.60:
# the next trial fails and the search never ends; tests/test_handoff_ray.py).
STOPPED_THREAD_WAIT_S = "60"


def wait_for_stopped_threads() -> None:
    """Raise Ray's wait for a stopped trial's thread in this worker, unless the user set it."""
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", STOPPED_THREAD_WAIT_S)


def usable_checkpoint(given: Path) -> Path | None:
    """The checkpoint to resume from: ``given``, or if it is torn (a crash while
    it was written), the newest complete one beside it; None = start over."""
    if ckpt.is_complete(given):
        return given
    fallback = ckpt.newest_complete(given.parent)
    warnings.warn(f"checkpoint {given} is torn; resuming from {fallback or 'scratch'}", stacklevel=2)
    return fallback


def tune_trial(config: dict[str, Any], data: PreparedData, setup: dict[str, Any]) -> None:
    from ray import tune

    overrides = {k: v for k, v in config.items() if k in RECIPE_FIELDS}
    recipe = Recipe.from_dict({**setup["base_recipe"], **overrides})
    options = RunOptions(**setup["options"])
    if options.scratch_root is not None:
        options.scratch_root = scratch.node_folder(options.scratch_root)
    if options.overlap_checkpoints:
        wait_for_stopped_threads()
    options.epoch_hook = faults.hook_for(trial_number_of(config), tune.get_context().get_trial_dir())
    model_path = Path(setup["model_path"])
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(recipe, data, model_path, _TuneReporter(), options)
        return
    # as_directory would copy a checkpoint on any filesystem but pyarrow's own local one.
    with (contextlib.nullcontext(checkpoint.path) if storage_fs.is_local(checkpoint.filesystem)
          else checkpoint.as_directory()) as resume_dir:
        run_trial(recipe, data, model_path, _TuneReporter(), options, resume_from=usable_checkpoint(Path(resume_dir)))
