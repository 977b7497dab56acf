"""Orchestration overhead of a search: wall time against the trials' own compute.

Runs real searches (Ray Tune + Optuna + MLflow) of short trials and prints, side by
side, wall seconds, the sum of the trials' epoch seconds (training + evaluation, as
measured inside the trial), and the overhead per trial:

    overhead/trial = (wall - sum(trial compute) / concurrency) / trials

Usage: python benchmarks/overhead.py [--trials 8] [--samples 256] [--epochs 2] [--concurrency 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def run(trials: int, samples: int, epochs: int, concurrency: int, model: str) -> dict:
    from autoft.config import load_config
    from autoft.controller import run_search

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            f"model.path={model}", f"data.max_train_samples={samples}", "data.max_eval_samples=200",
            f"train.epochs={epochs}", "train.max_length=64", f"search.num_trials={trials}",
            f"search.max_concurrent={concurrency}", "pruning.scheduler=none", f"storage={tmp}",
            f"resources.cpus_per_trial={max(1, (os.cpu_count() or 2) // concurrency)}", "name=overhead",
        ])
        t0 = time.perf_counter()
        result = run_search(cfg, echo=lambda *_: None)
        wall = time.perf_counter() - t0
    compute = float(result.trials["compute_seconds"].sum())
    return {"concurrency": concurrency, "trials": trials, "wall_s": wall, "trial_compute_s": compute,
            "overhead_per_trial_s": (wall - compute / concurrency) / trials,
            "overhead_share": 1 - (compute / concurrency) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrency", default="1,2")
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()
    rows = [run(args.trials, args.samples, args.epochs, int(c), args.model) for c in args.concurrency.split(",")]
    import ray

    ray.shutdown()
    print(f"{'concurrency':>11} {'trials':>6} {'wall s':>8} {'trial compute s':>16} {'overhead/trial s':>17} {'overhead %':>10}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['trials']:>6} {r['wall_s']:>8.1f} {r['trial_compute_s']:>16.1f} "
              f"{r['overhead_per_trial_s']:>17.2f} {100 * r['overhead_share']:>9.1f}%")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
