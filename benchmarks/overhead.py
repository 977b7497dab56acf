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
``--by-hand off,on,reuse,reuse,on,off`` puts beside autoft's search the same search written by
hand with Ray Tune + OptunaSearch (what the issue's B2 user writes: the model loaded in the
trial, a weights-only ``save_pretrained`` + ``tune.report`` at each evaluation, the best checkpoint
scored on test at the end; no MLflow, no optimizer state, no resume), with Ray Tune's default
``reuse_actors=False`` (on: a new worker process, imports included, for every trial) or True
(reuse). Same examples, tokenizing, batching, evaluation points and recipe defaults as autoft's,
so the compute matches, and each trial timed by the driver from its start to its end, as
autoft's are. It is not a floor under Ray Tune's cost: it is the documented pattern.

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


def onoff(value: bool | str) -> str:
    return value if isinstance(value, str) else "on" if value else "off"


def system(row: dict) -> str:
    return {False: "autoft", "on": "by hand", "reuse": "by hand, reuse_actors"}[row.get("by_hand", False)]


def data_overrides(samples: int) -> list[str]:
    """The examples both systems train, validate and test on."""
    return [f"data.max_train_samples={samples}", "data.max_eval_samples=300", "data.max_test_samples=300",
            "train.max_length=64"]


def threads_per_trial(concurrency: int) -> int:
    return max(1, (os.cpu_count() or 2) // concurrency)


def figures(trials: int, concurrency: int, wall: float, compute_each: list[float], trial_wall: float,
            saving: float) -> dict:
    """A search's row from what was measured: its wall time, each trial's compute (in trial
    order), the sum of its trials' start-to-end times as the driver saw them, and the seconds
    spent writing checkpoints."""
    compute = float(sum(compute_each))
    return {"concurrency": concurrency, "trials": trials, "wall_s": wall, "trial_compute_s": compute,
            "compute_each_s": [round(float(v), 2) for v in compute_each],
            "mean_trial_s": compute / trials, "overhead_per_trial_s": (wall - compute / concurrency) / trials,
            "overhead_share": 1 - (compute / concurrency) / wall,
            # Where it goes: inside trials (model load, checkpoints, reporting; each trial's
            # start-to-end time minus its epochs) and once per search (the rest).
            "in_trial_s": (trial_wall - compute) / trials,
            "checkpoint_s": saving / trials,  # of which: writing checkpoints (Ray's copy into storage not included)
            "per_search_s": wall - trial_wall / concurrency}


def run(trials: int, samples: int, epochs: int, concurrency: int, model: str, overlap: bool = False,
        links: bool = True, optimizer_state: bool = True, direct_writes: bool = True,
        by_hand: bool | str = False) -> dict:
    if by_hand:
        return run_by_hand(trials, samples, epochs, concurrency, model, reuse_actors=by_hand == "reuse")
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
            f"model.path={model}", *data_overrides(samples), f"train.epochs={epochs}",
            f"search.num_trials={trials}", f"search.max_concurrent={concurrency}", "search.warm_start=false",
            "pruning.scheduler=none", f"space={space}", f"storage={tmp}/runs", "name=overhead",
            f"resources.cpus_per_trial={threads_per_trial(concurrency)}",
            f"train.overlap_checkpoints={str(overlap).lower()}",
            f"train.save_optimizer_state={str(optimizer_state).lower()}",
            f"train.checkpoint_writes={'auto' if direct_writes else 'buffered'}",
        ])
        t0 = time.perf_counter()
        result = run_search(cfg, echo=lambda *_: None)
        wall = time.perf_counter() - t0
    saving = float(result.trials["checkpoint_seconds"].sum())
    trial_wall = float(result.trials["wall_seconds"].sum())
    return {"overlap": overlap, "links": links, "optimizer_state": optimizer_state,
            "direct_writes": direct_writes, "by_hand": False,
            **figures(trials, concurrency, wall, list(result.trials["compute_seconds"]), trial_wall, saving),
            # The driver's own clock per phase; all but "tune" are paid once per search.
            "phases": result.phase_seconds}


