"""Ray state files a kill cut short: autoft's whole copy, and the repair a resume makes. Pure
file logic on real cloudpickle and JSON files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from ray import cloudpickle

from autoft.controller import _repair_saved_state
from autoft.errors import InputError
from autoft.ray_state import (
    COPY_DIR,
    SET_ASIDE,
    apply_repair,
    is_complete,
    keep_copy,
    keep_tuner,
    plan_repair,
)

OLD, NEW = "2026-12-05_01-00-00", "2026-12-05_02-00-00"
NAMES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl")


def _save(folder: Path, session: str, cut: str | None = None, version: int = 0) -> None:
    """One Ray save: trial list, the wrappers' state, the searcher's; ``cut`` (a name pattern)
    is left as a kill mid-copy leaves it: half its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {NAMES[0]: json.dumps({"trial_data": [[session, str(version)]],
                                   "runner_data": {"_iteration": 100 * version}}).encode(),
             NAMES[1]: cloudpickle.dumps({"name:ConcurrencyLimiter": {"live": {"a"}}, "v": version}),
             NAMES[2]: cloudpickle.dumps({"_ot_trials": {"a": 0}, "x": list(range(500)), "v": version})}
    for pattern, data in files.items():
        (folder / pattern.format(session)).write_bytes(data[: len(data) // 2] if pattern == cut else data)


@pytest.fixture
def search_dir(tmp_path: Path) -> Path:
    (tmp_path / "tuner.pkl").write_bytes(cloudpickle.dumps({"tuner": 1}))
    return tmp_path


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_whole_json_and_pickles_are_complete_and_cut_ones_are_not(tmp_path: Path) -> None:
    data = cloudpickle.dumps({"a": list(range(1000))})
    (tmp_path / "whole.pkl").write_bytes(data)
    assert is_complete(tmp_path / "whole.pkl")
    for n in (0, 1, len(data) // 3, len(data) - 1):
        (tmp_path / "cut.pkl").write_bytes(data[:n])
        assert not is_complete(tmp_path / "cut.pkl"), n
    (tmp_path / "experiment_state-x.json").write_text('{"trial_data": [')
    assert not is_complete(tmp_path / "experiment_state-x.json")


def test_a_pickle_is_checked_without_being_run(tmp_path: Path) -> None:
    evil = b"cbuiltins\nexec\n(Vraise SystemExit('ran')\ntR."  # runs code when loaded
    (tmp_path / "searcher-state-x.pkl").write_bytes(evil)
    assert is_complete(tmp_path / "searcher-state-x.pkl")  # parsed only
    with pytest.raises(SystemExit):
        pickle.loads(evil)


def test_the_copy_is_each_save_whole(tmp_path: Path) -> None:
    staging, search = tmp_path / "staging", tmp_path / "search"
    search.mkdir()
    _save(staging, NEW, version=1)
    keep_copy(staging, NEW, search)
    _save(staging, NEW, version=2)  # Ray's next save overwrites the session's files
    keep_copy(staging, NEW, search)
    assert _contents(search / COPY_DIR) == _contents(staging)
    assert not list((search / COPY_DIR).glob(".*"))  # no temporary file left behind


def test_nothing_cut_short_changes_nothing(search_dir: Path) -> None:
    _save(search_dir, OLD), _save(search_dir, NEW)
    plan = plan_repair(search_dir)
    assert not plan.needed and plan.tuner == "whole" and plan.searcher_left
    assert plan.trial_list == search_dir / NAMES[0].format(NEW)


@pytest.mark.parametrize("cut", NAMES)
def test_a_save_cut_short_is_put_back_whole_from_the_copy(search_dir: Path, cut: str) -> None:
    _save(search_dir, NEW, version=1)
    _save(search_dir / COPY_DIR, NEW, version=2)  # kept whole at the save whose copy the kill cut
    _save(search_dir, NEW, cut=cut, version=2)
    plan = plan_repair(search_dir)
    assert plan.put_back == [NEW] and plan.set_aside == [] and plan.trial_list == search_dir / NAMES[0].format(NEW)
    cut_bytes = (search_dir / cut.format(NEW)).read_bytes()
    apply_repair(search_dir, plan)
    for pattern in NAMES:
        assert (search_dir / pattern.format(NEW)).read_bytes() == (search_dir / COPY_DIR / pattern.format(NEW)).read_bytes()
    assert (search_dir / (cut.format(NEW) + SET_ASIDE)).read_bytes() == cut_bytes  # kept, out of Ray's way
    assert not plan_repair(search_dir).needed


@pytest.mark.parametrize("cut", NAMES[1:])
def test_a_searcher_save_cut_short_with_no_copy_goes_whole(search_dir: Path, cut: str) -> None:
    _save(search_dir, OLD), _save(search_dir, NEW, cut=cut)
    plan = plan_repair(search_dir)
    assert [p.name for p in plan.set_aside] == [NAMES[1].format(NEW), NAMES[2].format(NEW)]
    assert plan.trial_list == search_dir / NAMES[0].format(NEW) and plan.searcher_left
    apply_repair(search_dir, plan)
    # What Ray's patterns find now: the older searcher save, and the newer trial list.
    assert sorted(p.name for p in search_dir.glob("searcher-state-*.pkl")) == [NAMES[2].format(OLD)]
    assert sorted(p.name for p in search_dir.glob("search_gen_state-*.json")) == [NAMES[1].format(OLD)]
    assert not plan_repair(search_dir).needed


def test_a_trial_list_cut_short_with_no_copy_leaves_the_older_one(search_dir: Path) -> None:
    _save(search_dir, OLD), _save(search_dir, NEW, cut=NAMES[0])
    plan = plan_repair(search_dir)
    assert [p.name for p in plan.set_aside] == [NAMES[0].format(NEW)]
    assert plan.trial_list == search_dir / NAMES[0].format(OLD) and plan.searcher_left


@pytest.mark.parametrize(("cut", "refused"), [(NAMES[0], "trial list"), (NAMES[2], "searcher state")])
def test_resume_refuses_when_no_whole_save_is_left_and_changes_nothing(search_dir: Path, cut: str,
                                                                       refused: str) -> None:
    _save(search_dir, NEW, cut=cut)
    before = _contents(search_dir)
    with pytest.raises(InputError, match=f"saved {refused} in .* was cut short .* no whole one is left"):
        _repair_saved_state(search_dir, echo=print)
    assert _contents(search_dir) == before


def test_resume_refuses_a_tuner_cut_short(search_dir: Path) -> None:
    _save(search_dir, NEW)
    (search_dir / "tuner.pkl").write_bytes(cloudpickle.dumps({"tuner": 1})[:10])
    with pytest.raises(InputError, match="tuner.pkl was cut short .* no whole copy is left"):
        _repair_saved_state(search_dir, echo=print)


def test_the_tuner_is_kept_once_while_whole_and_put_back_when_cut(search_dir: Path) -> None:
    whole = (search_dir / "tuner.pkl").read_bytes()
    _save(search_dir, NEW)
    (search_dir / "tuner.pkl").write_bytes(whole[:10])
    keep_tuner(search_dir)
    assert not (search_dir / COPY_DIR / "tuner.pkl").exists()  # a cut one is never kept
    (search_dir / "tuner.pkl").write_bytes(whole)
    keep_tuner(search_dir)
    (search_dir / "tuner.pkl").write_bytes(whole[:10])  # a resumed search's save cut it
    said: list[str] = []
    _repair_saved_state(search_dir, echo=said.append)
    assert (search_dir / "tuner.pkl").read_bytes() == whole
    assert (search_dir / ("tuner.pkl" + SET_ASIDE)).read_bytes() == whole[:10]
    assert said == [f"resume: Ray's copy of its saved state was cut short by the kill; put back whole from "
                    f"{COPY_DIR}/ (tuner.pkl)"]


def test_a_searcher_half_never_copied_is_put_back_or_its_other_half_set_aside(search_dir: Path) -> None:
    _save(search_dir, OLD), _save(search_dir, NEW)
    (search_dir / NAMES[2].format(NEW)).unlink()  # killed before Ray's copy reached it
    plan = plan_repair(search_dir)
    assert plan.put_back == [] and [p.name for p in plan.set_aside] == [NAMES[1].format(NEW)]
    _save(search_dir / COPY_DIR, NEW)
    plan = plan_repair(search_dir)
    assert plan.put_back == [NEW] and plan.set_aside == []
    apply_repair(search_dir, plan)
    assert (search_dir / NAMES[2].format(NEW)).read_bytes() == (search_dir / COPY_DIR / NAMES[2].format(NEW)).read_bytes()


def test_a_save_only_the_copy_holds_is_put_back(search_dir: Path) -> None:
    """A resumed session killed before Ray's first copy of its save: Ray would go back to the
    session before."""
    _save(search_dir, OLD), _save(search_dir / COPY_DIR, NEW)
    plan = plan_repair(search_dir)
    assert plan.put_back == [NEW] and plan.trial_list == search_dir / NAMES[0].format(NEW)


def test_a_second_repair_keeps_the_first_cut_files(search_dir: Path) -> None:
    _save(search_dir, OLD)
    for cut in (NAMES[2], NAMES[2]):
        _save(search_dir, NEW, cut=cut)
        apply_repair(search_dir, plan_repair(search_dir))
    assert sorted(p.name for p in search_dir.glob(f"searcher-state-{NEW}.pkl*")) == [
        NAMES[2].format(NEW) + SET_ASIDE, NAMES[2].format(NEW) + SET_ASIDE + ".1"]


def test_resume_says_what_it_repaired(search_dir: Path) -> None:
    _save(search_dir, OLD), _save(search_dir, NEW, cut=NAMES[2])
    said: list[str] = []
    _repair_saved_state(search_dir, echo=said.append)
    assert len(said) == 1 and said[0].startswith("resume: Ray's saved state was cut short by the kill")
    assert NAMES[2].format(NEW) in said[0]
    _save(search_dir / COPY_DIR, NEW)
    _save(search_dir, NEW, cut=NAMES[0])
    said.clear()
    _repair_saved_state(search_dir, echo=said.append)
    assert said == [f"resume: Ray's copy of its saved state was cut short by the kill; put back whole from "
                    f"{COPY_DIR}/ (save {NEW})"]


def test_a_whole_save_behind_the_copy_is_put_back(search_dir: Path) -> None:
    """Ray's background copy overtaken: its trial list from an earlier save than the copy's
    (the driver copies each save whole before Ray's copy starts). The later save wins, so a
    trial that ran to its end in between stays in Ray's record."""
    _save(search_dir, OLD)
    _save(search_dir, NEW, version=1)
    _save(search_dir / COPY_DIR, NEW, version=2)
    _save(search_dir / COPY_DIR, OLD)
    plan = plan_repair(search_dir)
    assert plan.put_back == [NEW] and plan.behind == [NEW] and plan.set_aside == [] and not plan.cut
    said: list[str] = []
    _repair_saved_state(search_dir, echo=said.append)
    assert said == [f"resume: Ray's copy of its saved state was behind the driver's last save when the kill came; "
                    f"put back whole from {COPY_DIR}/ (save {NEW})"]
    for pattern in NAMES:
        assert (search_dir / pattern.format(NEW)).read_bytes() == (search_dir / COPY_DIR / pattern.format(NEW)).read_bytes()
    assert not plan_repair(search_dir).needed


def test_a_repair_killed_part_way_is_repaired_again(search_dir: Path, monkeypatch) -> None:
    """The trial list is put back last: killed before it, the save still reads as behind."""
    from autoft import ray_state

    _save(search_dir, NEW, version=1)
    _save(search_dir / COPY_DIR, NEW, version=2)
    real, writes = ray_state._write_whole, []

    def killed_before_the_third(dst: Path, data: bytes) -> None:
        if len(writes) == 2:
            raise KeyboardInterrupt
        writes.append(dst.name)
        real(dst, data)

    monkeypatch.setattr(ray_state, "_write_whole", killed_before_the_third)
    with pytest.raises(KeyboardInterrupt):
        apply_repair(search_dir, plan_repair(search_dir))
    assert NAMES[0].format(NEW) not in writes
    monkeypatch.setattr(ray_state, "_write_whole", real)
    assert plan_repair(search_dir).behind == [NEW]
    apply_repair(search_dir, plan_repair(search_dir))
    for pattern in NAMES:
        assert (search_dir / pattern.format(NEW)).read_bytes() == (search_dir / COPY_DIR / pattern.format(NEW)).read_bytes()


def test_a_copy_behind_rays_is_left(search_dir: Path) -> None:
    """The copy can lag only when keeping it failed (a full disk): Ray's later save stays."""
    _save(search_dir, NEW, version=3)
    _save(search_dir / COPY_DIR, NEW, version=2)
    assert not plan_repair(search_dir).needed
    (search_dir / COPY_DIR / NAMES[0].format(NEW)).write_text(json.dumps({"trial_data": []}))  # no step count
    assert not plan_repair(search_dir).needed
