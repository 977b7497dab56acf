"""Shared fixtures: a tiny random BERT (hidden 32, 2 blocks) and small real data.

Everything is built in a temporary folder, offline, in about a second.
"""

from __future__ import annotations

import collections
import csv
import logging
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "autoft" / "datasets" / "sms_spam"
SHARED_DATA = REPO.parent / "shared" / "data"


def read_rows(path: Path, limit: int) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [row for _, row in zip(range(limit), csv.DictReader(fh))]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def build_vocab(rows: list[dict[str, str]], size: int = 400) -> list[str]:
    counts = collections.Counter(w for r in rows for w in re.findall(r"[a-z0-9]+", r["text"].lower()))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in counts.most_common(size)]


def make_tiny_bert(target: Path, vocab: list[str], seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(target / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(target))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(target), safe_serialization=True)
    return target


def tiny_data_in(root: Path) -> dict[str, Path]:
    train = read_rows(SMS / "train.csv", 160)
    val = read_rows(SMS / "validation.csv", 64)
    return {"train": write_csv(root / "train.csv", train), "validation": write_csv(root / "validation.csv", val),
            "rows": root}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_data_in(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = read_rows(SMS / "train.csv", 2000)
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), build_vocab(rows))


@pytest.fixture()
def tiny_overrides(tiny_model: Path, tiny_data: dict[str, Path], tmp_path: Path) -> list[str]:
    """--set overrides that point the embedded config at the tiny model and data."""
    return [
        f"model.path={tiny_model}",
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}",
        "train.epochs=2",
        "train.batch_size=16",
        "train.max_length=32",
        f"storage={tmp_path / 'runs'}",
    ]


def search_children(result):
    """``(client, trial runs)`` of a finished search, read back through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'", max_results=100)
    return client, runs


TINY_SEARCH_TRIALS = 6


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_data: dict[str, Path]):
    """One real Ray Tune search of the tiny model, shared (read-only) by the tests that
    inspect a finished search: ``(result, cfg, status lines, storage folder, env before)``."""
    import ray

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("search")
    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", "train.epochs=3", "train.batch_size=16",
        "train.max_length=32", f"storage={root / 'runs'}", "name=tiny",
        f"search.num_trials={TINY_SEARCH_TRIALS}", "search.max_concurrent=2",
        # Loss varies continuously even for an untrained tiny model, so ASHA
        # has distinct values to cut at (F1 of a majority predictor ties).
        "search.metric=eval_loss", "search.mode=min", "search.seed=3",
        "pruning.grace_period=1", "pruning.reduction_factor=2",
    ])
    lines: list[str] = []
    env_before = dict(os.environ)
    result = run_search(cfg, echo=lines.append)
    env_after = dict(os.environ)
    yield result, cfg, lines, root / "runs", (env_before, env_after)
    ray.shutdown()


@pytest.fixture()
def local_ray(monkeypatch: pytest.MonkeyPatch):
    """A one-CPU local Ray for one test, shut down after it (one already up is used as it is)."""
    import ray

    # Before Ray starts: its workers keep the environment they start with.
    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield
    if started:
        ray.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
