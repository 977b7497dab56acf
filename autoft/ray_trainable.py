"""The Ray Tune function trainable: a thin adapter from Tune to :func:`autoft.trial.run_trial`.

Runs in Ray workers, so it imports neither MLflow nor the CLI. The tokenized
data arrives once through the object store (``tune.with_parameters``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoft.data import PreparedData
from autoft.recipe import RECIPE_FIELDS, Recipe
from autoft.trial import RunOptions, run_trial


class _TuneReporter:
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


def tune_trial(config: dict[str, Any], data: PreparedData, setup: dict[str, Any]) -> None:
    from ray import tune

    overrides = {k: v for k, v in config.items() if k in RECIPE_FIELDS}
    recipe = Recipe.from_dict({**setup["base_recipe"], **overrides})
    options = RunOptions(**setup["options"])
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(recipe, data, Path(setup["model_path"]), _TuneReporter(), options)
        return
    with checkpoint.as_directory() as resume_dir:
        run_trial(recipe, data, Path(setup["model_path"]), _TuneReporter(), options,
                  resume_from=Path(resume_dir))