def hand_trainable(config: dict, data: Any, setup: dict) -> None:
    """What a user writes for Ray Tune: load, AdamW + linear warmup, evaluate at the same points
    as autoft's trials (every half epoch here) and report each with a weights-only checkpoint.
    ``compute_s`` times the same spans autoft's trials time (training steps and evaluations)."""
    import sklearn.metrics  # noqa: F401 - imported by evaluate(); a user's script has it loaded before training
    import torch
    from ray import tune
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from autoft.data import batch_indices, collate
    from autoft.trial import evals_in_epoch, evaluate

    torch.set_num_threads(setup["threads"])
    torch.manual_seed(setup["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        setup["model"], num_labels=len(data.label_names), local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    bs, epochs = setup["batch_size"], setup["epochs"]
    steps = -(-len(data.train) // bs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(setup["warmup_ratio"] * steps * epochs),
                                                steps * epochs)
    compute = saving = 0.0
    for epoch in range(epochs):
        order = batch_indices(data.train, bs, shuffle=True, seed=setup["seed"] * 1000 + epoch)
        first = 0
        for part, last in enumerate(evals_in_epoch(steps, setup["evals_per_epoch"])):
            t0 = time.perf_counter()
            model.train()
            for idx in order[first:last]:
                ids, mask, labels = collate(data.train, idx, data.pad_token_id)
                loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            first = last
            metrics = evaluate(model, data.validation, setup["eval_batch_size"], data.pad_token_id,
                               torch.device("cpu"), None)
            compute += time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                model.save_pretrained(d)
                saving += time.perf_counter() - t0
                tune.report({**metrics, "epoch": epoch + (part + 1) / setup["evals_per_epoch"],
                             "compute_s": compute, "save_s": saving},
                            checkpoint=tune.Checkpoint.from_directory(d))


def run_by_hand(trials: int, samples: int, epochs: int, concurrency: int, model: str, reuse_actors: bool) -> dict:
    """The same search by hand: Ray Tune + OptunaSearch(TPE), FIFO, the best checkpoint scored on
    test; ``reuse_actors`` False is Ray Tune's default, True what a user who knows the setting writes."""
    import logging

    import optuna
    import ray
    import torch
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
    from transformers import AutoModelForSequenceClassification

    from autoft.cadence import resolve_evals_per_epoch
    from autoft.config import load_config
    from autoft.data import load_text_data, prepare_data
    from autoft.models import load_tokenizer, resolve_model_path
    from autoft.trial import evaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spans: dict[str, list[float]] = {}

    class TrialClock(tune.Callback):
        """The driver's start-to-end time of each trial, as autoft's callbacks take it."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            spans[trial.trial_id] = [time.perf_counter()]

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            spans[trial.trial_id].append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # autoft's reading, sampling and tokenizing: the same examples as its search (0.1 s of it).
        cfg = load_config(None, data_overrides(samples))
        path = resolve_model_path(model)
        data = prepare_data(load_text_data(cfg.data, cfg.train.seed), load_tokenizer(path),
                            cfg.train.max_length, str(path))
        threads = threads_per_trial(concurrency)
        recipe = cfg.base_recipe({})
        setup = {"model": str(path), "batch_size": recipe.batch_size, "eval_batch_size": cfg.train.eval_batch_size,
                 "epochs": epochs, "threads": threads, "seed": recipe.seed, "warmup_ratio": recipe.warmup_ratio,
                 "evals_per_epoch": resolve_evals_per_epoch(cfg.train.evals_per_epoch, len(data.train),
                                                            len(data.validation), recipe.batch_size)}
        t_prepare = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        t_ray = time.perf_counter()
        space = {"learning_rate": FloatDistribution(5e-5, 3e-4, log=True),
                 "weight_decay": FloatDistribution(1e-3, 1e-1, log=True)}
        searcher = OptunaSearch(space=space, metric="eval_f1", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(hand_trainable, data=data, setup=setup), {"cpu": threads}),
            tune_config=tune.TuneConfig(metric="eval_f1", mode="max", search_alg=searcher, num_samples=trials,
                                        max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
            run_config=tune.RunConfig(name="by-hand", storage_path=f"{tmp}/runs", verbose=0, callbacks=[TrialClock()],
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=1, checkpoint_score_attribute="eval_f1",
                                          checkpoint_score_order="max")))
        grid = tuner.fit()
        t_tune = time.perf_counter()
        if grid.errors:
            raise RuntimeError(f"by hand: {len(grid.errors)} trial(s) failed: {grid.errors[0]}")
        best = grid.get_best_result("eval_f1", "max", scope="all").get_best_checkpoint("eval_f1", "max")
        with best.as_directory() as d:
            net = AutoModelForSequenceClassification.from_pretrained(d, local_files_only=True)
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            evaluate(net, data.test, cfg.train.eval_batch_size, data.pad_token_id, torch.device("cpu"), None)
        t_end = time.perf_counter()
        wall = t_end - t0
    results = [r.metrics for r in grid]
    trial_wall = sum(end - start for start, end in spans.values())
    return {"overlap": False, "links": False, "optimizer_state": False,
            "direct_writes": False, "by_hand": "reuse" if reuse_actors else "on",
            **figures(trials, concurrency, wall, [m["compute_s"] for m in results], trial_wall,
                      sum(m["save_s"] for m in results)),
            "phases": {"prepare": t_prepare - t0, "ray_start": t_ray - t_prepare, "tune": t_tune - t_ray,
                       "test": t_end - t_tune}}


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
                                                     "hand with Ray Tune + OptunaSearch, Ray's default "
                                                     "reuse_actors=False), reuse (the same with reuse_actors=True), "
                                                     "or several in order (off,on,reuse,reuse,on,off)")
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = ap.parse_args()
    load = os.getloadavg()
    values = {name: [{"on": True, "off": False}[v.strip()] for v in given.split(",")]
              for name, given in (("overlap", args.overlap), ("links", args.links),
                                  ("optimizer_state", args.optimizer_state),
                                  ("direct_writes", args.direct_writes))}
    values["by_hand"] = [{"off": False, "on": "on", "reuse": "reuse"}[v.strip()] for v in args.by_hand.split(",")]
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
    print(f"{'concurrency':>11} {'system':>21} {'overlap':>7} {'links':>5} {'optim':>5} {'direct':>6} {'trials':>6} {'trial s (mean)':>14} {'wall s':>8} {'trial compute s':>16} "
          f"{'overhead/trial s':>17} {'overhead %':>10} {'in-trial s/trial':>16} {'per-search s':>12}")
    for r in rows:
        print(f"{r['concurrency']:>11} {system(r):>21} {onoff(r['overlap']):>7} {onoff(r['links']):>5} {onoff(r['optimizer_state']):>5} {onoff(r['direct_writes']):>6} {r['trials']:>6} {r['mean_trial_s']:>14.1f} {r['wall_s']:>8.1f} "
              f"{r['trial_compute_s']:>16.1f} {r['overhead_per_trial_s']:>17.2f} {100 * r['overhead_share']:>9.1f}% "
              f"{r['in_trial_s']:>16.2f} {r['per_search_s']:>12.1f}")
    label = [f"concurrency {r['concurrency']}, {axis} {onoff(r[axis])}" for r in rows]
    print("in-trial, writing checkpoints (s/trial): " + " | ".join(
        f"{lab}: {r['checkpoint_s']:.2f}" for lab, r in zip(label, rows)))
    print("per-search phases (s): " + " | ".join(
        f"{lab}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items() if k != "tune")
        for lab, r in zip(label, rows)))
    for c in dict.fromkeys(r["concurrency"] for r in rows):
        groups: dict[bool | str, list[dict]] = {}
        for r in rows:
            if r["concurrency"] == c:
                groups.setdefault(r[axis], []).append(r)
        if len(groups) < 2:
            continue
        means = {v: {k: statistics.fmean(r[k] for r in rs) for k in MEANS} for v, rs in groups.items()}
        ref = means[False] if False in means else next(iter(means.values()))
        for v, m in means.items():
            print(f"concurrency {c}, {axis} {onoff(v)} (mean of {len(groups[v])}): wall {m['wall_s']:.1f} s "
                  f"({m['wall_s'] / ref['wall_s']:.3f}x {axis} off's), in-trial s/trial {m['in_trial_s']:.2f}, "
                  f"trial compute s (mean) {m['mean_trial_s']:.1f}, overhead {100 * m['overhead_share']:.1f}%")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": {**vars(args), "output": str(args.output)},
                                       "load_start": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
