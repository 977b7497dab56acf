"""Orchestration overhead of a search: wall time against the trials' own compute.

Runs real searches (Ray Tune + Optuna + MLflow, autoft's defaults otherwise) whose
trials all cost the same (only learning rate and weight decay are searched, nothing
frozen, no pruning), so that the difference between wall time and compute is the
orchestration: Ray start, tokenizing, trial start-up (model load), result and
checkpoint handling, MLflow logging, scoring the best checkpoint on test and
registering it. Printed side by side:

    overhead/trial = (wall - sum(trial compute) / concurrency) / trials
    overhead %     = 1 - (sum(trial compute) / concurrency) / wall

where a trial's compute is the sum of its epochs' seconds (training + evaluation,
timed inside the trial). The issue's target: at most 3% for trials of a minute or more.

``--overlap off,on,on,off`` runs the search four times, with ``train.overlap_checkpoints``
false (the default: training waits while Ray copies each checkpoint into storage) and true in
that order (so drift and a warm second start fall on both), and prints the means side by side.
``--links off,on,on,off`` does the same for the storage filesystem autoft gives Ray Tune: on
(the default, ``autoft.storage_fs``: Ray's copy of each checkpoint into storage is a hard link)
against off (Ray's own local filesystem, which copies every byte; the trial's side is
unchanged: checkpoints written in the storage folder, reported on autoft's filesystem).
``--optimizer-state on,off,off,on`` compares ``train.save_optimizer_state`` (off: checkpoints
without AdamW's moments, a third of the bytes; a resumed trial restarts them).
``--direct-writes off,on,on,off`` compares ``train.checkpoint_writes``: on is its default, auto
(each trial process times O_DIRECT and buffered writes on its own checkpoints and keeps the
faster; ``autoft.direct_write``), off is buffered (every checkpoint through the page cache).
``--by-hand off,on,on,off`` puts beside autoft's search the same search written by hand with
Ray Tune + OptunaSearch (what the issue's B2 user writes: the model loaded in the trial, a
weights-only ``save_pretrained`` + ``tune.report`` each epoch, the best checkpoint scored on test
at the end; no MLflow, no optimizer state, no resume), over the same examples, tokenized and
batched by autoft's code so that the compute matches: its overhead is what Ray Tune itself costs
a search of this shape, the floor under autoft's.

Usage: python benchmarks/overhead.py [--trials 4] [--samples 1000] [--epochs 2] [--concurrency 1,2]
       [--overlap off] [--links on] [--optimizer-state on] [--direct-writes on] [--by-hand off]
       [--output results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

SPACE = """name: overhead
description: equal-cost trials - nothing frozen, only the optimizer searched
params:
  learning_rate: {float: [5.0e-5, 3.0e-4], log: true}
  weight_decay:  {float: [1.0e-3, 1.0e-1], log: true}
