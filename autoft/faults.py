"""Fault injection for autoft's own fault-tolerance tests, in the style of Ray
Tune's marker-file tests. Inert unless ``AUTOFT_FAULTS_DIR`` is set.

A file ``<trial number>.<kind>`` in that folder makes the trial with that
Optuna number fail once, at the start of its second epoch, then the file is
removed (so a retry succeeds). Kinds: ``raise`` (an exception), ``sigkill``
(the worker dies, as in an out-of-memory kill), ``hang`` (sleeps until the
driver's trial timeout kills it), ``nan`` (the loss becomes NaN), ``torn``
(the newest checkpoint on disk is torn, then the worker crashes).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

ENV = "AUTOFT_FAULTS_DIR"
KINDS = ("raise", "sigkill", "hang", "nan", "torn")


def hook_for(trial_number: int, trial_dir: str | None) -> Any:
    folder = os.environ.get(ENV)
    if not folder:
        return None

    def hook(epoch: int, model: Any) -> None:
        if epoch != 1:
            return
        for kind in KINDS:
            marker = Path(folder) / f"{trial_number}.{kind}"
            if not marker.exists():
                continue
            marker.unlink()
            _fire(kind, model, trial_dir)

    return hook


def _fire(kind: str, model: Any, trial_dir: str | None) -> None:
    if kind == "raise":
        raise RuntimeError("injected failure (AUTOFT_FAULTS_DIR)")
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(3600)
    if kind == "nan":
        import torch

        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(float("nan"))
                    break
    if kind == "torn":
        ckpts = sorted(Path(trial_dir or ".").glob("checkpoint_*"))
        if ckpts:
            (ckpts[-1] / "trainer_state.json").unlink(missing_ok=True)
        raise RuntimeError("injected crash after a torn checkpoint (AUTOFT_FAULTS_DIR)")
