"""Reading a search for its report: MLflow runs (the parent run and its trials) and the
Optuna study -> :class:`SearchRecord` (:func:`load_search`). The report's only reader of
stores; everything after it is pure (:mod:`autoft.report.model`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from autoft.errors import InputError
from autoft.leaderboard import find_search_run, mlflow_client
from autoft.outcome import as_epoch
from autoft.report.model import searched_params, study_importances, trial_value
from autoft.report.records import HISTORY_METRICS, SearchRecord, TrialRecord


def optuna_storage_url(parent_tags: dict[str, str], storage: str | Path | None) -> str | None:
    """The study's sqlite file: beside the search folder (tag autoft.storage), else in --storage."""
    candidates = []
    if parent_tags.get("autoft.storage"):
        candidates.append(Path(parent_tags["autoft.storage"]).parent / "optuna.db")
    if storage is not None:
        candidates.append(Path(storage).expanduser() / "optuna.db")
    for c in candidates:
        if c.is_file():
            return f"sqlite:///{c.resolve()}"
    return None


def find_study(tracking_uri: str | None, name: str, storage: str | Path | None) -> tuple[str | None, str]:
    """(Optuna storage URL or None, study name) of a search, via its MLflow parent run when
    there is one (the study is named by search id), else ``storage/optuna.db`` and ``name``."""
    tags: dict[str, str] = {}
    if tracking_uri:
        try:
            tags = find_search_run(mlflow_client(tracking_uri), name).data.tags
        except InputError:
            tags = {}
    return optuna_storage_url(tags, storage), tags.get("autoft.search_id", name)


_STORAGES: dict[str, Any] = {}


def _load_study(url: str, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


def load_search(tracking_uri: str, name: str, storage: str | Path | None = None) -> SearchRecord:
    """Read a search (by id, or by name: its newest) from MLflow and its Optuna study."""
    client = mlflow_client(tracking_uri)
    parent = find_search_run(client, name)
    tags, params = parent.data.tags, parent.data.params
    search_id = tags.get("autoft.search_id", parent.info.run_name)
    metric, mode = params.get("metric", "eval_f1"), params.get("mode", "max")
    exp = client.get_experiment(parent.info.experiment_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50000)
    trials = []
    for i, run in enumerate(children):
        t = run.data.tags
        status = t.get("autoft.status") or {"RUNNING": "running", "FAILED": "failed",
                                            "KILLED": "killed"}.get(run.info.status, "completed")
        metrics = {}
        for key in (metric, *HISTORY_METRICS):
            if key in run.data.metrics:
                metrics[key] = [(int(m.step), float(m.value), int(m.timestamp))
                                for m in client.get_metric_history(run.info.run_id, key)]
        if "epoch" in run.data.metrics:  # several evaluations per epoch: steps count evaluations
            epoch_of = {int(m.step): as_epoch(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")}
            metrics = {k: [(epoch_of.get(s, s), v, ts) for s, v, ts in pts] for k, pts in metrics.items()}
        trials.append(TrialRecord(
            number=int(t.get("autoft.optuna_trial", -1 - i)), status=status, params=dict(run.data.params),
            metrics=metrics, summary={k: v for k, v in run.data.metrics.items() if k not in HISTORY_METRICS},
            reason=t.get("autoft.reason", ""), run_id=run.info.run_id, start_ms=run.info.start_time,
            end_ms=run.info.end_time))
    record = SearchRecord(
        search_id=search_id, metric=metric, mode=mode, trials=trials,
        status=tags.get("autoft.status") or parent.info.status.lower(), experiment=exp.name,
        params=dict(params), space=space_params(client, parent.info.run_id), run_id=parent.info.run_id,
        tracking_uri=tracking_uri, start_ms=parent.info.start_time, end_ms=parent.info.end_time,
        num_layers=model_depth(params.get("model")),
    )
    url = optuna_storage_url(tags, storage)
    if url is None:
        record.importance_note = "No Optuna study found (optuna.db beside the search folder or in --storage)."
        return record
    try:
        study = _load_study(url, search_id)
    except KeyError:
        record.importance_note = f"No Optuna study named {search_id} in {url}."
        return record
    values = {}
    for t in trials:
        v, _ = trial_value(t, metric, mode)
        if v is not None:
            values[t.number] = v
    record.importances, record.importance_note = study_importances(study, values, searched_params(record))
    return record


class _SpaceLoader(yaml.SafeLoader):
    """SafeLoader that reads the ``!!python/tuple`` lists space.yaml holds as lists."""


_SpaceLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                             lambda loader, node: loader.construct_sequence(node))  # type: ignore[attr-defined]


def space_params(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    import os
    import tempfile

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "space.yaml", tmp)
            data = yaml.load(Path(path).read_text(), Loader=_SpaceLoader)  # noqa: S506 - a SafeLoader
    except Exception:  # noqa: BLE001 - no space file: the model falls back to varying params
        return {}
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
    params = data.get("params") if isinstance(data, dict) else None
    return {str(k): (v if isinstance(v, dict) else {}) for k, v in params.items()} if isinstance(params, dict) else {}


def model_depth(model: str | None) -> int | None:
    """Blocks of the model a search used, from its config.json (no transformers import)."""
    if not model:
        return None
    from autoft.models import resolve_model_path

    try:
        cfg = json.loads((resolve_model_path(model) / "config.json").read_text())
    except (OSError, ValueError, InputError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None
