"""The frozen-prefix cache changes speed, never results."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoft.config import load_config
from autoft.controller import plan_search, tokenize_for
from autoft.trial import RunOptions, run_trial


class Collect:
    def __init__(self) -> None:
        self.history: list[dict] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.history.append(metrics)


@pytest.fixture(scope="module")
def prepared(tiny_overrides_module):
    cfg = load_config(None, tiny_overrides_module)
    plan = plan_search(cfg)
    return cfg, plan, tokenize_for(plan)


@pytest.fixture(scope="module")
def tiny_overrides_module(tiny_model, tiny_data, tmp_path_factory):
    return [f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
            f"data.validation={tiny_data['validation']}", "train.epochs=3", "train.batch_size=16",
            "train.max_length=32", f"storage={tmp_path_factory.mktemp('runs')}"]


def _run(prepared, cache: bool, cache_dir: Path, evals_per_epoch: int = 1, **knobs):
    cfg, plan, data = prepared
    rep = Collect()
    result = run_trial(cfg.base_recipe({"dropout": 0.1, **knobs}), data, plan.model_path, rep,
                       RunOptions(threads=1, cache_frozen=cache, cache_dir=cache_dir,
                                  evals_per_epoch=evals_per_epoch))
    return rep.history, result


@pytest.mark.parametrize("knobs", [
    {"num_frozen_layers": 1},
    {"num_frozen_layers": 2},
    {"num_frozen_layers": 1, "unfreeze_schedule": "gradual", "unfreeze_every": 1},
    {"num_frozen_layers": 1, "reinit_top_layers": 1},
])
def test_same_metrics_with_and_without_cache(prepared, tmp_path, knobs):
    plain, _ = _run(prepared, False, tmp_path, **knobs)
    fast, _ = _run(prepared, True, tmp_path, **knobs)
    assert [h["cached_prefix_depth"] for h in plain] == [0, 0, 0]
    assert all(h["cached_prefix_depth"] >= 1 for h in fast)
    for a, b in zip(plain, fast, strict=True):
        for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_f1"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key


def test_same_metrics_with_and_without_cache_when_evaluating_mid_epoch(prepared, tmp_path):
    """An evaluation mid-epoch must leave the frozen blocks in eval mode (no dropout),
    as the cache assumes: else the two runs part after the first half epoch."""
    knobs = {"num_frozen_layers": 1, "unfreeze_schedule": "gradual", "unfreeze_every": 1, "evals_per_epoch": 2}
    plain, _ = _run(prepared, False, tmp_path, **knobs)
    fast, _ = _run(prepared, True, tmp_path, **knobs)
    assert len(plain) == 6
    for a, b in zip(plain, fast, strict=True):
        for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_f1"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["epoch"], key)


def test_cache_is_built_once_and_shared(prepared, tmp_path):
    _run(prepared, True, tmp_path, num_frozen_layers=2)
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "complete.json").is_file()
    stamp = (folders[0] / "complete.json").stat().st_mtime_ns
    # A trial at another depth reuses the same one-pass build (all depths stored).
    history, _ = _run(prepared, True, tmp_path, num_frozen_layers=1)
    assert history[0]["cached_prefix_depth"] == 1
    assert (folders[0] / "complete.json").stat().st_mtime_ns == stamp
    assert {p.name for p in folders[0].glob("depth_*_train.npy")} == {"depth_1_train.npy", "depth_2_train.npy"}


def test_no_cache_when_everything_trains(prepared, tmp_path):
    history, _ = _run(prepared, True, tmp_path, num_frozen_layers=0)
    assert {h["cached_prefix_depth"] for h in history} == {0}
    assert not any(tmp_path.iterdir())


def test_inexact_cache_falls_back(prepared, tmp_path, monkeypatch):
    from autoft import prefix_cache

    monkeypatch.setattr(prefix_cache, "check_exact", lambda *a, **k: False)
    with pytest.warns(UserWarning, match="not exact"):
        history, _ = _run(prepared, True, tmp_path, num_frozen_layers=2)
    assert {h["cached_prefix_depth"] for h in history} == {0}


def test_gpt2_has_no_single_embeddings_module():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from autoft.prefix_cache import supports_cache

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100,
                                                     n_positions=64, pad_token_id=0))
    assert not supports_cache(model)
