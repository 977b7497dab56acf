"""The experiment config: one validated object split by concern.

Loaded from YAML (strict ``safe_load``), then ``--set dotted.key=value``
overrides, then checked by pydantic. Any problem becomes one
:class:`~autoft.errors.InputError` line naming the field and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoft.errors import InputError, unknown_key_fix
from autoft.recipe import Recipe
from autoft.yamlio import load_yaml_file, parse_scalar

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: str = Field("minilm", description="local Hugging Face checkpoint folder, or a short name (minilm)")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (off: safe default)")


class DataConfig(_Section):
    name: str | None = Field("sms_spam", description="built-in dataset used when data.train is not given")
    train: str | None = Field(None, description="CSV/TSV/JSONL/Parquet file, saved HF dataset folder, or hf:NAME")
    validation: str | None = Field(None, description="validation split; held out from train when absent")
    test: str | None = Field(None, description="optional test split, scored once for the best trial")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_train_samples: int | None = Field(None, ge=1, description="random subsample of the training split")
    max_eval_samples: int | None = Field(None, ge=1, description="random subsample of the validation split")
    max_test_samples: int | None = Field(None, ge=1, description="random subsample of the test split")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share when no validation split")

    @field_validator("name")
    @classmethod
    def _builtin(cls, v: str | None) -> str | None:
        from autoft.data import BUILTIN_DATASETS

        if v is not None and v not in BUILTIN_DATASETS:
            raise ValueError(f"unknown built-in dataset; use one of: {', '.join(BUILTIN_DATASETS)}, or set data.train")
        return v


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=65536)
    eval_batch_size: int = Field(128, ge=1, le=65536)
    max_length: int = Field(128, ge=8, le=65536)
    seed: int = Field(42, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 on CPU"
    )
    cache_frozen: bool = Field(True, description="cache outputs of blocks frozen for the whole trial")
    cache_max_gb: float = Field(
        10, gt=0, description="disk the frozen-prefix cache (<storage>/prefix-cache) may use; least recently used "
                              "data's cache is removed first, and data whose cache alone is larger trains without it")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per trial (default: cpus_per_trial)")
    overlap_checkpoints: bool = Field(
        False, description="under Ray Tune, write each checkpoint to the system's temporary folder and train on "
                           "while a background thread copies it into the search's storage (a link if on the same "
                           "device; by default it is written in the storage folder and Ray links it in place); for "
                           "storage on another device or the network; measured no faster on 2 CPU cores, not yet "
                           "measured on a GPU")
    save_optimizer_state: bool = Field(
        True, description="checkpoints hold AdamW's moments (twice the trained weights), so a trial resumes exactly "
                          "where it stopped; false: weights, scheduler and history only (a third of the bytes for a "
                          "fully trained model), and a resumed trial restarts the moments from zero")
    checkpoint_writes: Literal["auto", "direct", "buffered"] = Field(
        "auto", description="how checkpoint weights and moments reach the disk: direct (O_DIRECT, around the page "
                            "cache), buffered (through it), or auto: each trial process times both on its own "
                            "writes and keeps the faster; buffered where the filesystem refuses O_DIRECT")
    evals_per_epoch: int | Literal["auto"] = Field(
        "auto",
        description="evaluations (reports, checkpoints) per epoch; 2 lets the pruner stop a bad trial after half "
                    "an epoch (pruning.grace_period then counts evaluations); auto: 2 when half an epoch is at "
                    "least 10 optimizer steps and validation is at most half the training set, else 1")

    @field_validator("evals_per_epoch", mode="before")
    @classmethod
    def _evals(cls, v: Any) -> Any:
        # The range lives here, not in the type: one message instead of pydantic's one per
        # member of the union.
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 20):
            return v
        raise ValueError("must be an integer from 1 to 20, or auto")

    @property
    def cache_max_bytes(self) -> int:
        return int(self.cache_max_gb * 1e9)


DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNBOUNDED_TRIALS = 100000  # the trial cap when only a time budget is given


def parse_duration(value: Any) -> Any:
    """``5400``, ``"90m"``, ``"1.5h"`` -> seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration; use seconds (5400) or 90m / 1.5h / 1d")
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return value


