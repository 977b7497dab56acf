"""`autoft report`: the report model from hand-made trial records (pure), the loader
against MLflow + Optuna written by hand, and a real tiny search end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from autoft.report import (
    ABSENT,
    SearchRecord,
    TrialRecord,
    build_model,
    figures,
    load_search,
    parse_param,
    render_html,
    study_importances,
)

EXAMPLE = REPO / "dashboards" / "example-search.json"
SECTIONS = ("leaderboard", "progress", "curves", "importance", "parallel", "freezing", "best-config")
SPACE = {
    "learning_rate": {"kind": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "num_frozen_layers": {"kind": "int", "low": 0, "high": 2},
    "unfreeze_schedule": {"kind": "choice", "choices": ["none", "gradual", "step"]},
    "unfreeze_every": {"kind": "int", "low": 1, "high": 2, "when": {"unfreeze_schedule": ["gradual", "step"]}},
}
T0 = 1_700_000_000_000


# --------------------------------------------------------------------------- hand-made records


def trial(number: int, status: str, values: list[float], *, lr: float = 1e-4, frozen: int = 0,
          schedule: str = "none", every: int | None = None, epochs: int = 3, start: float = 0,
          placeholder: float | None = None, layers: int = 2, t0: int = T0) -> TrialRecord:
    """A trial as autoft logs it: params as strings (n/a for an inactive conditional), one
    point per epoch; ``placeholder``: the value a diverged epoch reports (no epoch_seconds)."""
    params = {"learning_rate": f"{lr:.6g}", "num_frozen_layers": str(frozen), "freeze_embeddings": "True",
              "unfreeze_schedule": schedule, "unfreeze_every": str(every) if every else ABSENT,
              "weight_decay": "0.01", "dropout": "None", "epochs": str(epochs), "batch_size": "16", "seed": "42",
              "model": "/nowhere/tiny-bert"}
    ts = [int(t0 + (start + 10 * (i + 1)) * 1000) for i in range(len(values) + 1)]
    metrics: dict[str, list[tuple[int, float, int]]] = {
        "eval_f1": [(i + 1, v, ts[i]) for i, v in enumerate(values)],
        "epoch_seconds": [(i + 1, 10.0, ts[i]) for i in range(len(values))],
        "train_samples": [(i + 1, 160.0, ts[i]) for i in range(len(values))],
        "trainable_params": [(i + 1, 1000.0 * (i + 1), ts[i]) for i in range(len(values))],
        "blocks_training": [(i + 1, float(layers - frozen), ts[i]) for i in range(len(values))],
    }
    if placeholder is not None:
        metrics["eval_f1"].append((len(values) + 1, placeholder, ts[len(values)]))
    reason = {"pruned": f"pruned at epoch {len(values)}", "failed": "loss became nan at epoch 2 step 3"}.get(status, "")
    summary = {"wall_seconds": 10.0 * len(values) + 2}
    if values and status not in ("failed", "killed"):
        summary["best_eval_f1"] = max(values)
    return TrialRecord(number=number, status=status, params=params, metrics=metrics, summary=summary,
                       reason=reason, run_id=f"run{number}", start_ms=int(t0 + start * 1000),
                       end_ms=None if status == "running" else ts[len(values)])


def search(trials: list[TrialRecord], **kw: Any) -> SearchRecord:
    return SearchRecord(**{"search_id": "hand-20250101-000000", "metric": "eval_f1", "mode": "max",
                           "trials": trials, "experiment": "hand", "space": SPACE, "num_layers": 2,
                           "params": {"space": "hand", "sampler": "tpe", "scheduler": "asha", "num_trials": "5",
                                      "model": "/nowhere/tiny-bert"}, "start_ms": T0, **kw})


def mixed() -> SearchRecord:
    return search([
        trial(0, "completed", [0.6, 0.7, 0.8]),
        trial(1, "pruned", [0.5], start=5),
        trial(2, "failed", [0.65], start=10, placeholder=0.0, schedule="gradual", every=1),
        trial(3, "completed", [0.7, 0.75, 0.85], start=20, frozen=1, schedule="step", every=1),
        trial(4, "running", [0.72], start=40, schedule="gradual", every=1),
    ], status="running")


def _page_checks(page: str) -> None:
    for s in SECTIONS:
        assert f'id="{s}"' in page, s
    # self-contained: no script or stylesheet fetched from anywhere
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']?https?://", page)
    assert "Plotly.newPlot" in page or "newPlot" in page
    for m in re.finditer(r'<script type="application/json" id="fig-[^"]+">(.*?)</script>', page, re.S):
        spec = json.loads(m.group(1))
        assert spec["data"], "every embedded figure has traces"


# --------------------------------------------------------------------------- pure model


def test_pruned_and_failed_trials():
    m = build_model(mixed(), now=T0 / 1000 + 100)
    assert [r.label for r in m.rows] == ["t03", "t00", "t04", "t01", "t02"]
    assert [r.rank for r in m.rows] == [1, 2, 3, 4, None], "failed trials are never ranked"
    assert m.best is not None and m.best.number == 3 and m.best.is_best
    failed = m.rows[-1]
    assert failed.status == "failed" and failed.value is None and "nan" in failed.reason
    assert failed.epochs_run == 1, "the diverged epoch's placeholder is not an epoch"
    assert m.counts == {"completed": 2, "pruned": 1, "failed": 1, "killed": 0, "running": 1}
    # learning curves: the failed trial's placeholder 0.0 is dropped; pruned curve ends at epoch 1
    curves = {c.number: c for c in m.curves}
    assert curves[2].values == [0.65] and curves[1].epochs == [1]
    assert curves[3].is_best and not curves[0].is_best
    # best so far by trial number: monotone, failed trial absent
    assert [p[0] for p in m.by_trial] == [0, 1, 3, 4]
    assert [p[2] for p in m.by_trial] == [0.8, 0.8, 0.85, 0.85]
    # by compute: every epoch run (failed ones cost compute too), in time order
    assert len(m.by_compute) == 3 + 1 + 1 + 3 + 1
    secs = [e.cum_seconds for e in m.by_compute]
    assert secs == sorted(secs) and secs[-1] == pytest.approx(90.0)
    assert m.by_compute[-1].cum_samples == pytest.approx(9 * 160)
    assert m.by_compute[-1].best == 0.85
    assert all(e.value is None for e in m.by_compute if e.number == 2)
    # the running trial is drawn in the freezing schedule with its future epochs 'not run'
    grids = {g.number: g for g in m.freezing}
    assert list(grids) == [3, 0, 4]
    assert grids[4].cells[0] == [1, None, None]
    assert "running" in dict(m.facts)["trials"]


def test_freezing_schedule_follows_the_recipe():
    m = build_model(mixed())
    grids = {g.number: g for g in m.freezing}
    assert grids[3].rows == ["head", "block 1", "block 0", "embeddings"]
    # step, every 1, 1 block frozen of 2: head only in epoch 1, then block 1 too; block 0 never
    assert grids[3].cells == [[1, 1, 1], [0, 1, 1], [0, 0, 0], [0, 0, 0]]
    # nothing frozen, no schedule: everything trains every epoch
    assert grids[0].cells == [[1, 1, 1]] * 4
    assert grids[0].logged_blocks == [2.0, 2.0, 2.0]


def test_gradual_unfreezing_grid():
    m = build_model(search([trial(0, "completed", [0.5, 0.6, 0.7], schedule="gradual", every=1)]))
    # ULMFiT: head, then block 1, then block 0 with the embeddings
    assert m.freezing[0].cells == [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]]


def test_single_trial():
    rec = search([trial(0, "completed", [0.4, 0.5, 0.45])])
    m = build_model(rec)
    assert len(m.rows) == 1 and m.best is not None and m.best.value == 0.5 and m.best.best_epoch == 2
    assert m.by_trial == [(0, 0.5, 0.5, "completed")]
    assert [d.name for d in m.dimensions] == ["learning_rate", "num_frozen_layers", "unfreeze_schedule",
                                              "unfreeze_every"]
    figs = figures(m)
    assert {"by-trial", "by-compute", "curves", "parallel", "freezing"} <= set(figs)
    for dim in figs["parallel"]["data"][0]["dimensions"]:
        lo, hi = dim["range"]
        assert lo < hi, f"{dim['label']}: a single value still gets a band"
    page = render_html(m)
    _page_checks(page)
    assert "No Optuna study" in page


def test_conditional_params_absent():
    rec = search([
        trial(0, "completed", [0.6, 0.7, 0.9], lr=3e-4),
        trial(1, "completed", [0.5, 0.6, 0.7], lr=1e-4, schedule="step", every=2),
        trial(2, "pruned", [0.3], lr=2e-5, schedule="gradual", every=1),
    ])
    m = build_model(rec)
    best = m.rows[0]
    assert best.number == 0 and best.params["unfreeze_every"] == ABSENT
    assert m.rows[1].params["unfreeze_every"] == 2
    dim = next(d for d in m.dimensions if d.name == "unfreeze_every")
    assert dim.kind == "int" and dim.values == [ABSENT, 2, 1]
    lr_dim = next(d for d in m.dimensions if d.name == "learning_rate")
    assert lr_dim.kind == "log"
    par = figures(m)["parallel"]["data"][0]["dimensions"]
    every = next(d for d in par if d["label"] == "unfreeze_every")
    assert every["ticktext"][0] == ABSENT and every["values"][0] < min(every["values"][1:])
    # the best config: the trial's recipe without the param it did not sample
    assert "unfreeze_every" not in m.best_config
    conf = yaml.safe_load(m.best_config_yaml)
    assert conf["params"]["learning_rate"] == pytest.approx(3e-4) and conf["params"]["dropout"] is None
    assert "not sampled by this trial (conditional): unfreeze_every" in m.best_config_yaml
    page = render_html(m)
    _page_checks(page)
    assert 'class="absent"' in page


def test_no_values_yet_and_searched_params_without_space():
    rec = search([trial(0, "running", []), trial(1, "failed", [], placeholder=0.0, schedule="gradual", every=1)],
                 space={}, num_layers=None)
    m = build_model(rec)
    assert m.best is None and m.curves == [] and m.by_trial == []
    assert m.searched == ["unfreeze_schedule", "unfreeze_every"], "without space.yaml: the params that vary"
    assert "no trial has an objective value" in m.best_config_yaml
    page = render_html(m)
    for s in SECTIONS:
        assert f'id="{s}"' in page
    assert "No trial has finished an epoch yet." in page


def test_minimise_and_record_roundtrip():
    rec = search([trial(0, "completed", [0.7, 0.6, 0.65]), trial(1, "completed", [0.5, 0.4, 0.45])],
                 metric="eval_f1", mode="min")
    m = build_model(rec)
    assert m.best is not None and m.best.number == 1 and m.best.value == 0.4
    again = SearchRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again == rec


def test_parse_param():
    assert parse_param("0.000401051") == pytest.approx(4.01051e-4)
    assert parse_param("2") == 2 and isinstance(parse_param("2"), int)
    assert parse_param("1e-05") == pytest.approx(1e-5) and isinstance(parse_param("1e-05"), float)
    assert parse_param("True") is True and parse_param("None") is None and parse_param(ABSENT) == ABSENT
    assert parse_param("gradual") == "gradual"


def test_study_importances_few_trials_and_conditionals():
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    searched = ["learning_rate", "unfreeze_schedule", "unfreeze_every"]
    imp, note = study_importances(study, {}, searched)
    assert imp is None and "at least 3 completed trials" in note and "has 0" in note
    values = {}
    for i in range(8):
        params: dict[str, Any] = {"learning_rate": 10 ** (-5 + i / 3), "unfreeze_schedule": ["none", "step"][i % 2]}
        dists: dict[str, Any] = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
                                 "unfreeze_schedule": CategoricalDistribution(["none", "step"])}
        if i % 2:
            params["unfreeze_every"] = 1 + i % 3 // 2
            dists["unfreeze_every"] = IntDistribution(1, 2)
        state = optuna.trial.TrialState.PRUNED if i == 7 else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                  value=0.0 if state == optuna.trial.TrialState.COMPLETE else None))
        values[i] = i / 10  # the report's values, not Optuna's
    imp, note = study_importances(study, values, searched)
    assert imp is not None and set(imp) == {"learning_rate", "unfreeze_schedule"}
    assert sum(imp.values()) == pytest.approx(1.0)
    assert imp["learning_rate"] > imp["unfreeze_schedule"], "the values given, not Optuna's zeros, are scored"
    assert "7 completed trials" in note and "unfreeze_every" in note


# --------------------------------------------------------------------------- MLflow + Optuna written by hand


def example_record() -> SearchRecord:
    """The README demo search, recorded from MLflow (dashboards/example-search.json)."""
    return SearchRecord.from_dict(json.loads(EXAMPLE.read_text())["search"])



def _distribution(spec: dict[str, Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec["kind"] == "choice":
        return CategoricalDistribution(spec["choices"])
    if spec["kind"] == "int":
        return IntDistribution(spec.get("low", 0), spec["high"])
    return FloatDistribution(spec.get("low", 0.0), spec["high"], log=spec.get("log", False))


def _write_trial(client: Any, experiment_id: str, parent_id: str, rec: SearchRecord, t: TrialRecord) -> None:
    import optuna
    from mlflow.entities import Metric, Param, RunTag

    tags = {"mlflow.parentRunId": parent_id, "autoft.role": "trial", "autoft.status": t.status,
            "autoft.search_id": rec.search_id, "autoft.optuna_trial": str(t.number)}
    if t.reason:
        tags["autoft.reason"] = t.reason
    run = client.create_run(experiment_id, run_name=f"t{t.number:02d}", tags=tags, start_time=t.start_ms)
    rid = run.info.run_id
    metrics = [Metric(k, v, ts, s) for k, pts in t.metrics.items() for s, v, ts in pts]
    end = max([p[2] for pts in t.metrics.values() for p in pts] + [t.start_ms or 0])
    metrics += [Metric(k, v, end, 0) for k, v in t.summary.items() if k not in t.metrics]
    client.log_batch(rid, params=[Param(k, v) for k, v in t.params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()], metrics=metrics)
    if t.status != "running":
        client.set_terminated(rid, {"failed": "FAILED", "killed": "KILLED"}.get(t.status, "FINISHED"), end_time=t.end_ms)
    study = optuna.load_study(study_name=rec.search_id, storage=rec.tracking_uri.replace("mlflow.db", "optuna.db"))
    state = {"completed": "COMPLETE", "pruned": "PRUNED", "running": "RUNNING"}.get(t.status, "FAIL")
    params = {k: parse_param(t.params[k]) for k in rec.space if t.params.get(k, ABSENT) != ABSENT}
    best = max if rec.mode == "max" else min
    values = [v for _, v, _ in t.metrics.get(rec.metric, [])]
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: _distribution(rec.space[k]) for k in params},
        state=optuna.trial.TrialState[state], value=best(values) if state == "COMPLETE" else None))


def write_search(rec: SearchRecord, root: Path) -> str:
    """Lay a search out in ``root`` as autoft's tracker and controller do: an MLflow parent
    run (params, tags, space.yaml) with one child run per trial, and the Optuna study."""
    import optuna
    from mlflow import MlflowClient

    from autoft.tracking import default_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uri = default_tracking_uri(root)
    rec.tracking_uri = uri
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(rec.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        rec.experiment, artifact_location=(root / "mlartifacts" / rec.experiment).resolve().as_uri())
    parent = client.create_run(exp_id, run_name=rec.search_id, start_time=rec.start_ms, tags={
        "autoft.role": "search", "autoft.search_id": rec.search_id, "autoft.status": rec.status,
        "autoft.storage": str(root / rec.search_id)})
    rec.run_id = parent.info.run_id
    from mlflow.entities import Param

    client.log_batch(rec.run_id, params=[Param(k, v) for k, v in rec.params.items()])
    client.log_dict(rec.run_id, {"name": rec.params.get("space", "hand"), "params": rec.space}, "space.yaml")
    optuna.create_study(study_name=rec.search_id, storage=uri.replace("mlflow.db", "optuna.db"),
                        direction="maximize" if rec.mode == "max" else "minimize")
    for t in sorted(rec.trials, key=lambda t: t.number):
        _write_trial(client, exp_id, rec.run_id, rec, t)
    if rec.status != "running":
        client.set_terminated(rec.run_id, "FINISHED", end_time=rec.end_ms)
    return uri


def add_trial(uri: str, rec: SearchRecord, t: TrialRecord) -> None:
    """A search that goes on: one more trial in MLflow and Optuna."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    _write_trial(client, client.get_run(rec.run_id).info.experiment_id, rec.run_id, rec, t)
    rec.trials.append(t)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("written")
    rec = example_record()
    uri = write_search(rec, root)
    return root, uri, rec


