"""Search spaces: YAML -> checked spec -> Optuna define-by-run function.

A space file::

    name: text-classification
    description: one line shown by `autoft spaces`
    params:
      learning_rate:     {float: [1.0e-5, 5.0e-4], log: true}
      num_frozen_layers: {int: [0, num_layers]}          # bound from the model
      unfreeze_schedule: {choice: [none, gradual, step]}
      unfreeze_every:    {int: [1, 3], when: {unfreeze_schedule: [gradual, step]}}
    fixed: {epochs: 4}

Parameter names are :class:`~autoft.recipe.Recipe` fields. Pure logic: no Ray,
no MLflow; Optuna is imported only to build distributions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoft.errors import InputError, unknown_key_fix
from autoft.recipe import RECIPE_FIELDS, Recipe
from autoft.resources import shared_dir
from autoft.yamlio import load_yaml_file

SPACES_DIR = shared_dir("search_spaces")
SPEC_KEYS = {"float", "int", "choice", "value", "log", "step", "when"}
TOP_KEYS = {"name", "description", "params", "fixed", "start_points"}
BOUND_RE = re.compile(r"^\s*num_layers\s*(?:([-+])\s*(\d+))?\s*$")
ABSENT = "n/a"  # logged for conditional params a trial did not sample
TRIAL_NUMBER_KEY = "autoft_trial"
DEPTH_KNOBS = ("num_frozen_layers", "reinit_top_layers")
INT_KNOBS = ("num_frozen_layers", "unfreeze_every", "reinit_top_layers", "batch_size", "epochs", "seed")


def trial_number_of(config: dict[str, Any]) -> int:
    """The Optuna trial number a Ray trial's config carries (-1: none)."""
    return int(config.get(TRIAL_NUMBER_KEY, -1))


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # float | int | choice
    low: Any = None
    high: Any = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass
class SearchSpace:
    name: str
    description: str
    params: dict[str, ParamSpec]
    fixed: dict[str, Any]
    start_points: list[dict[str, Any]]
    source: str

    @property
    def param_names(self) -> list[str]:
        return list(self.params)

    def resolve(self, num_layers: int) -> SearchSpace:
        """Replace model-dependent bounds (``num_layers``) and re-check them."""
        out = {}
        for name, p in self.params.items():
            low, high = _bound(p.low, num_layers, self.source, name), _bound(p.high, num_layers, self.source, name)
            q = ParamSpec(p.name, p.kind, low, high, p.log, p.step, p.choices, p.when)
            _check_range(q, self.source)
            top = _upper(q)
            if name in DEPTH_KNOBS and top is not None and top > num_layers:
                raise InputError(f"{self.source}: params.{name}", f"upper bound {top} exceeds the model's "
                                 f"{num_layers} blocks", "use num_layers as the bound")
            out[name] = q
        resolved = SearchSpace(self.name, self.description, out, dict(self.fixed), list(self.start_points), self.source)
        # Re-initialising frozen blocks is meaningless: every sampled pair must fit the model.
        frozen = resolved._max_of("num_frozen_layers")
        reinit = resolved._max_of("reinit_top_layers")
        if frozen + reinit > num_layers:
            raise InputError(f"{self.source}: params.reinit_top_layers",
                             f"up to {frozen} frozen + {reinit} re-initialised blocks exceed the model's {num_layers}",
                             "lower one of the two upper bounds (e.g. num_frozen_layers up to num_layers - 2)")
        return resolved

    def _max_of(self, name: str) -> int:
        if name in self.params:
            return int(_upper(self.params[name]) or 0)
        return int(self.fixed.get(name, 0) or 0)

    def distributions(self) -> dict[str, Any]:
        import optuna.distributions as od

        dists = {}
        for name, p in self.params.items():
            if p.kind == "float":
                dists[name] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                dists[name] = od.IntDistribution(p.low, p.high, log=p.log, step=int(p.step or 1))
            else:
                dists[name] = od.CategoricalDistribution(p.choices)
        return dists

    def active(self, name: str, values: dict[str, Any]) -> bool:
        return all(values.get(dep) in allowed for dep, allowed in self.params[name].when.items())

    def define_by_run(self) -> Any:
        """A function for ``OptunaSearch(space=...)``; suggests in dependency order.

        The Optuna trial number travels in the config (``TRIAL_NUMBER_KEY``), so
        the driver can key MLflow runs by it, also across a resume.
        """

        return _DefineByRun(self)

    def sample_config(self, trial: Any) -> dict[str, Any]:
        """Sample one full trial config (without Ray): sampled params + fixed values."""
        values: dict[str, Any] = {}
        for name in self.param_names:
            if self.active(name, values):
                values[name] = _suggest(trial, name, self.params[name])
        return {**self.fixed, **values}

    def in_space(self, name: str, value: Any) -> bool:
        p = self.params[name]
        if p.kind == "choice":
            return value in p.choices
        return isinstance(value, (int, float)) and p.low <= value <= p.high

    def starting_points(self, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Known-good points reduced to this space: out-of-range values and
        inactive conditionals are dropped, so Optuna samples the rest."""
        points = []
        for raw in list(self.start_points) + list(extra or []):
            point: dict[str, Any] = {}
            for name in self.param_names:
                if name in raw and self.active(name, point) and self.in_space(name, raw[name]):
                    point[name] = raw[name]
            if point and point not in points:
                points.append(point)
        return points


class _DefineByRun:
    """Picklable (Ray saves the searcher with it) define-by-run function."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {**self.space.sample_config(trial), TRIAL_NUMBER_KEY: trial.number}


def _suggest(trial: Any, name: str, p: ParamSpec) -> Any:
    if p.kind == "float":
        return trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    if p.kind == "int":
        return trial.suggest_int(name, p.low, p.high, log=p.log, step=int(p.step or 1))
    return trial.suggest_categorical(name, list(p.choices))


def _upper(p: ParamSpec) -> Any:
    if p.kind == "choice":
        nums = [c for c in p.choices if _is_num(c)]
        return max(nums) if nums else None
    return p.high


def _bound(value: Any, num_layers: int, source: str, name: str) -> Any:
    if isinstance(value, str):
        m = BOUND_RE.match(value)
        if not m:
            raise InputError(f"{source}: params.{name}", f"bound '{value}' is not a number",
                             "use a number or num_layers (optionally - N)")
        n = int(m.group(2) or 0)
        return num_layers - n if m.group(1) == "-" else num_layers + n
    return value


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_range(p: ParamSpec, source: str) -> None:
    f = f"{source}: params.{p.name}"
    if p.kind == "choice":
        return
    low, high = p.low, p.high
    if isinstance(low, str) or isinstance(high, str):
        return  # model-dependent; checked again by resolve()
    if not (_is_num(low) and _is_num(high)) or not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f, f"bounds must be finite numbers, got [{low!r}, {high!r}]", "write e.g. [1.0e-5, 5.0e-4]")
    if p.kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise InputError(f, f"int bounds must be whole numbers, got [{low}, {high}]", "use float: for real values")
    if low > high:
        raise InputError(f, f"`low <= high` must hold, got [{low}, {high}]", "swap the bounds")
    if p.log and low <= 0:
        raise InputError(f, f"log scale needs low > 0, got {low}", "raise low or drop log: true")
    if p.step is not None and (not _is_num(p.step) or p.step <= 0):
        raise InputError(f, f"step must be > 0, got {p.step!r}", "use a positive step or drop it")
    if p.kind == "int" and p.step is not None and not float(p.step).is_integer():
        raise InputError(f, f"an int step must be a whole number, got {p.step}", "use step: 1 or 2...")
    if p.step is not None and p.log:
        raise InputError(f, "step and log cannot both be set", "drop one of them")


