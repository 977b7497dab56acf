"""Find the embeddings, the transformer blocks and the head of any Hugging Face model.

Found by structure, not by class name: the blocks are the largest
``nn.ModuleList`` of identical modules inside the base model; the embeddings
are the base model's ``embeddings`` module or, failing that, its direct
``nn.Embedding`` children (GPT-2's ``wte``/``wpe``); the head is whatever lies
outside the base model. That covers BERT/MiniLM, RoBERTa, DistilBERT, ELECTRA,
DeBERTa-v2, GPT-2 and most encoder or decoder stacks without a lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class ModelLayout:
    embeddings: list[nn.Module]
    blocks: nn.ModuleList
    blocks_name: str
    head: list[nn.Module]
    other: list[nn.Module]  # base-model parts outside embeddings and blocks (pooler, final norm)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block_of_parameter(self) -> dict[int, int]:
        """id(parameter) -> block index, for the parameters inside blocks."""
        return {id(p): i for i, block in enumerate(self.blocks) for p in block.parameters()}


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        return base
    return model


def find_layout(model: nn.Module) -> ModelLayout:
    base = _base_model(model)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(f"no transformer block list found in {type(model).__name__}")
    _, blocks_name, blocks = best

    embeddings: list[nn.Module] = []
    emb = getattr(base, "embeddings", None)
    if isinstance(emb, nn.Module):
        embeddings = [emb]
    else:
        embeddings = [m for m in base.children() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise ValueError(f"no embeddings found in {type(model).__name__}")

    inside = {id(m) for m in blocks.modules()} | {id(m) for e in embeddings for m in e.modules()}
    other = [
        m for m in base.children()
        if id(m) not in inside and m is not blocks and not _contains(m, blocks)
    ]
    # Parts that sit beside the block list inside its parent (DeBERTa's
    # rel_embeddings and encoder LayerNorm) belong to "other" too.
    parent_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    if parent_name:
        parent = base.get_submodule(parent_name)
        other += [m for m in parent.children() if m is not blocks]
    base_ids = {id(m) for m in base.modules()}
    head = [m for m in model.children() if id(m) not in base_ids and m is not base]
    return ModelLayout(embeddings, blocks, blocks_name, head, other)


def _contains(module: nn.Module, target: nn.Module) -> bool:
    return any(m is target for m in module.modules())
