"""A resumed search's searcher agrees with the trials Ray restored (torn state saves).

The pure plan, then the searcher and the limiter applying it, on an in-memory Optuna
study (no Ray cluster). The whole path, killed and resumed, is in test_resume.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import optuna
import pytest
from ray.tune.search import Searcher

from autoft.pruning import PruneAwareOptunaSearch, ResumableGenerator, ResumableLimiter
from autoft.reconcile import reconcile
from autoft.space import TRIAL_NUMBER_KEY


def test_states_that_agree_need_nothing() -> None:
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1}, {1})
    assert (plan.drop, plan.link, plan.orphans, plan.torn) == ([], {}, [], False)


def test_a_trial_only_the_searcher_knows_is_dropped_and_its_optuna_trial_runs_again() -> None:
    # The searcher's state was saved after Ray's trial list: Ray never restarts "c".
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2}, {1, 2})
    assert (plan.drop, plan.link, plan.orphans, plan.torn) == (["c"], {}, [2], True)


def test_a_trial_only_the_searcher_knows_that_optuna_was_told_of_stays_counted() -> None:
    # "c" was created, ran and ended between the two saves: dropping it would ask one trial too
    # many. Ray's record has lost it, which the resume says.
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2}, {1})
    assert (plan.drop, plan.link, plan.orphans, plan.lost, plan.torn) == ([], {}, [], ["c"], True)


def test_a_trial_only_ray_knows_is_linked_to_its_optuna_trial() -> None:
    # Ray's trial list was saved after the searcher's state: "c" restarts, the searcher must follow it.
    plan = reconcile({"a": 0, "b": 1, "c": 2}, {"a": 0, "b": 1}, {2})
    assert (plan.drop, plan.link, plan.orphans, plan.torn) == ([], {"c": 2}, [], True)


def test_a_lost_trial_an_earlier_resume_reported_is_not_reported_again() -> None:
    plan = reconcile({"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2}, set(), known_lost={"c"})
    assert (plan.lost, plan.torn) == ([], False)


def test_restart_errored_is_not_a_torn_save() -> None:
    # --restart-errored: Ray gives errored "b" (Optuna told FAIL) a new id "b2" for the same trial.
    plan = reconcile({"a": 0, "b2": 1}, {"a": 0, "b": 1}, set())
    assert (plan.drop, plan.link, plan.orphans, plan.lost, plan.torn) == ([], {"b2": 1}, [], [], False)


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


def test_a_restarted_trial_does_not_count_twice() -> None:
    s = _searcher(num_trials=3)
    s.suggest("a"), s.suggest("b")
    s.reconcile({"a": 0, "b2": 1})  # "b" kept (as if told), "b2" linked to the same Optuna trial
    assert isinstance(s.suggest("c"), dict)  # the third trial, not one too many
    assert s.suggest("d") == Searcher.FINISHED
    assert len(s._ot_study.trials) == 3


def test_a_told_trial_counts_though_neither_ray_nor_the_searcher_kept_it() -> None:
    """A searcher whose saved state was cut short (autoft.ray_state) starts from none, with Ray's
    trial list older than the study: a trial told since still counts toward num_trials."""
    s = _searcher(num_trials=3)
    s.suggest("a"), s.suggest("b")
    s.on_trial_complete("b", {"m": 0.6, "training_iteration": 1})
    s._ot_trials.clear(), s._completed_trials.clear(), s._best_values.clear()  # no saved state
    s.reconcile({"a": 0})  # Ray's list predates "b"
    assert isinstance(s.suggest("c"), dict)  # the third trial
    assert s.suggest("d") == Searcher.FINISHED
    assert len(s._ot_study.trials) == 3
    s.on_trial_complete("b", {"m": 0.9, "training_iteration": 2})  # told once only: no error
    assert s._ot_study.trials[1].value == 0.6


def test_a_trial_lost_from_rays_record_is_reported_once_and_counts() -> None:
    """Told before the kill, missing from the Ray save the resume started from (autoft's copy
    behind too): reported, counted, not run again; the next resume, which still lacks it in
    Ray's record, does not call its saves torn for it."""
    import pickle

    s = _searcher(num_trials=3)
    s.suggest("a"), s.suggest("b"), s.suggest("c")
    s.on_trial_complete("c", {"m": 0.6, "training_iteration": 1})
    plan = s.reconcile({"a": 0, "b": 1})
    assert (plan.lost, plan.torn) == (["c"], True)
    assert s.suggest("d") == Searcher.FINISHED  # "c" counts: no fourth trial
    saved = pickle.loads(pickle.dumps(s._lost_from_ray))  # saved with the searcher's state
    s._lost_from_ray = saved
    again = s.reconcile({"a": 0, "b": 1})
    assert (again.lost, again.torn) == ([], False)


