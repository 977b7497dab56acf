"""One error type for bad user input, rendered as a single line.

Every check that refuses a config, a space, a dataset or a model path raises
:class:`InputError` naming the field, the bad value and the fix, so the CLI can
print one line and exit 2 before any trial (or MLflow run) is started.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}"
        if fix:
            msg += f"; {fix}"
        super().__init__(msg.replace("\n", " "))


def closest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_fix(word: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    best = closest(word, choices)
    if best:
        return f"did you mean '{best}'?"
    return "valid keys: " + ", ".join(choices)
