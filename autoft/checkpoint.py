"""Trial checkpoints in safetensors + JSON, written atomically.

A checkpoint folder holds ``model.safetensors`` + ``config.json`` (a loadable
Hugging Face checkpoint), ``optimizer.safetensors`` (AdamW moments, flattened),
and ``trainer_state.json`` (epoch, scheduler, RNG, history). The folder is
built under a temporary name and renamed into place, and ``trainer_state.json``
is written last, so a folder without it is torn and never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from autoft import direct_write

STATE_FILE = "trainer_state.json"


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = (
                    value.item() if isinstance(value, torch.Tensor) else value
                )
    groups = [{k: v for k, v in g.items() if k != "names"} for g in opt_state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, st in meta["scalars"].items():
        for name, value in st.items():
            state.setdefault(int(pid), {})[name] = torch.tensor(float(value))
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    writes: direct_write.Mode = "auto",
) -> Path:
    """Write a checkpoint folder atomically; returns its final path. ``writes``: how the weights
    and moments reach the disk (direct_write)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with direct_write.for_save_pretrained(writes):
            model.save_pretrained(str(tmp), safe_serialization=True)
        state = dict(trainer_state)
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            direct_write.save_file(tensors, str(tmp / "optimizer.safetensors"), mode=writes)
            state["optimizer"] = meta
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        _write_json_atomic(tmp / STATE_FILE, state)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=float)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_complete(directory: str | Path) -> bool:
    d = Path(directory)
    if not (d / STATE_FILE).is_file() or not (d / "model.safetensors").is_file():
        return False
    try:
        json.loads((d / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return True


def latest_complete(root: str | Path, pattern: str = "checkpoint-epoch-*") -> Path | None:
    """The newest complete checkpoint under ``root``; torn ones are skipped."""
    candidates = []
    for d in Path(root).glob(pattern):
        try:
            epoch = float(d.name.rsplit("-", 1)[1])  # 0.5 with train.evals_per_epoch 2
        except (IndexError, ValueError):
            continue
        if is_complete(d):
            candidates.append((epoch, d))
    return max(candidates)[1] if candidates else None


def newest_complete(trial_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint_*`` in a Ray trial's folder (Ray numbers them, zero-padded)."""
    return next((d for d in sorted(Path(trial_dir).glob("checkpoint_*"), reverse=True) if is_complete(d)), None)


def best_complete(trial_dir: str | Path, metric: str, mode: str) -> Path | None:
    """The complete ``checkpoint_*`` in a Ray trial's folder whose own evaluation (the last of
    the history it saved) scores best on ``metric``; ties go to the earlier one."""
    scored = []
    for d in sorted(Path(trial_dir).glob("checkpoint_*")):
        if not is_complete(d):
            continue
        history = load_trainer_state(d).get("history") or [{}]
        value = history[-1].get(metric)
        if isinstance(value, (int, float)):
            scored.append((-value if mode == "max" else value, d))
    return min(scored, key=lambda pair: pair[0])[1] if scored else None


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / STATE_FILE).read_text())


def load_model_weights(directory: str | Path, model: Any) -> None:
    weights = load_file(str(Path(directory) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights are stored once; anything else missing means a wrong model.
    real_missing = [k for k in missing if k not in _tied_keys(model)]
    if real_missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {real_missing[:3]}, unexpected {unexpected[:3]}")


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied, dict):
        return set(tied)
    return set(tied)


def load_optimizer(directory: str | Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    path = Path(directory) / "optimizer.safetensors"
    tensors = load_file(str(path)) if path.is_file() else {}
    state = _unflatten_optimizer(tensors, meta)
    current = optimizer.state_dict()
    for g_saved, g_now in zip(state["param_groups"], current["param_groups"]):
        g_saved["params"] = g_now["params"]
    optimizer.load_state_dict(state)


def restore_rng(directory: str | Path) -> None:
    path = Path(directory) / "rng.safetensors"
    if not path.is_file():
        return
    rng = load_file(str(path))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
