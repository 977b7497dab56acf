"""Search reports: one self-contained HTML page per search, and a live view of it.

Three layers, in one direction:

1. **load** (I/O): MLflow runs + the Optuna study -> :class:`SearchRecord`, plain
   JSON-able data (:func:`load_search`);
2. **model** (pure): :class:`SearchRecord` -> :class:`ReportModel`: leaderboard,
   best-so-far, learning curves, parallel coordinates, freezing schedules, best
   config (:func:`build_model`); :func:`study_importances` turns a study into
   importances;
3. **render**: :class:`ReportModel` -> HTML with plotly figures and the template in
   ``dashboards/`` (:func:`render_html`).

:func:`write_report` runs all three and logs the page to the search's parent run;
:func:`make_server` serves the page live, rebuilt on request.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoft.errors import InputError
from autoft.outcome import as_epoch
from autoft.recipe import RECIPE_FIELDS, Recipe
from autoft.resources import shared_dir

DASHBOARDS_DIR = shared_dir("dashboards")
ABSENT = "n/a"  # autoft.space.ABSENT: a conditional parameter the trial did not sample
HISTORY_METRICS = ("epoch_seconds", "train_samples", "trainable_params", "blocks_training")
MIN_IMPORTANCE_TRIALS = 3
STATUS_COLORS = {"completed": "#2b6cb0", "pruned": "#dd6b20", "failed": "#c53030",
                 "killed": "#718096", "running": "#38a169"}
BEST_COLOR = "#6b46c1"
FAILED = ("failed",)  # never ranked (outcome.best_row); killed trials keep their values

# (epoch, value, timestamp in ms); epochs are the MLflow steps, or with train.evals_per_epoch > 1
# the "epoch" each step logged (0.5, 1, 1.5...)
Points = list[tuple[int | float, float, int]]


# --------------------------------------------------------------------------- records


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


# --------------------------------------------------------------------------- model


@dataclass
class Row:
    number: int
    label: str
    status: str
    reason: str
    value: float | None
    best_epoch: int | None
    epochs_run: int
    epochs_total: int | None
    params: dict[str, Any]  # searched params, parsed; ABSENT where not sampled
    trainable_params: float | None
    compute_seconds: float
    train_samples: float
    wall_seconds: float | None
    run_id: str
    rank: int | None = None
    is_best: bool = False


@dataclass
class Curve:
    number: int
    label: str
    status: str
    epochs: list[int]
    values: list[float]
    is_best: bool = False


@dataclass
class Evaluation:
    """One epoch of one trial on the search's compute axis."""

    number: int
    epoch: int
    cum_seconds: float
    cum_samples: float
    value: float | None
    best: float | None


@dataclass
class Dimension:
    """One axis of the parallel coordinates: numeric (maybe log) or categorical."""

    name: str
    kind: str  # float | log | int | choice
    values: list[Any]  # parsed; ABSENT where not sampled


@dataclass
class FreezeGrid:
    """Which parts train in which epoch: rows top (head) to bottom (embeddings)."""

    number: int
    label: str
    value: float | None
    rows: list[str]
    epochs: list[int]  # 1-based
    cells: list[list[int | None]]  # cells[row][epoch]: 1 trains, 0 frozen, None not run
    logged_blocks: list[float | None]  # blocks_training as the trial logged it, per epoch


@dataclass
class ReportModel:
    search_id: str
    experiment: str
    metric: str
    mode: str
    status: str
    generated_at: str
    facts: list[tuple[str, str]]
    counts: dict[str, int]
    rows: list[Row]
    searched: list[str]
    best: Row | None
    by_trial: list[tuple[int, float, float, str]]  # (number, value, best so far, status)
    by_compute: list[Evaluation]
    curves: list[Curve]
    importances: dict[str, float] | None
    importance_note: str
    dimensions: list[Dimension]
    dimension_rows: list[Row]  # the trials drawn in the parallel coordinates
    freezing: list[FreezeGrid]
    freezing_note: str
    best_config: dict[str, Any]
    best_config_yaml: str
    notes: list[str]


def parse_param(v: Any) -> Any:
    """A logged param string back to a value: '0.0004' -> float, '2' -> int, 'None' -> None."""
    if not isinstance(v, str):
        return v
    if v == ABSENT:
        return ABSENT
    if v in ("True", "False", "true", "false"):
        return v.lower() == "true"
    if v in ("None", "null"):
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    if f.is_integer() and "." not in v and "e" not in v.lower() and "inf" not in v.lower():
        return int(f)
    return f


