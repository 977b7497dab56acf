"""Argument types and error output shared by every `autoft` command module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from autoft.errors import InputError

ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Experiment config YAML. Omitted: the embedded defaults (bundled MiniLM, SMS spam data)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override any config key, e.g. --set train.epochs=2 (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object with the results as the last stdout line.")]


def err(msg: str) -> None:
    typer.echo(msg, err=True)


def fail(exc: InputError) -> NoReturn:
    """Bad input: one line naming the field and the fix, exit code 2."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)
