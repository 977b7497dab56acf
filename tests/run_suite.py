"""The suite's entry point (``./run test``): pytest, then an exit without interpreter teardown.

One pytest process starts and stops Ray about thirty times. Ray's C++ core worker does
not promise that is safe (ray-project/ray#31145: a later session's threads can reach state
an earlier one freed), and CI once saw this process die of SIGSEGV (exit 139) *after*
pytest had printed ``1107 passed`` - in teardown, where a crash says nothing about the
tests and yet turned the run red. pytest has by then run its own clean-up (fixtures,
``pytest_unconfigure``, temporary folders); the exit status is pytest's. What is skipped
is Python's ``atexit`` handlers and module finalisation, whose work (Ray's shutdown, the
scratch-folder release) the fixtures and context managers have already done.

Faults during the tests print every thread's stack (faulthandler), so a crash there is
still seen and still fails the run.
"""

from __future__ import annotations

import faulthandler
import os
import sys

import pytest


def main() -> None:
    faulthandler.enable()
    code = int(pytest.main(sys.argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
