"""A driver killed after telling Optuna a trial ended, but before Ray saved its state,
re-runs that trial on resume: the searcher must not tell the study twice."""

from __future__ import annotations

import optuna

from autoft.pruning import PruneAwareOptunaSearch


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)


def test_a_trial_optuna_already_ended_is_not_told_again() -> None:
    search = PruneAwareOptunaSearch(space=_space, metric="eval_f1", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
    assert search.suggest("t1") is not None
    last = {"eval_f1": 0.8, "training_iteration": 2, "epoch": 2, "epochs_total": 2}
    search.on_trial_result("t1", {"eval_f1": 0.7, "training_iteration": 1, "epoch": 1, "epochs_total": 2})
    search.on_trial_complete("t1", last)
    # As restored from Ray's older searcher state: the trial looks unfinished to it.
    search._completed_trials.discard("t1")
    search.on_trial_result("t1", {"eval_f1": 0.75, "training_iteration": 1, "epoch": 1, "epochs_total": 2})
    search.on_trial_complete("t1", last)
    search.close_unfinished(["t1"], "the search ended")
    (trial,) = search._ot_study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.8
    assert trial.intermediate_values == {1: 0.7, 2: 0.8}


def test_startup_trials_reach_the_sampler_and_default_by_search_size() -> None:
    from autoft.config import load_config
    from autoft.pruning import make_sampler

    def startup(*overrides: str) -> int:
        search = load_config(None, list(overrides)).search
        # Optuna keeps the count in a private attribute; reading it is the only way to see
        # what the sampler was built with short of running a study.
        return make_sampler(search.sampler, 0, search.resolved_startup_trials())._n_startup_trials

    assert startup() == 3  # 8 trials
    assert startup("search.time_budget_s=1h") == 10  # bounded by time only
    assert startup("search.time_budget_s=1h", "search.startup_trials=5") == 5
    assert startup("search.sampler=gp", "search.startup_trials=4") == 4
    assert startup("search.sampler=cmaes", "search.startup_trials=4") == 4
    assert startup("search.sampler=gp") == 10  # Optuna's own default