def parse_param(name: str, raw: Any, source: str) -> ParamSpec | Any:
    """Return a ParamSpec, or the plain value for a fixed ``{value: x}`` / scalar entry."""
    f = f"{source}: params.{name}"
    if name not in RECIPE_FIELDS:
        raise InputError(f, "unknown hyperparameter", unknown_key_fix(name, RECIPE_FIELDS))
    if not isinstance(raw, dict):
        return raw  # a bare value: fixed
    for key in raw:
        if key not in SPEC_KEYS:
            raise InputError(f"{f}.{key}", "unknown key", unknown_key_fix(key, SPEC_KEYS))
    kinds = [k for k in ("float", "int", "choice", "value") if k in raw]
    if len(kinds) != 1:
        raise InputError(f, f"needs exactly one of float, int, choice, value (got {kinds or 'none'})",
                         "write e.g. {float: [1.0e-5, 5.0e-4], log: true}")
    kind = kinds[0]
    if kind == "value":
        return raw["value"]
    if kind == "float" and name in INT_KNOBS:
        raise InputError(f, f"{name} takes whole numbers", f"write {{int: [low, high]}} for {name}")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise InputError(f"{f}.when", "must map a parameter to allowed values", "write when: {unfreeze_schedule: [gradual]}")
    when_t = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{f}.log", f"must be true or false, got {log!r}", "write log: true")
    if kind == "choice":
        choices = raw["choice"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f, "choice needs a non-empty list", "write {choice: [a, b]}")
        if len(set(map(repr, choices))) != len(choices):
            raise InputError(f, f"choice has duplicates: {choices}", "list each value once")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise InputError(f, "choices must be scalars", "use strings, numbers or booleans")
        for c in choices:
            _check_value(name, c, f)
        return ParamSpec(name, "choice", choices=tuple(choices), when=when_t)
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise InputError(f, f"{kind} needs [low, high], got {bounds!r}", f"write {{{kind}: [low, high]}}")
    low, high = bounds
    if kind == "int" and _is_num(low) and _is_num(high):
        low, high = (int(low) if float(low).is_integer() else low), (int(high) if float(high).is_integer() else high)
    if kind == "float" and _is_num(low) and _is_num(high):
        low, high = float(low), float(high)
    p = ParamSpec(name, kind, low, high, log, raw.get("step"), when=when_t)
    for b in (low, high):
        if isinstance(b, str) and not BOUND_RE.match(b):
            raise InputError(f, f"bound '{b}' is not a number", "use a number or num_layers (optionally - N)")
    _check_range(p, source)
    for b in (low, high):
        if _is_num(b):
            _check_value(name, b, f)
    return p


