"""The fine-tuning knobs of one trial, as one validated object.

Defaults are the standard BERT recipe (Devlin et al. 2019): AdamW with linear
warmup and decay, nothing frozen, no extra regularisation; except the learning
rate, 1e-4 rather than 2e-5..5e-5, because small distilled encoders on small
data barely move in a few epochs at BERT-base rates (measured here on the
bundled MiniLM, 512 SMS examples, 2 epochs: macro-F1 0.53 at 5e-5, 0.96 at 1e-4). Every
knob a search turns is a field here; the search space names fields of this
class, so the trial engine never needs to know how a value was chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autoft.errors import InputError, unknown_key_fix

SCHEDULES = ("none", "gradual", "step")


@dataclass(frozen=True)
class Recipe:
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate (head)"})
    num_frozen_layers: int = field(
        default=0, metadata={"help": "bottom transformer blocks frozen for the whole trial"}
    )
    freeze_embeddings: bool = field(
        default=True,
        metadata={"help": "freeze the embeddings together with frozen blocks (when any are frozen)"},
    )
    unfreeze_schedule: str = field(
        default="none",
        metadata={
            "help": "none | gradual (ULMFiT: one more block every `unfreeze_every` epochs, "
            "top down) | step (head only for `unfreeze_every` epochs, then all unfrozen)"
        },
    )
    unfreeze_every: int = field(default=1, metadata={"help": "epochs per unfreezing stage"})
    layerwise_lr_decay: float = field(
        default=1.0, metadata={"help": "lr multiplier per block going down (1 = off)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay, not on bias/norms"})
    dropout: float | None = field(default=None, metadata={"help": "override all dropout rates"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy smoothing"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear warmup share of steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    l2sp_alpha: float = field(
        default=0.0, metadata={"help": "L2-SP: pull body weights toward the pretrained ones"}
    )
    reinit_top_layers: int = field(
        default=0, metadata={"help": "re-initialise the top k blocks (Zhang et al. 2021)"}
    )
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    epochs: int = field(default=3, metadata={"help": "training epochs"})
    seed: int = field(default=42, metadata={"help": "seed for init, data order and dropout"})

    def __post_init__(self) -> None:
        def bad(name: str, why: str, fix: str) -> None:
            raise InputError(f"params.{name}", f"{why}, got {getattr(self, name)!r}", fix)

        for name in ("learning_rate", "layerwise_lr_decay", "weight_decay", "warmup_ratio",
                     "max_grad_norm", "l2sp_alpha", "label_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number", "use a number such as 0.1")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0", "use e.g. 2e-5")
        if not 0 < self.layerwise_lr_decay <= 1:
            bad("layerwise_lr_decay", "must be in (0, 1]", "use 1.0 for no decay, 0.8-0.95 typical")
        if self.weight_decay < 0 or self.l2sp_alpha < 0 or self.max_grad_norm < 0:
            bad("weight_decay" if self.weight_decay < 0 else
                "l2sp_alpha" if self.l2sp_alpha < 0 else "max_grad_norm", "must be >= 0", "use 0 or more")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "must be in [0, 1)", "use e.g. 0.06")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)", "use e.g. 0.1")
        if self.dropout is not None and not (
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1
        ):
            bad("dropout", "must be in [0, 1) or null", "use e.g. 0.1, or null to keep the model's")
        if not isinstance(self.freeze_embeddings, bool):
            bad("freeze_embeddings", "must be true or false", "write true or false")
        if self.unfreeze_schedule not in SCHEDULES:
            bad("unfreeze_schedule", f"must be one of {', '.join(SCHEDULES)}", "pick one of those")
        for name, low in (("num_frozen_layers", 0), ("unfreeze_every", 1), ("reinit_top_layers", 0),
                          ("batch_size", 1), ("epochs", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(name, f"must be an integer >= {low}", f"use an integer >= {low}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], prefix: str = "params") -> Recipe:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise InputError(f"{prefix}.{key}", "unknown hyperparameter", unknown_key_fix(key, known))
        coerced = dict(values)
        # YAML and Optuna may hand us 3.0 for an int knob or 1 for a float knob.
        for f in fields(cls):
            if f.name in coerced and f.type == "int" and isinstance(coerced[f.name], float):
                if coerced[f.name].is_integer():
                    coerced[f.name] = int(coerced[f.name])
        return cls(**coerced)

    def check_against_model(self, num_layers: int) -> None:
        if self.num_frozen_layers > num_layers:
            raise InputError(
                "params.num_frozen_layers",
                f"{self.num_frozen_layers} exceeds the model's {num_layers} blocks",
                f"use 0..{num_layers}",
            )
        if self.reinit_top_layers > num_layers - self.num_frozen_layers:
            raise InputError(
                "params.reinit_top_layers",
                f"{self.reinit_top_layers} would re-initialise frozen blocks "
                f"(model has {num_layers}, {self.num_frozen_layers} frozen)",
                f"use at most {num_layers - self.num_frozen_layers}",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


def recipe_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(Recipe)}
