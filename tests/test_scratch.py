"""Checkpoint scratch folders do not outlive the processes that made them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoft import scratch


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_dead_processes_folders_only(tmp_path: Path) -> None:
    dead = tmp_path / f"{scratch.PREFIX}{_dead_pid()}-abc"
    (dead / "checkpoint-epoch-1").mkdir(parents=True)
    (dead / "checkpoint-epoch-1" / "model.safetensors").write_bytes(b"x" * 10)
    live = tmp_path / f"{scratch.PREFIX}{os.getpid()}-def"
    live.mkdir()
    older_name = tmp_path / f"{scratch.PREFIX}q1w2e3r4"  # no owner in the name: not ours to judge
    older_name.mkdir()
    other = tmp_path / "unrelated-123-x"
    other.mkdir()

    removed = scratch.sweep(tmp_path)

    assert removed == [dead]
    assert not dead.exists()
    assert live.exists() and older_name.exists() and other.exists()


def test_a_process_removes_its_own_folders_at_exit(tmp_path: Path) -> None:
    code = ("from autoft import scratch; p = scratch.make(); (p / 'checkpoint-epoch-1').mkdir(); "
            "print(p, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.strip()
    made = Path(out)
    assert made.parent == tmp_path and made.name.startswith(f"{scratch.PREFIX}")
    assert not made.exists()


def test_a_killed_process_folder_goes_with_the_next_one(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # os._exit skips exit handlers, as a worker killed outright would.
    code = "import os; from autoft import scratch; p = scratch.make(); print(p, flush=True); os._exit(0)"
    left = Path(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout.strip())
    assert left.exists()
    code = "from autoft import scratch; print(scratch.make(), flush=True)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert not left.exists()
    assert list(tmp_path.glob(f"{scratch.PREFIX}*")) == []


def test_node_folders_are_per_namespace_and_outlive_nothing_but_reboots(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage that several hosts mount: a folder per host, boot and PID namespace; a host's
    folders from before its last reboot go, the others' and its own other namespaces' stay."""
    monkeypatch.setattr(scratch, "_namespace", lambda: ("b00t0002", "4026531836", "gpu1"))
    for name in ("node-b00t0001-4026531836-gpu1", "node-b00t0001-4026532001-gpu1",
                 "node-b00t0001-4026531836-gpu10", "node-b00t0009-4026531836-gpu2",
                 "node-b00t0002-4026532001-gpu1"):
        (tmp_path / name / f"{scratch.PREFIX}123-abc").mkdir(parents=True)
    mine = scratch.node_folder(tmp_path)
    assert mine == tmp_path / "node-b00t0002-4026531836-gpu1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "node-b00t0001-4026531836-gpu10", "node-b00t0002-4026532001-gpu1", "node-b00t0009-4026531836-gpu2"]


def test_this_namespace_has_a_key() -> None:
    boot, namespace, host = scratch._namespace()
    assert boot and namespace and host and "-" not in boot + namespace + host