class SearchConfig(_Section):
    num_trials: int = Field(8, ge=1, le=UNBOUNDED_TRIALS,
                            description=f"trials to run; with only a time budget set, up to {UNBOUNDED_TRIALS}")
    max_concurrent: int = Field(2, ge=1, le=10000)
    time_budget_s: float | None = Field(None, gt=0, description="stop starting and running trials after this "
                                        "wall time (seconds, or 90m / 1.5h)")
    metric: str = Field("eval_f1", description="eval_f1 (macro), eval_accuracy or eval_loss")
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "random", "cmaes", "gp", "qmc"] = "tpe"
    startup_trials: int | None = Field(
        None, ge=1, le=UNBOUNDED_TRIALS,
        description="tpe, gp, cmaes: trials (warm starts included) sampled at random before the sampler models "
                    "the results; default for tpe max(3, min(10, num_trials // 3)), for gp and cmaes Optuna's")
    seed: int = Field(0, ge=0)
    warm_start: bool = Field(True, description="enqueue known-good recipes as the first trials")
    trial_timeout_s: float | None = Field(None, gt=0)
    max_failures: int = Field(0, ge=0, le=100)
    keep_checkpoints: int = Field(1, ge=1, le=1000, description="checkpoints kept per trial")

    @model_validator(mode="before")
    @classmethod
    def _budget_bounds_the_search(cls, data: Any) -> Any:
        # A time budget alone means "search until time is up", not "8 trials or until time is up".
        if isinstance(data, dict) and data.get("time_budget_s") is not None and "num_trials" not in data:
            data = {**data, "num_trials": UNBOUNDED_TRIALS}
        return data

    def resolved_startup_trials(self) -> int | None:
        """The sampler's random start; None leaves Optuna's default (gp, cmaes) or has none."""
        if self.startup_trials is not None or self.sampler != "tpe":
            return self.startup_trials
        # Few, because the warm-start points already cover the known-good region.
        return max(3, min(10, self.num_trials // 3))

    @model_validator(mode="after")
    def _startup_needs_a_model(self) -> SearchConfig:
        if self.startup_trials is not None and self.sampler in ("random", "qmc"):
            raise InputError("search.startup_trials", f"sampler {self.sampler} samples every trial without a model",
                             "remove search.startup_trials or use sampler tpe, gp or cmaes")
        return self

    @field_validator("time_budget_s", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        allowed = ("eval_f1", "eval_accuracy", "eval_loss")
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v


class PruningConfig(_Section):
    scheduler: Literal["asha", "hyperband", "median", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="evaluations (epochs, unless train.evals_per_epoch > 1) "
                                                   "every trial runs before it can be stopped")
    reduction_factor: float = Field(2, gt=1)
    align_to_unfreezing: bool = Field(
        False, description="asha: a trial is not judged at a rung just before it unfreezes more blocks")
    stop_ties: bool = Field(
        False, description="asha: stop a trial that only ties its rung's cutoff (trials stuck on the majority "
                           "class all score the same), of the ties tie_breaker leaves (all, with tie_breaker none); "
                           "off because it also stops slow starters, the standard recipe among them")
    tie_breaker: Literal["none", "eval_loss"] = Field(
        "eval_loss", description="asha: rank trials whose scores tie (all stuck on the majority class) by "
                                 "this metric, lower better, so the rung's usual share of them stops; none: "
                                 "ties all go on (Ray's rule)")


class ResourcesConfig(_Section):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0, description="fractions let small trials share one GPU")


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<storage>/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; default the search name")
    log_best_model: bool = True


class ExperimentConfig(_Section):
    name: str = Field("autoft", description="search name: MLflow experiment and storage folder prefix")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    params: dict[str, Any] = Field(default_factory=dict, description="fixed hyperparameters (recipe knobs)")
    space: str | dict[str, Any] | None = Field("quickstart", description="search space: shipped name, path, or inline")
    search: SearchConfig = SearchConfig()
    pruning: PruningConfig = PruningConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: str = Field("autoft-runs", description="folder for trial checkpoints, Ray state and the default MLflow store")
    address: str | None = Field(None, description="Ray cluster address (HOST:PORT, or auto for the one `ray start` began on this machine); default RAY_ADDRESS, else a new local Ray of this search's own")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' or '-' (max 100, no spaces or slashes)")
        return v

    @model_validator(mode="after")
    def _params(self) -> ExperimentConfig:
        self.base_recipe()  # raises InputError naming params.<key>
        return self

    def base_recipe(self, overrides: dict[str, Any] | None = None) -> Recipe:
        values: dict[str, Any] = {
            "epochs": self.train.epochs,
            "batch_size": self.train.batch_size,
            "seed": self.train.seed,
        }
        values.update(self.params)
        values.update(overrides or {})
        return Recipe.from_dict(values)


# --------------------------------------------------------------------------- loading


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise InputError("--set", f"'{item}' is not KEY=VALUE", "write e.g. --set train.epochs=2")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise InputError("--set", f"bad key '{key}'", "use dotted keys such as train.epochs")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise InputError(".".join(parts[: i + 1]), "is a value, not a section",
                                 f"set '{'.'.join(parts[: i + 1])}' directly")
            node = child
        node[parts[-1]] = parse_scalar(value)
    return raw


_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict[str,any]", "list[str]"}


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    # pydantic names the union member it tried (space.str): the user wrote 'space'.
    while len(parts) > 1 and parts[-1] in _UNION_TAGS:
        parts.pop()
    return ".".join(parts) or "config"


def _section_model(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = ExperimentConfig
    for part in path:
        if model is None:
            return None
        f = model.model_fields.get(str(part))
        if f is None:
            return None
        ann = f.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def validate_config(raw: Any, source: str = "config") -> ExperimentConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(source, f"top level must be a mapping, got {type(raw).__name__}",
                         "write 'key: value' lines (see README)")
    try:
        return ExperimentConfig.model_validate(raw)
    except InputError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        field = _field_of(loc)
        if err["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            known = section.model_fields.keys() if section else []
            raise InputError(field, "unknown key", unknown_key_fix(str(loc[-1]), known)) from None
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, InputError):
            raise ctx_err from None
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        raise InputError(field, f"{msg} (got {shown})", _fix_for(field)) from None


def _fix_for(field: str) -> str:
    section, _, key = field.partition(".")
    model = _section_model((section,)) if key else None
    if model and key in model.model_fields:
        f = model.model_fields[key]
        default = f.default
        hint = f.description or ""
        example = f"leave {key} unset (the default)" if default is None else f"e.g. {key}: {default!r}"
        return example + (f" ({hint})" if hint else "")
    return "see README, Configuration"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw: Any = {} if path is None else load_yaml_file(path, "config")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"config '{path}'", "top level must be a mapping", "write 'key: value' lines")
    raw = apply_overrides(raw, list(overrides or []))
    cfg = validate_config(raw, str(path or "config"))
    if path is not None:
        # Relative data/model paths in a config file are relative to that file.
        cfg = _rebase_paths(cfg, Path(path).resolve().parent)
    return cfg


def _rebase_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    def rebase(p: str | None) -> str | None:
        if p is None or p.startswith("hf:"):
            return p
        q = Path(p).expanduser()
        if q.is_absolute() or q.exists():
            return p
        candidate = base / q
        return str(candidate) if candidate.exists() else p

    data = cfg.data.model_copy(update={k: rebase(getattr(cfg.data, k)) for k in ("train", "validation", "test")})
    model = cfg.model
    if "/" in model.path or model.path.startswith("."):
        model = model.model_copy(update={"path": rebase(model.path)})
    space = cfg.space
    if isinstance(space, str) and (space.endswith((".yaml", ".yml"))):
        space = rebase(space)
    return cfg.model_copy(update={"data": data, "model": model, "space": space})


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
