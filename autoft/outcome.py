"""How a trial ended, decided from its last result, and which trial leads: pure
functions shared by the Optuna searcher, the MLflow callback, the checkpoint janitor
and the leaderboard, so they never disagree about which trials were pruned or which
one the search will pick."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COMPLETED, PRUNED, FAILED = "completed", "pruned", "failed"


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | pruned | failed
    reason: str
    epoch: int | float  # epochs done at the last report (0 = none; 0.5 with train.evals_per_epoch 2)


def classify(result: dict[str, Any] | None, error: bool, error_text: str = "") -> Outcome:
    result = result or {}
    epoch = as_epoch(result.get("epoch"))
    if error:
        first = (error_text or "trial raised an error").strip().splitlines()
        return Outcome(FAILED, _last_meaningful(first) if first else "trial raised an error", epoch)
    if result.get("autoft_status") == "diverged":
        return Outcome(FAILED, str(result.get("autoft_reason") or "loss became NaN/inf"), epoch)
    total = as_epoch(result.get("epochs_total"))
    if epoch == 0:
        return Outcome(PRUNED, "stopped before its first evaluation", 0)
    if total and epoch < total:
        return Outcome(PRUNED, f"pruned at epoch {epoch}", epoch)
    return Outcome(COMPLETED, "", epoch)


def row_best(row: dict[str, Any], metric: str, mode: str) -> float | None:
    """A trial's best value so far: its closing summary once it ended, else the best
    evaluation it has reported (a running trial's best can only improve)."""
    if row.get("best") is not None:
        return row["best"]
    values = [h[metric] for h in row.get("history", ()) if h.get(metric) is not None]
    return (max if mode == "max" else min)(values) if values else None


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The trial the search picks: the best value of any trial that did not fail, pruned
    and time-cut ones included; ties go to the earliest of ``rows``."""
    scored = [(v, r) for r in rows if r.get("status") != FAILED and (v := row_best(r, metric, mode)) is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda vr: vr[0])[1]


def eval_step(result: dict[str, Any]) -> int:
    """The result's evaluation number, 1-based: the MLflow and Optuna step (the epoch,
    unless train.evals_per_epoch > 1)."""
    return int(result.get("eval_step") or result.get("training_iteration") or result.get("epoch") or 0)


def as_epoch(value: Any) -> int | float:
    """Epochs as a number that prints the way it reads: 2, not 2.0; 0.5 stays 0.5."""
    try:
        x = float(value or 0)
    except (TypeError, ValueError):
        return 0
    return int(x) if x.is_integer() else x


def _last_meaningful(lines: list[str]) -> str:
    """The exception line of a traceback (its last non-empty line), not 'Traceback ...'."""
    for line in reversed(lines):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")):
            return line[:500]
    return lines[0][:500]
