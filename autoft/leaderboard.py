"""Leaderboards: from a finished search in memory, or rebuilt from MLflow alone."""

from __future__ import annotations

import sys
from typing import Any

from autoft.errors import InputError

SHOWN_PARAMS = ("learning_rate", "num_frozen_layers", "unfreeze_schedule", "unfreeze_every",
                "layerwise_lr_decay", "weight_decay", "dropout")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN: a conditional parameter this trial did not sample
            return "n/a"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _seconds(v: Any) -> str:
    return "-" if v is None or v != v else f"{float(v):.1f}"


_COLUMN_FORMAT = {"number": lambda v: f"t{int(v):02d}", "wall_seconds": _seconds}


def print_leaderboard(df: Any, metric: str, mode: str, to_stderr: bool = False, limit: int = 20,
                      more_hint: str = "") -> None:
    """The best ``limit`` trials (0: all) as a table; a caption says how many were left out."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stderr if to_stderr else sys.stdout, width=160)
    if df is None or len(df) == 0:
        console.print("no trials")
        return
    df = df.sort_values(metric, ascending=(mode == "min"), na_position="last")
    table = Table(title=f"leaderboard ({metric}, {mode})", show_lines=False)
    cols = ["number", "status", metric, "epochs"] + [c for c in SHOWN_PARAMS if c in df.columns] + ["wall_seconds"]
    for c in cols:
        table.add_column({"number": "trial", "wall_seconds": "secs"}.get(c, c), justify="right" if c != "status" else "left")
    shown = df.head(limit) if limit > 0 else df
    for _, row in shown.iterrows():
        table.add_row(*[_COLUMN_FORMAT.get(c, _fmt)(row.get(c)) for c in cols])
    if len(shown) < len(df):
        table.caption = f"the best {len(shown)} of {len(df)} trials" + (f"; {more_hint}" if more_hint else "")
    console.print(table)


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def list_searches(uri: str) -> None:
    from rich.console import Console
    from rich.table import Table

    client = mlflow_client(uri)
    table = Table(title=f"searches in {uri}")
    for c in ("search id", "experiment", "status", "best", "trials", "started"):
        table.add_column(c)
    import datetime as dt

    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'search'",
                                      order_by=["attributes.start_time DESC"]):
            m = run.data.metrics
            table.add_row(run.info.run_name, exp.name, run.data.tags.get("autoft.status", run.info.status),
                          _fmt(m.get("best_value")), _fmt(int(m["n_trials"])) if "n_trials" in m else "-",
                          dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"))
    Console(width=160).print(table)


def find_search_run(client: Any, name: str) -> Any:
    """A search by id (parent run name) or by name (its newest search)."""
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], f"tags.`autoft.search_id` = '{_q(name)}' and "
                                  "tags.`autoft.role` = 'search'")
        if runs:
            return runs[0]
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0]
    raise InputError("NAME", f"no search named '{name}' in MLflow", "run `autoft runs` to list searches")


def _q(s: str) -> str:
    return s.replace("'", "")


def leaderboard_from_mlflow(uri: str, name: str) -> tuple[Any, str, str]:
    import pandas as pd

    client = mlflow_client(uri)
    parent = find_search_run(client, name)
    metric = parent.data.params.get("metric", "eval_f1")
    mode = parent.data.params.get("mode", "max")
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=5000)
    # Trial runs log every recipe field; the columns are the ones the search searched
    # (its space.yaml), as in the leaderboard the search printed when it ended.
    from autoft.report.load import space_params

    searched = space_params(client, parent.info.run_id)
    shown = [k for k in SHOWN_PARAMS if k in searched] if searched else list(SHOWN_PARAMS)
    rows = []
    for run in children:
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        row = {"number": int(t.get("autoft.optuna_trial", -1)), "status": t.get("autoft.status", run.info.status),
               metric: m.get(f"best_{metric}"), "epochs": t.get("autoft.last_epoch"),
               "wall_seconds": m.get("wall_seconds"), "run_id": run.info.run_id}
        for k in shown:
            if k in p:
                row[k] = _num(p[k])
        rows.append(row)
    return pd.DataFrame(rows), metric, mode


def _num(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v else f
