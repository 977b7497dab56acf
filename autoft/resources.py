"""Where the repo-level folders (search_spaces/, dashboards/) are at run time.

In a checkout or an editable install they sit beside the package; a wheel
installs them as data files under ``<prefix>/share/autoft/`` (pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path


def shared_dir(name: str) -> Path:
    beside = Path(__file__).resolve().parent.parent / name
    if beside.is_dir():
        return beside
    installed = Path(sys.prefix) / "share" / "autoft" / name
    return installed if installed.is_dir() else beside