def fmt(v: Any) -> str:
    """A value for a person: 4.01e-04, 0.6342, 12, n/a, -."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) < 1e-2:
            return f"{v:.2e}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _valid_points(trial: TrialRecord, metric: str) -> Points:
    """The trial's objective per epoch, without the placeholder a diverged epoch reports
    (logged with no epoch_seconds, which every epoch that ran has) and non-finite values."""
    points = trial.metrics.get(metric, [])
    timed = {s for s, _, _ in trial.metrics.get("epoch_seconds", [])}
    latest: dict[int, tuple[int, float, int]] = {}
    for step, value, ts in points:
        if (timed or trial.status in FAILED) and step not in timed:
            continue
        if not math.isfinite(value):
            continue
        if step not in latest or ts >= latest[step][2]:
            latest[step] = (step, value, ts)  # a resumed trial repeats epochs: keep the newest
    return [latest[s] for s in sorted(latest)]


def _per_step(trial: TrialRecord, name: str) -> dict[int, float]:
    out: dict[int, tuple[float, int]] = {}
    for step, value, ts in trial.metrics.get(name, []):
        if step not in out or ts >= out[step][1]:
            out[step] = (value, ts)
    return {s: v for s, (v, _) in out.items()}


def _trial_value(trial: TrialRecord, metric: str, mode: str) -> tuple[float | None, int | None]:
    if trial.status in FAILED:
        return None, None  # the search never picks a failed trial (outcome.best_row)
    points = _valid_points(trial, metric)
    if not points:
        v = trial.summary.get(f"best_{metric}")
        return (v, None) if v is not None and math.isfinite(v) else (None, None)
    best = points[0]
    for p in points[1:]:
        if _better(p[1], best[1], mode):
            best = p
    return best[1], best[0]


def searched_params(record: SearchRecord) -> list[str]:
    """The space's params; without space.yaml, the recipe fields that vary across trials."""
    if record.space:
        order = {name: i for i, name in enumerate(RECIPE_FIELDS)}
        return sorted(record.space, key=lambda n: (order.get(n, len(order)), n))
    names = []
    for name in RECIPE_FIELDS:
        values = {t.params.get(name) for t in record.trials if name in t.params}
        if len(values) > 1:
            names.append(name)
    return names


def recipe_of(params: dict[str, str]) -> dict[str, Any]:
    """The trial's recipe from its logged params; inactive conditionals left out (defaults)."""
    return {k: parse_param(params[k]) for k in RECIPE_FIELDS if k in params and params[k] != ABSENT}


def build_model(record: SearchRecord, now: float | None = None, top_k: int = 3) -> ReportModel:
    """Everything the page shows, from a search's records. Pure: no I/O."""
    now = time.time() if now is None else now
    metric, mode = record.metric, record.mode
    searched = searched_params(record)
    notes: list[str] = []
    trials = sorted(record.trials, key=lambda t: t.number)

    rows = [_row(t, record, searched, now) for t in trials]
    ranked = sorted([r for r in rows if r.value is not None], key=lambda r: r.value,  # type: ignore[arg-type, return-value]
                    reverse=(mode == "max"))
    for i, r in enumerate(ranked, 1):
        r.rank = i
    best = ranked[0] if ranked else None
    if best is not None:
        best.is_best = True
    rows_sorted = ranked + [r for r in rows if r.value is None]
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("completed", "pruned", "failed", "killed", "running")}

    by_trial: list[tuple[int, float, float, str]] = []
    running_best: float | None = None
    for r in rows:
        if r.value is None:
            continue
        if running_best is None or _better(r.value, running_best, mode):
            running_best = r.value
        by_trial.append((r.number, r.value, running_best, r.status))

    curves = []
    for t, r in zip(trials, rows):
        pts = _valid_points(t, metric)
        if pts:
            curves.append(Curve(t.number, r.label, t.status, [p[0] for p in pts], [p[1] for p in pts], r.is_best))

    dimension_rows = [r for r in rows if r.value is not None]
    dimensions = [_dimension(name, [r.params.get(name, ABSENT) for r in dimension_rows], record.space.get(name))
                  for name in searched]

    num_layers = record.num_layers or _infer_num_layers(trials)
    freezing: list[FreezeGrid] = []
    freezing_note = ""
    if num_layers is None:
        freezing_note = "The model's depth is unknown (no model config and no blocks_training metric)."
    else:
        by_number = {t.number: t for t in trials}
        for r in ranked[:top_k]:
            grid = _freeze_grid(by_number[r.number], r, num_layers)
            if grid is None:
                notes.append(f"{r.label}: its params do not make a valid recipe; no freezing schedule drawn.")
            else:
                freezing.append(grid)
        if not ranked:
            freezing_note = "No trial has an objective value yet."
        elif record.num_layers is None:
            freezing_note = f"Model depth {num_layers} inferred from the blocks_training metric."

    best_config: dict[str, Any] = {}
    best_yaml = "# no trial has an objective value yet\n"
    if best is not None:
        best_trial = next(t for t in trials if t.number == best.number)
        best_config = recipe_of(best_trial.params)
        best_yaml = _config_yaml(best, best_config, searched, best_trial.params, metric)

    if record.importances is None and not record.importance_note:
        importance_note = "No Optuna study was found for this search."
    else:
        importance_note = record.importance_note

    facts = _facts(record, counts, now)
    return ReportModel(
        search_id=record.search_id, experiment=record.experiment, metric=metric, mode=mode,
        status=record.status, generated_at=dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S"),
        facts=facts, counts=counts, rows=rows_sorted, searched=searched, best=best, by_trial=by_trial,
        by_compute=compute_axis(trials, metric, mode), curves=curves, importances=record.importances,
        importance_note=importance_note, dimensions=dimensions, dimension_rows=dimension_rows,
        freezing=freezing, freezing_note=freezing_note, best_config=best_config, best_config_yaml=best_yaml,
        notes=notes,
    )


