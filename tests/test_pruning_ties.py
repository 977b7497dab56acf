"""TieStoppingASHA against Ray's own ASHA bookkeeping, with hand-made trials and results."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from autoft.pruning import TIME_ATTR, TieStoppingASHA, make_scheduler

pytestmark = pytest.mark.ray

CONTINUE, STOP = "CONTINUE", "STOP"
MAJORITY = 0.3348  # macro-F1 of a binary classifier that predicts one class


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def scheduler(stop_ties: bool = True, mode: str = "max", aligned: bool = False):
    oracle = (lambda config, done: False) if aligned else None
    s = make_scheduler("asha", max_t=6, grace_period=1, reduction_factor=2, unfreezes_after=oracle,
                       stop_ties=stop_ties)
    s.set_search_properties("m", mode)
    return s


def feed(s, trial: FakeTrial, done: int, value: float) -> str:
    return s.on_trial_result(None, trial, {TIME_ATTR: done, "m": value})


def trials(s, *names: str) -> list[FakeTrial]:
    out = [FakeTrial(n) for n in names]
    for t in out:
        s.on_trial_add(None, t)
    return out


@pytest.mark.parametrize("aligned", [False, True])
def test_trials_stuck_on_the_majority_class_are_not_all_promoted(aligned: bool) -> None:
    s = scheduler(aligned=aligned)
    assert isinstance(s, TieStoppingASHA)
    a, b, c, d = trials(s, "a", "b", "c", "d")
    assert feed(s, a, 1, MAJORITY) == CONTINUE  # first at the rung: nothing to judge it by
    assert feed(s, b, 1, MAJORITY) == STOP  # ties the cutoff (a's score)
    assert feed(s, c, 1, 0.61) == CONTINUE  # beats it
    assert feed(s, d, 1, MAJORITY) == STOP  # the median of the rung is still the floor
    assert s._num_stopped == 2


def test_rays_rule_promotes_every_tie() -> None:
    s = scheduler(stop_ties=False)
    a, b, c, d = trials(s, "a", "b", "c", "d")
    assert [feed(s, t, 1, v) for t, v in ((a, MAJORITY), (b, MAJORITY), (c, 0.61), (d, MAJORITY))] == [
        CONTINUE, CONTINUE, CONTINUE, CONTINUE]


def test_only_results_at_a_rung_are_judged() -> None:
    s = scheduler()
    a, b = trials(s, "a", "b")
    feed(s, a, 1, 0.70)
    feed(s, b, 1, 0.80)
    # Rungs at 1, 2 and 4 evaluations: at 3 nobody is judged, a tie there goes on.
    assert feed(s, b, 2, 0.80) == CONTINUE
    assert feed(s, a, 2, 0.80) == STOP  # ties b at rung 2
    assert feed(s, b, 3, 0.80) == CONTINUE
    # The last evaluation ends the trial whatever it scores, as in Ray's ASHA.
    assert feed(s, b, 6, 0.10) == STOP


def test_ties_are_stopped_when_lower_is_better() -> None:
    s = scheduler(mode="min")
    a, b, c = trials(s, "a", "b", "c")
    assert feed(s, a, 1, 0.69) == CONTINUE
    assert feed(s, b, 1, 0.69) == STOP
    assert feed(s, c, 1, 0.50) == CONTINUE


def test_the_default_is_rays_rule() -> None:
    from autoft.config import PruningConfig

    assert PruningConfig().stop_ties is False
    s = make_scheduler("asha", max_t=6, grace_period=1, reduction_factor=2)
    s.set_search_properties("m", "max")
    a, b = trials(s, "a", "b")
    assert [feed(s, a, 1, MAJORITY), feed(s, b, 1, MAJORITY)] == [CONTINUE, CONTINUE]


def loss_ranked(mode: str = "max", metric: str = "m", aligned: bool = False):
    oracle = (lambda config, done: False) if aligned else None
    s = make_scheduler("asha", max_t=6, grace_period=1, reduction_factor=2, unfreezes_after=oracle,
                       tie_breaker="eval_loss")
    s.set_search_properties(metric, mode)
    return s


def feed_loss(s, trial: FakeTrial, done: int, value: float, loss: float) -> str:
    return s.on_trial_result(None, trial, {TIME_ATTR: done, "m": value, "eval_loss": loss})


@pytest.mark.parametrize("aligned", [False, True])
def test_ties_are_ranked_by_validation_loss(aligned: bool) -> None:
    s = loss_ranked(aligned=aligned)
    a, b, c, d = trials(s, "a", "b", "c", "d")
    assert feed_loss(s, a, 1, MAJORITY, 0.69) == CONTINUE  # first at the rung
    assert feed_loss(s, b, 1, MAJORITY, 0.71) == STOP  # same F1, loss further behind a's
    assert feed_loss(s, c, 1, MAJORITY, 0.60) == CONTINUE  # same F1, loss ahead of the rung's median
    # Any real difference in score outranks the loss, however large.
    assert feed_loss(s, d, 1, MAJORITY + 1e-4, 50.0) == CONTINUE


def test_a_completed_trial_is_recorded_as_ranked() -> None:
    s = loss_ranked()
    a, b = trials(s, "a", "b")
    s.on_trial_complete(None, a, {TIME_ATTR: 1, "m": MAJORITY, "eval_loss": 0.5})
    # Ahead of a on loss: were a recorded unranked, at its exact F1, b's ranked score would be lower.
    assert feed_loss(s, b, 1, MAJORITY, 0.4) == CONTINUE


def test_losses_close_together_still_rank() -> None:
    s = loss_ranked()
    a, b = trials(s, "a", "b")
    assert feed_loss(s, a, 1, MAJORITY, 0.6931) == CONTINUE
    assert feed_loss(s, b, 1, MAJORITY, 0.6932) == STOP


def test_a_result_without_a_usable_breaker_ranks_last_among_its_ties() -> None:
    s = loss_ranked()
    tied = {"m": MAJORITY, "eval_loss": 50.0}
    for loss in (None, float("nan"), float("inf"), "0.5", True):
        result = {"m": MAJORITY} if loss is None else {"m": MAJORITY, "eval_loss": loss}
        assert s.ranked(result)["m"] < s.ranked(tied)["m"] < MAJORITY, loss
    assert s.ranked({"m": MAJORITY + 1e-6})["m"] > MAJORITY  # still above a real lower score
    a, b = trials(s, "a", "b")
    assert feed_loss(s, a, 1, MAJORITY, 0.69) == CONTINUE
    assert s.on_trial_result(None, b, {TIME_ATTR: 1, "m": MAJORITY}) == STOP  # diverged: no loss


def test_the_breaker_is_ignored_when_it_is_the_metric() -> None:
    s = loss_ranked(mode="min", metric="eval_loss")
    result = {TIME_ATTR: 1, "eval_loss": 0.6}
    assert s.ranked(result) is result
    s = loss_ranked()
    result = {TIME_ATTR: 1, "eval_loss": 0.6}  # no score to rank
    assert s.ranked(result) is result


def test_without_a_breaker_ties_all_go_on() -> None:
    s = scheduler(stop_ties=False)
    a, b = trials(s, "a", "b")
    assert [feed_loss(s, a, 1, MAJORITY, 0.5), feed_loss(s, b, 1, MAJORITY, 0.9)] == [CONTINUE, CONTINUE]


def test_the_default_ranks_ties_by_loss() -> None:
    from autoft.config import PruningConfig, load_config

    assert load_config(None, ["pruning.tie_breaker=none"]).pruning.tie_breaker == "none"
    s = make_scheduler("asha", max_t=6, grace_period=1, reduction_factor=2, tie_breaker=PruningConfig().tie_breaker)
    s.set_search_properties("m", "max")
    a, b = trials(s, "a", "b")
    assert [feed_loss(s, a, 1, MAJORITY, 0.5), feed_loss(s, b, 1, MAJORITY, 0.9)] == [CONTINUE, STOP]
    s = make_scheduler("asha", max_t=6, grace_period=1, reduction_factor=2, tie_breaker="none")
    s.set_search_properties("m", "max")
    a, b = trials(s, "a", "b")
    assert [feed_loss(s, a, 1, MAJORITY, 0.5), feed_loss(s, b, 1, MAJORITY, 0.9)] == [CONTINUE, CONTINUE]
