"""MLflow layout of a search: one experiment, one parent run, one child run per trial.

Only the driver writes to MLflow (SQLite has a single writer, trials don't pay
MLflow's import, and no child run is left RUNNING when Ray stops a trial
inside ``tune.report``). Naming and param alignment are pure functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoft.space import ABSENT, SearchSpace

TRIAL_METRICS = (
    "train_loss", "eval_loss", "eval_accuracy", "eval_f1", "learning_rate", "trainable_params",
    "blocks_training", "epoch_seconds", "train_seconds", "train_samples", "train_samples_per_second",
    "checkpoint_seconds", "cached_prefix_depth",
)
STATUS_TO_MLFLOW = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def default_tracking_uri(storage: Path) -> str:
    return f"sqlite:///{(storage / 'mlflow.db').resolve()}"


def trial_run_name(number: int, params: dict[str, Any]) -> str:
    parts = [f"t{number:02d}"]
    if "learning_rate" in params:
        parts.append(f"lr={params['learning_rate']:.1e}")
    if "num_frozen_layers" in params:
        parts.append(f"frozen={params['num_frozen_layers']}")
    sched = params.get("unfreeze_schedule")
    if sched and sched != "none":
        parts.append(str(sched))
    return " ".join(parts)


def aligned_params(space: SearchSpace, sampled: dict[str, Any], recipe: dict[str, Any]) -> dict[str, str]:
    """Every trial logs the same keys: the full recipe, with inactive conditional
    parameters shown as ``n/a`` so MLflow's compare view lines them up."""
    out = {k: _fmt(v) for k, v in recipe.items()}
    for name in space.param_names:
        if name not in sampled:
            out[name] = ABSENT
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class SearchTracker:
    """Thin wrapper over ``MlflowClient`` for one search."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # An explicit location: the default (./mlruns) would follow Ray's per-trial cwd.
            location = None
            if artifact_root is not None and is_local_store(tracking_uri):
                location = (artifact_root / experiment).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.parent_run_id: str | None = None
        self.trial_runs: dict[str, str] = {}

    # -- parent run
    def start_search(self, search_id: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=search_id,
                                     tags={"autoft.role": "search", "autoft.search_id": search_id, **tags})
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        return self.parent_run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _fmt(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_dict(self, run_id: str, data: Any, path: str) -> None:
        self.client.log_dict(run_id, data, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def attach_search(self, parent_run_id: str) -> None:
        """Continue an interrupted search: reopen its parent run, find its trial runs."""
        self.parent_run_id = parent_run_id
        self.client.update_run(parent_run_id, status="RUNNING")
        self.set_tags(parent_run_id, {"autoft.status": "running"})
        children = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                           max_results=50000)
        for run in children:
            key = run.data.tags.get("autoft.optuna_trial")
            if key is not None:
                self.trial_runs[key] = run.info.run_id

    # -- trial runs
    def start_trial(self, trial_key: str, name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """Open the trial's run, or reopen it when a resumed search continues the trial."""
        if trial_key in self.trial_runs:
            run_id = self.trial_runs[trial_key]
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, {**tags, "autoft.status": "running"})
            return run_id
        assert self.parent_run_id is not None
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"mlflow.parentRunId": self.parent_run_id, "autoft.role": "trial",
                  "autoft.status": "running", **tags})
        self.trial_runs[trial_key] = run.info.run_id
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end_trial(self, trial_key: str, status: str, reason: str, epoch: int | float,
                  summary: dict[str, float], step: int) -> None:
        """``epoch``: epochs done (0.5 with train.evals_per_epoch 2); ``step``: the MLflow step of
        the last report (its evaluation count)."""
        run_id = self.trial_runs.get(trial_key)
        if run_id is None:
            return
        tags = {"autoft.status": status, "autoft.last_epoch": epoch}
        if reason:
            tags["autoft.reason"] = reason
        if status == "pruned":
            tags["autoft.pruned_at_epoch"] = epoch
        self.set_tags(run_id, tags)
        if summary:
            self.log_metrics(run_id, summary, step=step)
        self.client.set_terminated(run_id, STATUS_TO_MLFLOW.get(status, "FINISHED"))

    def close_open_trials(self, status: str, reason: str) -> int:
        """Close every trial run still RUNNING (Ctrl-C, driver exception)."""
        closed = 0
        for run_id in self.trial_runs.values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.set_tags(run_id, {"autoft.status": status, "autoft.reason": reason})
                self.client.set_terminated(run_id, STATUS_TO_MLFLOW[status])
                closed += 1
        return closed

    def end_search(self, status: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
        assert self.parent_run_id is not None
        self.set_tags(self.parent_run_id, {"autoft.status": status, **tags})
        self.log_metrics(self.parent_run_id, metrics, step=0)
        self.client.set_terminated(self.parent_run_id, "FINISHED" if status == "completed" else
                                   ("KILLED" if status == "killed" else "FAILED"))

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)


def summary_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (needed by log_model) sets a process-wide URI *and* the
    MLFLOW_TRACKING_URI variable, which child processes inherit: put both back."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    global_before = utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(global_before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def is_local_store(uri: str) -> bool:
    """A store on this machine's disk (SQLite or a folder), not a server or a platform."""
    if uri.startswith(("sqlite:", "file:")):
        return True
    return "://" not in uri and (uri.startswith((".", "/", "~")) or "/" in uri)


def log_best_model(tracking_uri: str, run_id: str, checkpoint: Path, registered_name: str,
                   max_length: int) -> dict[str, Any]:
    """Log the best checkpoint once as a pyfunc model, register it, alias it ``best``."""
    import importlib.metadata as md

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                               outputs=Schema([ColSpec("string", "label")]),
                               params=ParamSchema([ParamSpec("return_scores", "boolean", False)]))
    code = Path(__file__).parent / "serving" / "classifier_model.py"
    reqs = [f"{pkg}=={md.version(pkg).split('+')[0]}" for pkg in ("torch", "transformers", "pandas", "mlflow")]
    client = mlflow.MlflowClient(tracking_uri)
    import warnings

    with _fluent_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The signature is explicit; MLflow still nags for an input example.
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), artifacts={"checkpoint": str(checkpoint)},
            pip_requirements=reqs, model_config={"max_length": max_length}, signature=signature,
            registered_model_name=registered_name,
        )
    version = info.registered_model_version
    if version is not None:
        client.set_registered_model_alias(registered_name, "best", str(version))
    return {"model_uri": info.model_uri, "registered_model": registered_name, "version": version,
            "alias_uri": f"models:/{registered_name}@best"}
