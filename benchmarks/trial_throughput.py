"""Training throughput: autoft's trial loop against a plain Hugging Face Trainer.

Both train the bundled all-MiniLM-L6-v2 for one epoch over the same N SMS-spam
examples (same texts, tokenizer, max_length, batch size, learning rate, fp32,
CPU, the same number of torch threads) with 0, 3 and 6 bottom blocks frozen,
and report training samples per second (training only: autoft's
``train_samples_per_second`` excludes its per-epoch evaluation and checkpoint;
the Trainer runs with evaluation, saving and logging integrations off).

Each frozen-layer setting runs ``--repeats`` times per engine, interleaved and
alternating which engine goes first; the table shows the medians. Results are
also written to ``benchmarks/results/trial_throughput.json``.

    .venv/bin/python benchmarks/trial_throughput.py            # defaults: 512 samples, 3 repeats

autoft's frozen-prefix cache (``RunOptions.cache_frozen``, on by default)
computes the outputs of the never-trained embeddings + bottom blocks once per
search, before the timed loop, and trains the upper blocks from them. So with
``--cache both`` (default) autoft runs twice per setting: as shipped (cache on;
the one-off build is timed on its own and reported beside the table, in a
private cache folder removed at the end) and with the cache off (the plain
loop, like for like with the Trainer). With 0 frozen layers there is nothing to
cache and the two are one run.

Other differences are part of what is measured (each engine as it ships):
autoft length-buckets its shuffled batches and runs frozen blocks in eval mode;
the Trainer samples batches at random (``--trainer-sampling`` changes that)
and uses its default optimizer (``adamw_torch_fused`` on torch >= 2.8), where
autoft uses ``torch.optim.AdamW``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Offline: everything comes from the installed packages. Set before transformers
# (and huggingface_hub, which reads these at import) is first imported, below.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results" / "trial_throughput.json"
ENGINES = {"on": ("autoft", "trainer"), "off": ("autoft_nocache", "trainer"),
           "both": ("autoft", "autoft_nocache", "trainer")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--samples", type=int, default=512, help="training examples (one epoch over them)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine and setting (median shown)")
    p.add_argument("--frozen", default="0,3,6", help="comma-separated num_frozen_layers values")
    p.add_argument("--max-length", type=int, default=64, help="tokenizer truncation length")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for both engines")
    p.add_argument("--cache", choices=sorted(ENGINES), default="both",
                   help="autoft's frozen-prefix cache: on (as shipped), off, or both side by side")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed short runs per engine before measuring (0 = none)")
    p.add_argument("--trainer-sampling", default="random",
                   choices=["random", "sequential", "group_by_length"],
                   help="Trainer train_sampling_strategy (random is the Trainer default)")
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    try:
        args.frozen_list = [int(x) for x in args.frozen.split(",") if x.strip()]
    except ValueError:
        p.error(f"--frozen must be comma-separated integers, got {args.frozen!r}")
    if not args.frozen_list:
        p.error("--frozen names no setting")
    for name in ("samples", "repeats", "batch_size", "threads", "max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    """autoft's plan and tokenized data, exactly as a search would build them."""
    from autoft.config import load_config
    from autoft.controller import plan_search, tokenize_for

    cfg = load_config(None, [
        "model.path=minilm",
        "data.name=sms_spam",
        f"data.max_train_samples={args.samples}",
        # Evaluation is outside the timed part; keep it short so the benchmark is too.
        "data.max_eval_samples=64",
        "train.epochs=1",
        f"train.batch_size={args.batch_size}",
        f"train.max_length={args.max_length}",
        "train.device=cpu",
        "train.precision=fp32",
        f"train.threads={args.threads}",
        f"params.learning_rate={args.lr}",
    ])
    plan = plan_search(cfg)
    for k in args.frozen_list:
        if not 0 <= k <= plan.num_layers:
            sys.exit(f"--frozen: {k} is outside 0..{plan.num_layers} (the model has {plan.num_layers} blocks)")
    return plan, tokenize_for(plan)


class TrainerDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def trainer_dataset(plan: Any, data: Any, tokenizer: Any, max_length: int) -> TrainerDataset:
    """The same texts through the same tokenizer; checked token for token against autoft's."""
    texts = plan.text.train.texts
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    labels = data.train.labels
    rows = []
    for i, (ids, mask) in enumerate(zip(enc["input_ids"], enc["attention_mask"])):
        if not np.array_equal(np.asarray(ids, dtype=np.int32), data.train.sequence(i)):
            sys.exit(f"tokenization differs from autoft's at training example {i}")
        # No token_type_ids: autoft feeds input_ids + attention_mask only (the model uses zeros).
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": int(labels[i])})
    return TrainerDataset(rows)


# --------------------------------------------------------------------------- autoft


