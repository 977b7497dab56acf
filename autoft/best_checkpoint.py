"""What a finished search keeps: the best trial's best checkpoint, exported with its
tokenizer to ``<search>/best_checkpoint`` and scored on the test split; the trials'
own checkpoints are dropped (a finished search resumes nothing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from autoft.config import ExperimentConfig
from autoft.data import PreparedData
from autoft.models import load_tokenizer


def trial_dirname(trial_id: str | None) -> str:
    """The name of a trial's folder in the search folder (Ray's trial_dirname_creator)."""
    return f"trial_{trial_id}"


def trial_folder(search_dir: Path, trial_id: str | None) -> Path:
    return Path(search_dir) / trial_dirname(trial_id)


def export_best(grid: Any, trial_id: str, metric: str, mode: str, search_dir: Path,
                model_path: Path, trust_remote_code: bool) -> Path | None:
    """Copy the best trial's best checkpoint to <search>/best_checkpoint, with its tokenizer."""
    from autoft.checkpoint import best_complete, is_complete

    result = next((r for r in grid if r.metrics and r.metrics.get("trial_id") == trial_id), None)
    if result is not None:
        ckpt = result.get_best_checkpoint(metric, mode) if result.best_checkpoints else result.checkpoint
        if ckpt is None:
            return None
        source, folder = Path(ckpt.path), Path(ckpt.path).parent
        if not is_complete(source):
            # Ray's record can name a checkpoint rotated away or left empty after a resume
            # from a torn state save (see callbacks.ResumeRepair): the trial's best one on disk.
            source = best_complete(folder, metric, mode)
    else:
        # A trial that finished after the Ray save a resume started from is not in Ray's
        # record (autoft.reconcile's ``lost``), yet may be the best: its folder still is.
        folder = trial_folder(search_dir, trial_id)
        if not folder.is_dir():
            return None
        source = best_complete(folder, metric, mode)
    if source is None:
        raise FileNotFoundError(f"no complete checkpoint of trial {trial_id} in {folder}")
    out = search_dir / "best_checkpoint"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("optimizer.safetensors", "rng.safetensors"))
    # Loaded afresh, not the search's: tokenizing left truncation on its backend, which
    # save_pretrained would write into tokenizer.json (measured: max_length 128).
    load_tokenizer(model_path, trust_remote_code).save_pretrained(str(out))
    return out


def drop_trial_checkpoints(search_dir: Path) -> None:
    """A finished search resumes nothing: the exported best checkpoint is all worth disk."""
    for ckpt in search_dir.glob("trial_*/checkpoint_*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt, ignore_errors=True)


def score_test(ckpt_dir: Path, data: PreparedData, cfg: ExperimentConfig) -> dict[str, float]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from autoft.trial import autocast_dtype, evaluate, pick_device

    assert data.test is not None
    device = pick_device(cfg.train.device)
    model = AutoModelForSequenceClassification.from_pretrained(str(ckpt_dir), use_safetensors=True,
                                                               local_files_only=True).to(device)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return evaluate(model, data.test, cfg.train.eval_batch_size, data.pad_token_id, device,
                    autocast_dtype(device, cfg.train.precision))
