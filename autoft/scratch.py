"""Scratch folders for the checkpoints a trial hands to Ray Tune.

Under Tune a trial writes each checkpoint to a scratch folder, ``tune.report``
links (or copies) it into the search's storage, and the trial deletes it. A worker killed
outright (out of memory, SIGKILL, a trial timeout) never runs that clean-up, so
its folder - a full model plus optimizer state, hundreds of MB for a base-size
model - would outlive it. Each folder's name carries its process id: a process
removes its own at exit, and the next trial on the machine removes any whose
process is gone.

Assumes the processes that share a scratch root share a PID namespace (true for a
Ray node's workers); folders of processes still alive are never touched. A root on
storage that several machines or containers mount is shared through
:func:`node_folder`: one folder per host, boot and PID namespace, so a process only
ever judges process ids of its own namespace, and a later run in that namespace
(a new Ray, a resumed search) clears what a killed one left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

PREFIX = "autoft-ckpt-"
_OWN: set[Path] = set()


def make(root: str | Path | None = None) -> Path:
    """A new scratch folder for this process under ``root`` (None: the system's temporary
    folder), after clearing dead processes' ones there."""
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
    _OWN.add(path)
    return path


@contextlib.contextmanager
def folder(root: str | Path | None = None) -> Iterator[Path]:
    """:func:`make`, released when the block ends however it ends."""
    path = make(root)
    try:
        yield path
    finally:
        release(path)


def release(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _OWN.discard(path)


def sweep(root: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders whose owning process has exited; returns them."""
    return remove_dead(Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"), _owner)


def remove_dead(paths: Iterable[Path], pid_of: Callable[[str], int | None]) -> list[Path]:
    """Remove the folders among ``paths`` whose name (read by ``pid_of``) names an exited process."""
    removed = []
    for path in paths:
        pid = pid_of(path.name)
        if pid is not None and path.is_dir() and not process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def node_folder(shared_root: str | Path) -> Path:
    """This PID namespace's scratch root under ``shared_root``; clears the folders this host
    left before its last reboot (every process of theirs is gone)."""
    boot, namespace, host = _namespace()
    root = Path(shared_root)
    for old in root.glob(f"node-*-*-{host}"):
        _, old_boot, _, old_host = old.name.split("-", 3)
        if old_host == host and old_boot != boot and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return root / f"node-{boot}-{namespace}-{host}"


def _namespace() -> tuple[str, str, str]:
    """(boot id, PID namespace, host name), "x" where the system does not say (not Linux)."""
    try:
        boot = re.sub(r"[^A-Za-z0-9]", "", Path("/proc/sys/kernel/random/boot_id").read_text())[:8] or "x"
    except OSError:
        boot = "x"
    try:
        namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit()) or "x"
    except OSError:
        namespace = "x"
    host = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()) or "x"
    return boot, namespace, host


def _owner(name: str) -> int | None:
    pid, sep, _ = name[len(PREFIX):].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@atexit.register
def _release_own() -> None:
    for path in list(_OWN):
        release(path)
