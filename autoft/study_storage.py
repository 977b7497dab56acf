"""The Optuna study's database, found where the search folder is now.

Ray saves the searcher by pickling it, and with it the Optuna study and its storage. An
``RDBStorage`` pickles its URL, the absolute path of ``<storage>/optuna.db`` when the search
started, and reconnects to it when unpickled. A search folder moved or copied elsewhere (off
a cluster's scratch disk, renamed) would then resume against the old database: fail if it is
gone, or, if it is still there, write the copy's trials into the original search's study,
while MLflow and Ray's state follow the folder. :class:`SearchStudyStorage` reconnects to the
database a resuming driver names instead (:func:`study_found_at`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from optuna.storages import RDBStorage

# Where the study of the search being resumed in this process is now; None: where it was.
_found_at: str | None = None


class SearchStudyStorage(RDBStorage):
    """Optuna's SQL storage, reconnected on unpickling to the URL :func:`study_found_at` gives."""

    def __setstate__(self, state: dict[Any, Any]) -> None:
        if _found_at is not None:
            state = {**state, "url": _found_at}
        super().__setstate__(state)


@contextlib.contextmanager
def study_found_at(url: str) -> Iterator[None]:
    """While Ray restores a search's saved searcher (``Tuner.restore`` and the start of
    ``fit``), its study storage reconnects to ``url``. One search per driver process."""
    global _found_at
    before, _found_at = _found_at, url
    try:
        yield
    finally:
        _found_at = before
