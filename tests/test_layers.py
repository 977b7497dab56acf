"""find_layout on tiny random models of every architecture the module claims to cover.

Each model is built from a config in the test (hidden 32, 2 blocks): no download.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch import nn

from autoft.layers import ModelLayout, find_layout

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
            max_position_embeddings=64)


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(num_labels=3, **TINY))


def roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(num_labels=3, pad_token_id=1, **TINY))


def distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(
        num_labels=3, dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100, max_position_embeddings=64))


def electra() -> nn.Module:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    # embedding_size != hidden_size adds ELECTRA's embeddings_project, which sits outside the embeddings
    return ElectraForSequenceClassification(ElectraConfig(num_labels=3, embedding_size=16, **TINY))


def deberta_v2() -> nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    return DebertaV2ForSequenceClassification(DebertaV2Config(num_labels=3, **TINY))


def deberta_v2_relative() -> nn.Module:
    """DeBERTa-v3 style: relative attention puts rel_embeddings, a LayerNorm and a conv beside the blocks."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    return DebertaV2ForSequenceClassification(DebertaV2Config(
        num_labels=3, relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm",
        conv_kernel_size=3, pos_att_type=["p2c", "c2p"], **TINY))


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    return GPT2ForSequenceClassification(GPT2Config(
        num_labels=3, n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=100,
        pad_token_id=0, bos_token_id=0, eos_token_id=0))


# builder, attribute path of the base model, attribute path of the block list (inside the base), embeddings
ARCHS: dict[str, tuple[Callable[[], nn.Module], str, str, tuple[str, ...]]] = {
    "bert": (bert, "bert", "encoder.layer", ("embeddings",)),
    "roberta": (roberta, "roberta", "encoder.layer", ("embeddings",)),
    "distilbert": (distilbert, "distilbert", "transformer.layer", ("embeddings",)),
    "electra": (electra, "electra", "encoder.layer", ("embeddings",)),
    "deberta-v2": (deberta_v2, "deberta", "encoder.layer", ("embeddings",)),
    "deberta-v2-relative": (deberta_v2_relative, "deberta", "encoder.layer", ("embeddings",)),
    "gpt2": (gpt2, "transformer", "h", ("wte", "wpe")),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> tuple[str, nn.Module, ModelLayout]:
    torch.manual_seed(0)
    model = ARCHS[request.param][0]()
    return request.param, model, find_layout(model)


def params_of(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def test_two_blocks(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    _, _, layout = arch
    assert layout.num_layers == 2
    assert len(layout.blocks) == 2


def test_blocks_are_the_real_layer_list(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    name, model, layout = arch
    _, base_attr, blocks_attr, _ = ARCHS[name]
    base = getattr(model, base_attr)
    assert layout.blocks is base.get_submodule(blocks_attr)
    assert layout.blocks_name == blocks_attr
    assert isinstance(layout.blocks, nn.ModuleList)


def test_embeddings_found_and_disjoint_from_blocks(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    name, model, layout = arch
    _, base_attr, _, emb_attrs = ARCHS[name]
    base = getattr(model, base_attr)
    assert [id(m) for m in layout.embeddings] == [id(getattr(base, a)) for a in emb_attrs]
    emb = {id(p) for p in params_of(layout.embeddings)}
    assert emb, "embeddings have no parameters"
    assert not emb & {id(p) for p in layout.blocks.parameters()}
    word = base.get_input_embeddings()
    assert id(word.weight) in emb, "the token embedding table belongs to the embeddings"


def test_head_lies_outside_the_base_model(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    _, model, layout = arch
    base_params = {id(p) for p in model.base_model.parameters()}
    head = params_of(layout.head)
    assert head, "the classification head has parameters"
    assert not {id(p) for p in head} & base_params
    # and the head is all of what lies outside the base model
    outside = {id(p) for p in model.parameters()} - base_params
    assert {id(p) for p in head} == outside
    # the 3-way output layer is in the head
    assert any(p.ndim == 2 and p.shape[0] == 3 for p in head)


def test_other_is_inside_the_base_model(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    _, model, layout = arch
    base_modules = {id(m) for m in model.base_model.modules()}
    assert all(id(m) in base_modules for m in layout.other)


def test_every_parameter_belongs_to_exactly_one_part(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    _, model, layout = arch
    count = Counter(id(p) for p in params_of(layout.embeddings) + list(layout.blocks.parameters())
                    + params_of(layout.head) + params_of(layout.other))
    names = dict((id(p), n) for n, p in model.named_parameters())
    missing = [n for n, p in model.named_parameters() if count[id(p)] == 0]
    twice = [names.get(i, "?") for i, c in count.items() if c > 1]
    assert not missing, f"parameters in no part: {missing}"
    assert not twice, f"parameters in more than one part: {twice}"
    assert set(count) == set(names)


def test_block_of_parameter(arch: tuple[str, nn.Module, ModelLayout]) -> None:
    _, _, layout = arch
    mapping = layout.block_of_parameter()
    for i, block in enumerate(layout.blocks):
        assert all(mapping[id(p)] == i for p in block.parameters())
    assert len(mapping) == sum(1 for _ in layout.blocks.parameters())


def test_relative_deberta_parts_beside_the_blocks_are_other() -> None:
    model = deberta_v2_relative()
    layout = find_layout(model)
    enc = model.deberta.encoder
    other = {id(m) for m in layout.other}
    assert {id(enc.rel_embeddings), id(enc.LayerNorm), id(enc.conv)} <= other


def test_gpt2_final_norm_is_other() -> None:
    model = gpt2()
    layout = find_layout(model)
    assert any(m is model.transformer.ln_f for m in layout.other)
    assert [m for m in layout.head] == [model.score]


def test_no_block_list_is_refused() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no transformer block list"):
        find_layout(model)


def test_no_embeddings_is_refused() -> None:
    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    with pytest.raises(ValueError, match="no embeddings"):
        find_layout(Blocks())


def test_largest_homogeneous_list_wins() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.small = nn.ModuleList([nn.Linear(2, 2) for _ in range(5)])
            self.mixed = nn.ModuleList([nn.Linear(8, 64), nn.Conv1d(8, 64, 3)])
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    toy = Toy()
    layout = find_layout(toy)
    assert layout.blocks is toy.blocks and layout.num_layers == 3
    assert layout.embeddings == [toy.emb]
