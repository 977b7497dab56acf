"""Kill a search's driver at random moments and resume it, over and over; keep what fails.

``tests/test_resume.py`` kills one search at one moment (two trials done, two running). Its
invariant failed once in CI, beside a second test suite, and never since in a single run.
This script hunts such rare interleavings: each cycle starts the same tiny search, SIGKILLs
the driver and its local Ray after a random number of finished trials (0-4) plus a random
delay (0-4 s), resumes it and checks the test's invariant (one MLflow run, one Optuna
trial and one Ray trial per requested trial, none RUNNING, a best checkpoint). A passing
cycle's folder is removed; a failing one keeps its storage (Ray state, optuna.db, mlflow.db)
and the resume's stderr (``resume.stderr``: its ``resume:`` reconciliation lines).

Run two side by side to load the machine like two suites:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/stress/kill_resume_cycles.py /tmp/stress-a --cycles 30 --seed 1 &
    HF_HUB_OFFLINE=1 .venv/bin/python tests/stress/kill_resume_cycles.py /tmp/stress-b --cycles 30 --seed 2

Not collected by pytest (no ``test_`` prefix): a cycle takes one to two minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

import test_resume as tr  # noqa: E402  (needs the path above)
from conftest import SMS, build_vocab, make_tiny_bert, read_rows, tiny_data_in  # noqa: E402


def killer(want_done: int, delay_s: float):
    """``ready`` for ``tr._kill_mid_search``: once ``want_done`` trials have ended (0: once
    any trial has started), wait ``delay_s`` more."""
    since: list[float] = []

    def ready(storage: Path, runs: list) -> bool:
        done = sum(r.info.status != "RUNNING" for r in runs)
        if done < want_done or not runs:
            return False
        if not since:
            since.append(time.time())
        return time.time() - since[0] >= delay_s

    return ready


def cycle(folder: Path, model: Path, data: dict, want_done: int, delay_s: float) -> tuple[bool, str, dict]:
    try:
        storage, before, search_id = tr._kill_mid_search(folder, model, data, killer(want_done, delay_s))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # pytest.fail's exception is a BaseException
        return False, f"the search could not be killed mid-way: {str(exc)[:300]}", {}
    returncode, out, err = tr._run_resume(storage, search_id, timeout_s=900)
    (folder / "resume.stderr").write_text(err)
    said = " | ".join(line for line in err.splitlines() if line.startswith("resume:"))
    try:
        assert returncode == 0, f"resume exited {returncode}"
        tr._assert_nothing_lost_nothing_twice(json.loads((out.strip().splitlines() or [""])[-1]), storage, search_id)
    except (AssertionError, ValueError, TypeError) as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:300]} {said}", before
    return True, said, before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="working folder (failing cycles are kept in it)")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_bert(args.root / "model", build_vocab(read_rows(SMS / "train.csv", 2000)))
    data = tiny_data_in(args.root / "data")
    failed = 0
    for n in range(args.cycles):
        want_done, delay_s = rng.choice([0, 1, 2, 2, 3, 4]), rng.uniform(0, 4)
        folder = args.root / f"cycle{n:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        ok, said, before = cycle(folder, model, data, want_done, delay_s)
        failed += not ok
        print(f"cycle {n}: kill after {want_done} ended + {delay_s:.1f}s, at the kill {before}: "
              f"{'ok' if ok else 'FAILED (kept)'} {said}", flush=True)
        if ok:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.cycles - failed} of {args.cycles} cycles kept the invariant")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