def _check_value(name: str, value: Any, field_name: str) -> None:
    """A bound or choice must itself be a valid value of the knob."""
    probe = {name: value}
    if name == "num_frozen_layers":
        probe["reinit_top_layers"] = 0
    try:
        Recipe.from_dict(probe)
    except InputError as exc:
        raise InputError(field_name, f"value {value!r} is invalid for {name} ({exc.problem})",
                         exc.fix or "fix the range") from None
    except TypeError:
        raise InputError(field_name, f"value {value!r} has the wrong type for {name}", "fix the range") from None


def parse_space(raw: Any, source: str) -> SearchSpace:
    if not isinstance(raw, dict):
        raise InputError(source, "a space must be a mapping with a 'params' section", "see search_spaces/*.yaml")
    for key in raw:
        if key not in TOP_KEYS:
            raise InputError(f"{source}: {key}", "unknown key", unknown_key_fix(key, TOP_KEYS))
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise InputError(f"{source}: params", "must be a mapping of name -> spec", "see search_spaces/*.yaml")
    fixed = dict(raw.get("fixed") or {})
    for key, value in fixed.items():
        if key not in RECIPE_FIELDS:
            raise InputError(f"{source}: fixed.{key}", "unknown hyperparameter", unknown_key_fix(key, RECIPE_FIELDS))
        _check_value(key, value, f"{source}: fixed.{key}")
    params: dict[str, ParamSpec] = {}
    for name, spec in params_raw.items():
        parsed = parse_param(str(name), spec, source)
        if isinstance(parsed, ParamSpec):
            params[str(name)] = parsed
        else:
            _check_value(str(name), parsed, f"{source}: params.{name}")
            fixed[str(name)] = parsed
    if not params:
        raise InputError(f"{source}: params", "no searchable parameter", "add at least one float/int/choice entry")
    for name in params:
        if name in fixed:
            raise InputError(f"{source}: fixed.{name}", "is both fixed and searched", "remove one of them")
    ordered = _dependency_order(params, source)
    starts = raw.get("start_points") or []
    if not isinstance(starts, list) or not all(isinstance(s, dict) for s in starts):
        raise InputError(f"{source}: start_points", "must be a list of mappings", "write - {learning_rate: 5.0e-5}")
    for i, s in enumerate(starts):
        for key in s:
            if key not in params:
                raise InputError(f"{source}: start_points[{i}].{key}", "is not a searched parameter",
                                 unknown_key_fix(key, params))
    name = str(raw.get("name") or Path(source).stem)
    return SearchSpace(name, str(raw.get("description") or ""), ordered, fixed, starts, source)


def _dependency_order(params: dict[str, ParamSpec], source: str) -> dict[str, ParamSpec]:
    for p in params.values():
        for dep, allowed in p.when.items():
            if dep not in params:
                raise InputError(f"{source}: params.{p.name}.when", f"names unknown parameter '{dep}'",
                                 unknown_key_fix(dep, params))
            if dep == p.name:
                raise InputError(f"{source}: params.{p.name}.when", "depends on itself", "remove the condition")
            target = params[dep]
            if target.kind == "choice":
                bad = [a for a in allowed if a not in target.choices]
                if bad:
                    raise InputError(f"{source}: params.{p.name}.when", f"value(s) {bad} are not choices of '{dep}'",
                                     f"use some of {list(target.choices)}")
    ordered: dict[str, ParamSpec] = {}
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in ordered:
            return
        if n in visiting:
            raise InputError(f"{source}: params.{n}.when", "conditions form a cycle", "remove one condition")
        visiting.add(n)
        for dep in params[n].when:
            visit(dep)
        visiting.discard(n)
        ordered[n] = params[n]

    for n in params:
        visit(n)
    return ordered


def shipped_spaces() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))}


def load_space(spec: str | dict[str, Any] | None) -> SearchSpace:
    if spec is None:
        spec = "quickstart"
    if isinstance(spec, dict):
        return parse_space(spec, "space")
    shipped = shipped_spaces()
    if spec in shipped:
        path = shipped[spec]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError("space", f"'{spec}' is neither a shipped space nor a file",
                             "use one of: " + ", ".join(shipped) + " (autoft spaces), or a YAML path")
    return parse_space(load_yaml_file(path, "space"), str(path.name if path.parent == SPACES_DIR else path))