"""


MEANS = ("wall_s", "in_trial_s", "mean_trial_s", "overhead_share")  # averaged over searches, per setting


def onoff(value: bool) -> str:
    return "on" if value else "off"


def run(trials: int, samples: int, epochs: int, concurrency: int, model: str, overlap: bool = False,
        links: bool = True, optimizer_state: bool = True, direct_writes: bool = True, by_hand: bool = False) -> dict:
    if by_hand:
        return run_by_hand(trials, samples, epochs, concurrency, model)
    from autoft import controller
    from autoft.config import load_config
    from autoft.controller import run_search
    from autoft.storage_fs import linking_local

    # Off: Ray Tune gets no storage filesystem and uses its own, which copies.
    controller.linking_local = linking_local if links else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(SPACE)
        cfg = load_config(None, [
            f"model.path={model}", f"data.max_train_samples={samples}", "data.max_eval_samples=300",
            "data.max_test_samples=300", f"train.epochs={epochs}", "train.max_length=64",
            f"search.num_trials={trials}", f"search.max_concurrent={concurrency}", "search.warm_start=false",
            "pruning.scheduler=none", f"space={space}", f"storage={tmp}/runs", "name=overhead",
            f"resources.cpus_per_trial={max(1, (os.cpu_count() or 2) // concurrency)}",
            f"train.overlap_checkpoints={str(overlap).lower()}",
            f"train.save_optimizer_state={str(optimizer_state).lower()}",
            f"train.checkpoint_writes={'auto' if direct_writes else 'buffered'}",
        ])
        t0 = time.perf_counter()
        result = run_search(cfg, echo=lambda *_: None)
        wall = time.perf_counter() - t0
    compute = float(result.trials["compute_seconds"].sum())
    saving = float(result.trials["checkpoint_seconds"].sum())
    trial_wall = float(result.trials["wall_seconds"].sum())
    return {"concurrency": concurrency, "overlap": overlap, "links": links, "optimizer_state": optimizer_state,
            "direct_writes": direct_writes, "by_hand": False,
            "trials": trials, "wall_s": wall, "trial_compute_s": compute,
            "compute_each_s": [round(float(v), 2) for v in result.trials["compute_seconds"]],  # in trial order
            "mean_trial_s": compute / trials, "overhead_per_trial_s": (wall - compute / concurrency) / trials,
            "overhead_share": 1 - (compute / concurrency) / wall,
            # Where it goes: inside trials (model load, checkpoints, reporting; the driver's
            # start-to-end time of each trial minus its epochs) and once per search (the rest).
            "in_trial_s": (trial_wall - compute) / trials,
            "checkpoint_s": saving / trials,  # of which: writing checkpoints (Ray's copy into storage not included)
            "per_search_s": wall - trial_wall / concurrency,
            # The driver's own clock per phase; all but "tune" are paid once per search.
            "phases": result.phase_seconds}


def hand_trainable(config: dict, data: Any, setup: dict) -> None:
    """What a user writes for Ray Tune: load, AdamW + linear warmup, evaluate and report with a
    weights-only checkpoint each epoch. ``compute_s`` times the same spans autoft's trials time."""
    import torch
    from ray import tune
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from autoft.data import batch_indices, collate
    from autoft.trial import evaluate

    torch.set_num_threads(setup["threads"])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        setup["model"], num_labels=len(data.label_names), local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    bs, epochs = setup["batch_size"], setup["epochs"]
    total = -(-len(data.train) // bs) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    compute = saving = 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in batch_indices(data.train, bs, shuffle=True, seed=epoch):
            ids, mask, labels = collate(data.train, idx, data.pad_token_id)
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = evaluate(model, data.validation, setup["eval_batch_size"], data.pad_token_id,
                           torch.device("cpu"), None)
        compute += time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            model.save_pretrained(d)
            saving += time.perf_counter() - t0
            tune.report({**metrics, "epoch": epoch + 1, "compute_s": compute, "save_s": saving},
                        checkpoint=tune.Checkpoint.from_directory(d))


def run_by_hand(trials: int, samples: int, epochs: int, concurrency: int, model: str) -> dict:
    """The same search by hand: Ray Tune + OptunaSearch(TPE), FIFO, the best checkpoint scored on test."""
    import logging

    import optuna
    import ray
    import torch
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
    from transformers import AutoModelForSequenceClassification

    from autoft.config import load_config
    from autoft.data import load_text_data, prepare_data
    from autoft.models import load_tokenizer, resolve_model_path
    from autoft.trial import evaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # autoft's reading, sampling and tokenizing: the same examples as its search (0.1 s of it).
        cfg = load_config(None, [f"data.max_train_samples={samples}", "data.max_eval_samples=300",
                                 "data.max_test_samples=300", "train.max_length=64"])
        path = resolve_model_path(model)
        data = prepare_data(load_text_data(cfg.data, cfg.train.seed), load_tokenizer(path),
                            cfg.train.max_length, str(path))
        threads = max(1, (os.cpu_count() or 2) // concurrency)
        setup = {"model": str(path), "batch_size": cfg.train.batch_size, "eval_batch_size": cfg.train.eval_batch_size,
                 "epochs": epochs, "threads": threads}
        t_prepare = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        t_ray = time.perf_counter()
        space = {"learning_rate": FloatDistribution(5e-5, 3e-4, log=True),
                 "weight_decay": FloatDistribution(1e-3, 1e-1, log=True)}
        searcher = OptunaSearch(space=space, metric="eval_f1", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(hand_trainable, data=data, setup=setup), {"cpu": threads}),
            tune_config=tune.TuneConfig(metric="eval_f1", mode="max", search_alg=searcher, num_samples=trials,
                                        max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name="by-hand", storage_path=f"{tmp}/runs", verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=1, checkpoint_score_attribute="eval_f1",
                                          checkpoint_score_order="max")))
        grid = tuner.fit()
        t_tune = time.perf_counter()
        best = grid.get_best_result("eval_f1", "max", scope="all").get_best_checkpoint("eval_f1", "max")
        with best.as_directory() as d:
            net = AutoModelForSequenceClassification.from_pretrained(d, local_files_only=True)
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            evaluate(net, data.test, cfg.train.eval_batch_size, data.pad_token_id, torch.device("cpu"), None)
        wall = time.perf_counter() - t0
    results = [r.metrics for r in grid]
    compute = sum(m["compute_s"] for m in results)
    # Ray's own clock of each trial, from the trainable's start (the model load included).
    trial_wall = sum(m["time_total_s"] for m in results)
    return {"concurrency": concurrency, "overlap": False, "links": False, "optimizer_state": False,
            "direct_writes": False, "by_hand": True,
            "trials": trials, "wall_s": wall, "trial_compute_s": compute,
            "compute_each_s": [round(float(m["compute_s"]), 2) for m in results],
            "mean_trial_s": compute / trials, "overhead_per_trial_s": (wall - compute / concurrency) / trials,
            "overhead_share": 1 - (compute / concurrency) / wall,
            "in_trial_s": (trial_wall - compute) / trials,
            "checkpoint_s": sum(m["save_s"] for m in results) / trials,
            "per_search_s": wall - trial_wall / concurrency,
            "phases": {"prepare": t_prepare - t0, "ray_start": t_ray - t_prepare, "tune": t_tune - t_ray,
                       "test": time.perf_counter() - t_tune}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrency", default="1,2")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--overlap", default="off", help="off (the default), on, or both in order (off,on,on,off): "
                                                     "train.overlap_checkpoints")
    ap.add_argument("--links", default="on", help="on (the default), off, or both in order (off,on,on,off): "
                                                  "checkpoint copies into storage as hard links")
    ap.add_argument("--optimizer-state", default="on", help="on (the default), off, or both in order "
                                                            "(off,on,on,off): train.save_optimizer_state")
    ap.add_argument("--direct-writes", default="on", help="on (the default: train.checkpoint_writes auto), off "
                                                          "(buffered), or both in order (off,on,on,off)")
    ap.add_argument("--by-hand", default="off", help="off (autoft, the default), on (the same search written by "
                                                     "hand with Ray Tune + OptunaSearch), or both in order")
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = ap.parse_args()
    load = os.getloadavg()
    values = {name: [{"on": True, "off": False}[v.strip()] for v in given.split(",")]
              for name, given in (("overlap", args.overlap), ("links", args.links),
                                  ("optimizer_state", args.optimizer_state),
                                  ("direct_writes", args.direct_writes), ("by_hand", args.by_hand))}
    varied = [name for name, vs in values.items() if len(vs) > 1]
    if len(varied) > 1:
        ap.error("compare one setting at a time: one of --overlap, --links, --optimizer-state, --direct-writes, "
                 "--by-hand")
    axis = varied[0] if varied else "overlap"
    import ray

    rows = []
    for c in args.concurrency.split(","):
        for v in values[axis]:
            settings = {name: vs[0] for name, vs in values.items()} | {axis: v}
            rows.append(run(args.trials, args.samples, args.epochs, int(c), args.model, **settings))
            ray.shutdown()  # each search pays its own Ray start, as a user's would
    print(f"MiniLM, {args.samples} train examples x {args.epochs} epochs per trial, {os.cpu_count()} cores, "
          f"load average at start {load[0]:.2f}")
    print(f"{'concurrency':>11} {'system':>7} {'overlap':>7} {'links':>5} {'optim':>5} {'direct':>6} {'trials':>6} {'trial s (mean)':>14} {'wall s':>8} {'trial compute s':>16} "
          f"{'overhead/trial s':>17} {'overhead %':>10} {'in-trial s/trial':>16} {'per-search s':>12}")
    for r in rows:
        print(f"{r['concurrency']:>11} {'by hand' if r.get('by_hand') else 'autoft':>7} {onoff(r['overlap']):>7} {onoff(r['links']):>5} {onoff(r['optimizer_state']):>5} {onoff(r['direct_writes']):>6} {r['trials']:>6} {r['mean_trial_s']:>14.1f} {r['wall_s']:>8.1f} "
              f"{r['trial_compute_s']:>16.1f} {r['overhead_per_trial_s']:>17.2f} {100 * r['overhead_share']:>9.1f}% "
              f"{r['in_trial_s']:>16.2f} {r['per_search_s']:>12.1f}")
    label = [f"concurrency {r['concurrency']}, {axis} {onoff(r[axis])}" for r in rows]
    print("in-trial, writing checkpoints (s/trial): " + " | ".join(
        f"{lab}: {r['checkpoint_s']:.2f}" for lab, r in zip(label, rows)))
    print("per-search phases (s): " + " | ".join(
        f"{lab}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items() if k != "tune")
        for lab, r in zip(label, rows)))
    for c in dict.fromkeys(r["concurrency"] for r in rows):
        by = {o: [r for r in rows if r["concurrency"] == c and r[axis] == o] for o in (False, True)}
        if not (by[False] and by[True]):
            continue
        off, on = ({k: statistics.fmean(r[k] for r in by[o]) for k in MEANS} for o in (False, True))
        print(f"concurrency {c}, {axis} (mean of {len(by[False])} off, {len(by[True])} on): "
              f"wall off/on {off['wall_s'] / on['wall_s']:.3f}x, "
              f"in-trial s/trial {off['in_trial_s']:.2f} -> {on['in_trial_s']:.2f}, "
              f"trial compute s (mean) {off['mean_trial_s']:.1f} -> {on['mean_trial_s']:.1f}, "
              f"overhead {100 * off['overhead_share']:.1f}% -> {100 * on['overhead_share']:.1f}%")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": {**vars(args), "output": str(args.output)},
                                       "load_start": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