def _row(t: TrialRecord, record: SearchRecord, searched: list[str], now: float) -> Row:
    value, best_epoch = _trial_value(t, record.metric, record.mode)
    pts = _valid_points(t, record.metric)
    seconds = _per_step(t, "epoch_seconds")
    samples = _per_step(t, "train_samples")
    trainable = _per_step(t, "trainable_params")
    epochs_total = parse_param(t.params.get("epochs"))
    wall = t.summary.get("wall_seconds")
    if wall is None and t.start_ms is not None:
        end = t.end_ms if t.end_ms else now * 1000
        wall = max(0.0, (end - t.start_ms) / 1000)
    return Row(
        number=t.number, label=f"t{t.number:02d}", status=t.status, reason=t.reason, value=value,
        best_epoch=best_epoch, epochs_run=max([p[0] for p in pts] + list(seconds) + [0]),
        epochs_total=epochs_total if isinstance(epochs_total, int) else None,
        params={n: parse_param(t.params.get(n, ABSENT)) for n in searched},
        trainable_params=max(trainable.values()) if trainable else None,
        compute_seconds=sum(seconds.values()), train_samples=sum(samples.values()),
        wall_seconds=wall, run_id=t.run_id,
    )


def compute_axis(trials: list[TrialRecord], metric: str, mode: str) -> list[Evaluation]:
    """Every evaluated epoch of every trial in the order it happened, with the training
    compute spent so far (sum of epoch_seconds and train_samples) and the best value then.
    Failed trials spend compute but never count as best."""
    events = []
    for t in trials:
        values = {s: v for s, v, _ in _valid_points(t, metric)}
        seconds, samples = _per_step(t, "epoch_seconds"), _per_step(t, "train_samples")
        stamps = {s: ts for s, _, ts in t.metrics.get(metric, [])}
        stamps.update({s: ts for s, _, ts in t.metrics.get("epoch_seconds", [])})
        for step in sorted(set(values) | set(seconds)):
            events.append((stamps.get(step, 0), t.number, step, seconds.get(step, 0.0), samples.get(step, 0.0),
                           None if t.status in FAILED else values.get(step)))
    events.sort()
    out: list[Evaluation] = []
    cum_s = cum_n = 0.0
    best: float | None = None
    for _, number, step, s, n, value in events:
        cum_s += s
        cum_n += n
        if value is not None and (best is None or _better(value, best, mode)):
            best = value
        out.append(Evaluation(number, step, cum_s, cum_n, value, best))
    return out


def _spec_kind(spec: dict[str, Any] | None) -> str | None:
    """A space entry's kind, in the logged form ({kind: float, log: true}) or the file form ({float: [..]})."""
    if not spec:
        return None
    if spec.get("kind") in ("float", "int", "choice"):
        return str(spec["kind"])
    return next((k for k in ("float", "int", "choice") if k in spec), None)


def _dimension(name: str, values: list[Any], spec: dict[str, Any] | None) -> Dimension:
    present = [v for v in values if v != ABSENT]
    numeric = bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    declared = _spec_kind(spec)
    if declared == "choice" or not numeric:
        return Dimension(name, "choice", values)
    if spec and spec.get("log"):
        kind = "log"
    elif declared == "int" or (declared is None and all(isinstance(v, int) for v in present)):
        kind = "int"
    elif declared is None and min(present) > 0 and max(present) / min(present) >= 100:
        kind = "log"
    else:
        kind = "float"
    if kind == "log" and min(present) <= 0:
        kind = "float"
    return Dimension(name, kind, values)


def _infer_num_layers(trials: list[TrialRecord]) -> int | None:
    """Depth from what trials logged: blocks trained + blocks frozen (exact for the
    schedule 'none'; a lower bound otherwise)."""
    exact, bound = None, None
    for t in trials:
        blocks = _per_step(t, "blocks_training")
        if not blocks:
            continue
        frozen = parse_param(t.params.get("num_frozen_layers", 0))
        depth = int(max(blocks.values())) + (frozen if isinstance(frozen, int) else 0)
        if t.params.get("unfreeze_schedule", "none") == "none":
            exact = max(exact or 0, depth)
        bound = max(bound or 0, depth)
    return exact or bound or None


