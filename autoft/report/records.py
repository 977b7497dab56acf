"""What a report is built from: one search's MLflow runs (and Optuna study), as plain,
JSON-able data. :mod:`autoft.report.load` fills it; :mod:`autoft.report.model` reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ABSENT = "n/a"  # autoft.space.ABSENT: a conditional parameter the trial did not sample
HISTORY_METRICS = ("epoch_seconds", "train_samples", "trainable_params", "blocks_training")
FAILED = ("failed",)  # never ranked (outcome.best_row); killed trials keep their values

# (epoch, value, timestamp in ms); epochs are the MLflow steps, or with train.evals_per_epoch > 1
# the "epoch" each step logged (0.5, 1, 1.5...)
Points = list[tuple[int | float, float, int]]


@dataclass
class TrialRecord:
    """One trial as MLflow holds it: params as logged (strings), metric histories."""

    number: int
    status: str  # completed | pruned | failed | killed | running
    params: dict[str, str]
    metrics: dict[str, Points] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)  # latest values (wall_seconds, best_*)
    reason: str = ""
    run_id: str = ""
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass
class SearchRecord:
    """One search: its parent run, its trials, and what the Optuna study adds."""

    search_id: str
    metric: str
    mode: str
    trials: list[TrialRecord]
    status: str = "completed"  # running | completed | failed | killed
    experiment: str = ""
    params: dict[str, str] = field(default_factory=dict)  # parent run: space, sampler, model...
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # space.yaml 'params'
    run_id: str = ""
    tracking_uri: str = ""
    start_ms: int | None = None
    end_ms: int | None = None
    num_layers: int | None = None
    importances: dict[str, float] | None = None
    importance_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchRecord:
        trials = [TrialRecord(**{**t, "metrics": {k: [tuple(p) for p in v] for k, v in t["metrics"].items()}})
                  for t in d["trials"]]
        return cls(**{**d, "trials": trials})
