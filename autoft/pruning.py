"""Samplers, schedulers, and the Optuna searcher that knows about pruning.

Ray 2.60's ``OptunaSearch`` tells Optuna that a trial stopped by ASHA is
COMPLETE with its early value, which makes TPE treat a one-epoch score as a
finished result and makes optuna-dashboard show no pruned trials.
:class:`PruneAwareOptunaSearch` tells such trials as PRUNED (keeping their
intermediate values) and diverged or crashed ones as FAIL.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.util import log_once

from autoft.outcome import COMPLETED, FAILED, PRUNED, classify, eval_step
from autoft.ray_state import keep_copy
from autoft.reconcile import Reconciliation, reconcile

logger = logging.getLogger(__name__)


def make_sampler(name: str, seed: int, startup_trials: int | None = None) -> Any:
    """``startup_trials``: random trials (warm starts included) before tpe, gp or cmaes model the
    results (see :meth:`autoft.config.SearchConfig.resolved_startup_trials`); None: Optuna's default."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    if name == "tpe":
        # Multivariate + group handles conditional spaces.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, **startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


TIME_ATTR = "eval_step"
# The most a tie-breaker moves a score: far below a difference between two scores that could
# matter (one example in a million changes accuracy by 1e-6), yet losses 1e-4 apart still move a
# score near 1 by ~3e-14, far above float64's resolution there (~1e-16), so they do not tie.
TIE_NUDGE = 1e-9


def make_scheduler(name: str, max_t: int, grace_period: int, reduction_factor: float,
                   unfreezes_after: Callable[[dict[str, Any], int], bool] | None = None,
                   stop_ties: bool = False, tie_breaker: str | None = None) -> Any:
    """Times count evaluations (``TIME_ATTR``), which are epochs unless ``train.evals_per_epoch``
    > 1: the trial's own count, restored from its checkpoint (Ray's ``training_iteration`` comes
    from Ray's record, which lags a trial that goes on from a newer checkpoint after a resume
    from a torn state save; see ``callbacks.ResumeRepair``).
    ``unfreezes_after(trial_config, evaluations_done)``: given for ASHA, a trial is not judged at a rung that falls just before it unfreezes more blocks
    (see :class:`UnfreezeAlignedASHA`).
    ``stop_ties``: ASHA stops a trial that only ties its rung's cutoff (see :class:`TieStoppingASHA`).
    ``tie_breaker``: a reported metric, lower better (``eval_loss``), that ranks ASHA's trials
    whose scores tie (see :meth:`TieStoppingASHA.ranked`); None or "none": ties stay ties."""
    from ray.tune.schedulers import (
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
    )

    grace = min(grace_period, max_t)
    tie_breaker = None if tie_breaker == "none" else tie_breaker
    if name == "asha" and unfreezes_after is not None:
        return UnfreezeAlignedASHA(unfreezes_after, stop_ties=stop_ties, tie_breaker=tie_breaker,
                                   time_attr=TIME_ATTR, max_t=max_t, grace_period=grace,
                                   reduction_factor=reduction_factor)
    if name == "asha":
        return TieStoppingASHA(stop_ties=stop_ties, tie_breaker=tie_breaker, time_attr=TIME_ATTR, max_t=max_t,
                               grace_period=grace, reduction_factor=reduction_factor)
    if name == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=max_t,
                                  reduction_factor=reduction_factor)
    if name == "median":
        return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=grace, min_samples_required=3)
    if name == "none":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {name!r}")


