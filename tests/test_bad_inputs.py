"""A corpus of bad inputs: each is refused by `autoft search` before anything starts,
with exit code 2, one line naming the field, and no storage folder or MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoft.cli import app

UNSEEN_LABEL_CSV = "text,label\nhi,ham\nx,eggs\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _space(tmp: Path, text: str) -> list[str]:
    return ["--set", f"space={_write(tmp / 'space.yaml', text)}"]


def _data(tmp: Path, text: str, name: str = "train.csv") -> list[str]:
    return ["--set", f"data.train={_write(tmp / name, text)}"]


def _model(tmp: Path, files: dict[str, str]) -> list[str]:
    d = tmp / "model"
    d.mkdir()
    for name, content in files.items():
        (d / name).write_text(content)
    return ["--set", f"model.path={d}"]


def _config(tmp: Path, text: str) -> list[str]:
    return [str(_write(tmp / "config.yaml", text))]


# (case id, field the message must name, function tmp -> extra CLI args)
CASES = [
    # --- config keys and values
    ("unknown-top-key", "trian", lambda t: _config(t, "trian: {epochs: 2}\n")),
    ("unknown-nested-key", "train.epoch", lambda t: ["--set", "train.epoch=2"]),
    ("epochs-zero", "train.epochs", lambda t: ["--set", "train.epochs=0"]),
    ("epochs-text", "train.epochs", lambda t: ["--set", "train.epochs=many"]),
    ("batch-negative", "train.batch_size", lambda t: ["--set", "train.batch_size=-4"]),
    ("max-length-tiny", "train.max_length", lambda t: ["--set", "train.max_length=2"]),
    ("device-bad", "train.device", lambda t: ["--set", "train.device=tpu"]),
    ("precision-bad", "train.precision", lambda t: ["--set", "train.precision=fp8"]),
    ("trials-zero", "search.num_trials", lambda t: ["--trials", "0"]),
    ("concurrency-zero", "search.max_concurrent", lambda t: ["--max-concurrent", "0"]),
    ("metric-bad", "search.metric", lambda t: ["--set", "search.metric=bleu"]),
    ("mode-bad", "search.mode", lambda t: ["--set", "search.mode=up"]),
    ("sampler-bad", "search.sampler", lambda t: ["--set", "search.sampler=grid"]),
    ("startup-without-model", "search.startup_trials",
     lambda t: ["--set", "search.sampler=random", "--set", "search.startup_trials=4"]),
    ("scheduler-bad", "pruning.scheduler", lambda t: ["--set", "pruning.scheduler=pbt"]),
    ("reduction-one", "pruning.reduction_factor", lambda t: ["--set", "pruning.reduction_factor=1"]),
    ("gpus-negative", "resources.gpus_per_trial", lambda t: ["--set", "resources.gpus_per_trial=-1"]),
    ("cpus-zero", "resources.cpus_per_trial", lambda t: ["--set", "resources.cpus_per_trial=0"]),
    ("name-with-slash", "name", lambda t: ["--name", "../escape"]),
    ("name-with-space", "name", lambda t: ["--name", "my search"]),
    ("set-without-equals", "--set", lambda t: ["--set", "train.epochs"]),
    ("set-into-a-value", "train.epochs", lambda t: ["--set", "train.epochs.x=1"]),
    ("yaml-duplicate-key", "config", lambda t: _config(t, "train: {epochs: 2}\ntrain: {epochs: 3}\n")),
    ("yaml-syntax", "config", lambda t: _config(t, "train: [epochs: 2\n")),
    ("yaml-not-mapping", "config", lambda t: _config(t, "- just\n- a list\n")),
    ("yaml-python-tag", "config", lambda t: _config(t, "name: !!python/object/apply:os.system ['true']\n")),
    ("config-missing", "config", lambda t: [str(t / "nope.yaml")]),
    # --- fixed hyperparameters
    ("param-unknown", "params.learnig_rate", lambda t: ["--set", "params.learnig_rate=1e-4"]),
    ("param-lr-negative", "params.learning_rate", lambda t: ["--set", "params.learning_rate=-1e-4"]),
    ("param-dropout-one", "params.dropout", lambda t: ["--set", "params.dropout=1.5"]),
    ("param-schedule-bad", "params.unfreeze_schedule", lambda t: ["--set", "params.unfreeze_schedule=sometimes"]),
    ("param-frozen-too-deep", "params.num_frozen_layers", lambda t: ["--set", "params.num_frozen_layers=99"]),
    ("param-llrd-zero", "params.layerwise_lr_decay", lambda t: ["--set", "params.layerwise_lr_decay=0"]),
    ("param-freeze-emb-text", "params.freeze_embeddings", lambda t: ["--set", "params.freeze_embeddings=maybe"]),
    # --- search spaces
    ("space-unknown-name", "space", lambda t: ["--set", "space=quickstrat"]),
    ("space-low-gt-high", "params.learning_rate", lambda t: _space(t, "params:\n  learning_rate: {float: [1.0e-3, 1.0e-5]}\n")),
    ("space-log-nonpositive", "params.weight_decay", lambda t: _space(t, "params:\n  weight_decay: {float: [0.0, 0.1], log: true}\n")),
    ("space-empty-choice", "params.unfreeze_schedule", lambda t: _space(t, "params:\n  unfreeze_schedule: {choice: []}\n")),
    ("space-nan-bound", "params.dropout", lambda t: _space(t, "params:\n  dropout: {float: [.nan, 0.3]}\n")),
    ("space-inf-bound", "params.learning_rate", lambda t: _space(t, "params:\n  learning_rate: {float: [1.0e-5, .inf]}\n")),
    ("space-unknown-param", "params.learnin_rate", lambda t: _space(t, "params:\n  learnin_rate: {float: [1.0e-5, 1.0e-3]}\n")),
    ("space-when-unknown", "params.unfreeze_every.when", lambda t: _space(t, "params:\n  unfreeze_every: {int: [1, 3], when: {schedule: [gradual]}}\n")),
    ("space-when-bad-value", "params.unfreeze_every.when", lambda t: _space(t, "params:\n  unfreeze_schedule: {choice: [none, gradual]}\n  unfreeze_every: {int: [1, 3], when: {unfreeze_schedule: [slow]}}\n")),
    ("space-frozen-too-deep", "params.num_frozen_layers", lambda t: _space(t, "params:\n  num_frozen_layers: {int: [0, 12]}\n")),
    ("space-bound-expression", "params.num_frozen_layers", lambda t: _space(t, "params:\n  num_frozen_layers: {int: [0, layers]}\n")),
    ("space-no-params", "params", lambda t: _space(t, "name: empty\nparams: {}\n")),
    ("space-unknown-spec-key", "params.learning_rate.logscale", lambda t: _space(t, "params:\n  learning_rate: {float: [1.0e-5, 1.0e-3], logscale: true}\n")),
    ("space-float-for-int-knob", "params.num_frozen_layers", lambda t: _space(t, "params:\n  num_frozen_layers: {float: [0, 2]}\n")),
    # --- datasets
    ("data-missing-file", "data.train", lambda t: ["--set", f"data.train={t / 'missing.csv'}"]),
    ("data-bad-suffix", "data.train", lambda t: _data(t, "text,label\nhi,ham\n", "train.xlsx")),
    ("data-missing-text-column", "data.text_column", lambda t: _data(t, "body,label\nhi,ham\nbuy,spam\n")),
    ("data-missing-label-column", "data.label_column", lambda t: _data(t, "text,target\nhi,ham\nbuy,spam\n")),
    ("data-one-class", "data.train", lambda t: _data(t, "text,label\nhi,ham\nyo,ham\n")),
    ("data-empty", "data.train", lambda t: _data(t, "text,label\n")),
    ("data-validation-unseen-label", "data.validation", lambda t: _data(t, "text,label\nhi,ham\nbuy,spam\n")
        + ["--set", f"data.validation={_write(t / 'val.csv', UNSEEN_LABEL_CSV)}"]),
    ("data-builtin-unknown", "data.name", lambda t: ["--set", "data.name=imdb"]),
    # --- model paths
    ("model-missing", "model.path", lambda t: ["--set", f"model.path={t / 'no-model'}"]),
    ("model-is-file", "model.path", lambda t: ["--set", f"model.path={_write(t / 'model.bin', 'x')}"]),
    ("model-no-config", "model.path", lambda t: _model(t, {"model.safetensors": "x"})),
    ("model-bad-config", "model.path", lambda t: _model(t, {"config.json": "{not json", "model.safetensors": "x"})),
    ("model-pickle-only", "model.path", lambda t: _model(t, {"config.json": json.dumps({"model_type": "bert"}),
                                                              "pytorch_model.bin": "x"})),
    ("model-no-weights", "model.path", lambda t: _model(t, {"config.json": json.dumps({"model_type": "bert"})})),
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize(("case", "field", "make"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_refused_before_anything_starts(tmp_path, tiny_model, tiny_data, case, field, make):
    storage = tmp_path / "runs"
    base = ["--set", f"model.path={tiny_model}", "--set", f"data.train={tiny_data['train']}",
            "--set", f"data.validation={tiny_data['validation']}"]
    extra = make(tmp_path)
    config = [a for a in extra if a.endswith((".yaml", ".yml")) and not a.startswith("space=")][:1]
    rest = [a for a in extra if a not in config]
    args = ["search", *config, *base, *rest, "--storage", str(storage)]
    if "--name" not in rest:
        args += ["--name", "bad"]
    result = CliRunner().invoke(app, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert field in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not storage.exists(), "no storage folder for a refused input"
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("mlflow.db"))
