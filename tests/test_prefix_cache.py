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


def _run(prepared, cache: bool, cache_dir: Path, evals_per_epoch: int = 1, cache_max_bytes: int | None = None,
         **knobs):
    cfg, plan, data = prepared
    rep = Collect()
    result = run_trial(cfg.base_recipe({"dropout": 0.1, **knobs}), data, plan.model_path, rep,
                       RunOptions(threads=1, cache_frozen=cache, cache_dir=cache_dir,
                                  evals_per_epoch=evals_per_epoch, cache_max_bytes=cache_max_bytes))
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


def test_cache_larger_than_its_bound_is_not_built(prepared, tmp_path):
    plain, _ = _run(prepared, False, tmp_path / "unused", num_frozen_layers=2)
    with pytest.warns(UserWarning, match="raise train.cache_max_gb"):
        bounded, _ = _run(prepared, True, tmp_path, cache_max_bytes=1000, num_frozen_layers=2)
    assert {h["cached_prefix_depth"] for h in bounded} == {0}
    assert not list(tmp_path.glob("*/complete.json"))
    assert [h["eval_f1"] for h in bounded] == [h["eval_f1"] for h in plain]


def test_entry_size_estimate_is_what_the_build_writes(prepared, tmp_path):
    from autoft import prefix_cache

    _, _, data = prepared
    _run(prepared, True, tmp_path, num_frozen_layers=1)
    entry = next(p for p in tmp_path.iterdir() if p.is_dir())
    written = sum(f.stat().st_size for f in entry.glob("depth_*.npy"))
    estimate = prefix_cache.entry_bytes({"train": data.train, "validation": data.validation}, 32, 2)
    assert estimate <= written <= estimate * 1.05  # .npy headers only


def test_search_start_says_when_the_data_cannot_be_cached(prepared):
    from autoft.prefix_cache import entry_bytes, over_bound_notice

    _, _, data = prepared
    splits = {"train": data.train, "validation": data.validation}
    need = entry_bytes(splits, 32, 2)
    assert over_bound_notice(splits, 32, 2, need) is None
    line = over_bound_notice(splits, 32, 2, need - 1)
    assert line is not None and "train.cache_max_gb" in line and "\n" not in line


def _fake_entry(root: Path, name: str, size: int, used_at: float) -> Path:
    import os

    entry = root / name
    entry.mkdir()
    (entry / "depth_1_train.npy").write_bytes(b"x" * size)
    (entry / "complete.json").write_text("{}")
    (entry / "last_used").touch()
    os.utime(entry / "last_used", (used_at, used_at))
    return entry


def test_least_recently_used_entries_go_first(tmp_path):
    from autoft import prefix_cache

    old = _fake_entry(tmp_path, "a", 400, 1000)
    recent = _fake_entry(tmp_path, "b", 400, 3000)
    middle = _fake_entry(tmp_path, "c", 400, 2000)
    new = tmp_path / "d"
    assert prefix_cache.make_room(tmp_path, 500, 1300, new)  # 3 x 402 bytes + 500 > 1300: two go
    assert not old.exists() and not middle.exists() and recent.exists()
    # Larger than the bound: nothing is removed, the caller trains without a cache.
    assert not prefix_cache.make_room(tmp_path, 2000, 1300, new)
    assert recent.exists()


def test_an_entry_in_use_is_not_removed(tmp_path):
    from filelock import FileLock

    from autoft import prefix_cache

    busy = _fake_entry(tmp_path, "a", 400, 1000)
    idle = _fake_entry(tmp_path, "b", 400, 2000)
    with FileLock(str(busy) + ".lock"):
        assert prefix_cache.make_room(tmp_path, 400, 900, tmp_path / "c")
    assert busy.exists() and not idle.exists()
    with FileLock(str(busy) + ".lock"):
        assert not prefix_cache.make_room(tmp_path, 600, 900, tmp_path / "c")


def test_a_killed_build_is_cleared(tmp_path):
    import subprocess
    import sys

    from autoft import prefix_cache

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    torn = tmp_path / f"abc.tmp{proc.pid}"
    torn.mkdir()
    (torn / "depth_1_train.npy").write_bytes(b"x" * 10)
    assert prefix_cache.make_room(tmp_path, 10, 100, tmp_path / "new")
    assert not torn.exists()


def test_gpt2_has_no_single_embeddings_module():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from autoft.prefix_cache import supports_cache

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100,
                                                     n_positions=64, pad_token_id=0))
    assert not supports_cache(model)