def test_loader_reads_what_was_written(written):
    root, uri, rec = written
    got = load_search(uri, "demo", storage=root)
    assert got.search_id == rec.search_id and got.metric == "eval_f1" and got.mode == "max"
    assert list(got.space) == list(rec.space), "space.yaml (with its tuples) is read back"
    assert {t.number: t.status for t in got.trials} == {t.number: t.status for t in rec.trials}
    by_number = {t.number: t for t in got.trials}
    for t in rec.trials:
        assert by_number[t.number].params == t.params
        assert by_number[t.number].metrics["eval_f1"] == t.metrics["eval_f1"]
    assert got.importances is None and "at least 3 completed trials" in got.importance_note
    m = build_model(got)
    assert m.best is not None and m.best.label == "t04" and m.best.value == pytest.approx(0.9601, abs=1e-4)
    assert [g.label for g in m.freezing] == ["t04", "t01", "t00"]
    assert m.freezing[0].rows[-2:] == ["block 0", "embeddings"]
    assert m.freezing[0].cells[-1] == [0, 0, 0], "t04 froze block 0 and the embeddings"


def test_report_cli_logs_artifact_and_errors(written, tmp_path):
    from mlflow import MlflowClient

    from autoft.cli import app

    root, uri, rec = written
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", rec.search_id, "--storage", str(root), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and "logged to MLflow" in res.output
    _page_checks(out.read_text())
    arts = {a.path for a in MlflowClient(uri).list_artifacts(rec.run_id)}
    assert "report.html" in arts
    res = CliRunner().invoke(app, ["report", "nosuch", "--storage", str(root)])
    assert res.exit_code == 2 and "no search named 'nosuch'" in res.output
    res = CliRunner().invoke(app, ["report", "demo", "--storage", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no MLflow store" in res.output
    res = CliRunner().invoke(app, ["dashboard", "demo", "--storage", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no MLflow store" in res.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["dashboard", "demo", "--storage", str(root), "--port", str(port)])
    assert res.exit_code == 2 and f"--port: cannot listen on 127.0.0.1:{port}" in res.output


def test_help_lists_options():
    from autoft.cli import app

    for cmd, opts in (("report", ("--output", "--storage", "--tracking-uri", "--no-log")),
                      ("dashboard", ("--port", "--storage", "--tracking-uri", "--refresh", "--optuna"))):
        res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        for o in opts:
            assert o in res.output, (cmd, o)


def test_live_view_serves_page_and_plotly(written):
    import threading
    import time
    import urllib.request

    from autoft.report import LiveView, make_server

    root, uri, rec = written
    view = LiveView(uri, rec.search_id, root, refresh_s=1)
    server = make_server(view, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/", timeout=30) as r:
            page = r.read().decode()
        assert '<meta http-equiv="refresh" content="1">' in page and '<script src="/plotly.min.js">' in page
        n = page.count("data-trial=")
        assert n == len(rec.trials)
        with urllib.request.urlopen(base + "/plotly.min.js", timeout=30) as r:
            assert "max-age" in r.headers["Cache-Control"] and len(r.read()) > 1_000_000
        time.sleep(0.6)  # past the page cache (refresh / 2)
        with urllib.request.urlopen(base + "/", timeout=30) as r:
            assert r.read().decode().count("data-trial=") == n
    finally:
        server.shutdown()
        server.server_close()


def test_dashboard_stops_on_sigint_even_when_started_with_sigint_ignored(written):
    """`autoft dashboard &` from a script or CI starts with SIGINT ignored; SIGINT must still stop it."""
    import os
    import signal
    import subprocess
    import sys

    root, uri, rec = written
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoft.cli", "dashboard", rec.search_id, "--port", "0", "--storage", str(root),
         "--tracking-uri", uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = proc.stdout.readline()
        assert "http://127.0.0.1:" in first, first
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "stopped" in rest, rest


def test_dashboard_arms_ctrl_c_before_it_prints_its_address(written, monkeypatch):
    """A script reads the address and sends SIGINT at once: the handler must already be in
    place when the address is printed (the subprocess test above can only catch it under load)."""
    import signal

    import typer

    import autoft.cli_report as cli_report
    import autoft.report as report
    from autoft.cli import app

    root, uri, rec = written

    class Server:
        server_address = ("127.0.0.1", 1234)

        def serve_forever(self, poll_interval: float) -> None:
            pass

        def server_close(self) -> None:
            pass

    seen: list[Any] = []
    echo = typer.echo

    def recording_echo(msg: Any = "", **kw: Any) -> None:
        seen.append((msg, signal.getsignal(signal.SIGINT)))
        echo(msg, **kw)

    monkeypatch.setattr(report, "make_server", lambda *a, **k: Server())
    monkeypatch.setattr(cli_report.typer, "echo", recording_echo)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = CliRunner().invoke(app, ["dashboard", rec.search_id, "--port", "0", "--storage", str(root),
                                       "--tracking-uri", uri])
    finally:
        signal.signal(signal.SIGINT, before)
    assert out.exit_code == 0, out.output
    address = [h for m, h in seen if "http://127.0.0.1:1234" in str(m)]
    assert address and all(h is signal.default_int_handler for h in address), seen


# --------------------------------------------------------------------------- a real search


@pytest.fixture(scope="module")
def real_search(tiny_search):
    result, _, _, storage, _ = tiny_search
    return result, storage


@pytest.mark.ray
def test_report_of_a_real_search(real_search, tmp_path):
    from mlflow import MlflowClient

    from autoft.cli import app

    result, storage = real_search
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "tiny", "--storage", str(storage), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    _page_checks(page)
    assert result.search_id in page
    arts = {a.path for a in MlflowClient(result.tracking_uri).list_artifacts(result.mlflow_run_id)}
    assert "report.html" in arts
    for m in re.finditer(r'id="plot-([a-z-]+)" data-figure', page):
        assert f'id="fig-{m.group(1)}"' in page


@pytest.mark.ray
def test_model_of_a_real_search(real_search):
    result, storage = real_search
    rec = load_search(result.tracking_uri, result.search_id, storage)
    assert rec.num_layers == 2 and rec.status == "completed"
    assert len(rec.trials) == result.n_trials
    m = build_model(rec)
    assert m.best is not None and m.best.value == pytest.approx(result.best_value)
    statuses = {r.status for r in m.rows}
    assert statuses <= {"completed", "pruned", "failed"}
    assert m.counts["pruned"] == result.n_pruned
    for c in m.curves:
        if c.status == "pruned":
            assert len(c.epochs) < 3
    assert m.freezing and m.freezing[0].rows == ["head", "block 1", "block 0", "embeddings"]
    if m.counts["completed"] >= 3:
        assert m.importances and "unfreeze_every" not in m.importances or "unfreeze_every" in m.importance_note
    else:
        assert "at least 3" in m.importance_note
    assert yaml.safe_load(m.best_config_yaml)["params"]["epochs"] == 3
