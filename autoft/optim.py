"""AdamW parameter groups: layer-wise LR decay and no decay on biases and norms.

Layer-wise decay (ULMFiT's discriminative LR, ELECTRA, BEiT): the head and the
top-level parts get ``lr``, block ``i`` of ``L`` gets ``lr * decay**(L - i)``
and the embeddings ``lr * decay**(L + 1)``. Biases and normalisation weights
(1-D tensors) get no weight decay, as in the BERT recipe. Parameters that
never train in this trial are left out, so they cost no optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from autoft.layers import ModelLayout


def _no_decay(name: str, param: nn.Parameter) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or lowered.endswith("bias")


def depth_of_parameters(model: nn.Module, layout: ModelLayout) -> dict[int, int]:
    """id(param) -> depth: 0 = embeddings, i + 1 = block i, L + 1 = head and the rest."""
    top = layout.num_layers + 1
    depth = {id(p): top for p in model.parameters()}
    for emb in layout.embeddings:
        for p in emb.parameters():
            depth[id(p)] = 0
    for pid, block in layout.block_of_parameter().items():
        depth[pid] = block + 1
    return depth


def build_param_groups(
    model: nn.Module,
    layout: ModelLayout,
    lr: float,
    weight_decay: float,
    layerwise_lr_decay: float,
    trainable: Iterable[nn.Parameter],
) -> list[dict[str, Any]]:
    wanted = {id(p) for p in trainable}
    depth = depth_of_parameters(model, layout)
    top = layout.num_layers + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if id(p) not in wanted:
            continue
        d = depth[id(p)]
        nd = _no_decay(name, p)
        key = (d, nd)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * layerwise_lr_decay ** (top - d),
                "weight_decay": 0.0 if nd else weight_decay,
                "depth": d,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
