"""`autoft` commands for the report feature; registered on the main app by autoft.cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this feature's commands to the main app."""
