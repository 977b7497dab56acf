"""Ray Tune's saved state in a search folder: a whole copy kept, and a resume repaired with it.

Ray saves its trial list and its searcher's state to a staging folder, then copies them into
the search folder in a background thread, each file written in place. A driver killed during
that copy leaves a file cut short (seen: an empty searcher state). Ray, resuming, then logs
"Failed to restore the run state", starts the experiment afresh and ends the search with
trials missing, as if it had finished. So autoft keeps its own copy of each save, written
whole or not at all (:func:`keep_copy`, on the driver, at each save); a resume puts back the
save a kill cut short from it (or a later save than Ray's copy reached: Ray's background copy
can fall behind), and where there is none, sets the cut files aside (renamed,
never deleted) so that Ray resumes from its newest whole save, which :mod:`autoft.reconcile`
squares with the Optuna study.

Pure file logic: no Ray, and nothing is unpickled (pickles are only parsed).
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENT = ("experiment_state-", ".json")  # Ray's trial list: JSON
SEARCH_GENERATOR = ("search_gen_state-", ".json")  # the search wrappers' state: cloudpickle, despite the name
SEARCHER = ("searcher-state-", ".pkl")
SAVE = (EXPERIMENT, SEARCH_GENERATOR, SEARCHER)  # one save, in the order Ray writes it
TUNER = "tuner.pkl"
COPY_DIR = "ray_state_copy"
SET_ASIDE = ".torn"


def is_complete(path: Path) -> bool:
    """Does the file hold a whole JSON document or a whole pickle? A pickle is walked opcode by
    opcode to its STOP without running any of it."""
    data = path.read_bytes()
    if not data:
        return False
    if path.name.startswith(EXPERIMENT[0]):
        try:
            json.loads(data)
        except ValueError:
            return False
        return True
    return _whole_pickle(data)


def _whole_pickle(data: bytes) -> bool:
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # ValueError, or others on bytes cut mid-opcode
        return False
    return bool(data)


def _iteration(trial_list: Path) -> int | None:
    """The controller's step count Ray saves with its trial list: it only grows within a
    session, so of two saves of one session the one with more steps is the later."""
    try:
        value = json.loads(trial_list.read_bytes())["runner_data"]["_iteration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _later(a: Path, b: Path) -> bool:
    ia, ib = _iteration(a), _iteration(b)
    return ia is not None and ib is not None and ia > ib


def _name(kind: tuple[str, str], session: str) -> str:
    return f"{kind[0]}{session}{kind[1]}"


def _session(path: Path, kind: tuple[str, str]) -> str | None:
    prefix, suffix = kind
    name = path.name
    return name[len(prefix):-len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else None


def _files(folder: Path, kind: tuple[str, str]) -> list[Path]:
    return sorted(folder.glob(_name(kind, "*")))


def _write_whole(dst: Path, data: bytes) -> None:
    """Write ``dst`` whole or not at all: a file beside it, renamed over it."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def keep_copy(staging: Path, session: str, search_dir: Path) -> None:
    """After Ray wrote a save to its staging folder: copy it to the search folder's
    :data:`COPY_DIR`, each file whole. (A kill between two files leaves the new trial list
    with the searcher's state of the save before, never older than Ray's own copy: a resume
    puts it back and :mod:`autoft.reconcile` links the trials the searcher lacks.)"""
    target = search_dir / COPY_DIR
    target.mkdir(exist_ok=True)
    for kind in SAVE:
        src = staging / _name(kind, session)
        if src.is_file():
            _write_whole(target / src.name, src.read_bytes())
    keep_tuner(search_dir)


def keep_tuner(search_dir: Path) -> None:
    """Copy ``tuner.pkl`` once, while whole: it never changes after the search starts, but
    once resumed Ray rewrites it in place at every save (it is among the files Ray copies into
    its staging folder on resume), where a kill can cut it short too."""
    kept, tuner = search_dir / COPY_DIR / TUNER, search_dir / TUNER
    if kept.is_file() or not tuner.is_file():
        return
    data = tuner.read_bytes()
    if _whole_pickle(data):
        kept.parent.mkdir(exist_ok=True)
        _write_whole(kept, data)


