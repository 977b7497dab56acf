"""Search spaces: every shipped file, bound resolution, conditionals, start points,
and a catalogue of malformed spaces that must each fail with one InputError naming the field."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from autoft.errors import InputError
from autoft.recipe import Recipe
from autoft.space import SPACES_DIR, SearchSpace, load_space, parse_space, shipped_spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def sample(space: SearchSpace, n: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample_config(study.ask()) for _ in range(n)]


def conditions_hold(space: SearchSpace, name: str, cfg: dict[str, Any]) -> bool:
    return all(cfg.get(dep) in allowed for dep, allowed in space.params[name].when.items())


# --------------------------------------------------------------------------- shipped spaces


def test_the_four_shipped_spaces() -> None:
    assert set(shipped_spaces()) == {"quickstart", "regularization", "text-classification", "ulmfit"}
    assert sorted(shipped_spaces()) == SHIPPED


def test_default_space_is_quickstart() -> None:
    assert load_space(None).name == "quickstart"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads(name: str) -> None:
    space = load_space(name)
    assert space.name == name
    assert space.description and "\n" not in space.description
    assert space.params
    assert space.source == f"{name}.yaml"


@pytest.mark.parametrize("num_layers", [2, 6])
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_samples_valid_recipes(name: str, num_layers: int) -> None:
    space = load_space(name).resolve(num_layers)
    for p in space.params.values():
        assert not isinstance(p.low, str) and not isinstance(p.high, str)
    for cfg in sample(space, 20, seed=num_layers):
        recipe = Recipe.from_dict({**cfg})
        for key, value in space.fixed.items():
            assert cfg[key] == value
        for pname, p in space.params.items():
            if not conditions_hold(space, pname, cfg):
                assert pname not in cfg, (pname, cfg)
                continue
            value = cfg[pname]
            assert getattr(recipe, pname) == value
            if p.kind == "choice":
                assert value in p.choices
            else:
                assert p.low <= value <= p.high, (pname, value)
                if p.kind == "int":
                    assert isinstance(value, int) and not isinstance(value, bool)
                else:
                    assert isinstance(value, float) and math.isfinite(value)


@pytest.mark.parametrize(
    "name",
    [
        "quickstart",
        "regularization",
        pytest.param("text-classification"),
        "ulmfit",
    ],
)
@pytest.mark.parametrize("num_layers", [2, 6])
def test_shipped_space_samples_fit_the_model(name: str, num_layers: int) -> None:
    """run_trial calls recipe.check_against_model(num_layers): a sampled config must pass it."""
    space = load_space(name).resolve(num_layers)
    bad = []
    for cfg in sample(space, 20, seed=num_layers):
        try:
            Recipe.from_dict({**cfg}).check_against_model(num_layers)
        except InputError as exc:
            bad.append(str(exc))
    assert not bad, bad[:3]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_start_points_survive(name: str) -> None:
    space = load_space(name).resolve(6)
    points = space.starting_points()
    assert len(points) == len(space.start_points)
    for point in points:
        assert point
        for key, value in point.items():
            assert space.in_space(key, value)
            assert conditions_hold(space, key, point)
        Recipe.from_dict({**space.fixed, **point})


def test_quickstart_conditional() -> None:
    space = load_space("quickstart").resolve(2)
    when = space.params["unfreeze_every"].when["unfreeze_schedule"]
    assert set(when) == {"gradual", "step"}
    seen = set()
    for cfg in sample(space, 60):
        seen.add(cfg["unfreeze_schedule"])
        assert ("unfreeze_every" in cfg) == (cfg["unfreeze_schedule"] in when), cfg
    assert seen == {"none", "gradual", "step"}


def test_conditionals_are_sampled_after_their_condition() -> None:
    raw = {"params": {
        "unfreeze_every": {"int": [1, 3], "when": {"unfreeze_schedule": ["gradual"]}},
        "unfreeze_schedule": {"choice": ["none", "gradual"]},
    }}
    space = parse_space(raw, "space")
    assert space.param_names == ["unfreeze_schedule", "unfreeze_every"]
    for cfg in sample(space, 30):
        assert ("unfreeze_every" in cfg) == (cfg["unfreeze_schedule"] == "gradual")


def test_chained_conditionals() -> None:
    raw = {"params": {
        "unfreeze_every": {"int": [1, 3], "when": {"unfreeze_schedule": ["gradual", "step"]}},
        "unfreeze_schedule": {"choice": ["none", "gradual", "step"], "when": {"freeze_embeddings": [True]}},
        "freeze_embeddings": {"choice": [True, False]},
    }}
    space = parse_space(raw, "space")
    assert space.param_names == ["freeze_embeddings", "unfreeze_schedule", "unfreeze_every"]
    for cfg in sample(space, 40):
        assert ("unfreeze_schedule" in cfg) == cfg["freeze_embeddings"]
        assert ("unfreeze_every" in cfg) == (cfg.get("unfreeze_schedule") in ("gradual", "step"))
        Recipe.from_dict(cfg)


def test_bare_and_value_entries_are_fixed() -> None:
    space = parse_space({"params": {"learning_rate": {"float": [1e-5, 1e-3], "log": True},
                                    "epochs": 2, "dropout": {"value": None}},
                         "fixed": {"batch_size": 8}}, "space")
    assert space.fixed == {"epochs": 2, "dropout": None, "batch_size": 8}
    assert space.param_names == ["learning_rate"]
    cfg = sample(space, 1)[0]
    assert cfg["epochs"] == 2 and cfg["batch_size"] == 8 and cfg["dropout"] is None


def test_load_space_from_a_file_and_a_mapping(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("params:\n  learning_rate: {float: [1.0e-5, 1.0e-3], log: true}\n", encoding="utf-8")
    from_file = load_space(str(f))
    assert from_file.name == "mine" and from_file.param_names == ["learning_rate"]
    assert str(f) in from_file.source
    from_dict = load_space({"name": "inline", "params": {"dropout": {"float": [0.0, 0.2]}}})
    assert from_dict.name == "inline" and from_dict.source == "space"


def test_unknown_space_name_lists_the_shipped_ones() -> None:
    with pytest.raises(InputError) as exc:
        load_space("quickstrat")
    assert exc.value.field == "space"
    for name in SHIPPED:
        assert name in str(exc.value)


def test_distributions_match_the_spec() -> None:
    space = load_space("text-classification").resolve(6)
    dists = space.distributions()
    assert set(dists) == set(space.params)
    lr = dists["learning_rate"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (1e-5, 5e-4)
    nfl = dists["num_frozen_layers"]
    assert isinstance(nfl, optuna.distributions.IntDistribution) and (nfl.low, nfl.high) == (0, 4)  # num_layers - 2
    assert dists["batch_size"].choices == (16, 32)


def test_step_is_honoured() -> None:
    space = parse_space({"params": {"dropout": {"float": [0.0, 0.3], "step": 0.1},
                                    "batch_size": {"int": [8, 32], "step": 8}}}, "space")
    for cfg in sample(space, 20):
        assert any(math.isclose(cfg["dropout"], v) for v in (0.0, 0.1, 0.2, 0.3))
        assert cfg["batch_size"] in (8, 16, 24, 32)


# --------------------------------------------------------------------------- num_layers bounds


@pytest.mark.parametrize(
    ("bound", "num_layers", "expected"),
    [
        ("num_layers", 2, 2),
        ("num_layers", 6, 6),
        ("num_layers - 2", 6, 4),
        ("num_layers - 2", 2, 0),
        ("num_layers-1", 12, 11),
        ("  num_layers  ", 4, 4),
        ("num_layers + 1", 3, 4),
    ],
)
def test_num_layers_bound_resolution(bound: str, num_layers: int, expected: int) -> None:
    space = parse_space({"params": {"seed": {"int": [0, bound]}}}, "space")
    assert space.params["seed"].high == bound  # unresolved until the model is known
    resolved = space.resolve(num_layers)
    assert resolved.params["seed"].high == expected
    assert space.params["seed"].high == bound  # resolve() returns a new space
    for cfg in sample(resolved, 10):
        assert 0 <= cfg["seed"] <= expected


def test_ulmfit_bound_at_both_depths() -> None:
    space = load_space("ulmfit")
    assert space.params["num_frozen_layers"].high == "num_layers - 2"
    assert space.resolve(6).params["num_frozen_layers"].high == 4
    assert space.resolve(2).params["num_frozen_layers"].high == 0


def test_resolved_bound_below_low_is_refused() -> None:
    with pytest.raises(InputError) as exc:
        load_space("ulmfit").resolve(1)
    assert exc.value.field == "ulmfit.yaml: params.num_frozen_layers"
    assert "low <= high" in str(exc.value)


@pytest.mark.parametrize(
    ("spec", "num_layers"),
    [
        ({"num_frozen_layers": {"int": [0, 8]}}, 6),
        ({"num_frozen_layers": {"int": [0, "num_layers + 1"]}}, 6),
        ({"reinit_top_layers": {"int": [0, 3]}}, 2),
        ({"reinit_top_layers": {"int": [0, "num_layers + 2"]}}, 2),
    ],
)
def test_depth_bound_above_the_model_is_refused_at_resolve(spec: dict, num_layers: int) -> None:
    space = parse_space({"params": spec}, "space")  # fine until the model is known
    name = next(iter(spec))
    with pytest.raises(InputError) as exc:
        space.resolve(num_layers)
    assert exc.value.field == f"space: params.{name}"
    assert f"{num_layers} blocks" in str(exc.value)


def test_depth_choice_above_the_model_is_refused_at_resolve() -> None:
    space = parse_space({"params": {"num_frozen_layers": {"choice": [0, 4]}}}, "space")
    with pytest.raises(InputError, match="num_frozen_layers"):
        space.resolve(2)


# --------------------------------------------------------------------------- starting points


def test_starting_points_drop_out_of_range_and_inactive_values() -> None:
    space = parse_space({
        "params": {
            "learning_rate": {"float": [1e-5, 1e-3], "log": True},
            "unfreeze_schedule": {"choice": ["none", "gradual"]},
            "unfreeze_every": {"int": [1, 3], "when": {"unfreeze_schedule": ["gradual"]}},
            "num_frozen_layers": {"int": [0, "num_layers"]},
        },
        "start_points": [
            {"learning_rate": 5e-5, "unfreeze_schedule": "none", "unfreeze_every": 2, "num_frozen_layers": 1},
            {"learning_rate": 5e-2, "unfreeze_schedule": "gradual", "unfreeze_every": 2, "num_frozen_layers": 9},
            {"learning_rate": 5e-5, "unfreeze_schedule": "gradual", "unfreeze_every": 7},
            {"learning_rate": 1.0},
        ],
    }, "space").resolve(6)
    assert space.starting_points() == [
        {"learning_rate": 5e-5, "unfreeze_schedule": "none", "num_frozen_layers": 1},  # inactive dropped
        {"unfreeze_schedule": "gradual", "unfreeze_every": 2},  # lr and depth out of range dropped
        {"learning_rate": 5e-5, "unfreeze_schedule": "gradual"},  # unfreeze_every out of range
        # {"learning_rate": 1.0} reduces to nothing and is left out
    ]


def test_starting_points_drop_conditionals_whose_condition_was_dropped() -> None:
    space = parse_space({
        "params": {
            "unfreeze_schedule": {"choice": ["none", "gradual"]},
            "unfreeze_every": {"int": [1, 3], "when": {"unfreeze_schedule": ["gradual"]}},
            "learning_rate": {"float": [1e-5, 1e-3]},
        },
        "start_points": [{"unfreeze_schedule": "linear", "unfreeze_every": 2, "learning_rate": 1e-4}],
    }, "space")
    assert space.starting_points() == [{"learning_rate": 1e-4}]


def test_starting_points_depend_on_depth() -> None:
    raw = {"params": {"num_frozen_layers": {"int": [0, "num_layers"]}, "learning_rate": {"float": [1e-5, 1e-3]}},
           "start_points": [{"num_frozen_layers": 4, "learning_rate": 1e-4}]}
    assert parse_space(raw, "s").resolve(6).starting_points() == [{"num_frozen_layers": 4, "learning_rate": 1e-4}]
    assert parse_space(raw, "s").resolve(2).starting_points() == [{"learning_rate": 1e-4}]


def test_starting_points_extra_and_duplicates() -> None:
    space = parse_space({"params": {"learning_rate": {"float": [1e-5, 1e-3]}},
                         "start_points": [{"learning_rate": 1e-4}]}, "space")
    got = space.starting_points([{"learning_rate": 1e-4}, {"learning_rate": 2e-4}, {"dropout": 0.1}])
    assert got == [{"learning_rate": 1e-4}, {"learning_rate": 2e-4}]


def test_starting_points_choices() -> None:
    space = parse_space({"params": {"batch_size": {"choice": [16, 32]}},
                         "start_points": [{"batch_size": 32}, {"batch_size": 64}]}, "space")
    assert space.starting_points() == [{"batch_size": 32}]


# --------------------------------------------------------------------------- malformed spaces

LR = {"float": [1e-5, 1e-3], "log": True}
SCHED = {"choice": ["none", "gradual", "step"]}

# (id, raw space, field the error must name (after "space: "), fragment of the message)
MALFORMED: list[tuple[str, Any, str, str]] = [
    ("low-above-high", {"params": {"learning_rate": {"float": [1e-3, 1e-5]}}},
     "params.learning_rate", "low <= high"),
    ("int-low-above-high", {"params": {"epochs": {"int": [5, 2]}}}, "params.epochs", "low <= high"),
    ("log-low-zero", {"params": {"weight_decay": {"float": [0.0, 0.1], "log": True}}},
     "params.weight_decay", "log scale needs low > 0"),
    ("log-low-negative", {"params": {"learning_rate": {"float": [-1.0, 1e-3], "log": True}}},
     "params.learning_rate", "log scale"),
    ("empty-choice", {"params": {"unfreeze_schedule": {"choice": []}}},
     "params.unfreeze_schedule", "non-empty list"),
    ("choice-not-list", {"params": {"unfreeze_schedule": {"choice": "none"}}},
     "params.unfreeze_schedule", "non-empty list"),
    ("duplicate-choice", {"params": {"batch_size": {"choice": [16, 16]}}}, "params.batch_size", "duplicates"),
    ("nested-choice", {"params": {"batch_size": {"choice": [[16], [32]]}}}, "params.batch_size", "scalars"),
    ("nan-bound", {"params": {"learning_rate": {"float": [float("nan"), 1e-3]}}},
     "params.learning_rate", "finite"),
    ("inf-bound", {"params": {"learning_rate": {"float": [1e-5, float("inf")]}}},
     "params.learning_rate", "finite"),
    ("bool-bound", {"params": {"dropout": {"float": [False, 0.2]}}}, "params.dropout", "finite"),
    ("unknown-spec-key", {"params": {"learning_rate": {"float": [1e-5, 1e-3], "lg": True}}},
     "params.learning_rate.lg", "did you mean 'log'"),
    ("unknown-hyperparameter", {"params": {"learnig_rate": LR}},
     "params.learnig_rate", "did you mean 'learning_rate'"),
    ("unknown-hyperparameter-far", {"params": {"momentum": LR}}, "params.momentum", "valid keys"),
    ("two-kinds", {"params": {"learning_rate": {"float": [1e-5, 1e-3], "int": [1, 2]}}},
     "params.learning_rate", "exactly one of"),
    ("no-kind", {"params": {"learning_rate": {"log": True}}}, "params.learning_rate", "exactly one of"),
    ("one-bound", {"params": {"learning_rate": {"float": [1e-5]}}}, "params.learning_rate", "[low, high]"),
    ("log-not-bool", {"params": {"learning_rate": {"float": [1e-5, 1e-3], "log": "yes"}}},
     "params.learning_rate.log", "true or false"),
    ("when-unknown-param", {"params": {"unfreeze_every": {"int": [1, 2], "when": {"unfreeze_schedul": ["step"]}}}},
     "params.unfreeze_every.when", "unknown parameter 'unfreeze_schedul'"),
    ("when-fixed-param", {"params": {"unfreeze_every": {"int": [1, 2], "when": {"unfreeze_schedule": ["step"]}}},
                          "fixed": {"unfreeze_schedule": "step"}},
     "params.unfreeze_every.when", "unknown parameter"),
    ("when-value-not-a-choice", {"params": {"unfreeze_schedule": SCHED,
                                            "unfreeze_every": {"int": [1, 2], "when": {"unfreeze_schedule": ["linear"]}}}},
     "params.unfreeze_every.when", "'linear'"),
    ("when-not-mapping", {"params": {"unfreeze_schedule": SCHED,
                                     "unfreeze_every": {"int": [1, 2], "when": ["unfreeze_schedule"]}}},
     "params.unfreeze_every.when", "must map"),
    ("when-self", {"params": {"unfreeze_schedule": {"choice": ["none", "step"], "when": {"unfreeze_schedule": ["step"]}}}},
     "params.unfreeze_schedule.when", "depends on itself"),
    ("cycle", {"params": {
        "unfreeze_schedule": {"choice": ["none", "step"], "when": {"freeze_embeddings": [True]}},
        "freeze_embeddings": {"choice": [True, False], "when": {"unfreeze_schedule": ["step"]}}}},
     "params.unfreeze_schedule.when", "cycle"),
    ("fixed-and-searched", {"params": {"learning_rate": LR}, "fixed": {"learning_rate": 1e-4}},
     "fixed.learning_rate", "both fixed and searched"),
    ("fixed-unknown", {"params": {"learning_rate": LR}, "fixed": {"epoch": 3}}, "fixed.epoch", "did you mean 'epochs'"),
    ("fixed-invalid", {"params": {"learning_rate": LR}, "fixed": {"dropout": 2.0}}, "fixed.dropout", "invalid for dropout"),
    ("bare-value-invalid", {"params": {"learning_rate": LR, "epochs": 0}}, "params.epochs", "invalid for epochs"),
    ("int-bounds-not-whole", {"params": {"num_frozen_layers": {"int": [0.5, 2]}}},
     "params.num_frozen_layers", "whole numbers"),
    ("step-zero", {"params": {"dropout": {"float": [0.0, 0.3], "step": 0}}}, "params.dropout", "step must be > 0"),
    ("step-negative", {"params": {"batch_size": {"int": [8, 32], "step": -8}}}, "params.batch_size", "step must be > 0"),
    ("step-not-number", {"params": {"dropout": {"float": [0.0, 0.3], "step": "0.1"}}}, "params.dropout", "step"),
    ("step-with-log", {"params": {"learning_rate": {"float": [1e-5, 1e-3], "step": 1e-5, "log": True}}},
     "params.learning_rate", "step and log"),
    ("bound-not-num-layers", {"params": {"num_frozen_layers": {"int": [0, "layers"]}}},
     "params.num_frozen_layers", "bound 'layers' is not a number"),
    ("bound-expression", {"params": {"num_frozen_layers": {"int": [0, "num_layers / 2"]}}},
     "params.num_frozen_layers", "is not a number"),
    ("bound-invalid-for-knob", {"params": {"dropout": {"float": [0.0, 1.5]}}}, "params.dropout", "invalid for dropout"),
    ("choice-invalid-for-knob", {"params": {"unfreeze_schedule": {"choice": ["none", "cyclic"]}}},
     "params.unfreeze_schedule", "'cyclic'"),
    ("int-knob-negative", {"params": {"num_frozen_layers": {"int": [-1, 2]}}},
     "params.num_frozen_layers", "invalid for num_frozen_layers"),
    ("no-params", {"params": {}}, "params", "no searchable parameter"),
    ("only-fixed-params", {"params": {"epochs": 2}}, "params", "no searchable parameter"),
    ("params-missing", {"name": "x"}, "params", "no searchable parameter"),
    ("params-not-mapping", {"params": ["learning_rate"]}, "params", "must be a mapping"),
    ("unknown-top-key", {"parms": {"learning_rate": LR}}, "parms", "did you mean 'params'"),
    ("start-point-unknown", {"params": {"learning_rate": LR}, "start_points": [{"learning_rate": 1e-4, "dropout": 0.1}]},
     "start_points[0].dropout", "not a searched parameter"),
    ("start-points-not-list", {"params": {"learning_rate": LR}, "start_points": {"learning_rate": 1e-4}},
     "start_points", "list of mappings"),
]


@pytest.mark.parametrize(("raw", "field", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in MALFORMED])
def test_malformed_space_is_refused(raw: Any, field: str, fragment: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_space(raw, "space")
    assert exc.value.field == f"space: {field}"
    msg = str(exc.value)
    assert msg.startswith(f"space: {field}: ")
    assert fragment in msg
    assert "\n" not in msg


def test_space_that_is_not_a_mapping() -> None:
    with pytest.raises(InputError) as exc:
        parse_space(["learning_rate"], "space")
    assert exc.value.field == "space"


def test_malformed_shipped_style_file_names_the_file(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("params:\n  learning_rate: {float: [1.0e-3, 1.0e-5]}\n", encoding="utf-8")
    with pytest.raises(InputError) as exc:
        load_space(str(f))
    assert exc.value.field == f"{f}: params.learning_rate"


def test_float_range_on_an_int_knob_is_refused() -> None:
    raw = {"params": {"num_frozen_layers": {"float": [0, 2]}}}
    try:
        space = parse_space(raw, "space")
    except InputError as exc:
        assert "num_frozen_layers" in str(exc)
        return
    for cfg in sample(space, 5):
        Recipe.from_dict(cfg)  # raises InputError: "must be an integer >= 0"


def test_fractional_int_step_is_refused_at_parse() -> None:
    with pytest.raises(InputError, match="num_frozen_layers"):
        parse_space({"params": {"num_frozen_layers": {"int": [0, 2], "step": 0.5}}}, "space")
