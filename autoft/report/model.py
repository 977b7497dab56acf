"""The report model: a :class:`SearchRecord` -> everything the page shows
(:func:`build_model`): leaderboard, best-so-far, learning curves, parallel coordinates,
freezing schedules, the best config; and the parameter importances of an Optuna study
(:func:`study_importances`). Pure: no MLflow, no files, no plotting."""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoft.errors import InputError
from autoft.recipe import RECIPE_FIELDS, Recipe
from autoft.report.records import ABSENT, FAILED, Points, SearchRecord, TrialRecord

MIN_IMPORTANCE_TRIALS = 3


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


def trial_value(trial: TrialRecord, metric: str, mode: str) -> tuple[float | None, int | None]:
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
    value, best_epoch = trial_value(t, record.metric, record.mode)
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
