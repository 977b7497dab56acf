"""Frozen-prefix activation cache (AutoFreeze, Liu et al. 2021; Hippo, PVLDB 2022).

When the embeddings and the bottom ``k`` blocks stay frozen for a whole trial,
their output for each example never changes: compute it once (eval mode, fp32,
so it is exact) and train only blocks ``k..L-1`` and the head from it.

Generic over architectures without per-model forward code: while the cache is
*installed*, the base model's ``embeddings`` module is swapped for one that
returns the cached hidden states of the current batch, and the block list is
sliced to ``blocks[k:]``; the model's own forward then does everything else
(attention masks, pooler, head). A self-check against the uncached model on a
few examples turns the cache off for any architecture where that is not exact.

One pass with ``output_hidden_states`` serves every depth; depths are stored
as ``.npy`` files (memory-mapped when read) under a folder keyed by model,
data and tokenization, built once per folder under a file lock, so
concurrent trials and later searches on the same data share it.

The cache root is bounded: before an entry is built, the least recently used
entries are removed until it fits; an entry larger than the whole bound is not
built (the trial trains without the cache, with the same results).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoft.data import TokenizedSplit, batches
from autoft.layers import ModelLayout
from autoft.scratch import remove_dead


@dataclass
class CachedSplit:
    hidden: np.ndarray  # float32 [total_tokens, hidden]; rows follow the split's offsets
    offsets: np.ndarray

    def batch(self, idx: np.ndarray, width: int) -> torch.Tensor:
        out = np.zeros((len(idx), width, self.hidden.shape[1]), dtype=np.float32)
        for row, i in enumerate(idx):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            out[row, : b - a] = self.hidden[a:b]
        return torch.from_numpy(out)


class _CachedEmbeddings(nn.Module):
    """Stands in for the embeddings module: returns the cached prefix output."""

    def __init__(self) -> None:
        super().__init__()
        self.current: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.current is not None, "no cached batch set"
        return self.current


def supports_cache(model: nn.Module) -> bool:
    """Needs one embeddings module to stand in for (GPT-2's wte + wpe has none)."""
    base = getattr(model, "base_model", model)
    return isinstance(getattr(base, "embeddings", None), nn.Module)


@contextlib.contextmanager
def installed(model: nn.Module, layout: ModelLayout, depth: int) -> Iterator[_CachedEmbeddings]:
    """Swap in the cache: embeddings -> cached output, blocks -> blocks[depth:]."""
    base = getattr(model, "base_model", model)
    original_emb = base.embeddings
    parent_name, _, attr = layout.blocks_name.rpartition(".")
    parent = base.get_submodule(parent_name) if parent_name else base
    original_blocks = getattr(parent, attr)
    stand_in = _CachedEmbeddings()
    base.embeddings = stand_in
    setattr(parent, attr, nn.ModuleList(list(original_blocks)[depth:]))
    try:
        yield stand_in
    finally:
        base.embeddings = original_emb
        setattr(parent, attr, original_blocks)


def cache_key(model_path: Path, fingerprint: str) -> str:
    st = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(Path(model_path).glob("*.safetensors"))]
    import hashlib

    return hashlib.sha256(json.dumps([str(model_path), st, fingerprint]).encode()).hexdigest()[:16]


def _build(model: nn.Module, splits: dict[str, TokenizedSplit], pad_id: int, out: Path,
           batch_size: int, device: torch.device) -> None:
    """One eval pass with all hidden states; writes depth_{k}_{split}.npy for k = 1..L."""
    was_training = model.training
    model.eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for name, split in splits.items():
            total = int(split.offsets[-1])
            writers: dict[int, np.ndarray] = {}
            base = getattr(model, "base_model", model)
            with torch.inference_mode():
                start = 0
                order = np.arange(len(split))
                for i in range(0, len(split), batch_size):
                    idx = order[i : i + batch_size]
                    sub = split.subset(idx)
                    ids, mask, _ = next(batches(sub, len(idx), pad_id, shuffle=False, keep_order=True))
                    hs = base(input_ids=ids.to(device), attention_mask=mask.to(device),
                              output_hidden_states=True).hidden_states
                    if not writers:
                        hidden = hs[0].shape[-1]
                        writers = {k: np.lib.format.open_memmap(tmp / f"depth_{k}_{name}.npy", mode="w+",
                                                                dtype=np.float32, shape=(total, hidden))
                                   for k in range(1, len(hs))}
                    lengths = sub.lengths()
                    for k, arr in writers.items():
                        h = hs[k].float().cpu().numpy()
                        pos = start
                        for row, n in enumerate(lengths):
                            arr[pos : pos + n] = h[row, :n]
                            pos += n
                    start += int(lengths.sum())
            for arr in writers.values():
                arr.flush()
        (tmp / "complete.json").write_text(json.dumps({"depths": sorted(writers)}))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.train(was_training)


