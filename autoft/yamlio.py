"""Strict, safe YAML reading: ``safe_load`` semantics plus duplicate-key,
size and alias limits, so a typo or a billion-laughs file is refused early."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from autoft.errors import InputError

MAX_YAML_BYTES = 1_000_000
MAX_ALIASES = 100


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys and alias floods."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._alias_count = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._alias_count += 1
            if self._alias_count > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.YAMLError(f"duplicate key '{key}' at line {line}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-5 as a string; YAML 1.2 and every user read it as a float.
_FLOAT_12 = re.compile(r"""^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml_text(text: str, source: str) -> Any:
    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise InputError(source, f"file is larger than {MAX_YAML_BYTES} bytes", "split or trim it")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(source, f"invalid YAML{where}: {first}", "fix the syntax") from None


def load_yaml_file(path: str | Path, field: str = "config") -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(field, f"file '{path}' does not exist", "give the path of a YAML file")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise InputError(field, f"'{path}' is larger than {MAX_YAML_BYTES} bytes", "trim it")
    return load_yaml_text(p.read_text(encoding="utf-8"), f"{field} '{path}'")


def parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (numbers, bools, lists)."""
    try:
        return yaml.load(text, Loader=_StrictLoader) if text.strip() else ""  # noqa: S506
    except yaml.YAMLError:
        return text
