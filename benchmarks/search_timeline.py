"""Where a search's wall time goes outside its trials: the driver's timeline of one search.

Runs the overhead benchmark's search (equal-cost trials, nothing frozen, no pruning) once
and prints, in seconds from the call to ``run_search``, when each driver phase began and
when Ray told the driver that each trial started, reported and ended. The gap between the
``tune`` phase and the first trial's start is Ray starting the trial's worker (its imports
included); the gaps between trials are the reused actor's reset.

Usage: python benchmarks/search_timeline.py [--trials 3] [--samples 300] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()

    from overhead import run

    from autoft import callbacks, controller

    events: list[tuple[float, str]] = []
    start = [0.0]

    def mark(what: str) -> None:
        events.append((time.perf_counter() - start[0], what))

    # Watch the driver's own hooks; nothing about the search changes.
    for hook in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        original = getattr(callbacks.MlflowTrialCallback, hook)

        def watched(self, *a, _original=original, _hook=hook, **k):
            mark(f"{_hook.removeprefix('on_')} {k['trial'].trial_id}")
            return _original(self, *a, **k)

        setattr(callbacks.MlflowTrialCallback, hook, watched)
    enter = controller._Phases.enter

    def entered(self, name: str) -> None:
        mark(f"phase {name or '(end)'}")
        enter(self, name)

    controller._Phases.enter = entered
    start[0] = time.perf_counter()
    row = run(trials=args.trials, samples=args.samples, epochs=args.epochs, concurrency=1, model=args.model)
    mark("run_search returned")
    load = os.getloadavg()[0]
    print(f"{args.trials} trials x {args.samples} examples x {args.epochs} epoch(s), load {load:.2f} at the end")
    print(f"{'s':>7}  event")
    for t, what in events:
        print(f"{t:>7.2f}  {what}")
    print(f"wall {row['wall_s']:.1f} s, trial compute {row['trial_compute_s']:.1f} s, in-trial {row['in_trial_s']:.2f} s/trial, "
          f"per-search {row['per_search_s']:.1f} s; each trial's compute (s): {row['compute_each_s']}")


if __name__ == "__main__":
    main()
