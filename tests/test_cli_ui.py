"""`autoft ui`: the MLflow server it starts stops with it, web server process included.

`mlflow server` serves through a child process (uvicorn) that outlives it when only the
`mlflow server` process is signalled; a user's `kill` of `autoft ui` must leave no server
listening.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import free_port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_stops_its_whole_server_on_a_signal(tmp_path, sig) -> None:
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "autoft.cli", "ui", "--storage", str(tmp_path), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    server: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert ui.poll() is None, ui.stdout.read() if ui.stdout else ""
            assert time.monotonic() < deadline, "the MLflow server did not start listening in 90 s"
            time.sleep(0.5)
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "autoft ui runs the server as a child process"
        ui.send_signal(sig)
        assert ui.wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(server, timeout=15)
        assert not alive, [p.pid for p in alive]
        assert not _listening(port)
    finally:
        # By PID only: whatever this test started and left behind.
        for p in [*server, psutil.Process(ui.pid) if ui.poll() is None else None]:
            if p is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()


LEADER = """
import os, time
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os._exit(0)  # a zombie of the group: its parent never reaps it
    os.setpgid(0, 0)  # the parent leaves the group, alive, so the zombie stays whatever PID 1 does
    os.waitid(os.P_PID, grandchild, os.WEXITED | os.WNOWAIT)  # exited, and left unreaped
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def test_a_zombie_in_the_group_does_not_hold_the_stop() -> None:
    from autoft.cli import _run_server

    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    outsider = int(leader.stdout.readline())
    try:
        def in_group(pid: int) -> bool:
            try:
                return os.getpgid(pid) == leader.pid
            except ProcessLookupError:  # someone else's, reaped meanwhile
                return False

        zombies = [p for p in psutil.process_iter(["status"])
                   if p.info["status"] == psutil.STATUS_ZOMBIE and in_group(p.pid)]
        assert zombies, "the group holds a zombie"
        os.kill(leader.pid, signal.SIGTERM)  # the server exits by itself
        t0 = time.monotonic()
        _run_server(leader, grace_s=20)
        assert time.monotonic() - t0 < 5, "waited on a zombie"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(outsider, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
