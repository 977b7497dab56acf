"""The search's start: Ray and MLflow open side by side, and a Ray that does not
start leaves an MLflow search run that says so (not one stuck at RUNNING)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("error", "status"), [
    (ConnectionError("could not reach a Ray cluster at 10.9.9.9:6379"), "failed"),
    (KeyboardInterrupt("10.9.9.9: Ctrl-C while Ray started"), "killed"),
])
def test_ray_that_does_not_start_ends_the_mlflow_search_run(tiny_overrides, monkeypatch, error, status):
    from mlflow import MlflowClient

    import autoft.controller as controller
    from autoft.config import load_config

    def no_cluster(address, num_cpus):
        raise error

    monkeypatch.setattr(controller, "_init_ray", no_cluster)
    cfg = load_config(None, [*tiny_overrides, "name=noray", "search.num_trials=2"])
    with pytest.raises(type(error), match="10.9.9.9"):
        controller.run_search(cfg, echo=lambda *_: None)
    state = json.loads(next(Path(cfg.storage).glob("noray-*/autoft_search.json")).read_text())
    run = MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
    assert run.info.status == status.upper()
    assert run.data.tags["autoft.status"] == status
    assert f"Ray did not start: {type(error).__name__}" in run.data.tags["autoft.reason"]
    assert "10.9.9.9" in run.data.tags["autoft.reason"]


def test_preload_imports_the_classifier_code_of_the_model(tiny_model, tmp_path):
    # A fresh interpreter: in this one the tests have imported BERT already.
    probe = ("import sys; from pathlib import Path; from autoft.models import preload_classifier_code; "
             "name = 'transformers.models.bert.modeling_bert'; before = name in sys.modules; "
             f"preload_classifier_code(Path({str(tmp_path)!r})); "  # not a model: nothing, no error
             "after_bad = name in sys.modules; "
             f"preload_classifier_code(Path({str(tiny_model)!r})); "
             "print(before, after_bad, name in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "True"]