class Collect:
    """autoft reporter that keeps every epoch's metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.metrics.append(dict(metrics))


class CacheTimer:
    """Times autoft's prefix-cache load/build calls (by wrapping the module function)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        try:
            from autoft import prefix_cache
        except ImportError:
            return
        original = prefix_cache.load_or_build

        def timed(model: Any, splits: Any, pad_id: Any, depth: int, folder: Path, *a: Any, **kw: Any) -> Any:
            built = not (Path(folder) / "complete.json").is_file()
            t0 = time.perf_counter()
            out = original(model, splits, pad_id, depth, folder, *a, **kw)
            self.calls.append({"built": built, "seconds": time.perf_counter() - t0, "depth": depth})
            return out

        prefix_cache.load_or_build = timed


def has_cache_option() -> bool:
    from autoft.trial import RunOptions

    return "cache_frozen" in {f.name for f in fields(RunOptions)}


def run_autoft(plan: Any, data: Any, frozen: int, args: argparse.Namespace, *, cache: bool,
               cache_dir: Path, timer: CacheTimer) -> dict[str, Any]:
    from autoft.trial import RunOptions, run_trial

    recipe = plan.cfg.base_recipe({"num_frozen_layers": frozen})
    extra: dict[str, Any] = {"cache_frozen": cache, "cache_dir": cache_dir} if has_cache_option() else {}
    opts = RunOptions(device="cpu", precision="fp32", eval_batch_size=plan.cfg.train.eval_batch_size,
                      threads=args.threads, **extra)
    reporter = Collect()
    n_calls = len(timer.calls)
    result = run_trial(recipe, data, plan.model_path, reporter, opts)
    if result.status != "completed" or not reporter.metrics:
        raise RuntimeError(f"autoft trial did not complete: {result.status} {result.reason}")
    m = reporter.metrics[-1]
    return {"samples_per_second": float(m["train_samples_per_second"]),
            "train_seconds": float(m["train_seconds"]), "samples": int(m["train_samples"]),
            "trainable_params": int(m["trainable_params"]), "threads": torch.get_num_threads(),
            "cached_prefix_depth": int(m.get("cached_prefix_depth", 0)),
            "cache_calls": timer.calls[n_calls:]}


# --------------------------------------------------------------------------- Trainer


def freeze_bottom(model: Any, k: int) -> None:
    """Embeddings + bottom k blocks frozen (autoft's freeze_embeddings=True rule: none when k=0)."""
    if k == 0:
        return
    for p in model.bert.embeddings.parameters():
        p.requires_grad = False
    for block in model.bert.encoder.layer[:k]:
        for p in block.parameters():
            p.requires_grad = False


