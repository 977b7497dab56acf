"""Ray Tune callbacks that run in the driver: MLflow logging, disk janitor, trial
timeouts and the live status line.

Trials are keyed by their Optuna trial number (carried in the trial config), not by
Ray's trial id, so a resumed search that re-creates a lost Ray trial for the same
Optuna trial continues the same MLflow run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from autoft.best_checkpoint import trial_folder
from autoft.outcome import as_epoch, best_row, classify, eval_step
from autoft.recipe import RECIPE_FIELDS
from autoft.space import SearchSpace, trial_number_of
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


def trial_number(trial: Any) -> int:
    return trial_number_of(trial.config)


class TrialLog:
    """What the driver knows about each trial, keyed by Optuna trial number."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def row(self, number: int) -> dict[str, Any]:
        return self.rows.setdefault(number, {"number": number, "status": "running", "history": []})

    def in_order(self) -> list[dict[str, Any]]:
        """Rows by trial number: the order ``outcome.best_row`` breaks ties in, so the janitor
        and the controller agree on which trial leads."""
        return [self.rows[n] for n in sorted(self.rows)]

    def load_from_mlflow(self, tracker: SearchTracker, space: SearchSpace, metric: str) -> None:
        """A resumed search starts with what its trials reported before the interruption:
        the finished ones whole, the unfinished ones (Ray resumes them from a checkpoint)
        with the evaluations they reported, so their best counts even if it came before
        the interruption."""
        client = tracker.client
        for key, run_id in tracker.trial_runs.items():
            run = client.get_run(run_id)
            status = run.data.tags.get("autoft.status", "")
            history: dict[int, dict[str, Any]] = {}
            for name in (metric, "epoch_seconds", "train_samples", "epoch"):
                for m in client.get_metric_history(run_id, name):
                    history.setdefault(m.step, {"epoch": m.step, "step": m.step})[name] = as_epoch(
                        m.value) if name == "epoch" else m.value
            params = {k: _parse(v) for k, v in run.data.params.items() if k in RECIPE_FIELDS}
            row = self.rows[int(key)] = {
                "number": int(key), "trial_id": run.data.tags.get("autoft.ray_trial_id"), "status": "running",
                "params": {k: v for k, v in params.items() if k in space.params and v != "n/a"},
                "recipe": {k: v for k, v in params.items() if v != "n/a"}, "run_id": run_id,
                "history": [history[s] for s in sorted(history)],
            }
            if status in ("completed", "pruned", "failed"):
                row.update(status=status, reason=run.data.tags.get("autoft.reason", ""),
                           epochs=as_epoch(run.data.tags.get("autoft.last_epoch")),
                           best=run.data.metrics.get(f"best_{metric}"),
                           wall_seconds=run.data.metrics.get("wall_seconds"))