def _freeze_grid(t: TrialRecord, r: Row, num_layers: int) -> FreezeGrid | None:
    from autoft.freezing import plan_for_epoch

    try:
        recipe = Recipe.from_dict(recipe_of(t.params))
    except (InputError, TypeError, ValueError):
        return None
    rows = ["head"] + [f"block {i}" for i in range(num_layers - 1, -1, -1)] + ["embeddings"]
    cells: list[list[int | None]] = [[] for _ in rows]
    run = r.epochs_run
    logged = _per_step(t, "blocks_training")
    for e in range(recipe.epochs):
        if e + 1 > run:
            for col in cells:
                col.append(None)
            continue
        plan = plan_for_epoch(recipe, num_layers, e)
        cells[0].append(1)
        for i in range(num_layers):
            cells[1 + (num_layers - 1 - i)].append(1 if i in plan.training_blocks else 0)
        cells[-1].append(1 if plan.embeddings_train else 0)
    return FreezeGrid(t.number, r.label, r.value, rows, list(range(1, recipe.epochs + 1)), cells,
                      [logged.get(e) for e in range(1, recipe.epochs + 1)])


def _config_yaml(best: Row, config: dict[str, Any], searched: list[str], params: dict[str, str],
                 metric: str) -> str:
    lines = [f"# best trial {best.label}: {metric} {fmt(best.value)}"
             + (f" at epoch {best.best_epoch}" if best.best_epoch else "")
             + (f"; MLflow run {best.run_id}" if best.run_id else "")]
    skipped = [n for n in searched if params.get(n) == ABSENT]
    if skipped:
        lines.append(f"# not sampled by this trial (conditional): {', '.join(skipped)}")
    lines.append("# paste into a config file: autoft train my.yaml")
    body = yaml.safe_dump({"params": config}, sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


def _facts(record: SearchRecord, counts: dict[str, int], now: float) -> list[tuple[str, str]]:
    p = record.params
    done = sum(counts[s] for s in ("completed", "pruned", "failed", "killed"))
    planned = p.get("num_trials")
    trials = f"{done}/{planned} done" if planned else f"{done} done"
    parts = [f"{counts[s]} {s}" for s in ("completed", "pruned", "failed", "killed", "running") if counts[s]]
    facts = [("objective", f"{record.metric} ({record.mode})"), ("trials", f"{trials}: " + ", ".join(parts) if parts else trials)]
    for key, label in (("space", "space"), ("sampler", "sampler"), ("scheduler", "pruning")):
        if key in p:
            facts.append((label, p[key]))
    if "model" in p:
        facts.append(("model", Path(p["model"]).name or p["model"]))
    if "dataset" in p:
        n = f" ({p['n_train']} train / {p['n_validation']} validation)" if "n_train" in p and "n_validation" in p else ""
        facts.append(("data", (Path(p["dataset"]).name or p["dataset"]) + n))
    if record.start_ms:
        end = record.end_ms if record.end_ms and record.status != "running" else now * 1000
        facts.append(("started", dt.datetime.fromtimestamp(record.start_ms / 1000).strftime("%Y-%m-%d %H:%M")))
        facts.append(("wall time", _duration((end - record.start_ms) / 1000)))
    return facts


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# --------------------------------------------------------------------------- Optuna


def study_importances(study: Any, values: dict[int, float], searched: list[str]) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances over the study's COMPLETE trials, scored with the values the
    report shows (``values``: trial number -> objective); a note when they can't be had."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    n = len(complete)
    if n < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} completed trials; "
                      f"this search has {n}.")
    in_all = set.intersection(*(set(t.params) for t in complete))
    left_out = [p for p in searched if p not in in_all and any(p in t.params for t in complete)]

    def target(t: Any) -> float:
        v = values.get(t.number, t.value)
        return float(v if v is not None else float("nan"))

    try:
        raw = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=target)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"Optuna could not compute importances: {exc}"
    imp = {k: float(v) for k, v in raw.items()}
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        return None, "Optuna could not compute importances (every completed trial scored the same)."
    note = f"fANOVA over {n} completed trials (pruned and failed ones are not used)."
    if n < 10:
        note += " With this few trials, read them as a rough guide."
    if left_out:
        note += f" Left out, not sampled in every trial (conditional): {', '.join(left_out)}."
    return imp, note


# --------------------------------------------------------------------------- load


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def optuna_storage_url(parent_tags: dict[str, str], storage: str | Path | None) -> str | None:
    """The study's sqlite file: beside the search folder (tag autoft.storage), else in --storage."""
    candidates = []
    if parent_tags.get("autoft.storage"):
        candidates.append(Path(parent_tags["autoft.storage"]).parent / "optuna.db")
    if storage is not None:
        candidates.append(Path(storage).expanduser() / "optuna.db")
    for c in candidates:
        if c.is_file():
            return f"sqlite:///{c.resolve()}"
    return None


