"""Make a resumed search's searcher agree with the trials Ray restored.

Ray Tune saves its trial list and the searcher's state one after the other into a staging
folder, and a background thread copies them to storage; the next save can overtake that
copy. A driver killed at the wrong moment thus leaves a trial list and a searcher state from
different saves. Left alone, a resumed search then runs fewer trials than asked (the searcher
counts a trial Ray never restarts), leaves an Optuna trial RUNNING for ever, or sends a
restored trial's results nowhere. Ray's trial list wins, since those are the trials that run
again; the Optuna study (a transactional database) says which trials were asked.

Pure: no Ray, no Optuna objects, only ids and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Reconciliation:
    drop: list[str] = field(default_factory=list)
    """Ray trial ids the searcher holds for an unfinished Optuna trial but Ray did not restore:
    forget them. (One whose Optuna trial was told stays: it counts toward the trials run.)"""
    link: dict[str, int] = field(default_factory=dict)
    """Ray trial id -> Optuna trial number, for restored trials the searcher does not hold."""
    orphans: list[int] = field(default_factory=list)
    """Unfinished Optuna trials no restored trial runs: the next new Ray trials take them
    over (same parameters), in number order, before any new trial is asked."""
    lost: list[str] = field(default_factory=list)
    """Ray trial ids of trials that ran to their end (Optuna told, MLflow recorded) after
    Ray's restored trial list was saved: Ray's record has lost them and they are not run again
    (they count toward the trials run). Seen only when autoft's own copy of the newest save
    is behind too (:mod:`autoft.ray_state` puts it back otherwise). Those an earlier resume
    already reported are left out: Ray's record never gets them back."""
    torn: bool = False
    """The two states came from different saves. (A link to a finished Optuna trial alone is
    ``--restart-errored``: Ray gives an errored trial a new id for the same Optuna trial.)"""


def reconcile(restored: dict[str, int], held: dict[str, int], unfinished: set[int],
              known_lost: frozenset[str] | set[str] = frozenset()) -> Reconciliation:
    """``restored``: every trial Ray restored, Ray trial id -> the Optuna number in its config.
    ``held``: the searcher's own map, Ray trial id -> Optuna number. ``unfinished``: numbers of
    the study's trials that were asked and never told. ``known_lost``: ``lost`` ids an earlier
    resume reported."""
    plan = Reconciliation(drop=sorted(rid for rid in set(held) - set(restored) if held[rid] in unfinished))
    plan.link = {rid: num for rid, num in restored.items() if rid not in held and num >= 0}
    kept = {num for rid, num in held.items() if rid not in plan.drop} | set(plan.link.values())
    plan.orphans = sorted(unfinished - kept)
    # (--restart-errored: the old id's Optuna trial runs again under a new id, so is not lost.)
    plan.lost = sorted(rid for rid in set(held) - set(restored) - set(known_lost)
                       if held[rid] not in unfinished and held[rid] not in restored.values())
    plan.torn = bool(plan.drop or plan.lost) or any(num in unfinished for num in plan.link.values())
    return plan

