"""Experiment config (autoft/config.py), strict YAML reading (autoft/yamlio.py) and
the Recipe's own checks (autoft/recipe.py). Every refusal is one InputError naming the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from autoft.config import (
    ExperimentConfig,
    apply_overrides,
    config_to_dict,
    load_config,
    validate_config,
)
from autoft.errors import InputError
from autoft.recipe import RECIPE_FIELDS, Recipe, recipe_help
from autoft.yamlio import MAX_ALIASES, MAX_YAML_BYTES, load_yaml_file, load_yaml_text, parse_scalar


def refused(overrides: list[str], path: Path | None = None) -> InputError:
    with pytest.raises(InputError) as exc:
        load_config(path, overrides)
    assert "\n" not in str(exc.value)
    return exc.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def get(cfg: ExperimentConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


# --------------------------------------------------------------------------- defaults and --set


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.space == "quickstart" and cfg.params == {}
    recipe = cfg.base_recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.seed) == (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("train.epochs=5", "train.epochs", 5),
        ("train.batch_size=8", "train.batch_size", 8),
        ("search.time_budget_s=90.5", "search.time_budget_s", 90.5),
        ("search.time_budget_s=1.0e3", "search.time_budget_s", 1000.0),
        ("pruning.reduction_factor=3", "pruning.reduction_factor", 3.0),
        ("resources.gpus_per_trial=0.25", "resources.gpus_per_trial", 0.25),
        ("train.cache_frozen=false", "train.cache_frozen", False),
        ("train.cache_frozen=False", "train.cache_frozen", False),
        ("tracking.log_best_model=no", "tracking.log_best_model", False),
        ("model.trust_remote_code=true", "model.trust_remote_code", True),
        ("search.time_budget_s=null", "search.time_budget_s", None),
        ("tracking.uri=null", "tracking.uri", None),
        ("data.validation=~", "data.validation", None),
        ("name=my-search.v2", "name", "my-search.v2"),
        ("tracking.uri=sqlite:///x.db", "tracking.uri", "sqlite:///x.db"),
        ("train.device=cpu", "train.device", "cpu"),
        ("search.mode=min", "search.mode", "min"),
        ("data.text_column= sms ", "data.text_column", "sms"),
        ("params.dropout=0.1", "params.dropout", 0.1),
        ("params.dropout=null", "params.dropout", None),
        ("params.freeze_embeddings=false", "params.freeze_embeddings", False),
        ("params.num_frozen_layers=2", "params.num_frozen_layers", 2),
        ("params.unfreeze_schedule=gradual", "params.unfreeze_schedule", "gradual"),
        ("params.learning_rate=2.0e-5", "params.learning_rate", 2e-5),
    ],
)
def test_set_values_are_typed(override: str, key: str, value: Any) -> None:
    got = get(load_config(None, [override]), key)
    assert got == value
    assert type(got) is type(value)


def test_set_overrides_a_file_and_later_wins(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "train:\n  epochs: 4\n  batch_size: 8\nname: fromfile\n")
    cfg = load_config(f, ["train.epochs=2", "train.epochs=6"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.name) == (6, 8, "fromfile")


@pytest.mark.parametrize(("value", "seconds"), [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("2h", 7200.0),
                                               ("1d", 86400.0), ("45.5", 45.5)])
def test_time_budget_takes_durations(value: str, seconds: float) -> None:
    assert load_config(None, [f"search.time_budget_s={value}"]).search.time_budget_s == seconds


def test_a_time_budget_alone_lifts_the_trial_count() -> None:
    from autoft.config import UNBOUNDED_TRIALS

    assert load_config(None, []).search.num_trials == 8
    assert load_config(None, ["search.time_budget_s=10m"]).search.num_trials == UNBOUNDED_TRIALS
    # Both given: whichever ends first.
    cfg = load_config(None, ["search.time_budget_s=10m", "search.num_trials=5"])
    assert (cfg.search.num_trials, cfg.search.time_budget_s) == (5, 600.0)


def test_params_feed_the_base_recipe() -> None:
    cfg = load_config(None, ["train.epochs=4", "params.dropout=0.2", "params.unfreeze_schedule=step"])
    r = cfg.base_recipe()
    assert (r.epochs, r.dropout, r.unfreeze_schedule) == (4, 0.2, "step")
    assert cfg.base_recipe({"epochs": 7}).epochs == 7


def test_space_can_be_inline(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "space:\n  params:\n    learning_rate: {float: [1.0e-5, 1.0e-3]}\n")
    assert load_config(f).space == {"params": {"learning_rate": {"float": [1e-5, 1e-3]}}}


def test_config_round_trips_through_a_dict() -> None:
    cfg = load_config(None, ["train.epochs=2", "params.dropout=0.1", "search.time_budget_s=60"])
    assert validate_config(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("-2", -2), ("3.0", 3.0), ("1.5e-3", 1.5e-3), ("true", True), ("false", False),
     ("yes", True), ("null", None), ("~", None), ("abc", "abc"), ("", ""), ("[1, 2]", [1, 2]),
     ("'3'", "3"), ("{x", "{x")],
)
def test_parse_scalar(text: str, value: Any) -> None:
    got = parse_scalar(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["1e-5", "2E-5", "5e+2"])
def test_parse_scalar_exponent_without_dot(text: str) -> None:
    assert parse_scalar(text) == float(text)


def test_learning_rate_in_exponent_notation() -> None:
    assert load_config(None, ["params.learning_rate=1e-5"]).base_recipe().learning_rate == 1e-5


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("override", "field", "suggestion"),
    [
        ("train.epoch=3", "train.epoch", "did you mean 'epochs'"),
        ("trian.epochs=3", "trian", "did you mean 'train'"),
        ("search.num_trial=3", "search.num_trial", "did you mean 'num_trials'"),
        ("search.sampeler=tpe", "search.sampeler", "did you mean 'sampler'"),
        ("pruning.grace_perod=2", "pruning.grace_perod", "did you mean 'grace_period'"),
        ("model.pth=x", "model.pth", "did you mean 'path'"),
        ("data.trian=x.csv", "data.trian", "did you mean 'train'"),
        ("resources.cpus=2", "resources.cpus", "cpus_per_trial"),
        ("strage=runs", "strage", "did you mean 'storage'"),
        ("tracking.bogus=1", "tracking.bogus", "valid keys: experiment, log_best_model, uri"),
        ("params.learnin_rate=0.1", "params.learnin_rate", "did you mean 'learning_rate'"),
        ("params.dropuot=0.1", "params.dropuot", "did you mean 'dropout'"),
        ("params.momentum=0.9", "params.momentum", "valid keys:"),
    ],
)
def test_unknown_keys_suggest_the_right_one(override: str, field: str, suggestion: str) -> None:
    exc = refused([override])
    assert exc.field == field
    assert "unknown" in exc.problem
    assert suggestion in str(exc)


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "search:\n  num_trials: 3\n  max_concurent: 2\n")
    exc = refused([], f)
    assert exc.field == "search.max_concurent"
    assert "did you mean 'max_concurrent'" in str(exc)


# --------------------------------------------------------------------------- wrong types and ranges


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.epochs=[1]", "train.epochs"),
        ("train.batch_size=-1", "train.batch_size"),
        ("train.max_length=4", "train.max_length"),
        ("train.device=tpu", "train.device"),
        ("train.precision=fp8", "train.precision"),
        ("train.cache_frozen=maybe", "train.cache_frozen"),
        ("train.threads=0", "train.threads"),
        ("search.metric=f1", "search.metric"),
        ("search.mode=up", "search.mode"),
        ("search.sampler=grid", "search.sampler"),
        ("search.startup_trials=0", "search.startup_trials"),
        ("search.num_trials=0", "search.num_trials"),
        ("search.time_budget_s=-1", "search.time_budget_s"),
        ("search.time_budget_s=3x", "search.time_budget_s"),
        ("search.time_budget_s=1w", "search.time_budget_s"),
        ("data.max_test_samples=0", "data.max_test_samples"),
        ("search.max_failures=101", "search.max_failures"),
        ("pruning.scheduler=pbt", "pruning.scheduler"),
        ("pruning.reduction_factor=1", "pruning.reduction_factor"),
        ("pruning.grace_period=0", "pruning.grace_period"),
        ("resources.cpus_per_trial=0", "resources.cpus_per_trial"),
        ("resources.gpus_per_trial=-0.5", "resources.gpus_per_trial"),
        ("data.validation_fraction=1", "data.validation_fraction"),
        ("data.max_train_samples=0", "data.max_train_samples"),
        ("name=has space", "name"),
        ("name=a/b", "name"),
        ("model=3", "model"),
        ("params=3", "params"),
        ("train.epochs.x=1", "train.epochs"),
    ],
)
def test_wrong_values_name_the_field(override: str, field: str) -> None:
    exc = refused([override])
    assert exc.field == field
    assert str(exc).startswith(f"{field}: ")
    assert "(got " in str(exc)  # the bad value is repeated


def test_wrong_type_for_space_names_the_field() -> None:
    assert refused(["space=5"]).field == "space"


@pytest.mark.parametrize(
    ("override", "fix"),
    [("train.epochs", "is not KEY=VALUE"), ("=3", "bad key"), ("train..epochs=1", "bad key"),
     ("train.=1", "bad key")],
)
def test_malformed_set(override: str, fix: str) -> None:
    exc = refused([override])
    assert exc.field == "--set"
    assert fix in str(exc)


def test_set_below_a_value_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "name: x\n")
    exc = refused(["name.sub=1"], f)
    assert exc.field == "name"
    assert "is a value, not a section" in str(exc)


def test_set_creates_missing_sections() -> None:
    raw = apply_overrides({"train": None}, ["train.epochs=2", "search.seed=3"])
    assert raw == {"train": {"epochs": 2}, "search": {"seed": 3}}


# --------------------------------------------------------------------------- params through the Recipe


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("params.dropout=1.5", "params.dropout"),
        ("params.dropout=-0.1", "params.dropout"),
        ("params.learning_rate=0", "params.learning_rate"),
        ("params.learning_rate=abc", "params.learning_rate"),
        ("params.learning_rate=.nan", "params.learning_rate"),
        ("params.weight_decay=-1.0", "params.weight_decay"),
        ("params.layerwise_lr_decay=1.5", "params.layerwise_lr_decay"),
        ("params.warmup_ratio=1", "params.warmup_ratio"),
        ("params.label_smoothing=1.0", "params.label_smoothing"),
        ("params.unfreeze_schedule=cyclic", "params.unfreeze_schedule"),
        ("params.num_frozen_layers=-1", "params.num_frozen_layers"),
        ("params.num_frozen_layers=1.5", "params.num_frozen_layers"),
        ("params.unfreeze_every=0", "params.unfreeze_every"),
        ("params.unknown=1", "params.unknown"),
        ("train.epochs=1", None),  # control: valid
    ],
)
def test_params_are_validated_through_the_recipe(override: str, field: str | None) -> None:
    if field is None:
        load_config(None, [override])
        return
    exc = refused([override])
    assert exc.field == field


def test_params_in_a_file_are_validated(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "params:\n  dropout: 1.5\n")
    assert refused([], f).field == "params.dropout"


# --------------------------------------------------------------------------- YAML files


def test_duplicate_key_names_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "dup.yaml", "train:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n")
    exc = refused([], f)
    assert "duplicate key 'epochs'" in str(exc)
    assert "line 4" in str(exc)
    assert str(f) in exc.field


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    f = write(tmp_path / "dup.yaml", "name: a\nstorage: x\nname: b\n")
    assert "duplicate key 'name' at line 3" in str(refused([], f))


def test_alias_flood_is_refused(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefghijk", "bcdefghijkl")]
    f = write(tmp_path / "laughs.yaml", "\n".join(lines) + "\n")
    exc = refused([], f)
    assert f"more than {MAX_ALIASES} aliases" in str(exc)


def test_a_few_aliases_are_fine() -> None:
    assert load_yaml_text("a: &x 1\nb: *x\nc: *x\n", "t") == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "3\n"])
def test_non_mapping_top_level_is_refused(tmp_path: Path, text: str) -> None:
    f = write(tmp_path / "list.yaml", text)
    exc = refused([], f)
    assert "top level must be a mapping" in str(exc)


def test_validate_config_refuses_non_mapping() -> None:
    with pytest.raises(InputError) as exc:
        validate_config([1, 2], "cfg")
    assert exc.value.field == "cfg"
    assert validate_config(None) == ExperimentConfig()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    f = write(tmp_path / "empty.yaml", "# nothing\n")
    assert load_config(f).train == ExperimentConfig().train


def test_file_too_large_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_bytes(b"#" * (MAX_YAML_BYTES + 1))
    exc = refused([], f)
    assert "larger than" in str(exc)
    with pytest.raises(InputError, match="larger than"):
        load_yaml_text("#" * (MAX_YAML_BYTES + 1), "text")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    exc = refused([], tmp_path / "nope.yaml")
    assert exc.field == "config"
    assert "does not exist" in str(exc)
    with pytest.raises(InputError, match="does not exist"):
        load_yaml_file(tmp_path, "config")  # a folder is not a file


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.yaml", "name: ok\ntrain:\n  epochs: [1, 2\n")
    exc = refused([], f)
    assert "invalid YAML (line" in str(exc)


def test_python_tags_are_not_executed(tmp_path: Path) -> None:
    f = write(tmp_path / "evil.yaml", "name: !!python/object/apply:os.getcwd []\n")
    assert "invalid YAML" in str(refused([], f))


# --------------------------------------------------------------------------- relative paths


def test_relative_data_paths_are_resolved_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_dir = tmp_path / "exp"
    write(cfg_dir / "data" / "train.csv", "text,label\na,0\n")
    write(cfg_dir / "val.csv", "text,label\na,0\n")
    write(cfg_dir / "space.yaml", "params:\n  learning_rate: {float: [1.0e-5, 1.0e-3]}\n")
    (cfg_dir / "model").mkdir()
    f = write(cfg_dir / "c.yaml", "data:\n  train: data/train.csv\n  validation: ./val.csv\n"
                                  "  test: hf:imdb\nmodel:\n  path: ./model\nspace: space.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(f)
    assert Path(cfg.data.train) == cfg_dir / "data" / "train.csv"
    assert Path(cfg.data.validation).resolve() == (cfg_dir / "val.csv").resolve()
    assert cfg.data.test == "hf:imdb"
    assert Path(cfg.model.path).resolve() == (cfg_dir / "model").resolve()
    assert Path(cfg.space).resolve() == (cfg_dir / "space.yaml").resolve()


def test_absolute_and_missing_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = write(tmp_path / "abs.csv", "text,label\na,0\n")
    f = write(tmp_path / "exp" / "c.yaml", f"data:\n  train: {absolute}\n  validation: missing.csv\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(f)
    assert cfg.data.train == str(absolute)
    assert cfg.data.validation == "missing.csv"  # left for the data loader to report
    assert cfg.model.path == "minilm"  # a short name is not a path


def test_paths_from_set_without_a_file_are_untouched() -> None:
    cfg = load_config(None, ["data.train=rel/train.csv"])
    assert cfg.data.train == "rel/train.csv"


# --------------------------------------------------------------------------- Recipe


def test_recipe_defaults() -> None:
    r = Recipe()
    assert r.to_dict()["learning_rate"] == 1e-4
    assert set(r.to_dict()) == set(RECIPE_FIELDS)
    assert Recipe.from_dict(r.to_dict()) == r


def test_recipe_help_covers_every_field() -> None:
    helps = recipe_help()
    assert set(helps) == set(RECIPE_FIELDS)
    assert all(helps.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0), ("learning_rate", -1e-5), ("learning_rate", math.nan), ("learning_rate", math.inf),
        ("learning_rate", "1e-4"), ("learning_rate", True), ("learning_rate", None),
        ("layerwise_lr_decay", 0.0), ("layerwise_lr_decay", 1.01),
        ("weight_decay", -0.1), ("l2sp_alpha", -1.0), ("max_grad_norm", -1.0), ("max_grad_norm", -math.inf),
        ("warmup_ratio", 1.0), ("warmup_ratio", -0.1), ("label_smoothing", 1.0), ("label_smoothing", -0.01),
        ("dropout", 1.0), ("dropout", -0.1), ("dropout", "0.1"),
        ("unfreeze_schedule", "cyclic"), ("unfreeze_schedule", None),
        ("num_frozen_layers", -1), ("num_frozen_layers", 1.5), ("num_frozen_layers", True),
        ("num_frozen_layers", "2"),
        ("unfreeze_every", 0), ("reinit_top_layers", -1), ("batch_size", 0), ("epochs", 0), ("seed", -1),
    ],
)
def test_recipe_refuses(field: str, value: Any) -> None:
    with pytest.raises(InputError) as exc:
        Recipe(**{field: value})
    assert exc.value.field == f"params.{field}"
    assert repr(value) in str(exc.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", 1), ("layerwise_lr_decay", 1.0), ("weight_decay", 0), ("warmup_ratio", 0.0),
     ("dropout", 0.0), ("dropout", None), ("max_grad_norm", 0.0), ("num_frozen_layers", 0),
     ("unfreeze_schedule", "step"), ("seed", 0)],
)
def test_recipe_accepts_edges(field: str, value: Any) -> None:
    assert getattr(Recipe(**{field: value}), field) == value


@pytest.mark.parametrize(
    "value", ["no", "false", "maybe", None],
)
def test_recipe_refuses_non_bool_freeze_embeddings(value: Any) -> None:
    with pytest.raises(InputError, match="freeze_embeddings"):
        Recipe(freeze_embeddings=value)


def test_set_non_bool_freeze_embeddings_is_refused() -> None:
    assert refused(["params.freeze_embeddings=maybe"]).field == "params.freeze_embeddings"


def test_from_dict_coerces_whole_floats_for_int_knobs() -> None:
    r = Recipe.from_dict({"num_frozen_layers": 2.0, "epochs": 3.0, "learning_rate": 1})
    assert r.num_frozen_layers == 2 and isinstance(r.num_frozen_layers, int)
    assert r.epochs == 3 and isinstance(r.epochs, int)
    with pytest.raises(InputError) as exc:
        Recipe.from_dict({"num_frozen_layers": 2.5})
    assert exc.value.field == "params.num_frozen_layers"


def test_from_dict_unknown_key_uses_the_prefix() -> None:
    with pytest.raises(InputError) as exc:
        Recipe.from_dict({"lerning_rate": 1e-4}, prefix="space")
    assert exc.value.field == "space.lerning_rate"
    assert "did you mean 'learning_rate'" in str(exc.value)


@pytest.mark.parametrize(
    ("values", "num_layers", "field"),
    [
        ({"num_frozen_layers": 3}, 2, "params.num_frozen_layers"),
        ({"reinit_top_layers": 3}, 2, "params.reinit_top_layers"),
        ({"num_frozen_layers": 1, "reinit_top_layers": 2}, 2, "params.reinit_top_layers"),
        ({"num_frozen_layers": 2}, 2, None),
        ({"num_frozen_layers": 4, "reinit_top_layers": 2}, 6, None),
    ],
)
def test_check_against_model(values: dict[str, int], num_layers: int, field: str | None) -> None:
    r = Recipe.from_dict(values)
    if field is None:
        r.check_against_model(num_layers)
        return
    with pytest.raises(InputError) as exc:
        r.check_against_model(num_layers)
    assert exc.value.field == field
    assert str(num_layers) in str(exc.value)
