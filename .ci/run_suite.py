"""The suite's entry point (``./run test``): pytest, then an exit without interpreter teardown.

One pytest process starts and stops Ray about thirty times. Ray's C++ core worker does
not promise that is safe (ray-project/ray#31145: a later session's threads can reach state
an earlier one freed), and CI once saw this process die of SIGSEGV (exit 139) *after*
pytest had printed ``1107 passed`` - past the tests, where a crash says nothing about them
and yet turned the run red. By the time ``pytest.main`` returns pytest has run all of its
own clean-up (fixtures, ``pytest_unconfigure``, temporary folders, any junit XML); the exit
status is pytest's. Skipped are Python's ``atexit`` handlers and module finalisation: Ray is
shut down here first if a test left it up, and the scratch folders a process would release
at exit are released by the trials' own context managers. A crash during the tests still
kills the run (pytest's faulthandler plugin prints every thread's stack). A crash inside
pytest's own clean-up would too: this covers only what comes after it.

Kept out of ``tests/``: Ray puts the driver script's folder on its workers' import path, and
from there they could import test modules, which under ``python -m pytest`` they cannot.
"""

from __future__ import annotations

import os
import sys

import pytest


def main() -> None:
    try:
        code = int(pytest.main(sys.argv[1:]))
        sys.stdout.flush()
    except BrokenPipeError:  # `./run test | head`: as pytest's own entry point does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