def _parse(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    if v == "None":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


class MlflowTrialCallback(Callback):
    def __init__(self, tracker: SearchTracker, space: SearchSpace, base_recipe: dict[str, Any],
                 static_params: dict[str, Any], search_id: str, metric: str, mode: str, log: TrialLog) -> None:
        self.tracker = tracker
        self.space = space
        self.base_recipe = base_recipe
        self.static_params = static_params
        self.search_id = search_id
        self.metric, self.mode = metric, mode
        self.log = log
        self._started: dict[int, float] = {}
        self.reasons: dict[str, str] = {}  # ray trial id -> why the driver ended it (timeouts)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial_number(trial)
        sampled = {k: v for k, v in trial.config.items() if k in self.space.params}
        recipe = {**self.base_recipe, **{k: v for k, v in trial.config.items() if k in RECIPE_FIELDS}}
        params = {**aligned_params(self.space, sampled, recipe), **self.static_params}
        run_id = self.tracker.start_trial(
            str(number), trial_run_name(number, recipe), params,
            {"autoft.search_id": self.search_id, "autoft.ray_trial_id": trial.trial_id,
             "autoft.optuna_trial": str(number)})
        self._started.setdefault(number, time.time())
        row = self.log.row(number)
        row.update(trial_id=trial.trial_id, params=sampled, recipe=recipe, run_id=run_id, status="running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        number = trial_number(trial)
        epoch = as_epoch(result.get("epoch") or result.get("training_iteration"))
        # The MLflow step is the evaluation's number: the epoch, unless train.evals_per_epoch > 1,
        # which then also logs "epoch" (0.5, 1, 1.5...) to plot against.
        step = eval_step(result)
        metrics = {k: result[k] for k in TRIAL_METRICS if isinstance(result.get(k), (int, float))}
        if metrics and step != epoch:
            metrics["epoch"] = epoch
        run_id = self.tracker.trial_runs.get(str(number))
        if run_id and metrics:
            self.tracker.log_metrics(run_id, metrics, step=step)
        history = self.log.row(number)["history"]
        # A resumed trial repeats the evaluations after its last checkpoint: keep the newest.
        history[:] = [h for h in history if h["step"] != step] + [
            {**metrics, "epoch": epoch, "step": step}]

    def _finish(self, trial: Any, error: bool) -> None:
        text = self.reasons.get(trial.trial_id) or (_error_text(trial) if error else "")
        outcome = classify(trial.last_result, error, text)
        self._close(trial_number(trial), outcome.status, outcome.reason, outcome.epoch)

    def _close(self, number: int, status: str, reason: str, epoch: int | float) -> None:
        row = self.log.row(number)
        step = max((h["step"] for h in row["history"]), default=int(epoch))
        values = [h[self.metric] for h in row["history"] if self.metric in h]
        best = None
        summary: dict[str, float] = {"wall_seconds": time.time() - self._started.get(number, time.time())}
        if values and status != "failed":
            best = (max if self.mode == "max" else min)(values)
            summary[f"best_{self.metric}"] = best
            summary["best_epoch"] = next(h["epoch"] for h in row["history"] if h.get(self.metric) == best)
        self.tracker.end_trial(str(number), status, reason, epoch, summary, step=step)
        row.update(status=status, reason=reason, epochs=epoch, best=best, wall_seconds=summary["wall_seconds"])

    def close_unfinished(self, reason: str) -> list[str]:
        """End, as killed, the trials a finished search left running (its time budget ran
        out): Ray tells no callback about them. Their epochs so far stay ranked, since each
        came with a checkpoint. Returns their Ray trial ids."""
        ended = []
        for number, row in self.log.rows.items():
            if row["status"] != "running" or str(number) not in self.tracker.trial_runs:
                continue
            epoch = max((as_epoch(h["epoch"]) for h in row["history"]), default=0)
            self._close(number, "killed", f"{reason} (after epoch {epoch})" if epoch else reason, epoch)
            if row.get("trial_id"):
                ended.append(row["trial_id"])
        return ended

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Ray retries the trial from its last checkpoint (search.max_failures): say why."""
        number = trial_number(trial)
        reason = self.reasons.pop(trial.trial_id, "") or classify(None, True, _error_text(trial)).reason
        row = self.log.row(number)
        row["retries"] = row.get("retries", 0) + 1
        run_id = self.tracker.trial_runs.get(str(number))
        if run_id:
            self.tracker.set_tags(run_id, {"autoft.retries": row["retries"], "autoft.last_error": reason})


class PrunedCheckpointJanitor(Callback):
    """A pruned trial never resumes: free its checkpoints (bounded disk), except while it
    leads the search: ASHA judges a trial against its rung, so a trial it stops may still
    hold the best evaluation of the search, and that checkpoint is the one exported."""

    def __init__(self, log: TrialLog, search_dir: Path, metric: str, mode: str) -> None:
        self.log, self.search_dir, self.metric, self.mode = log, search_dir, metric, mode
        # Pruned trials whose checkpoints may still be on disk (a resumed search's included).
        self._held = {n for n, r in log.rows.items() if r.get("status") == "pruned"}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial_number(trial)
        if self.log.row(number).get("status") == "pruned":
            self._held.add(number)
        self.free_overtaken()

    def free_overtaken(self) -> None:
        if not self._held:
            return
        leader = best_row(self.log.in_order(), self.metric, self.mode)
        for number in sorted(self._held):
            row = self.log.rows[number]
            if row is leader:
                continue
            self._held.discard(number)
            for ckpt in trial_folder(self.search_dir, row.get("trial_id")).glob("checkpoint_*"):
                shutil.rmtree(ckpt, ignore_errors=True)


class TrialTimeout(Callback):
    """Ends a trial that runs longer than ``timeout_s``, even one that hangs and
    never reports: the driver kills its actor, and Ray records the trial as errored."""

    def __init__(self, timeout_s: float, mlflow_cb: MlflowTrialCallback) -> None:
        self.timeout_s = timeout_s
        self.mlflow_cb = mlflow_cb
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = time.time()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = time.time()  # each attempt gets the full timeout

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        import ray

        now = time.time()
        for trial in trials:
            started = self._started.get(trial.trial_id)
            if trial.status != "RUNNING" or started is None or now - started < self.timeout_s:
                continue
            actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
            if actor is not None and trial.trial_id not in self.mlflow_cb.reasons:
                self.mlflow_cb.reasons[trial.trial_id] = f"timed out after {self.timeout_s:g}s (search.trial_timeout_s)"
                ray.kill(actor, no_restart=True)


class ResumeRepair(Callback):
    """Once, before a resumed search starts any trial: make the searcher agree with the
    trials Ray restored (see :mod:`autoft.reconcile`), and give a restored trial whose last
    checkpoint is gone (Ray's saved state was older than the trial's files; Ray keeps only
    ``search.keep_checkpoints``) an empty stand-in, which the trial sees as torn and so
    continues from its newest complete checkpoint (``ray_trainable.usable_checkpoint``)
    instead of Ray failing it (numbering its next checkpoints after that one)."""

    def __init__(self, search_alg: Any, echo: Any) -> None:
        self.search_alg, self.echo = search_alg, echo
        self._done = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._done:
            return
        self._done = True
        self._reconcile(trials)
        for trial in trials:
            if trial.is_finished():
                continue
            missing = _recorded_checkpoints(trial)
            for path in missing:
                # Ray would fail the trial on the latest, and raise when it rotates out the others.
                path.mkdir(parents=True, exist_ok=True)
            if trial.checkpoint is not None and Path(trial.checkpoint.path) in missing:
                self.echo(f"resume: t{trial_number(trial):02d}'s last checkpoint {Path(trial.checkpoint.path).name} "
                          "is gone (Ray's saved state is older than its files); it goes on from its newest complete one")
            self._settle_ahead(trial)

    def _settle_ahead(self, trial: Any) -> None:
        """The killed run may have written checkpoint folders past Ray's record of the trial.
        If the trial goes on from one of them (its recorded last one is gone or torn; see
        ``ray_trainable.usable_checkpoint``), its next checkpoints are numbered after that
        one; otherwise Ray would write them into those folders (files of two runs mixed),
        so they go now. The one it goes on from stays (it may hold the trial's best
        evaluation, which Ray's record lacks) until the finished search drops trial folders."""
        from autoft.checkpoint import is_complete, newest_complete

        ahead = _checkpoints_ahead(trial)
        resumes_from = None
        if ahead and trial.checkpoint is not None and not is_complete(trial.checkpoint.path):
            # The folder the worker's usable_checkpoint() will pick, if it is one of these.
            newest = newest_complete(trial.path)
            resumes_from = newest if newest in ahead else None
        for path in ahead:
            if path != resumes_from:
                shutil.rmtree(path, ignore_errors=True)
        if resumes_from is not None:
            trial.storage.current_checkpoint_index = checkpoint_index(resumes_from.name)
            trial.invalidate_json_state()

    def _reconcile(self, trials: list) -> None:
        from autoft.pruning import (
            PruneAwareOptunaSearch,
            ResumableLimiter,
            find_in,
            restored_numbers,
        )

        limiter, searcher = find_in(self.search_alg, ResumableLimiter), find_in(self.search_alg, PruneAwareOptunaSearch)
        if searcher is None:
            return
        # A search saved before the limiter has Ray's own, which cannot be reached: the searcher only.
        plan = limiter.reconcile(trials) if limiter is not None else searcher.reconcile(restored_numbers(trials))
        if plan.torn:
            self.echo(f"resume: Ray's saved trials and the searcher's state came from different saves; "
                      f"{len(plan.drop)} trial(s) Ray did not keep, {len(plan.link)} the searcher did not know: "
                      "Ray's trials win" + (f"; Optuna trial(s) {', '.join(map(str, plan.orphans))} run again "
                                            "from the start" if plan.orphans else "")
                      + (f"; {len(plan.lost)} trial(s) that finished after Ray's save ({', '.join(plan.lost)}) "
                         "stay in MLflow and the Optuna study but not in Ray's record" if plan.lost else ""))


def checkpoint_index(name: str) -> int:
    """The number in Ray's ``checkpoint_NNNNNN`` folder name; -1 for any other name."""
    prefix, _, number = name.partition("_")
    return int(number) if prefix == "checkpoint" and number.isdigit() else -1


def _checkpoints_ahead(trial: Any) -> list[Path]:
    """The trial's checkpoint folders numbered past Ray's record of it: written
    by the killed run after the state Ray restored was saved."""
    index = getattr(getattr(trial, "storage", None), "current_checkpoint_index", None)
    if index is None or not trial.path:
        return []
    return [p for p in Path(trial.path).glob("checkpoint_*") if checkpoint_index(p.name) > index]


def _recorded_checkpoints(trial: Any) -> list[Path]:
    """The trial's checkpoints Ray's record names that are not on disk. Ray keeps the record
    in a private manager; without it (another Ray), only the latest is checked."""
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    results = list(getattr(manager, "best_checkpoint_results", None) or [])
    paths = [Path(r.checkpoint.path) for r in results if getattr(r, "checkpoint", None) is not None]
    if trial.checkpoint is not None:
        paths.append(Path(trial.checkpoint.path))
    return sorted({p for p in paths if not p.exists()})


class StatusLineCallback(Callback):
    """One compact line per finished trial instead of Ray's status tables."""

    def __init__(self, log: TrialLog, metric: str, mode: str, echo: Any, total: int | None) -> None:
        self.log, self.metric, self.mode, self.echo, self.total = log, metric, mode, echo, total

    def _line(self, trial: Any) -> None:
        rows = self.log.rows.values()
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("running", "completed", "pruned", "failed")}
        bests = [r["best"] for r in rows if r.get("best") is not None]
        best = (max if self.mode == "max" else min)(bests) if bests else None
        row = self.log.rows.get(trial_number(trial), {})
        what = row.get("status", "?")
        detail = f"{self.metric}={row['best']:.4f}" if row.get("best") is not None else row.get("reason", "")[:60]
        self.echo(
            f"[t{row.get('number', '?'):>02}] {what:<9} {detail:<28} | done {len(rows) - counts['running']}"
            + (f"/{self.total}" if self.total else "")
            + f"  completed {counts['completed']} pruned {counts['pruned']} failed {counts['failed']}"
            + (f"  best {self.metric} {best:.4f}" if best is not None else "")
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)