USED = "last_used"  # touched on every load: the recency eviction goes by


def entry_bytes(splits: dict[str, TokenizedSplit], hidden_size: int, depths: int) -> int:
    """Disk an entry takes: every stored depth of every (unpadded) token, in fp32."""
    return sum(int(split.offsets[-1]) for split in splits.values()) * hidden_size * depths * 4


def over_bound_notice(splits: dict[str, TokenizedSplit], hidden_size: int, depths: int, limit_bytes: int) -> str | None:
    """A line for the user when this data's cache can never fit its bound, else None."""
    need = entry_bytes(splits, hidden_size, depths)
    if need <= limit_bytes:
        return None
    return (f"note: the frozen-prefix cache for this data would take {need / 1e9:.3g} GB, more than "
            f"train.cache_max_gb={limit_bytes / 1e9:g}: trials train without it (same results, slower); "
            f"raise train.cache_max_gb above {need / 1e9:.3g} to use it")


def load_or_build(model: nn.Module, splits: dict[str, TokenizedSplit], pad_id: int, depth: int,
                  folder: Path, device: torch.device, batch_size: int = 64,
                  limit_bytes: int | None = None, need_bytes: int = 0) -> dict[str, CachedSplit] | None:
    """The cached splits at ``depth``, built first if need be; None if the entry
    (``need_bytes``) cannot fit in ``limit_bytes`` for the whole cache root."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "complete.json").is_file():
            # One builder at a time per root, so two builds cannot both count the same free room.
            with FileLock(str(folder.parent / ".room.lock")):
                if limit_bytes is not None and not make_room(folder.parent, need_bytes, limit_bytes, folder):
                    return None
                _build(model, splits, pad_id, folder, batch_size, device)
        (folder / USED).touch()
    return {name: CachedSplit(np.load(folder / f"depth_{depth}_{name}.npy", mmap_mode="r"), split.offsets)
            for name, split in splits.items()}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _last_used(entry: Path) -> float:
    marker = entry / USED
    return marker.stat().st_mtime if marker.exists() else entry.stat().st_mtime


def make_room(root: Path, need: int, limit: int, building: Path) -> bool:
    """Remove least recently used complete entries of ``root`` until ``need`` more bytes
    fit under ``limit``; False if they cannot (an entry larger than the limit removes
    nothing). An entry whose lock another process holds is left alone; trials already
    reading a removed entry keep their memory maps (POSIX unlinks only the names)."""
    from filelock import FileLock, Timeout

    if need > limit:
        return False
    remove_dead(root.glob("*.tmp*"), _builder_pid)  # builds whose process was killed
    sizes = {p: _size(p) for p in root.iterdir() if p.is_dir() and p != building and (p / "complete.json").is_file()}
    used = sum(sizes.values())
    for entry in sorted(sizes, key=_last_used):
        if used + need <= limit:
            break
        try:
            with FileLock(str(entry) + ".lock", timeout=0):
                shutil.rmtree(entry, ignore_errors=True)
        except Timeout:
            continue
        used -= sizes[entry]
    return used + need <= limit


def _builder_pid(name: str) -> int | None:
    pid = name.rpartition(".tmp")[2]  # _build's folder: <key>.tmp<pid>
    return int(pid) if pid.isdigit() else None


def check_exact(model: nn.Module, layout: ModelLayout, depth: int, split: TokenizedSplit,
                cached: CachedSplit, pad_id: int, device: torch.device, atol: float = 1e-4) -> bool:
    """Does the cached path give the uncached model's logits on a few examples?"""
    n = min(8, len(split))
    idx = np.arange(n)
    sub = split.subset(idx)
    ids, mask, _ = next(batches(sub, n, pad_id, shuffle=False, keep_order=True))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        full = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        with installed(model, layout, depth) as emb:
            emb.current = cached.batch(idx, ids.shape[1]).to(device)
            fast = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    model.train(was_training)
    return bool(torch.allclose(full, fast, atol=atol, rtol=1e-4))
