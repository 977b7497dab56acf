"""A search logged to a real MLflow tracking server (HTTP, proxied artifacts), as a team
would run it: ``mlflow server`` with a SQLite backend and an artifact destination,
``tracking.uri=http://...``, then everything checked through the server only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.ray

N_TRIALS = 4
EPOCHS = 3
NAME = "tiny-server"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and its workers: the process group this test started, nothing else."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in teardown
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    # No GenAI job runner (seven huey processes) for a test server.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            + (root / "server.log").read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health in 90 s:\n"
                            + (root / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield {"url": url, "root": root, "artifacts": root / "artifacts", "proc": proc}
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def server_search(mlflow_server, tmp_path_factory, tiny_model, tiny_data):
    import ray

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("server-search")
    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", f"train.epochs={EPOCHS}", "train.batch_size=16",
        "train.max_length=32", f"storage={root / 'runs'}", f"name={NAME}",
        f"search.num_trials={N_TRIALS}", "search.max_concurrent=2",
        "search.metric=eval_loss", "search.mode=min", "search.seed=3",
        "pruning.grace_period=1", "pruning.reduction_factor=2",
        f"tracking.uri={mlflow_server['url']}",
    ])
    sigint_before = signal.getsignal(signal.SIGINT)
    uri_before = _tracking_uri_state()
    try:
        result = run_search(cfg, echo=lambda _line: None)
    finally:
        sigint_after = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, sigint_before)  # Ctrl-C must still stop pytest
        uri_after = _tracking_uri_state()
        ray.shutdown()
    yield result, cfg, {"sigint": (sigint_before, sigint_after), "tracking_uri": (uri_before, uri_after)}


def _tracking_uri_state() -> tuple[str | None, str | None]:
    """MLflow's process-wide tracking URI and the MLFLOW_TRACKING_URI variable it mirrors."""
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: put both back afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server["url"])


def _children(client, result):
    return client.search_runs([result.mlflow_experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'", max_results=100)


def test_result_points_at_the_server(mlflow_server, server_search):
    result, _, _ = server_search
    assert result.tracking_uri == mlflow_server["url"]
    assert result.n_trials == N_TRIALS
    # Nothing was written to a local store beside the search.
    assert not (Path(result.storage_dir).parent / "mlflow.db").exists()


def test_run_tree_on_the_server(mlflow_server, server_search):
    result, _, _ = server_search
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None and exp.experiment_id == result.mlflow_experiment_id
    parents = client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'search'")
    assert [p.info.run_id for p in parents] == [result.mlflow_run_id]
    parent = parents[0]
    assert parent.info.run_name == result.search_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["autoft.status"] == "completed"
    children = _children(client, result)
    assert len(children) == N_TRIALS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["autoft.role"] for c in children} == {"trial"}
    all_runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(all_runs) == N_TRIALS + 1, "one parent, one child per trial, nothing else"


def test_children_aligned_params_steps_and_statuses(mlflow_server, server_search):
    result, _, _ = server_search
    client = _client(mlflow_server)
    children = _children(client, result)
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1, f"every trial must log the same param keys, got {keys}"
    assert {"learning_rate", "num_frozen_layers", "unfreeze_schedule", "model"} <= next(iter(keys))
    for c in children:
        assert c.info.status in ("FINISHED", "FAILED"), c.info.status
        status = c.data.tags["autoft.status"]
        assert status in ("completed", "pruned", "failed")
        assert c.info.status == ("FAILED" if status == "failed" else "FINISHED")
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "eval_loss"))
        assert steps == list(range(1, len(steps) + 1)), "one eval_loss per epoch, step = epoch"
        if status == "completed":
            assert steps == list(range(1, EPOCHS + 1))
        if status == "pruned":
            assert len(steps) < EPOCHS
    assert any(c.data.tags["autoft.status"] == "completed" for c in children)
    running = client.search_runs([result.mlflow_experiment_id], "attributes.status = 'RUNNING'")
    assert running == []


def test_artifacts_went_to_the_server(mlflow_server, server_search):
    result, _, _ = server_search
    client = _client(mlflow_server)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    arts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "space.yaml", "best_config.yaml"} <= arts
    # The files lie under the server's --artifacts-destination, not beside the search.
    stored = {p.name for p in mlflow_server["artifacts"].rglob("*") if p.is_file()}
    assert {"config.yaml", "space.yaml", "best_config.yaml", "MLmodel"} <= stored
    assert not (Path(result.storage_dir).parent / "mlartifacts").exists()


def test_registered_model_with_best_alias_predicts_label_names(mlflow_server, server_search):
    import mlflow
    import pandas as pd

    result, cfg, _ = server_search
    client = _client(mlflow_server)
    version = client.get_model_version_by_alias(cfg.name, "best")
    assert version.run_id == result.mlflow_run_id
    assert result.model.get("alias_uri") == f"models:/{cfg.name}@best"
    with _fluent_uri(mlflow_server["url"]):
        model = mlflow.pyfunc.load_model(f"models:/{cfg.name}@best")
    preds = model.predict(pd.DataFrame({"text": ["WINNER!! claim your free prize now", "see you at lunch"]}))
    assert len(preds) == 2 and set(preds) <= {"ham", "spam"}


def test_autoft_runs_reads_the_leaderboard_from_the_server(mlflow_server, server_search):
    from typer.testing import CliRunner

    from autoft.cli import app

    result, cfg, _ = server_search
    out = CliRunner().invoke(app, ["runs", cfg.name, "--tracking-uri", mlflow_server["url"]])
    assert out.exit_code == 0, out.output
    assert "leaderboard (eval_loss, min)" in out.output
    for number in range(N_TRIALS):
        assert f"t{number:02d}" in out.output, out.output
    # Wide enough that rich does not wrap the search id (list_searches uses the terminal width).
    listing = CliRunner().invoke(app, ["runs", "--tracking-uri", mlflow_server["url"]], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert result.search_id in listing.output


def test_search_puts_the_sigint_handler_back(server_search):
    before, after = server_search[2]["sigint"]
    assert after is before, f"SIGINT handler left installed after the search: {after!r}"


def test_search_leaves_no_tracking_uri_behind(server_search):
    """Logging the model uses MLflow's fluent API, whose set_tracking_uri also exports
    MLFLOW_TRACKING_URI; left behind, the next search in the same process (a notebook)
    would log to this search's store instead of its own."""
    before, after = server_search[2]["tracking_uri"]
    assert after == before


@pytest.mark.parametrize("quiet", [False, True])
def test_the_cli_keeps_mlflows_run_links_off_stdout(mlflow_server, monkeypatch, capfd, quiet) -> None:
    """stdout of `autoft search --json` is the result; MLflow prints run links there when
    it logs to a server, unless the CLI's environment turns them off."""
    from autoft.cli import _quiet_libraries

    # Set, then unset, so that teardown restores the variable whatever _quiet_libraries leaves.
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    if quiet:
        _quiet_libraries()
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("stdout-check") or client.get_experiment(
        client.create_experiment("stdout-check"))
    run = client.create_run(exp.experiment_id)
    capfd.readouterr()
    client.set_terminated(run.info.run_id)
    printed = capfd.readouterr().out
    assert ("View run" in printed) is not quiet, printed