class TieStoppingASHA(ASHAScheduler):
    """Ray's ASHA with two ways to treat trials that tie: rank them by a second metric
    (``tie_breaker``, autoft's default: validation loss), or stop a trial that only equals its
    rung's cutoff (``stop_ties``, off by default).

    Ray continues a trial unless it scores *below* the cutoff, so every trial that ties
    it is promoted. In fine-tuning ties are not rare: a trial that has not yet left the
    majority class scores exactly what every other such trial scores, and once half a
    rung holds that score the cutoff is that score and all of them train on. On SST-2
    (autoft's benchmark) a third to a half of the examples before the target went to
    evaluations at that floor (TREC ties too, less often). With ``stop_ties`` a trial
    that ties is stopped, so at most the rung's top 1/reduction_factor share goes on.
    ``stop_ties=False`` is Ray's rule, and autoft's default (``pruning.stop_ties``): side by side
    on SST-2 stopping ties needed fewer examples to the target but not less time, and in a small
    search it stopped the standard recipe at its first epoch, when it still sat at the floor.
    What autoft does by default instead is rank tied trials by validation loss (``tie_breaker``,
    :meth:`ranked`), so the rung's usual share of them goes on: those whose loss has come furthest.
    """

    def __init__(self, *, stop_ties: bool = False, tie_breaker: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stop_ties = stop_ties
        self._tie_breaker = tie_breaker

    def ranked(self, result: dict) -> dict:
        """The result as the rungs rank it. With a tie-breaker (lower better, e.g. ``eval_loss``)
        the score is made worse by ``TIE_NUDGE * b / (1 + b)`` of the breaker's value ``b``: less
        than any real difference between two scores, so it orders only trials that tie, and trials
        stuck on the majority class, all at the same F1, are ranked by how far their loss has come
        instead of all going on (or, with ``stop_ties`` as well, all stopping). A result without
        a finite breaker (a diverged trial) ranks last among its ties. Ray records what this returns."""
        breaker = getattr(self, "_tie_breaker", None)  # None in a scheduler pickled before it
        if not breaker or breaker == self._metric or self._metric not in result:
            return result
        b = result.get(breaker)
        share = 1.0  # no finite loss: last among its ties
        if isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b):
            b = max(0.0, float(b))
            share = b / (1 + b)
        return {**result, self._metric: result[self._metric] - self._metric_op * TIE_NUDGE * share}

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self.ranked(result))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        result = self.ranked(result)
        cutoff = self._pending_cutoff(trial, result) if getattr(self, "_stop_ties", False) else None
        action = super().on_trial_result(tune_controller, trial, result)
        if (action == TrialScheduler.CONTINUE and cutoff is not None
                and self._metric_op * result[self._metric] <= cutoff):
            self._num_stopped += 1
            return TrialScheduler.STOP
        return action

    def _rung_to_judge(self, trial: Any, done: float) -> dict | None:
        """The record of the rung this result would be judged at (None: none would judge it):
        as Ray's bracket finds it, the highest rung reached that holds no record of the trial."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        return next((recorded for milestone, recorded in bracket._rungs
                     if done >= milestone and trial.trial_id not in recorded), None)

    def _pending_cutoff(self, trial: Any, result: dict) -> float | None:
        """The cutoff this result is about to be judged against, taken before Ray records it."""
        done = result.get(self._time_attr)
        if done is None or self._metric not in result or done >= self._max_t:
            return None
        recorded = self._rung_to_judge(trial, done)
        if not recorded:
            return None
        return self._trial_info[trial.trial_id].cutoff(recorded)


class UnfreezeAlignedASHA(TieStoppingASHA):
    """ASHA that does not judge a trial at a rung falling just before its next unfreeze.

    A gradual or step (LP-FT) schedule trains only the head and top blocks first; its
    score jumps once more blocks train. Judged at that moment against trials that
    trained everything from the start, it is cut for being early, not for being bad.
    Such a trial skips that rung once and is judged at the next epoch, against the
    same rung's cutoff. Only one skip per trial: a schedule that unfreezes every epoch
    would otherwise never be judged.
    """

    def __init__(self, unfreezes_after: Callable[[dict[str, Any], int], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._unfreezes_after = unfreezes_after
        self._skipped: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        done = result.get(self._time_attr)
        if (done is not None and self._metric in result and done < self._max_t
                and trial.trial_id not in self._skipped and self._at_rung(trial, done)
                and self._unfreezes_after(trial.config, int(done))):
            self._skipped.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _at_rung(self, trial: Any, done: float) -> bool:
        """Would the bracket judge this result (a rung reached that has no record of it)?"""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return False
        return any(done >= milestone and trial.trial_id not in recorded for milestone, recorded in bracket._rungs)


class PruneAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args: Any, num_trials: int | None = None, **kwargs: Any) -> None:
        """``num_trials``: the searcher, not Ray's trial counter, ends the search after that
        many trials (:meth:`reconcile` can correct its count after a resume; Ray's cannot be)."""
        super().__init__(*args, **kwargs)
        self._best_values: dict[str, float] = {}
        self._num_trials = num_trials
        self._orphans: list[int] = []
        self._lost_from_ray: set[str] = set()

    def restore(self, checkpoint_path: str) -> None:
        """After a driver crash, Optuna may hold trials that were asked after Ray's
        last state save: adopt them for the next new Ray trials instead of asking
        new ones, so Optuna, Ray and MLflow keep one trial each. :meth:`reconcile`
        redoes this against the trials Ray restored, when it knows them."""
        super().restore(checkpoint_path)
        self.reconcile({rid: t.number for rid, t in self._ot_trials.items()})

    def reconcile(self, restored: dict[str, int]) -> Reconciliation:
        """Agree with the trials Ray restored (Ray trial id -> Optuna number): see
        :mod:`autoft.reconcile`."""
        import optuna

        frozen = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        unfinished = {n for n, t in frozen.items() if t.state == optuna.trial.TrialState.RUNNING}
        # Trials Optuna was told the end of after this searcher's state was saved (restored from
        # an older save: a newer one was cut short, see autoft.ray_state) count toward the trials run.
        for t in frozen.values():
            rid = t.user_attrs.get("ray_trial_id")
            if t.state.is_finished() and rid and rid not in self._ot_trials:
                self._ot_trials[rid] = optuna.trial.Trial(self._ot_study, t._trial_id)
                self._completed_trials.add(rid)
        # Saved with the searcher's state: a later resume does not report them again.
        known_lost = getattr(self, "_lost_from_ray", set())  # absent in a searcher saved before it existed
        plan = reconcile(restored, {rid: t.number for rid, t in self._ot_trials.items()}, unfinished, known_lost)
        self._lost_from_ray = known_lost | set(plan.lost)
        for rid in plan.drop:
            del self._ot_trials[rid]
            self._best_values.pop(rid, None)
        for rid, number in plan.link.items():
            if number in frozen:
                self._ot_trials[rid] = optuna.trial.Trial(self._ot_study, frozen[number]._trial_id)
                # Optuna is told the trial's best epoch, those before the resume included.
                values = list(frozen[number].intermediate_values.values())
                if values:
                    self._best_values[rid] = max(values) if self.mode == "max" else min(values)
        self._orphans = plan.orphans
        return plan

    def suggest(self, trial_id: str) -> dict | str | None:
        import optuna
        from ray.tune.search import Searcher

        if trial_id not in self._ot_trials:
            limit = getattr(self, "_num_trials", None)  # absent in a searcher saved before it existed
            # Optuna trials, not Ray ids: --restart-errored gives an errored trial a new Ray id.
            if limit is not None and len({t._trial_id for t in self._ot_trials.values()}) >= limit:
                return Searcher.FINISHED
            orphans = getattr(self, "_orphans", [])
            if orphans:
                number = orphans.pop(0)
                frozen = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number)
                # Re-running define-by-run on the same Optuna trial returns its recorded params.
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result and trial_id in self._ot_trials:
            self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """Report one epoch to Optuna once, and track the trial's best value."""
        if result.get("autoft_status") == "diverged" or self.metric not in result:
            return
        value = float(result[self.metric])
        step = eval_step(result)
        ot_trial = self._ot_trials[trial_id]
        frozen = ot_trial.storage.get_trial(ot_trial._trial_id)
        if step not in frozen.intermediate_values and not frozen.state.is_finished():
            ot_trial.report(value, step)
        old = self._best_values.get(trial_id)
        if old is None or (value > old if self.mode == "max" else value < old):
            self._best_values[trial_id] = value

    def _open(self, trial_id: str) -> bool:
        """Is this one of our trials that Optuna has not been told the end of? A driver
        killed after telling Optuna but before Ray saved its state re-runs the trial on
        resume; telling the study twice would raise UpdateFinishedTrialError in Ray's loop."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return False
        ot_trial = self._ot_trials[trial_id]
        if ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return False
        return True

    def _tell(self, trial_id: str, status: str, reason: str, value: float | None, state: Any) -> None:
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        ot_trial.set_user_attr("autoft_status", status)
        if reason:
            ot_trial.set_user_attr("autoft_reason", reason)
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)

    def close_unfinished(self, trial_ids: list[str], reason: str) -> None:
        """Tell Optuna about trials the search's end cut short (Ray does not): PRUNED with the
        epochs they reported, so no trial stays RUNNING in the study."""
        import optuna

        for trial_id in filter(self._open, trial_ids):
            self._tell(trial_id, "killed", reason, None, optuna.trial.TrialState.PRUNED)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if not self._open(trial_id):
            return
        outcome = classify(result, error)
        # Ray hands the final result (and the one a scheduler stopped on) only
        # here, not to on_trial_result: record it before telling Optuna.
        if result and not error:
            self._record(trial_id, result)
        state = {COMPLETED: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED,
                 FAILED: optuna.trial.TrialState.FAIL}[outcome.status]
        value = None
        if outcome.status == COMPLETED:
            # The trial's objective is its best epoch: that is the checkpoint kept.
            value = self._best_values.get(trial_id, (result or {}).get(self.metric))
            if value is None:
                state = optuna.trial.TrialState.FAIL
        self._tell(trial_id, outcome.status, outcome.reason, value, state)


def find_in(search_alg: Any, kind: type) -> Any:
    """The ``kind`` in a chain of Ray search wrappers (each holds the next as ``.searcher``)."""
    while search_alg is not None and not isinstance(search_alg, kind):
        search_alg = getattr(search_alg, "searcher", None)
    return search_alg


def restored_numbers(trials: list[Any]) -> dict[str, int]:
    """Ray trial id -> the Optuna trial number its config carries."""
    from autoft.space import trial_number_of

    return {t.trial_id: trial_number_of(t.config) for t in trials}


class ResumableGenerator(SearchGenerator):
    """Ray's search generator, except that a resumed search asks its searcher again whether
    it is finished: the saved flag can come from a later save than Ray's trial list (see
    :mod:`autoft.reconcile`), and would then end the search before an orphaned Optuna trial
    runs. The searcher answers ``FINISHED`` again at once when it is."""

    _keep_copy_in: str | None = None
    """The search folder, where each save is also kept whole (:func:`autoft.ray_state.keep_copy`):
    Ray's own copy there can be cut short by a kill. Set by the controller, new or resumed."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._finished = False

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        if self._keep_copy_in:
            try:
                keep_copy(Path(dirpath), session_str, Path(self._keep_copy_in))
            except OSError as exc:  # a safety net: its failure must not end the search
                if log_once("autoft:keep_copy"):
                    logger.warning("could not keep a copy of Ray's saved state in %s: %s", self._keep_copy_in, exc)


class ResumableLimiter(ConcurrencyLimiter):
    """Ray's concurrency limit, able to agree with the trials Ray restored.

    Its set of live trials is saved with the searcher's state; after a torn save (see
    :mod:`autoft.reconcile`) it can hold a trial Ray never restarts, which would take a
    slot for the rest of the search, or lack one Ray does restart.
    """

    def reconcile(self, trials: list[Any]) -> Reconciliation:
        """``trials``: Ray's restored trials (their configs carry the Optuna number)."""
        self.live_trials = {t.trial_id for t in trials if not t.is_finished()}
        self.num_unfinished_live_trials = len(self.live_trials)
        return self.searcher.reconcile(restored_numbers(trials))