def run_trainer(plan: Any, data: Any, dataset: TrainerDataset, tokenizer: Any, frozen: int,
                args: argparse.Namespace) -> dict[str, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    recipe = plan.cfg.base_recipe({"num_frozen_layers": frozen})
    torch.set_num_threads(args.threads)
    set_seed(recipe.seed)
    labels = data.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        str(plan.model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, local_files_only=True, use_safetensors=True)
    freeze_bottom(model, frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory(prefix="autoft-bench-trainer-") as out:
        targs = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            warmup_steps=recipe.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
            max_grad_norm=recipe.max_grad_norm,
            lr_scheduler_type="linear",
            seed=recipe.seed,
            use_cpu=True,
            bf16=False,
            fp16=False,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_pin_memory=False,
            train_sampling_strategy=args.trainer_sampling,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict to stdout
        out_metrics = trainer.train().metrics
        optim = str(getattr(targs.optim, "value", targs.optim))
    threads = torch.get_num_threads()
    del trainer, model
    return {"samples_per_second": float(out_metrics["train_samples_per_second"]),
            "train_seconds": float(out_metrics["train_runtime"]), "samples": len(dataset),
            "trainable_params": trainable, "threads": threads, "optim": optim}


# --------------------------------------------------------------------------- main

COLUMNS = [  # (row key, header, format)
    ("frozen_layers", "frozen layers", "{}"),
    ("autoft_samples_per_second", "autoft samples/s", "{:.1f}"),
    ("trainer_samples_per_second", "Trainer samples/s", "{:.1f}"),
    ("ratio", "ratio autoft/Trainer", "{:.2f}"),
    ("autoft_nocache_samples_per_second", "autoft no-cache samples/s", "{:.1f}"),
    ("ratio_nocache", "ratio no-cache/Trainer", "{:.2f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if rows[0].get(c[0]) is not None]
    head = [h for _, h, _ in cols]
    body = [[f.format(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), "  ".join("-" * w for w in widths), *(fmt.format(*b) for b in body)])


def median_of(runs: list[dict[str, Any]]) -> float | None:
    return statistics.median(r["samples_per_second"] for r in runs) if runs else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("accelerate") is None:
        sys.exit("transformers.Trainer needs accelerate: ./run install (or pip install -e '.[bench]')")
    import transformers
    from transformers.utils import logging as hf_logging

    from autoft.models import load_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())

    plan, data = prepare(args)
    tokenizer = load_tokenizer(plan.model_path)
    dataset = trainer_dataset(plan, data, tokenizer, args.max_length)
    n = len(data.train)
    engines = ENGINES[args.cache]
    if not has_cache_option():
        log("this autoft has no frozen-prefix cache option: autoft runs its only loop")
        engines = ("autoft_nocache", "trainer")
    log(f"model {plan.model_path.name} ({plan.num_layers} blocks), {n} training examples, batch "
        f"{args.batch_size}, max_length {args.max_length}, {args.threads} threads, repeats {args.repeats}, "
        f"engines {', '.join(engines)}")

    cache_dir = Path(tempfile.mkdtemp(prefix="autoft-bench-prefix-cache-"))
    timer = CacheTimer()
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        k: {e: [] for e in ENGINES["both"]} for k in args.frozen_list}
    try:
        if args.warmup:
            k = min(2 * args.batch_size, n)
            small = replace(data, train=data.train.subset(np.arange(k)))
            for _ in range(args.warmup):
                log(f"warm-up: {k} examples per engine (untimed)")
                run_autoft(plan, small, args.frozen_list[0], args, cache=False, cache_dir=cache_dir, timer=timer)
                run_trainer(plan, small, TrainerDataset(dataset.rows[:k]), tokenizer, args.frozen_list[0], args)
                gc.collect()

        for rep in range(args.repeats):
            for k in args.frozen_list:
                # With nothing frozen there is nothing to cache: one autoft run serves both columns.
                todo = [e for e in engines if not (k == 0 and e == "autoft_nocache" and "autoft" in engines)]
                shift = rep % len(todo)
                for engine in todo[shift:] + todo[:shift]:  # rotate who goes first
                    if engine == "trainer":
                        r = run_trainer(plan, data, dataset, tokenizer, k, args)
                    else:
                        r = run_autoft(plan, data, k, args, cache=engine == "autoft", cache_dir=cache_dir,
                                       timer=timer)
                    gc.collect()
                    runs[k][engine].append(r)
                    if k == 0 and engine == "autoft" and "autoft_nocache" in engines:
                        runs[k]["autoft_nocache"].append(r)
                    built = [c for c in r.get("cache_calls", []) if c["built"]]
                    note = f", cache built in {built[0]['seconds']:.1f}s before it" if built else ""
                    log(f"repeat {rep + 1}/{args.repeats}  frozen {k}  {engine:14s} "
                        f"{r['samples_per_second']:7.1f} samples/s  ({r['train_seconds']:.2f}s train, "
                        f"{r['trainable_params']:,} trainable, {r['threads']} threads{note})")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    rows = []
    for k in args.frozen_list:
        a, a0, t = (median_of(runs[k][e]) for e in ("autoft", "autoft_nocache", "trainer"))
        assert t is not None
        params = {e: rs[0]["trainable_params"] for e, rs in runs[k].items() if rs}
        if len(set(params.values())) > 1:
            log(f"warning: frozen {k}: trainable parameters differ: {params}")
        rows.append({
            "frozen_layers": k,
            "autoft_samples_per_second": a,
            "trainer_samples_per_second": t,
            "ratio": a / t if a is not None else None,
            "autoft_nocache_samples_per_second": a0,
            "ratio_nocache": a0 / t if a0 is not None else None,
            "trainable_params": params,
            "runs": runs[k],
        })

    builds = [c["seconds"] for c in timer.calls if c["built"]]
    loads = [c["seconds"] for c in timer.calls if not c["built"]]
    print(table(rows))
    if builds:
        print(f"autoft prefix cache: built once in {builds[0]:.1f}s (one pass over {n} train + "
              f"{len(data.validation)} validation examples, all depths), outside the timed loop; "
              f"later trials load it" + (f" ({statistics.median(loads):.2f}s)." if loads else "."))
    result = {
        "benchmark": "trial_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "model": str(plan.model_path), "num_layers": plan.num_layers, "dataset": "sms_spam (train.csv)",
            "samples": n, "epochs": 1, "batch_size": args.batch_size, "max_length": args.max_length,
            "learning_rate": args.lr, "precision": "fp32", "device": "cpu", "threads": args.threads,
            "repeats": args.repeats, "warmup_runs": args.warmup, "statistic": "median",
            "autoft_cache": args.cache, "trainer_sampling": args.trainer_sampling,
            "trainer_optim": runs[args.frozen_list[0]]["trainer"][0]["optim"],
        },
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average_start": load_before,
            "load_average_end": list(os.getloadavg()),
        },
        "prefix_cache_calls": timer.calls,
        "rows": rows,
        "wall_seconds": time.perf_counter() - t_start,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.output} ({result['wall_seconds']:.0f}s total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
