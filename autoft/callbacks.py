"""Ray Tune callbacks that run in the driver: MLflow logging and the live status line."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from autoft.outcome import classify
from autoft.pruning import PruneAwareOptunaSearch
from autoft.recipe import RECIPE_FIELDS
from autoft.space import SearchSpace
from autoft.tracking import TRIAL_METRICS, SearchTracker, aligned_params, trial_run_name


def _error_text(trial: Any) -> str:
    try:
        path = trial.error_file
        if path:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
    except OSError:
        pass
    return str(getattr(trial, "error_msg", "") or "trial raised an error")


class TrialLog:
    """What the driver learned about each trial, keyed by Ray trial id."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def row(self, trial_id: str) -> dict[str, Any]:
        return self.rows.setdefault(trial_id, {"trial_id": trial_id, "status": "running", "history": []})


class MlflowTrialCallback(Callback):
    def __init__(self, tracker: SearchTracker, searcher: PruneAwareOptunaSearch, space: SearchSpace,
                 base_recipe: dict[str, Any], static_params: dict[str, Any], search_id: str,
                 log: TrialLog) -> None:
        self.tracker = tracker
        self.searcher = searcher
        self.space = space
        self.base_recipe = base_recipe
        self.static_params = static_params
        self.search_id = search_id
        self.log = log
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sampled = {k: v for k, v in trial.config.items() if k in self.space.params}
        recipe = {**self.base_recipe, **{k: v for k, v in trial.config.items() if k in RECIPE_FIELDS}}
        number = self.searcher.optuna_number(trial.trial_id)
        number = len(self.log.rows) if number is None else number
        params = {**aligned_params(self.space, sampled, recipe), **self.static_params}
        self.tracker.start_trial(
            trial.trial_id, trial_run_name(number, recipe), params,
            {"autoft.search_id": self.search_id, "autoft.ray_trial_id": trial.trial_id,
             "autoft.optuna_trial": str(number)})
        self._started.setdefault(trial.trial_id, time.time())
        row = self.log.row(trial.trial_id)
        row.update(number=number, params=sampled, recipe=recipe,
                   run_id=self.tracker.trial_runs[trial.trial_id])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = int(result.get("epoch") or result.get("training_iteration") or 0)
        metrics = {k: result[k] for k in TRIAL_METRICS if isinstance(result.get(k), (int, float))}
        run_id = self.tracker.trial_runs.get(trial.trial_id)
        if run_id and metrics:
            self.tracker.log_metrics(run_id, metrics, step=epoch)
        self.log.row(trial.trial_id)["history"].append({"epoch": epoch, **metrics})

    def _finish(self, trial: Any, error: bool) -> None:
        outcome = classify(trial.last_result, error, _error_text(trial) if error else "")
        row = self.log.row(trial.trial_id)
        metric = self.searcher.metric
        values = [h[metric] for h in row["history"] if metric in h]
        best = None
        summary: dict[str, float] = {"wall_seconds": time.time() - self._started.get(trial.trial_id, time.time())}
        if values and outcome.status != "failed":
            pick = max if self.searcher.mode == "max" else min
            best = pick(values)
            summary[f"best_{metric}"] = best
            summary["best_epoch"] = next(h["epoch"] for h in row["history"] if h.get(metric) == best)
        self.tracker.end_trial(trial.trial_id, outcome.status, outcome.reason, outcome.epoch, summary)
        row.update(status=outcome.status, reason=outcome.reason, epochs=outcome.epoch, best=best,
                   wall_seconds=summary["wall_seconds"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)


class StatusLineCallback(Callback):
    """One compact line per finished trial instead of Ray's status tables."""

    def __init__(self, log: TrialLog, metric: str, mode: str, echo: Any, total: int) -> None:
        self.log, self.metric, self.mode, self.echo, self.total = log, metric, mode, echo, total

    def _line(self, trial: Any) -> None:
        rows = self.log.rows.values()
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("running", "completed", "pruned", "failed")}
        bests = [r["best"] for r in rows if r.get("best") is not None]
        best = (max if self.mode == "max" else min)(bests) if bests else None
        row = self.log.rows.get(trial.trial_id, {})
        what = row.get("status", "?")
        detail = f"{self.metric}={row['best']:.4f}" if row.get("best") is not None else row.get("reason", "")
        self.echo(
            f"[t{row.get('number', '?'):>02}] {what:<9} {detail:<28} | done {len(rows) - counts['running']}/{self.total}"
            f"  completed {counts['completed']} pruned {counts['pruned']} failed {counts['failed']}"
            + (f"  best {self.metric} {best:.4f}" if best is not None else "")
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)
