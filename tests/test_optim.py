"""AdamW parameter groups (layer-wise LR decay, no decay on 1-D tensors) and the
freezing helpers of the trial loop, on a tiny random BERT built in the test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoft.freezing import plan_for_epoch
from autoft.layers import ModelLayout, find_layout
from autoft.optim import build_param_groups, depth_of_parameters
from autoft.recipe import Recipe
from autoft.trial import apply_plan, ever_trainable

NUM_LAYERS = 2
LR = 1e-3


def tiny_bert(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config)


@pytest.fixture()
def model() -> nn.Module:
    return tiny_bert()


@pytest.fixture()
def layout(model: nn.Module) -> ModelLayout:
    return find_layout(model)


def group_of(groups: list[dict], name: str) -> dict:
    found = [g for g in groups if name in g["names"]]
    assert len(found) == 1, name
    return found[0]


def expected_depth(name: str) -> int:
    """0 = embeddings, i + 1 = block i, L + 1 = everything else (pooler, classifier)."""
    if name.startswith("bert.embeddings."):
        return 0
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return NUM_LAYERS + 1


# --------------------------------------------------------------------------- build_param_groups


def test_depths(model: nn.Module, layout: ModelLayout) -> None:
    depth = depth_of_parameters(model, layout)
    for name, p in model.named_parameters():
        assert depth[id(p)] == expected_depth(name), name


@pytest.mark.parametrize("decay", [1.0, 0.9, 0.5])
def test_layerwise_learning_rates(model: nn.Module, layout: ModelLayout, decay: float) -> None:
    groups = build_param_groups(model, layout, LR, 0.01, decay, model.parameters())
    for name, _ in model.named_parameters():
        lr = group_of(groups, name)["lr"]
        if name.startswith("bert.embeddings."):
            want = LR * decay ** (NUM_LAYERS + 1)
        elif name.startswith("bert.encoder.layer."):
            i = int(name.split(".")[3])
            want = LR * decay ** (NUM_LAYERS - i)
        else:  # classifier head and pooler
            want = LR
        assert math.isclose(lr, want, rel_tol=1e-12), (name, lr, want)


def test_head_gets_the_peak_rate_and_lower_blocks_less(model: nn.Module, layout: ModelLayout) -> None:
    groups = build_param_groups(model, layout, LR, 0.01, 0.8, model.parameters())
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["classifier.weight"] == LR
    assert lr["bert.pooler.dense.weight"] == LR
    assert (lr["classifier.weight"] > lr["bert.encoder.layer.1.output.dense.weight"]
            > lr["bert.encoder.layer.0.output.dense.weight"] > lr["bert.embeddings.word_embeddings.weight"])


def test_no_weight_decay_on_biases_and_norms(model: nn.Module, layout: ModelLayout) -> None:
    groups = build_param_groups(model, layout, LR, 0.05, 0.9, model.parameters())
    for name, p in model.named_parameters():
        wd = group_of(groups, name)["weight_decay"]
        if p.ndim < 2:
            assert wd == 0.0, name
            assert name.endswith("bias") or "LayerNorm" in name, name
        else:
            assert wd == 0.05, name
    # Spot checks, so the rule is not only checked against itself.
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["bert.embeddings.LayerNorm.weight"] == 0.0
    assert wd["bert.encoder.layer.0.attention.self.query.bias"] == 0.0
    assert wd["bert.encoder.layer.0.attention.self.query.weight"] == 0.05
    assert wd["bert.embeddings.word_embeddings.weight"] == 0.05
    assert wd["classifier.weight"] == 0.05
    assert wd["classifier.bias"] == 0.0


def test_every_parameter_in_exactly_one_group(model: nn.Module, layout: ModelLayout) -> None:
    groups = build_param_groups(model, layout, LR, 0.01, 0.9, model.parameters())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    for g in groups:
        assert len(g["params"]) == len(g["names"])
        assert len({(round(math.log(g["lr"]), 9), g["weight_decay"]) for _ in g["params"]}) == 1
    # one group per (depth, decay?) pair: (L + 2) depths x 2
    assert len(groups) == 2 * (NUM_LAYERS + 2)


def test_parameters_not_trainable_are_left_out(model: nn.Module, layout: ModelLayout) -> None:
    trainable = [p for n, p in model.named_parameters()
                 if n.startswith(("classifier.", "bert.pooler.", "bert.encoder.layer.1."))]
    groups = build_param_groups(model, layout, LR, 0.01, 0.9, trainable)
    names = {n for g in groups for n in g["names"]}
    assert names == {n for n, p in model.named_parameters() if any(p is q for q in trainable)}
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in names)
    assert {g["depth"] for g in groups} == {NUM_LAYERS, NUM_LAYERS + 1}


def test_empty_trainable_gives_no_groups(model: nn.Module, layout: ModelLayout) -> None:
    assert build_param_groups(model, layout, LR, 0.01, 0.9, []) == []


def test_groups_feed_adamw(model: nn.Module, layout: ModelLayout) -> None:
    groups = build_param_groups(model, layout, LR, 0.01, 0.9, model.parameters())
    opt = torch.optim.AdamW(groups, lr=LR)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


# --------------------------------------------------------------------------- ever_trainable / apply_plan


def names_of(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def prefixes(model: nn.Module, *starts: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(starts)}


@pytest.mark.parametrize(
    ("recipe", "never"),
    [
        (Recipe(num_frozen_layers=0, epochs=2), ()),
        (Recipe(num_frozen_layers=1, epochs=2), ("bert.embeddings.", "bert.encoder.layer.0.")),
        (Recipe(num_frozen_layers=1, freeze_embeddings=False, epochs=2), ("bert.encoder.layer.0.",)),
        (Recipe(num_frozen_layers=2, epochs=2), ("bert.embeddings.", "bert.encoder.layer.")),
        (Recipe(unfreeze_schedule="gradual", epochs=2), ("bert.embeddings.", "bert.encoder.layer.0.")),
        (Recipe(unfreeze_schedule="gradual", epochs=3), ()),
        (Recipe(unfreeze_schedule="step", unfreeze_every=2, epochs=2), ("bert.embeddings.", "bert.encoder.layer.")),
    ],
)
def test_ever_trainable(model: nn.Module, layout: ModelLayout, recipe: Recipe, never: tuple[str, ...]) -> None:
    got = names_of(model, ever_trainable(model, layout, recipe))
    everything = {n for n, _ in model.named_parameters()}
    assert got == everything - (prefixes(model, *never) if never else set())
    assert prefixes(model, "classifier.", "bert.pooler.") <= got  # head and pooler always train


@pytest.mark.parametrize(
    ("training_blocks", "embeddings_train"),
    [((0, 1), True), ((1,), False), ((), False), ((0, 1), False), ((), True)],
)
def test_apply_plan_sets_grad_and_mode(model: nn.Module, layout: ModelLayout,
                                       training_blocks: tuple[int, ...], embeddings_train: bool) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # apply_plan must not depend on the previous state
    apply_plan(layout, model, training_blocks, embeddings_train)
    for name, p in model.named_parameters():
        d = expected_depth(name)
        if d == 0:
            want = embeddings_train
        elif d <= NUM_LAYERS:
            want = (d - 1) in training_blocks
        else:
            want = True
        assert p.requires_grad is want, name
    for i, block in enumerate(model.bert.encoder.layer):
        assert all(m.training is (i in training_blocks) for m in block.modules()), i
    assert all(m.training is embeddings_train for m in model.bert.embeddings.modules())
    assert model.training and model.classifier.training and model.dropout.training
    assert model.bert.pooler.training


def test_apply_plan_unfreezes_again_in_a_later_epoch(model: nn.Module, layout: ModelLayout) -> None:
    apply_plan(layout, model, (), False)
    apply_plan(layout, model, (0, 1), True)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def one_step(model: nn.Module, layout: ModelLayout, recipe: Recipe, epoch: int) -> tuple[torch.optim.Optimizer, dict]:
    """What run_trial does for one step of ``epoch``: groups over ever_trainable, plan, forward, backward, step."""
    params = ever_trainable(model, layout, recipe)
    groups = build_param_groups(model, layout, recipe.learning_rate, recipe.weight_decay,
                                recipe.layerwise_lr_decay, params)
    opt = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    plan = plan_for_epoch(recipe, layout.num_layers, epoch)
    apply_plan(layout, model, plan.training_blocks, plan.embeddings_train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (4, 12), generator=gen)
    labels = torch.tensor([0, 1, 2, 1])
    loss = nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt, before


@pytest.mark.parametrize(
    ("recipe", "epoch", "frozen"),
    [
        # frozen for the whole trial: left out of the optimizer
        (Recipe(num_frozen_layers=1, epochs=2, weight_decay=0.1), 0, ("bert.embeddings.", "bert.encoder.layer.0.")),
        # in the optimizer (they unfreeze later) but frozen in epoch 0
        (Recipe(unfreeze_schedule="gradual", epochs=3, weight_decay=0.1), 0,
         ("bert.embeddings.", "bert.encoder.layer.")),
        (Recipe(unfreeze_schedule="gradual", epochs=3, weight_decay=0.1), 1,
         ("bert.embeddings.", "bert.encoder.layer.0.")),
        (Recipe(unfreeze_schedule="step", epochs=2, layerwise_lr_decay=0.8, weight_decay=0.1), 0,
         ("bert.embeddings.", "bert.encoder.layer.")),
        (Recipe(num_frozen_layers=0, epochs=1, weight_decay=0.1), 0, ()),
    ],
)
def test_frozen_parameters_get_no_optimizer_state_and_do_not_move(
    model: nn.Module, layout: ModelLayout, recipe: Recipe, epoch: int, frozen: tuple[str, ...]
) -> None:
    opt, before = one_step(model, layout, recipe, epoch)
    frozen_names = prefixes(model, *frozen) if frozen else set()
    state_names = {n for n, p in model.named_parameters() if p in opt.state and opt.state[p]}
    everything = {n for n, _ in model.named_parameters()}
    assert state_names == everything - frozen_names
    for name, p in model.named_parameters():
        if name in frozen_names:
            assert not p.requires_grad and p.grad is None, name
            # not even AdamW's weight decay touches a frozen weight
            assert torch.equal(p.detach(), before[name]), name
    for name in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight"):
        assert not torch.equal(dict(model.named_parameters())[name].detach(), before[name]), name