def test_a_linked_trial_keeps_its_best_epoch_from_before_the_resume() -> None:
    s = _searcher(num_trials=None)
    s.suggest("a")
    s.on_trial_result("a", {"m": 0.7, "training_iteration": 1})
    s.on_trial_result("a", {"m": 0.5, "training_iteration": 2})
    s._ot_trials.clear(), s._best_values.clear()  # the searcher's state predates "a"
    s.reconcile({"a": 0})
    assert s._best_values["a"] == 0.7


def test_a_resumed_generator_asks_its_searcher_again_whether_it_is_finished() -> None:
    gen = ResumableGenerator(ResumableLimiter(_searcher(num_trials=1), max_concurrent=1))
    state = gen.get_state()
    # Ray runs num_samples=-1 (the searcher counts); "finished" was saved after Ray's trial
    # list, which may lack the last trial.
    state.update(total_samples=sys.maxsize, finished=True)
    gen.set_state(state)
    assert not gen.is_finished()


@dataclass
class _Storage:
    current_checkpoint_index: int


@dataclass
class _Checkpoint:
    path: str


@dataclass
class _RestoredTrial:
    trial_id: str
    path: str
    storage: _Storage
    checkpoint: _Checkpoint | None = None
    config: dict = field(default_factory=lambda: {TRIAL_NUMBER_KEY: 0})

    def is_finished(self) -> bool:
        return False

    def invalidate_json_state(self) -> None:
        pass


def _folders(root, *indices: int, complete: bool = True) -> None:
    from autoft.checkpoint import STATE_FILE

    for i in indices:
        d = root / f"checkpoint_{i:06d}"
        d.mkdir()
        if complete:
            (d / STATE_FILE).write_text("{}")
            (d / "model.safetensors").write_bytes(b"")


def _on_disk(root) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in root.glob("checkpoint_*"))


def _resume(trial: _RestoredTrial):
    from autoft.callbacks import ResumeRepair

    repair = ResumeRepair(search_alg=None, echo=lambda *_: None)
    repair.on_step_begin(0, [trial])
    return repair


def test_a_trial_going_on_from_a_folder_past_rays_record_numbers_its_next_checkpoints_after_it(tmp_path) -> None:
    """Ray's saved record is older than the killed run's folders and its last checkpoint is
    gone: the trial goes on from the newest complete folder, so its next checkpoints are
    numbered after it (Ray would write them into the killed run's folders); the folder is the
    one the worker picks (``usable_checkpoint``)."""
    from autoft.ray_trainable import usable_checkpoint

    _folders(tmp_path, 3, 4)
    _folders(tmp_path, 5, complete=False)  # torn by the kill
    trial = _RestoredTrial("t1", str(tmp_path), _Storage(2), _Checkpoint(str(tmp_path / "checkpoint_000002")))
    _resume(trial)
    assert trial.storage.current_checkpoint_index == 4
    assert _on_disk(tmp_path) == [2, 4]  # 2: the empty stand-in Ray's record names
    with pytest.warns(UserWarning, match="torn"):
        assert usable_checkpoint(tmp_path / "checkpoint_000002") == tmp_path / "checkpoint_000004"


def test_a_trial_going_on_from_rays_record_drops_the_folders_past_it(tmp_path) -> None:
    _folders(tmp_path, 2, 3, 4)
    trial = _RestoredTrial("t1", str(tmp_path), _Storage(2), _Checkpoint(str(tmp_path / "checkpoint_000002")))
    _resume(trial)
    assert trial.storage.current_checkpoint_index == 2
    assert _on_disk(tmp_path) == [2]


def test_a_trial_in_step_with_its_folders_keeps_rays_numbering(tmp_path) -> None:
    _folders(tmp_path, 3)
    trial = _RestoredTrial("t1", str(tmp_path), _Storage(3), _Checkpoint(str(tmp_path / "checkpoint_000003")))
    _resume(trial)
    assert trial.storage.current_checkpoint_index == 3
    assert _on_disk(tmp_path) == [3]
