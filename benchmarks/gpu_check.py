"""GPU check of the trial engine: precision, the frozen-prefix cache, two trials sharing a GPU.

Needs no Ray, MLflow or Optuna (``autoft.trial`` runs a trial on its own), so it runs on a
GPU machine that has only torch, transformers, pyyaml and pydantic. It trains real trials of
the given model on the given data and prints one table:

- full fine-tuning in fp32, bf16 autocast and fp16 autocast + GradScaler (``train.precision``);
- 4 frozen blocks with and without the frozen-prefix cache (``train.cache_frozen``), bf16;
- one bf16 trial alone, then two at once in two processes on the same GPU: what Ray does
  with ``resources.gpus_per_trial: 0.5`` (both workers see the one device);
- full fine-tuning, bf16, each checkpoint copied into a storage folder as ``tune.report``
  does, with ``train.overlap_checkpoints`` false then true (off by default: no faster on
  2 CPU cores; these rows say whether it pays on a GPU).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --model PATH --data ../shared/data/sms_spam

It refuses to run without a GPU unless ``--allow-cpu`` (for checking the script itself).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """Config, tokenized data and a work folder: once per process, shared by its trials."""
    from autoft.config import load_config
    from autoft.controller import plan_search, tokenize_for

    work = Path(tempfile.mkdtemp(prefix="autoft-gpu-check-"))
    cfg = load_config(None, [
        f"model.path={args.model}", f"data.train={args.data}/train.csv",
        f"data.validation={args.data}/validation.csv", f"data.max_train_samples={args.samples}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        f"train.max_length={args.max_length}", "train.evals_per_epoch=1", f"storage={work / 'runs'}",
    ])
    plan = plan_search(cfg)
    return cfg, tokenize_for(plan), work


class CopyingReporter:
    """Copies each checkpoint it is handed into a storage folder, as Ray Tune's report does."""

    def __init__(self, storage: Path) -> None:
        self.storage, self.copies = storage, 0

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.storage / f"checkpoint_{self.copies:06d}")
            self.copies += 1


def one_trial(prepared: tuple[Any, Any, Path], precision: str, frozen: int, cache: bool,
              overlap: bool | None = None) -> dict[str, Any]:
    """``overlap`` set: checkpoints are handed to a CopyingReporter, overlapped with training or not."""
    import torch

    from autoft.trial import PrintReporter, RunOptions, pick_device, run_trial

    cfg, data, work = prepared
    # Its own cache and checkpoint folders: no trial reuses what an earlier one built.
    own = Path(tempfile.mkdtemp(dir=work))
    recipe = cfg.base_recipe({"learning_rate": 1e-4, "num_frozen_layers": frozen})
    on_gpu = pick_device("auto").type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    opts = RunOptions(precision=precision, cache_frozen=cache, cache_dir=own / "cache", checkpoint_dir=own / "ckpt")
    reporter: Any = PrintReporter(echo=lambda _line: None)
    if overlap is not None:
        opts.checkpoint_dir, opts.overlap_checkpoints = None, overlap
        reporter = CopyingReporter(own)
    t0 = time.perf_counter()
    result = run_trial(recipe, data, Path(cfg.model.path), reporter, opts)
    wall = time.perf_counter() - t0
    epochs = [m["epoch_seconds"] for m in result.history]
    return {"status": result.status, "wall_s": wall, "first_epoch_s": epochs[0],
            "later_epoch_s": sum(epochs[1:]) / max(len(epochs) - 1, 1),
            "samples_per_s": result.history[-1]["train_samples_per_second"],
            "eval_f1": result.history[-1]["eval_f1"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0}


def _child(args: argparse.Namespace, queue: Any, start: Any) -> None:
    prepared = prepare(args)  # imports and tokenizing before the start: only the trials run together
    start.wait()
    try:
        queue.put(one_trial(prepared, "bf16", 0, True))
    finally:
        shutil.rmtree(prepared[2], ignore_errors=True)


def shared(args: argparse.Namespace, n: int) -> tuple[float, list[dict[str, Any]]]:
    """``n`` bf16 trials at once in ``n`` processes on the one GPU: wall seconds and results."""
    ctx = mp.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_child, args=(args, queue, start)) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1)
    t0 = time.perf_counter()
    start.set()
    results = [queue.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return wall, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model folder (safetensors)")
    ap.add_argument("--data", required=True, help="folder with train.csv and validation.csv (text,label)")
    ap.add_argument("--samples", type=int, default=2000, help="training examples")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check the script)")
    ap.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False); --allow-cpu runs it anyway")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    import transformers

    print(f"GPU {gpu}; torch {torch.__version__}, transformers {transformers.__version__}; bf16 "
          f"{torch.cuda.is_available() and torch.cuda.is_bf16_supported()}; {args.samples} examples x "
          f"{args.epochs} epochs, batch {args.batch_size}, length {args.max_length}", flush=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    prepared = prepare(args)
    try:
        for name, precision, frozen, cache, overlap in (
            ("full FT, fp32", "fp32", 0, True, None),
            ("full FT, bf16 autocast", "bf16", 0, True, None),
            ("full FT, fp16 autocast + GradScaler", "fp16", 0, True, None),
            ("4 frozen, bf16, no cache", "bf16", 4, False, None),
            ("4 frozen, bf16, cache", "bf16", 4, True, None),
            ("full FT, bf16, copied ckpts, overlap off", "bf16", 0, True, False),
            ("full FT, bf16, copied ckpts, overlap on", "bf16", 0, True, True),
        ):
            rows.append((name, one_trial(prepared, precision, frozen, cache, overlap)))
            print(f"  {name}: {json.dumps(rows[-1][1])}", flush=True)
    finally:
        shutil.rmtree(prepared[2], ignore_errors=True)
    alone_wall, alone = shared(args, 1)
    both_wall, both = shared(args, 2)
    head = f"{'trial':40s} {'status':9s} {'epoch 1 s':>9s} {'later s':>8s} {'samples/s':>9s} {'val F1':>7s} {'peak GiB':>8s}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in rows + [("bf16 alone (process)", alone[0])] + [(f"bf16 sharing the GPU #{i + 1}", r)
                                                                      for i, r in enumerate(both)]:
        print(f"{name:40s} {r['status']:9s} {r['first_epoch_s']:9.2f} {r['later_epoch_s']:8.2f} "
              f"{r['samples_per_s']:9.0f} {r['eval_f1']:7.4f} {r['peak_gib']:8.2f}")
    one, two = alone[0]["wall_s"], max(r["wall_s"] for r in both)
    print(f"\ntwo trials sharing one GPU: {two:.1f} s for both against {one:.1f} s for one alone "
          f"(run_trial's wall time: model loading included, tokenizing not): {2 * one / two:.2f}x the throughput of one at a time")
    by = dict(rows)
    print(f"checkpoint copies overlapped with training (trial wall, off/on): "
          f"{by['full FT, bf16, copied ckpts, overlap off']['wall_s'] / by['full FT, bf16, copied ckpts, overlap on']['wall_s']:.2f}x")
    print(f"bf16 vs fp32 (later epochs): {by['full FT, fp32']['later_epoch_s'] / by['full FT, bf16 autocast']['later_epoch_s']:.2f}x; "
          f"prefix cache at 4 frozen (later epochs): "
          f"{by['4 frozen, bf16, no cache']['later_epoch_s'] / by['4 frozen, bf16, cache']['later_epoch_s']:.2f}x")
    if args.output:
        args.output.write_text(json.dumps({"gpu": gpu, "rows": dict(rows), "alone": [alone_wall, alone],
                                           "shared": [both_wall, both]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
