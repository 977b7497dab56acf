"""Seconds per epoch with and without the frozen-prefix cache, k = 0..L frozen blocks.

Side by side in one run on the bundled MiniLM (6 blocks) and SMS data: each
(k, cache on/off) trial trains ``--epochs`` epochs; the table reports the median
over ``--seeds`` seeds of the mean epoch seconds (training + evaluation). The
one-off cache build (one pass, all depths) is timed separately and printed above.

Usage: python benchmarks/cache.py [--samples 1000] [--epochs 2] [--seeds 3] [--frozen 0,1,2,3,4,5,6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Collect:
    def __init__(self) -> None:
        self.history: list[dict] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.history.append(metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--eval-samples", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frozen", default="0,1,2,3,4,5,6")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from autoft.config import load_config
    from autoft.controller import plan_search, tokenize_for
    from autoft.trial import RunOptions, run_trial

    cfg = load_config(None, [f"data.max_train_samples={args.samples}", f"data.max_eval_samples={args.eval_samples}",
                             f"train.epochs={args.epochs}", f"train.max_length={args.max_length}"])
    plan = plan_search(cfg)
    data = tokenize_for(plan)
    cache_dir = Path(tempfile.mkdtemp(prefix="autoft-cache-bench-"))
    rows = []
    try:
        # Build the cache once, timed on its own (one pass serves every depth).
        t0 = time.perf_counter()
        run_trial(cfg.base_recipe({"num_frozen_layers": 6, "epochs": 1}), data, plan.model_path, _Collect(),
                  RunOptions(threads=args.threads, cache_dir=cache_dir))
        build_s = time.perf_counter() - t0
        for k in [int(x) for x in args.frozen.split(",")]:
            per = {False: [], True: []}
            f1 = {False: [], True: []}
            for seed in range(args.seeds):
                for cache in (False, True):
                    rep = _Collect()
                    run_trial(cfg.base_recipe({"num_frozen_layers": k, "seed": seed}), data, plan.model_path, rep,
                              RunOptions(threads=args.threads, cache_frozen=cache, cache_dir=cache_dir))
                    per[cache].append(statistics.mean(h["epoch_seconds"] for h in rep.history))
                    f1[cache].append(rep.history[-1]["eval_f1"])
            off, on = statistics.median(per[False]), statistics.median(per[True])
            rows.append({"frozen": k, "epoch_s_no_cache": off, "epoch_s_cache": on, "speedup": off / on,
                         "f1_no_cache": statistics.median(f1[False]), "f1_cache": statistics.median(f1[True]),
                         "max_abs_f1_diff": max(abs(a - b) for a, b in zip(f1[False], f1[True], strict=True))})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"MiniLM, {len(data.train)} train / {len(data.validation)} eval examples, max_length {args.max_length}, "
          f"{args.threads} threads, median of {args.seeds} seeds; one-off cache build (all depths) {build_s:.1f} s")
    print(f"{'frozen':>6} {'epoch s (no cache)':>19} {'epoch s (cache)':>16} {'speedup':>8} {'F1 no cache':>12} "
          f"{'F1 cache':>9} {'max |dF1|':>10}")
    for r in rows:
        print(f"{r['frozen']:>6} {r['epoch_s_no_cache']:>19.2f} {r['epoch_s_cache']:>16.2f} {r['speedup']:>7.2f}x "
              f"{r['f1_no_cache']:>12.4f} {r['f1_cache']:>9.4f} {r['max_abs_f1_diff']:>10.2e}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "cache.json").write_text(json.dumps({"build_s": build_s, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
