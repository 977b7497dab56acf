"""A resumed search's searcher agrees with the trials Ray restored (torn state saves).

The pure plan, then the searcher and the limiter applying it, on an in-memory Optuna
study (no Ray cluster). The whole path, killed and resumed, is in test_resume.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
import pytest
from ray.tune.search import Searcher

from autoft.pruning import PruneAwareOptunaSearch, ResumableLimiter
from autoft.reconcile import reconcile
from autoft.space import TRIAL_NUMBER_KEY


def test_states_that_agree_need_nothing() -> None:
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1}, {1})
    assert (plan.drop, plan.link, plan.orphans) == ([], {}, [])


def test_a_trial_only_the_searcher_knows_is_dropped_and_its_optuna_trial_runs_again() -> None:
    # The searcher's state was saved after Ray's trial list: Ray never restarts "c".
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2}, {1, 2})
    assert (plan.drop, plan.link, plan.orphans) == (["c"], {}, [2])


def test_a_trial_only_ray_knows_is_linked_to_its_optuna_trial() -> None:
    # Ray's trial list was saved after the searcher's state: "c" restarts, the searcher must follow it.
    plan = reconcile({"a": 0, "b": 1, "c": 2}, {"a": 0, "b": 1}, {2})
    assert (plan.drop, plan.link, plan.orphans) == ([], {"c": 2}, [])


def test_an_optuna_trial_asked_after_both_saves_is_an_orphan() -> None:
    plan = reconcile({"a": 0}, {"a": 0}, {0, 3, 1})
    assert plan.orphans == [1, 3]
    assert reconcile({"x": -1}, {}, set()).link == {}  # a trial without an Optuna number


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)


def _searcher(num_trials: int | None) -> PruneAwareOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return PruneAwareOptunaSearch(space=_space, metric="m", mode="max", num_trials=num_trials,
                                  sampler=optuna.samplers.RandomSampler(seed=0))


@dataclass
class _Trial:
    trial_id: str
    number: int
    finished: bool = False
    config: dict = field(init=False)

    def __post_init__(self) -> None:
        self.config = {TRIAL_NUMBER_KEY: self.number}

    def is_finished(self) -> bool:
        return self.finished


def test_the_searcher_ends_the_search_after_num_trials() -> None:
    s = _searcher(num_trials=2)
    assert isinstance(s.suggest("a"), dict) and isinstance(s.suggest("b"), dict)
    assert s.suggest("c") == Searcher.FINISHED
    assert len(s._ot_study.trials) == 2


def test_a_dropped_trial_is_taken_over_by_the_next_new_ray_trial() -> None:
    s = _searcher(num_trials=3)
    first = {rid: s.suggest(rid) for rid in ("a", "b", "c")}
    plan = s.reconcile({"a": 0, "b": 1})  # Ray restored a and b only
    assert plan.drop == ["c"] and plan.orphans == s._orphans == [2]
    again = s.suggest("d")  # counts as the third trial, and is Optuna trial 2 again
    assert again == first["c"]
    assert s.suggest("e") == Searcher.FINISHED
    assert len(s._ot_study.trials) == 3


def test_the_limiter_frees_the_slot_of_a_trial_ray_did_not_restore() -> None:
    limiter = ResumableLimiter(_searcher(num_trials=None), max_concurrent=2)
    assert limiter.suggest("a") is not None and limiter.suggest("b") is not None
    assert limiter.suggest("c") is None  # two in flight
    limiter.reconcile([_Trial("a", 0)])  # "b" was in the saved limiter, not in Ray's trials
    assert limiter.live_trials == {"a"}
    assert limiter.suggest("d") is not None


@pytest.mark.parametrize("finished", [False, True])
def test_the_limiter_counts_a_restored_trial_it_did_not_know_while_it_runs(finished: bool) -> None:
    searcher = _searcher(num_trials=None)
    limiter = ResumableLimiter(searcher, max_concurrent=2)
    searcher.suggest("x")  # asked, but saved in neither the limiter nor (below) the searcher
    searcher._ot_trials.clear()
    limiter.reconcile([_Trial("x", 0, finished=finished)])
    assert limiter.live_trials == (set() if finished else {"x"})
    assert "x" in searcher._ot_trials  # its results reach Optuna