@dataclass
class Repair:
    put_back: list[str] = field(default_factory=list)
    """Sessions whose save a kill cut short (or left half-written), put back whole from
    :data:`COPY_DIR`."""
    set_aside: list[Path] = field(default_factory=list)
    """Files cut short with no whole copy, and the other half of such a searcher save."""
    trial_list: Path | None = None
    """The trial list Ray will resume from once repaired (None: no whole one is left)."""
    searcher_left: bool = True
    """Is a whole searcher save left? Without one Ray's restored search generator has no
    experiment to make trials from: it ends the search with trials missing."""
    tuner: str = "whole"
    """``tuner.pkl``: "whole", "put back" (cut short, whole in the copy) or "cut"."""
    cut: set[Path] = field(default_factory=set)
    """Every file found cut short (their bytes are kept beside when put back)."""
    behind: list[str] = field(default_factory=list)
    """Sessions among ``put_back`` whose files in the folder were whole but from an earlier
    save than the copy: Ray's background copy had not caught up when the driver died."""

    @property
    def needed(self) -> bool:
        return bool(self.put_back or self.set_aside or self.tuner == "put back")


def plan_repair(search_dir: Path) -> Repair:
    """What :func:`apply_repair` would do; changes nothing."""
    plan = Repair()
    tuner, copies = search_dir / TUNER, search_dir / COPY_DIR
    if not (tuner.is_file() and is_complete(tuner)):
        kept = copies / TUNER
        plan.tuner = "put back" if kept.is_file() and is_complete(kept) else "cut"
        plan.cut.add(tuner)
    files = {kind: _files(search_dir, kind) for kind in SAVE}
    torn = {p for kind in SAVE for p in files[kind] if not is_complete(p)}
    plan.cut |= torn
    present = {kind: {_session(p, kind) for p in files[kind]} for kind in SAVE}
    # A save is damaged if a file of it is cut short, or missing (a kill before Ray's copy
    # reached it): Ray would pair a searcher half with another save's, or resume from an older
    # save than the copy holds.
    half_missing = present[SEARCH_GENERATOR] ^ present[SEARCHER]
    cut_searchers = {_session(p, kind) for kind in SAVE[1:] for p in torn} | half_missing
    in_copy = {_session(p, EXPERIMENT) for p in _files(copies, EXPERIMENT)}
    damaged = ({_session(p, kind) for kind in SAVE for p in torn} | half_missing
               | {s for s in in_copy if any(s not in present[kind] for kind in SAVE)})
    # Whole in both places, but Ray's copy behind: each save is copied whole into COPY_DIR on
    # the driver before Ray starts its own copy, which a later save can overtake (its trial
    # list then older than its searcher state, see autoft.reconcile). The newer save wins, so
    # no trial that ran between the two is left out of Ray's record.
    behind = {s for s in in_copy - damaged
              if _later(copies / _name(EXPERIMENT, s), search_dir / _name(EXPERIMENT, s))}
    for session in sorted((damaged | behind) - {None}):
        kept = [copies / _name(kind, session) for kind in SAVE]
        if all(p.is_file() and is_complete(p) for p in kept):
            plan.put_back.append(session)
            if session in behind:
                plan.behind.append(session)
    # With no whole copy: cut files go, and a searcher save's two files go together.
    cut_searchers -= set(plan.put_back)
    for kind in SAVE:
        for p in files[kind]:
            session = _session(p, kind)
            if session not in plan.put_back and (p in torn or (kind != EXPERIMENT and session in cut_searchers)):
                plan.set_aside.append(p)
    # Ray reads the newest of each kind by name (the session's start time).
    whole = [p for p in files[EXPERIMENT] if p not in torn]
    whole += [search_dir / _name(EXPERIMENT, s) for s in plan.put_back]
    plan.trial_list = max(whole, default=None)
    plan.searcher_left = bool(plan.put_back) or any(p not in plan.set_aside for p in files[SEARCH_GENERATOR])
    return plan


def apply_repair(search_dir: Path, plan: Repair) -> None:
    """A put-back file is copied whole over the one in the folder (a cut one's bytes are kept
    beside first); files cut short with no copy are renamed out of Ray's way. A kill part-way
    leaves a folder the next resume repairs the same way."""
    copies = search_dir / COPY_DIR
    put_back = [TUNER] if plan.tuner == "put back" else []
    # The trial list last: a kill part-way leaves it older than the copy's, so the next resume
    # still finds the save behind (or cut) and puts it back again.
    put_back += [_name(kind, session) for session in plan.put_back for kind in (*SAVE[1:], SAVE[0])]
    for name in put_back:
        path = search_dir / name
        if path in plan.cut:
            shutil.copyfile(path, _aside(path))
        _write_whole(path, (copies / name).read_bytes())
    for path in plan.set_aside:
        path.replace(_aside(path))


def _aside(path: Path) -> Path:
    """``NAME.torn``, or ``NAME.torn.N`` if an earlier repair already set one aside."""
    target, n = path.with_name(path.name + SET_ASIDE), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{SET_ASIDE}.{n}")
    return target