def find_study(tracking_uri: str | None, name: str, storage: str | Path | None) -> tuple[str | None, str]:
    """(Optuna storage URL or None, study name) of a search, via its MLflow parent run when
    there is one (the study is named by search id), else ``storage/optuna.db`` and ``name``."""
    tags: dict[str, str] = {}
    if tracking_uri:
        from autoft.leaderboard import find_search_run

        try:
            tags = find_search_run(_client(tracking_uri), name).data.tags
        except InputError:
            tags = {}
    return optuna_storage_url(tags, storage), tags.get("autoft.search_id", name)


_STORAGES: dict[str, Any] = {}


def _load_study(url: str, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    return optuna.load_study(study_name=name, storage=_STORAGES[url])


def load_search(tracking_uri: str, name: str, storage: str | Path | None = None) -> SearchRecord:
    """Read a search (by id, or by name: its newest) from MLflow and its Optuna study."""
    from autoft.leaderboard import find_search_run

    client = _client(tracking_uri)
    parent = find_search_run(client, name)
    tags, params = parent.data.tags, parent.data.params
    search_id = tags.get("autoft.search_id", parent.info.run_name)
    metric, mode = params.get("metric", "eval_f1"), params.get("mode", "max")
    exp = client.get_experiment(parent.info.experiment_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50000)
    trials = []
    for i, run in enumerate(children):
        t = run.data.tags
        status = t.get("autoft.status") or {"RUNNING": "running", "FAILED": "failed",
                                            "KILLED": "killed"}.get(run.info.status, "completed")
        metrics = {}
        for key in (metric, *HISTORY_METRICS):
            if key in run.data.metrics:
                metrics[key] = [(int(m.step), float(m.value), int(m.timestamp))
                                for m in client.get_metric_history(run.info.run_id, key)]
        if "epoch" in run.data.metrics:  # several evaluations per epoch: steps count evaluations
            epoch_of = {int(m.step): as_epoch(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")}
            metrics = {k: [(epoch_of.get(s, s), v, ts) for s, v, ts in pts] for k, pts in metrics.items()}
        trials.append(TrialRecord(
            number=int(t.get("autoft.optuna_trial", -1 - i)), status=status, params=dict(run.data.params),
            metrics=metrics, summary={k: v for k, v in run.data.metrics.items() if k not in HISTORY_METRICS},
            reason=t.get("autoft.reason", ""), run_id=run.info.run_id, start_ms=run.info.start_time,
            end_ms=run.info.end_time))
    record = SearchRecord(
        search_id=search_id, metric=metric, mode=mode, trials=trials,
        status=tags.get("autoft.status") or parent.info.status.lower(), experiment=exp.name,
        params=dict(params), space=_space_params(client, parent.info.run_id), run_id=parent.info.run_id,
        tracking_uri=tracking_uri, start_ms=parent.info.start_time, end_ms=parent.info.end_time,
        num_layers=model_depth(params.get("model")),
    )
    url = optuna_storage_url(tags, storage)
    if url is None:
        record.importance_note = "No Optuna study found (optuna.db beside the search folder or in --storage)."
        return record
    try:
        study = _load_study(url, search_id)
    except KeyError:
        record.importance_note = f"No Optuna study named {search_id} in {url}."
        return record
    values = {}
    for t in trials:
        v, _ = _trial_value(t, metric, mode)
        if v is not None:
            values[t.number] = v
    record.importances, record.importance_note = study_importances(study, values, searched_params(record))
    return record


class _SpaceLoader(yaml.SafeLoader):
    """SafeLoader that reads the ``!!python/tuple`` lists space.yaml holds as lists."""


_SpaceLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                             lambda loader, node: loader.construct_sequence(node))  # type: ignore[attr-defined]


def _space_params(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    import os
    import tempfile

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "space.yaml", tmp)
            data = yaml.load(Path(path).read_text(), Loader=_SpaceLoader)  # noqa: S506 - a SafeLoader
    except Exception:  # noqa: BLE001 - no space file: the model falls back to varying params
        return {}
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
    params = data.get("params") if isinstance(data, dict) else None
    return {str(k): (v if isinstance(v, dict) else {}) for k, v in params.items()} if isinstance(params, dict) else {}


def model_depth(model: str | None) -> int | None:
    """Blocks of the model a search used, from its config.json (no transformers import)."""
    if not model:
        return None
    from autoft.models import resolve_model_path

    try:
        cfg = json.loads((resolve_model_path(model) / "config.json").read_text())
    except (OSError, ValueError, InputError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


# --------------------------------------------------------------------------- render


def _layout(**kw: Any) -> dict[str, Any]:
    base = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=360,
                font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
                legend=dict(orientation="h", y=-0.2))
    base.update(kw)
    return base


def figures(m: ReportModel) -> dict[str, Any]:
    """plotly figures (as JSON-able dicts) by section; None where there is nothing to draw."""
    import plotly.graph_objects as go

    out: dict[str, Any] = {}
    metric = m.metric
    # best so far, by trial number
    if m.by_trial:
        fig = go.Figure()
        for status in STATUS_COLORS:
            pts = [p for p in m.by_trial if p[3] == status]
            if pts:
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=status,
                                marker=dict(color=STATUS_COLORS[status], size=9,
                                            symbol="x" if status == "pruned" else "circle"),
                                hovertemplate="t%{x}: %{y:.4g}<extra>" + status + "</extra>")
        fig.add_scatter(x=[p[0] for p in m.by_trial], y=[p[2] for p in m.by_trial], mode="lines",
                        line=dict(shape="hv", color="#1a202c", width=2), name="best so far",
                        hovertemplate="after t%{x}: best %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(xaxis_title="trial number", yaxis_title=metric,
                                    title=dict(text="Best so far, by trial", x=0.01)))
        fig.update_xaxes(dtick=1 if len(m.by_trial) <= 20 else None)
        out["by-trial"] = fig
    # best so far, by compute
    ev = [e for e in m.by_compute if e.best is not None]
    if ev:
        xs_s, xs_n = [e.cum_seconds for e in ev], [e.cum_samples for e in ev]
        fig = go.Figure()
        scored = [e for e in ev if e.value is not None]
        fig.add_scatter(x=[e.cum_seconds for e in scored], y=[e.value for e in scored], mode="markers",
                        name="an epoch's value", marker=dict(color="#a0aec0", size=6),
                        text=[f"t{e.number:02d} epoch {e.epoch}" for e in scored],
                        hovertemplate="%{text}: %{y:.4g}<extra></extra>")
        fig.add_scatter(x=xs_s, y=[e.best for e in ev], mode="lines", line=dict(shape="hv", color="#1a202c", width=2),
                        name="best so far", hovertemplate="%{x:.3g}: best %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(
            xaxis_title="training seconds, all trials (sum of epoch_seconds)", yaxis_title=metric,
            title=dict(text="Best so far, by training compute", x=0.01),
            updatemenus=[dict(type="buttons", direction="left", x=1, xanchor="right", y=-0.2, yanchor="top",
                              showactive=True, buttons=[
                dict(label="seconds", method="update",
                     args=[{"x": [[e.cum_seconds for e in scored], xs_s]},
                           {"xaxis.title.text": "training seconds, all trials (sum of epoch_seconds)"}]),
                dict(label="samples", method="update",
                     args=[{"x": [[e.cum_samples for e in scored], xs_n]},
                           {"xaxis.title.text": "training samples, all trials (sum of train_samples)"}]),
            ])]))
        out["by-compute"] = fig
    # learning curves
    if m.curves:
        fig = go.Figure()
        shown: set[str] = set()
        for c in sorted(m.curves, key=lambda c: c.is_best):
            color = STATUS_COLORS.get(c.status, "#718096")
            fig.add_scatter(x=c.epochs, y=c.values, mode="lines+markers", legendgroup=c.status,
                            name="best: " + c.label if c.is_best else c.status,
                            showlegend=c.is_best or c.status not in shown,
                            line=dict(color=BEST_COLOR if c.is_best else color, width=4 if c.is_best else 1.5,
                                      dash="solid" if c.is_best or c.status in ("completed", "running") else "dot"),
                            marker=dict(size=5), opacity=1 if c.is_best else 0.75,
                            hovertemplate=f"{c.label} ({c.status}) epoch %{{x}}: %{{y:.4g}}<extra></extra>")
            if not c.is_best:
                shown.add(c.status)
        for status, symbol, label in (("pruned", "x", "pruned here"), ("failed", "triangle-down", "failed after"),
                                      ("killed", "triangle-down", "killed after")):
            ends = [c for c in m.curves if c.status == status]
            if ends:
                fig.add_scatter(x=[c.epochs[-1] for c in ends], y=[c.values[-1] for c in ends], mode="markers",
                                name=label, marker=dict(symbol=symbol, size=13, color=STATUS_COLORS[status],
                                                        line=dict(width=2, color=STATUS_COLORS[status])),
                                text=[c.label for c in ends],
                                hovertemplate="%{text} " + status + " at epoch %{x}: %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(xaxis_title="epoch", yaxis_title=metric, height=420,
                                    title=dict(text=f"Learning curves: {metric} per epoch, every trial", x=0.01)))
        fig.update_xaxes(dtick=1)
        out["curves"] = fig
    # importances
    if m.importances:
        items = sorted(m.importances.items(), key=lambda kv: kv[1])
        fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                               marker_color="#2b6cb0", text=[f"{v:.2f}" for _, v in items], textposition="auto",
                               hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
        fig.update_layout(**_layout(xaxis_title=f"importance for {metric} (sums to 1)",
                                    height=max(220, 60 + 40 * len(items)), margin=dict(l=140, r=20, t=40, b=50),
                                    title=dict(text="Hyperparameter importances", x=0.01)))
        out["importances"] = fig
    # parallel coordinates
    if m.dimension_rows and m.dimensions:
        dims = [_parcoords_dim(d) for d in m.dimensions]
        values = [r.value for r in m.dimension_rows]
        dims.append(_parcoords_dim(Dimension(metric, "float", values)))
        fig = go.Figure(go.Parcoords(
            dimensions=dims, line=dict(color=values, colorscale="Viridis", reversescale=(m.mode == "min"),
                                       showscale=True, colorbar=dict(title=dict(text=metric)))))
        fig.update_layout(**_layout(height=420, margin=dict(l=80, r=80, t=60, b=30)))
        out["parallel"] = fig
    # freezing
    if m.freezing:
        from plotly.subplots import make_subplots

        k = len(m.freezing)
        fig = make_subplots(rows=1, cols=k, shared_yaxes=True, horizontal_spacing=0.04,
                            subplot_titles=[f"{g.label}: {metric} {fmt(g.value)}" for g in m.freezing])
        for i, g in enumerate(m.freezing, 1):
            text = [[f"{g.label} epoch {ep}: {name} "
                     + {1: "trains", 0: "frozen", None: "not run"}[cell]
                     + (f" (logged blocks_training {fmt(int(g.logged_blocks[j]))})"
                        if g.logged_blocks[j] is not None else "")
                     for j, (ep, cell) in enumerate(zip(g.epochs, row))] for name, row in zip(g.rows, g.cells)]
            fig.add_trace(go.Heatmap(
                z=g.cells, x=[f"epoch {e}" for e in g.epochs], y=g.rows, zmin=0, zmax=1, xgap=2, ygap=2,
                colorscale=[[0, "#e2e8f0"], [0.5, "#e2e8f0"], [0.5, "#2c7a7b"], [1, "#2c7a7b"]],
                showscale=(i == 1), colorbar=dict(tickvals=[0.25, 0.75], ticktext=["frozen", "trains"], len=0.6),
                text=text, hovertemplate="%{text}<extra></extra>"), row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(**_layout(height=max(260, 90 + 28 * len(m.freezing[0].rows)),
                                    plot_bgcolor="#ffffff", margin=dict(l=90, r=20, t=60, b=40)))
        out["freezing"] = fig
    return {k: json.loads(v.to_json()) for k, v in out.items()}


def _parcoords_dim(d: Dimension) -> dict[str, Any]:
    present = [v for v in d.values if v != ABSENT]
    has_absent = len(present) < len(d.values)
    if d.kind == "choice":
        cats = sorted({str(v) for v in present}, key=str) + ([ABSENT] if has_absent else [])
        idx = {c: i for i, c in enumerate(cats)}
        return dict(label=d.name, values=[idx[str(v)] if v != ABSENT else idx[ABSENT] for v in d.values],
                    tickvals=list(range(len(cats))), ticktext=cats, range=[-0.3, max(len(cats) - 0.7, 0.3)])
    log = d.kind == "log"
    tx = [math.log10(v) if log else float(v) for v in present]
    lo, hi = min(tx), max(tx)
    if hi > lo:
        rlo, rhi = lo, hi
    else:  # one value: a band around it
        half = (abs(hi) * 0.1) or 0.5
        rlo, rhi = lo - half, hi + half
    if d.kind == "int" and len(set(tx)) <= 8:
        ticks = sorted(set(tx))
    elif log and hi > lo:
        ticks = [lo, (lo + hi) / 2, hi]
    else:
        ticks = [lo, hi] if hi > lo else [lo]
    tickvals = list(ticks)
    ticktext = [fmt(10 ** t if log else (int(round(t)) if d.kind == "int" else t)) for t in ticks]
    sentinel = rlo - 0.15 * (rhi - rlo)
    if has_absent:
        tickvals.insert(0, sentinel)
        ticktext.insert(0, ABSENT)
    vals = [sentinel if v == ABSENT else (math.log10(v) if log else float(v)) for v in d.values]
    label = d.name + (" (log)" if log else "")
    return dict(label=label, values=vals, tickvals=tickvals, ticktext=ticktext,
                range=[sentinel if has_absent else rlo, rhi])


def _asset(name: str) -> str:
    return (DASHBOARDS_DIR / name).read_text(encoding="utf-8")


def plotly_js() -> str:
    """plotly.js, the same bundle ``include_plotlyjs=True`` inlines."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(m: ReportModel, *, inline_plotly: bool = True, refresh_s: int | None = None,
                plotly_src: str = "/plotly.min.js") -> str:
    """The page. ``inline_plotly``: plotly.js inside the file (opens offline, anywhere);
    otherwise loaded from ``plotly_src`` (the live view serves it once, cached)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(DASHBOARDS_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    figs = figures(m)
    specs = {k: json.dumps(v, separators=(",", ":")).replace("</", "<\\/") for k, v in figs.items()}
    status_counts = ", ".join(f"{n} {s}" for s, n in m.counts.items() if n)
    return env.get_template("report.html.j2").render(
        m=m, figs=specs, fmt=fmt, css=jinja2_markup(_asset("report.css")), js=jinja2_markup(_asset("report.js")),
        plotly=jinja2_markup(plotly_js().replace("</script", "<\\/script")) if inline_plotly else None,
        plotly_src=plotly_src, refresh_s=refresh_s, status_counts=status_counts, colors=STATUS_COLORS,
        sort_value=_sort_value, ABSENT=ABSENT,
    )


def jinja2_markup(s: str) -> Any:
    import markupsafe

    return markupsafe.Markup(s)


def _sort_value(v: Any) -> str:
    """A cell's key for the table sort: numbers as numbers, n/a and - last."""
    if v is None or v == ABSENT:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(float(v))
    return str(v)


# --------------------------------------------------------------------------- write, serve


def build_html(tracking_uri: str, name: str, storage: str | Path | None = None, **render: Any) -> tuple[str, SearchRecord, ReportModel]:
    record = load_search(tracking_uri, name, storage)
    model = build_model(record)
    return render_html(model, **render), record, model


def write_report(tracking_uri: str, name: str, output: Path | None = None, storage: str | Path | None = None,
                 log_artifact: bool = True) -> tuple[Path, SearchRecord, ReportModel]:
    """Build the self-contained page, write it, log it to the parent run as ``report.html``."""
    import os
    import shutil
    import tempfile

    page, record, model = build_html(tracking_uri, name, storage)
    output = Path(output) if output is not None else Path(f"{record.search_id}-report.html")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, output)
    if log_artifact and record.run_id:
        with tempfile.TemporaryDirectory() as d:
            shutil.copyfile(output, Path(d) / "report.html")
            _client(tracking_uri).log_artifact(record.run_id, str(Path(d) / "report.html"))
    return output, record, model


class LiveView:
    """Rebuilds the page on request (at most every ``refresh_s / 2`` seconds)."""

    def __init__(self, tracking_uri: str, name: str, storage: str | Path | None, refresh_s: int) -> None:
        self.uri, self.name, self.storage, self.refresh_s = tracking_uri, name, storage, refresh_s
        self._lock = threading.Lock()
        self._page: bytes = b""
        self._at = 0.0
        self._js: bytes | None = None

    def page(self) -> bytes:
        with self._lock:
            if self._page and time.time() - self._at < self.refresh_s / 2:
                return self._page
            try:
                page, _, _ = build_html(self.uri, self.name, self.storage, inline_plotly=False,
                                        refresh_s=self.refresh_s)
            except InputError as exc:
                page = _message_page(f"Waiting for search '{self.name}'", f"{exc} (MLflow store {self.uri})",
                                     self.refresh_s)
            except Exception as exc:  # noqa: BLE001 - a store busy mid-write: show it, retry next refresh
                page = _message_page("Could not read the search (retrying)", f"{type(exc).__name__}: {exc}",
                                     self.refresh_s)
            self._page, self._at = page.encode("utf-8"), time.time()
            return self._page

    def plotly_js(self) -> bytes:
        if self._js is None:
            self._js = plotly_js().encode("utf-8")
        return self._js

    def offline(self) -> bytes:
        page, _, _ = build_html(self.uri, self.name, self.storage)
        return page.encode("utf-8")


def _message_page(title: str, text: str, refresh_s: int) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='{refresh_s}'>"
            f"<title>{html.escape(title)}</title></head><body style='font-family:system-ui;margin:2em'>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
            f"<p>This page refreshes every {refresh_s} s.</p></body></html>")


def make_server(view: LiveView, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A small threaded HTTP server: / (the live page), /plotly.min.js, /report.html (offline copy)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(view.page(), "text/html; charset=utf-8", "no-store")
                elif path == "/plotly.min.js":
                    self._send(view.plotly_js(), "application/javascript; charset=utf-8", "max-age=86400")
                elif path == "/report.html":
                    self._send(view.offline(), "text/html; charset=utf-8", "no-store",
                               {"Content-Disposition": "attachment; filename=report.html"})
                elif path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                else:
                    self.send_error(404)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, body: bytes, ctype: str, cache: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
