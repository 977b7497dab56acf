"""The CLI's input errors: exit code 2, one line 'error: <field>: ...', no traceback.

Only commands that start nothing heavy run here (validate, spaces, --help); no Ray, no MLflow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autoft.cli import app

runner = CliRunner()


def command_names() -> list[str]:
    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def assert_one_error_line(result, field: str) -> str:  # noqa: ANN001 - click's Result
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("error: "), line
    assert line.removeprefix("error: ").startswith(f"{field}: "), line
    assert "Traceback" not in result.output
    assert result.stdout == ""  # the error goes to stderr
    assert isinstance(result.exception, SystemExit)
    return line


# --------------------------------------------------------------------------- validate: bad --set


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        (["train.epochs=0"], "train.epochs", "greater than or equal to 1"),
        (["train.epochs=abc"], "train.epochs", "'abc'"),
        (["train.epoch=3"], "train.epoch", "did you mean 'epochs'"),
        (["trian.epochs=3"], "trian", "did you mean 'train'"),
        (["train.device=tpu"], "train.device", "'tpu'"),
        (["search.metric=f1"], "search.metric", "eval_f1"),
        (["search.sampler=grid"], "search.sampler", "'grid'"),
        (["pruning.scheduler=pbt"], "pruning.scheduler", "'pbt'"),
        (["name=has space"], "name", "no spaces"),
        (["params.dropout=1.5"], "params.dropout", "1.5"),
        (["params.unknown=1"], "params.unknown", "unknown hyperparameter"),
        (["params.learnin_rate=1.0e-4"], "params.learnin_rate", "did you mean 'learning_rate'"),
        (["params.unfreeze_schedule=cyclic"], "params.unfreeze_schedule", "'cyclic'"),
        (["train.epochs"], "--set", "KEY=VALUE"),
        (["train.epochs=2", "train..batch_size=8"], "--set", "bad key"),
        (["train.epochs=2", "train.batch_size=0"], "train.batch_size", "greater than or equal to 1"),
    ],
)
def test_validate_bad_set(overrides: list[str], field: str, fragment: str) -> None:
    args = ["validate"]
    for o in overrides:
        args += ["--set", o]
    line = assert_one_error_line(runner.invoke(app, args), field)
    assert fragment in line


def test_validate_short_set_option() -> None:
    assert_one_error_line(runner.invoke(app, ["validate", "-s", "train.epochs=0"]), "train.epochs")


# --------------------------------------------------------------------------- validate: the tiny fixtures


def with_sets(overrides: list[str]) -> list[str]:
    args = ["validate"]
    for o in overrides:
        args += ["--set", o]
    return args


def test_validate_good_config(tiny_overrides: list[str]) -> None:
    result = runner.invoke(app, with_sets(tiny_overrides))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")
    assert "(2 blocks)" in result.stdout
    assert "space 'quickstart'" in result.stdout
    assert "160 train / 64 validation" in result.stdout


def test_validate_good_config_file(tiny_overrides: list[str], tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text("search:\n  num_trials: 2\nspace: ulmfit\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(f), *with_sets(tiny_overrides)[1:]])
    assert result.exit_code == 0, result.output
    assert "space 'ulmfit'" in result.stdout


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        (["params.num_frozen_layers=3"], "params.num_frozen_layers", "2 blocks"),
        (["params.reinit_top_layers=3"], "params.reinit_top_layers", "use at most 2"),
        (["space=nope"], "space", "neither a shipped space nor a file"),
        (["space.params.learnig_rate={float: [1.0e-5, 1.0e-3]}"], "space: params.learnig_rate",
         "did you mean 'learning_rate'"),
        (["space.params.num_frozen_layers={int: [0, 5]}"], "space: params.num_frozen_layers", "2 blocks"),
        (["model.path=/nonexistent/model"], "model.path", "does not exist"),
    ],
)
def test_validate_refuses_with_the_tiny_fixtures(tiny_overrides: list[str], extra: list[str], field: str,
                                                  fragment: str) -> None:
    line = assert_one_error_line(runner.invoke(app, with_sets(tiny_overrides + extra)), field)
    assert fragment in line


def test_validate_refuses_a_missing_data_file(tiny_overrides: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, with_sets([*tiny_overrides, f"data.train={tmp_path / 'missing.csv'}"]))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.train")
    assert "Traceback" not in result.output


def test_validate_refuses_a_duplicate_key_file(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("train:\n  epochs: 2\n  epochs: 3\n", encoding="utf-8")
    line = assert_one_error_line(runner.invoke(app, ["validate", str(f)]), f"config '{f}'")
    assert "duplicate key 'epochs' at line 3" in line


# --------------------------------------------------------------------------- help and spaces


def test_commands_are_the_expected_ones() -> None:
    assert {"resume", "runs", "search", "spaces", "train", "ui", "validate"} <= set(command_names())


def test_app_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in command_names():
        assert name in result.output


@pytest.mark.parametrize("name", command_names())
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_subcommand_help(name: str, flag: str) -> None:
    result = runner.invoke(app, [name, flag])
    assert result.exit_code == 0, result.output
    assert f"{name}" in result.output and "Usage" in result.output
    assert "Traceback" not in result.output


def test_no_arguments_prints_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_spaces_lists_the_shipped_spaces() -> None:
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["quickstart", "regularization", "text-classification", "ulmfit"]
    counts = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert counts == {"quickstart": 5, "regularization": 6, "text-classification": 14, "ulmfit": 5}
    assert all("params" in line for line in lines)
