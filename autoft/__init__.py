"""autoft: AutoML for fine-tuning pretrained transformers.

``autoft.search(config) -> SearchResult`` runs a search from Python; the config
is an :class:`~autoft.config.ExperimentConfig`, a YAML path, or a dict.
Heavy libraries (torch, ray, mlflow) load on first use, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from autoft.config import ExperimentConfig
    from autoft.controller import SearchResult


def load_config(path: Any = None, overrides: list[str] | None = None) -> ExperimentConfig:
    from autoft.config import load_config as _load

    return _load(path, overrides)


def search(config: Any = None, overrides: list[str] | None = None, echo: Any = print) -> SearchResult:
    """Run a search. ``config``: ExperimentConfig, dict, YAML path, or None for the embedded defaults."""
    from autoft.config import ExperimentConfig, validate_config
    from autoft.controller import run_search

    if isinstance(config, ExperimentConfig):
        cfg = config
    elif isinstance(config, dict):
        from autoft.config import apply_overrides

        cfg = validate_config(apply_overrides(dict(config), list(overrides or [])))
    else:
        cfg = load_config(config, overrides)
    return run_search(cfg, echo=echo)


__all__ = ["__version__", "load_config", "search"]
