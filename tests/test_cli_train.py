"""`autoft train`: one trial from the command line, JSON summary, --resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from autoft import checkpoint as ckpt
from autoft.cli import app


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def train(overrides: list[str], out: Path, *extra: str) -> Any:
    return invoke(["train", *set_args(overrides), "--json", "-o", str(out), *extra])


def test_train_prints_json_summary(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = train(tiny_overrides, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("{")
    summary = last_json(result.stdout)
    assert summary["status"] == "completed" and summary["reason"] == ""
    best = summary["best"]
    assert 0 <= best["eval_f1"] <= 1
    assert best["eval_f1"] >= summary["final"]["eval_f1"]
    assert summary["final"]["epoch"] == 2
    assert summary["recipe"]["epochs"] == 2 and summary["recipe"]["batch_size"] == 16
    assert 0.5 <= summary["majority_baseline_accuracy"] <= 1
    best_dir = Path(summary["best_checkpoint"])
    assert best_dir.is_dir() and best_dir.parent == out.resolve()
    assert ckpt.is_complete(best_dir)
    assert ckpt.load_trainer_state(best_dir)["epoch"] == best["epoch"]
    assert Path(summary["last_checkpoint"]) == out.resolve() / "checkpoint-epoch-2"
    # Progress goes to stderr, one line per epoch; stdout holds only the JSON.
    assert "epoch 1/2" in result.stderr and "epoch 2/2" in result.stderr
    assert "epoch 1/2" not in result.stdout


def test_resume_after_finished_run_exits_cleanly(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = train(tiny_overrides, out)
    assert first.exit_code == 0, first.output
    again = train(tiny_overrides, out, "--resume")
    assert again.exit_code == 0, again.output
    summary = last_json(again.stdout)
    assert summary["status"] == "completed"
    assert summary["final"]["epoch"] == 2
    assert summary["best"] == last_json(first.stdout)["best"]
    assert "epoch 1/2" not in again.stderr  # nothing is trained again
    assert "starting from scratch" not in again.stderr
    assert ckpt.latest_complete(out) == out / "checkpoint-epoch-2"


def test_resume_after_finished_run_reports_best_checkpoint(tiny_overrides: list[str],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = last_json(train(tiny_overrides, out).stdout)
    summary = last_json(train(tiny_overrides, out, "--resume").stdout)
    assert summary["best_checkpoint"] == first["best_checkpoint"]
    assert summary["last_checkpoint"] == first["last_checkpoint"]


def test_resume_continues_from_torn_output(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert train(tiny_overrides, out, "--set", "search.keep_checkpoints=2").exit_code == 0
    (out / "checkpoint-epoch-2" / ckpt.STATE_FILE).unlink()  # killed while writing epoch 2
    again = train(tiny_overrides, out, "--resume", "--set", "search.keep_checkpoints=2")
    assert again.exit_code == 0, again.output
    assert "epoch 1/2" not in again.stderr and "epoch 2/2" in again.stderr
    summary = last_json(again.stdout)
    assert summary["status"] == "completed" and summary["final"]["epoch"] == 2
    assert ckpt.is_complete(out / "checkpoint-epoch-2")


def test_resume_with_empty_output_starts_from_scratch(tiny_overrides: list[str], tmp_path: Path) -> None:
    result = train(tiny_overrides + ["train.epochs=1"], tmp_path / "out", "--resume")
    assert result.exit_code == 0, result.output
    assert "starting from scratch" in result.stderr
    assert last_json(result.stdout)["status"] == "completed"


def test_bad_override_exits_2_with_one_line(tiny_overrides: list[str], tmp_path: Path) -> None:
    result = train(tiny_overrides + ["train.epochs=0"], tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: train.epochs")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unseen_validation_label_exits_2(tiny_overrides: list[str], tiny_data: dict[str, Path],
                                         tmp_path: Path) -> None:
    with open(tiny_data["validation"], encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["label"] = "eggs"
    bad = tmp_path / "validation.csv"
    with open(bad, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = train(tiny_overrides + [f"data.validation={bad}"], tmp_path / "out")
    assert result.exit_code == 2
    assert "error: data.validation" in result.stderr
