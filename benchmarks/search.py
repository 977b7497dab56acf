"""Search quality and speed: autoft's defaults against what users would otherwise run.

For each dataset and search seed, every system searches the same data (a fixed
subsample of train, validation and the full test split), the same model (the
bundled all-MiniLM-L6-v2), the same epochs, batch size and max length:

  autoft  ``autoft.controller.run_search`` as shipped: space ``quickstart`` (the
          default of ``autoft search``), TPE, ASHA, warm start, 2 trials at a time
  b1      ``transformers.Trainer.hyperparameter_search(backend="optuna")``: TPE
          (seeded), Optuna's default MedianPruner, one trial at a time; only the
          knobs Trainer has (learning rate, weight decay): it cannot freeze layers
  b2      Ray Tune + ``OptunaSearch`` (TPE) + ``ASHAScheduler`` written by hand: a plain
          function trainable (AutoModelForSequenceClassification, a simple torch loop)
          over autoft's space (``quickstart``): learning rate, weight decay, frozen
          bottom layers and an unfreezing schedule (none, gradual, step, every 1-2
          epochs); no autoft code
  b2n     B2 over learning rate, weight decay and frozen bottom layers only (no
          unfreezing schedule): the B2 of results files written before B2 searched
          the whole space (``--reanalyze`` reads their ``b2`` as ``b2n``)
  b3      autoft with random search at full budget (sampler random, no pruning,
          no warm start)
  b4      the standard recipe trained once (Trainer, lr 5e-5, 3 epochs, nothing frozen)

The target of a (dataset, seed) is the best validation macro-F1 any search
system (autoft, b1-b3) reached there, minus 0.005. Time to target is the wall
time from the start of a system (imports, Ray start, tokenizing included) to
the first epoch whose validation score reaches it; examples to target are the
training examples of every epoch reported until then. Each system run is a
fresh Python process with its own temporary storage folder.

Usage: python benchmarks/search.py [--datasets trec,sst2] [--seeds 3] [--trials 8]
       [--samples 1000] [--systems autoft,b1,b2,b3,b4]
Quick: python benchmarks/search.py --seeds 1 --trials 4 --samples 200 --datasets trec --systems autoft,b3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# OpenMP threads that spin while they wait make multi-threaded torch 3-5x slower as soon as
# other processes compete for the cores (measured here: Trainer with 2 threads on a loaded
# 2-core machine, 5-8 vs 24 samples/s). Passive waiting costs little on an idle machine and
# keeps a shared one from penalising the single-process systems (B1, B4) only.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
SEARCH_SYSTEMS = ("autoft", "b1", "b2", "b2n", "b3")
# autoft with one pruning setting changed: compared with autoft, never part of the target.
VARIANTS = {
    "aligned": ["pruning.align_to_unfreezing=true"],
    "rf3": ["pruning.reduction_factor=3"],
    "grace2": ["pruning.grace_period=2"],
    # Each as when its committed runs were made (before ties were ranked by loss by default).
    "rayties": ["pruning.stop_ties=false", "pruning.tie_breaker=none"],
    "stopties": ["pruning.stop_ties=true", "pruning.tie_breaker=none"],
    "losstie": ["pruning.tie_breaker=eval_loss"],
    "median": ["pruning.scheduler=median"],
    "nopruning": ["pruning.scheduler=none"],
    # Judged after half an epoch (grace 1 evaluation), then at every half epoch.
    "half": ["train.evals_per_epoch=2"],
    # One evaluation an epoch whatever its length (the default before evals_per_epoch=auto).
    "epoch": ["train.evals_per_epoch=1"],
    # TPE models the results after the 2 warm starts and 3 random trials, not 2 + 8.
    "startup5": ["search.startup_trials=5"],
}
ALL_SYSTEMS = (*SEARCH_SYSTEMS, "b4", *VARIANTS)
NAMES = {
    "aligned": "autoft rungs after unfreeze",
    "rf3": "autoft ASHA rf 3",
    "grace2": "autoft ASHA grace 2",
    "rayties": "autoft ASHA, ties go on",
    "stopties": "autoft ASHA, ties stop",
    "losstie": "autoft ASHA, ties by loss",
    "median": "autoft median stopping",
    "nopruning": "autoft no pruning",
    "half": "autoft eval every half epoch",
    "epoch": "autoft eval once an epoch",
    "startup5": "autoft TPE after 5 trials",
    "autoft": "autoft defaults",
    "b1": "B1 Trainer.hp_search",
    "b2": "B2 Ray+Optuna+ASHA",
    "b2n": "B2n, no schedules",
    "b3": "B3 random, full",
    "b4": "B4 standard recipe",
}
TOLERANCE = 0.005  # target = best found - half a point of macro-F1
STABILITY = 0.02  # worst seed's best validation score vs the median
LR_RANGE = (2.0e-5, 5.0e-4)  # the quickstart space's ranges, for the baselines
WD_RANGE = (1.0e-4, 1.0e-1)
B2_SPACE = "quickstart"  # recorded in results files: their "b2" searched unfreezing schedules too
WARMUP_RATIO = 0.06  # autoft's default (quickstart does not search it)
METRIC = "eval_f1"  # macro-F1 on validation: autoft's default objective


# --------------------------------------------------------------------------- data


def prepare_data(datasets: list[str], samples: int, val_samples: int, folder: Path, seed: int = 0) -> dict:
    """Subsample train and validation once (fixed seed) so every system sees the same rows."""
    import pandas as pd

    out = {}
    for name in datasets:
        src = DATA_ROOT / name
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        splits = {}
        for split, n in (("train", samples), ("validation", val_samples), ("test", None)):
            df = pd.read_csv(src / f"{split}.csv", keep_default_na=False)
            if n is not None and n < len(df):
                df = df.sample(n=n, random_state=seed).reset_index(drop=True)
            path = d / f"{split}.csv"
            df.to_csv(path, index=False)
            splits[split] = str(path)
        labels = sorted(str(v) for v in pd.read_csv(splits["train"], keep_default_na=False)["label"].unique())
        sizes = {s: len(pd.read_csv(p, keep_default_na=False)) for s, p in splits.items()}
        out[name] = {**splits, "labels": labels, "sizes": sizes}
    return out


# --------------------------------------------------------------------------- plain helpers (no autoft)


def encode_csv(tokenizer: Any, path: str, labels: list[str], max_length: int) -> list[dict[str, Any]]:
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False)
    enc = tokenizer(df["text"].astype(str).tolist(), truncation=True, max_length=max_length)
    index = {name: i for i, name in enumerate(labels)}
    return [{"input_ids": ids, "attention_mask": mask, "labels": index[str(y)]}
            for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], df["label"])]


def pad_batch(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"f1": float(f1_score(y_true, y_pred, average="macro")), "accuracy": float((y_true == y_pred).mean())}


def evaluate_rows(model: Any, rows: list[dict[str, Any]], pad_id: int, batch_size: int = 128) -> dict[str, float]:
    import torch

    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = pad_batch(rows[i : i + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            preds.extend(logits.argmax(-1).tolist())
    return scores([r["labels"] for r in rows], preds)


def score_checkpoint(model_dir: str, w: dict[str, Any]) -> dict[str, float]:
    """Test macro-F1 and accuracy of a saved Hugging Face classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(w["model"], local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    return evaluate_rows(model, encode_csv(tok, w["test"], w["labels"], w["max_length"]), tok.pad_token_id)


def load_classifier(model_path: str, labels: list[str]) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, local_files_only=True)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- autoft (and B3)


def autoft_overrides(w: dict[str, Any]) -> list[str]:
    """Data, model and size only; everything else stays autoft's default."""
    return [
        f"model.path={w['model']}", f"data.train={w['train']}", f"data.validation={w['validation']}",
        f"data.test={w['test']}", f"train.epochs={w['epochs']}", f"train.batch_size={w['batch_size']}",
        f"train.max_length={w['max_length']}", f"train.seed={w['train_seed']}", f"search.seed={w['seed']}",
        f"search.num_trials={w['trials']}", f"search.max_concurrent={w['concurrency']}",
        f"storage={w['storage']}", f"name=bench-{w['system']}",
    ]


def remaining(w: dict[str, Any], t0: float) -> float | None:
    """Seconds of the run's wall-clock budget left (None: no budget, a fixed number of trials).
    The budget counts from the start of the system (imports and setup included), so every
    system's native time limit gets what its own setup left over."""
    if not w.get("budget_s"):
        return None
    return max(1.0, w["budget_s"] - (time.time() - t0))


def run_autoft_search(w: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    t0 = time.time()
    from mlflow import MlflowClient

    from autoft.config import load_config
    from autoft.controller import run_search

    left = remaining(w, t0)
    budget = [] if left is None else [f"search.time_budget_s={left:.0f}"]
    cfg = load_config(None, autoft_overrides(w) + budget + extra)
    result = run_search(cfg, echo=lambda line: print(line, flush=True))
    wall = time.time() - t0  # includes scoring the best checkpoint on test and logging it to MLflow
    # Per-epoch validation scores with the time the driver logged them (MLflow, ms).
    client = MlflowClient(result.tracking_uri)
    evals = []
    for row in result.trials.itertuples():
        if not row.run_id:
            continue
        samples = {m.step: m.value for m in client.get_metric_history(row.run_id, "train_samples")}
        # Steps count evaluations; with several per epoch, each also logged its "epoch".
        epoch_of = {m.step: m.value for m in client.get_metric_history(row.run_id, "epoch")}
        for m in client.get_metric_history(row.run_id, METRIC):
            evals.append({"t": m.timestamp / 1000 - t0, "trial": str(row.number),
                          "epoch": epoch_of.get(m.step, int(m.step)),
                          "score": float(m.value), "samples": int(samples.get(m.step, 0))})
    import ray

    ray.shutdown()
    chosen = {k: result.best_config.get(k) for k in ("learning_rate", "weight_decay", "num_frozen_layers",
                                                     "unfreeze_schedule", "unfreeze_every")}
    if chosen["unfreeze_schedule"] == "none":
        chosen.pop("unfreeze_every")  # inactive (conditional on a schedule)
    cols = [c for c in ("number", "status", METRIC, "epochs", "learning_rate", "weight_decay", "num_frozen_layers",
                        "unfreeze_schedule", "unfreeze_every") if c in result.trials.columns]
    trials = json.loads(result.trials[cols].to_json(orient="records"))
    return {"wall_s": wall, "evals": evals, "chosen": chosen, "trials": trials,
            "chosen_val": result.best_value, "test": {k.removeprefix("eval_"): v for k, v in result.test_metrics.items()
                                                      if k in ("eval_f1", "eval_accuracy")},
            "reported": {"n_completed": result.n_completed, "n_pruned": result.n_pruned, "n_failed": result.n_failed}}


def run_autoft(w: dict[str, Any]) -> dict[str, Any]:
    """autoft as a user runs it: `autoft search` with the data given, nothing else changed."""
    return run_autoft_search(w, [])


def run_b3(w: dict[str, Any]) -> dict[str, Any]:
    """Random search at full budget over the same space: no TPE, no pruning, no warm start."""
    return run_autoft_search(w, ["search.sampler=random", "pruning.scheduler=none", "search.warm_start=false"])


# --------------------------------------------------------------------------- B1: Trainer.hyperparameter_search


def trainer_args(w: dict[str, Any], out: str, **kw: Any) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out, num_train_epochs=w["epochs"], per_device_train_batch_size=w["batch_size"],
        per_device_eval_batch_size=128, seed=w["train_seed"], eval_strategy="epoch",
        logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=False, **kw)


def make_recorder(evals: list[dict[str, Any]], t0: float, batch_size: int, n_train: int,
                  trials: list[dict[str, Any]] | None = None) -> Any:
    """A TrainerCallback that records every epoch's validation score, time and examples
    (and each trial's learning rate and weight decay: the search sets them in ``args``)."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        trial = -1
        last_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.trial += 1
            self.last_step = 0
            if trials is not None:
                trials.append({"number": self.trial, "learning_rate": args.learning_rate,
                               "weight_decay": args.weight_decay})

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
            steps = state.global_step - self.last_step
            self.last_step = state.global_step
            evals.append({"t": time.time() - t0, "trial": str(self.trial), "epoch": round(state.epoch or 0),
                          "score": float((metrics or {})[METRIC]), "samples": min(steps * batch_size, n_train)})

    return Recorder()


def run_b1(w: dict[str, Any]) -> dict[str, Any]:
    """Trainer.hyperparameter_search with Optuna: learning rate and weight decay (Trainer has
    no knob to freeze layers), warmup and epochs fixed as in autoft's defaults."""
    t0 = time.time()
    import optuna
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    quiet_transformers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tok = AutoTokenizer.from_pretrained(w["model"], local_files_only=True)
    train = encode_csv(tok, w["train"], w["labels"], w["max_length"])
    val = encode_csv(tok, w["validation"], w["labels"], w["max_length"])
    evals: list[dict[str, Any]] = []
    trials: list[dict[str, Any]] = []

    def hp_space(trial: Any) -> dict[str, float]:
        return {"learning_rate": trial.suggest_float("learning_rate", *LR_RANGE, log=True),
                "weight_decay": trial.suggest_float("weight_decay", *WD_RANGE, log=True)}

    def compute_metrics(pred: Any) -> dict[str, float]:
        return scores(pred.label_ids, pred.predictions.argmax(-1))

    out = os.path.join(w["storage"], "b1")
    args = trainer_args(w, out, warmup_steps=WARMUP_RATIO,  # a float < 1 is a ratio in transformers 5
                        save_strategy="epoch", save_total_limit=1, save_only_model=True,
                        load_best_model_at_end=True, metric_for_best_model="f1")
    trainer = Trainer(model_init=lambda: load_classifier(w["model"], w["labels"]), args=args,
                      train_dataset=train, eval_dataset=val, processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics,
                      callbacks=[make_recorder(evals, t0, w["batch_size"], len(train), trials)])
    # Optuna's own time limit (passed through to study.optimize): no new trial after it.
    best = trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=lambda m: m[METRIC], n_trials=w["trials"],
        direction="maximize", backend="optuna", sampler=optuna.samplers.TPESampler(seed=w["seed"]),
        timeout=remaining(w, t0))
    # The chosen run's best epoch (load_best_model_at_end keeps it on disk).
    run_dir = Path(out) / f"run-{best.run_id}"
    last = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    test = score_checkpoint(state.get("best_model_checkpoint") or str(last), w)
    return {"wall_s": time.time() - t0, "evals": evals, "chosen": dict(best.hyperparameters), "trials": trials,
            "chosen_val": best.objective, "test": test}


# --------------------------------------------------------------------------- B2: Ray Tune + Optuna + ASHA by hand


def b2_top_blocks(config: dict[str, Any], layers: int, epoch: int) -> int:
    """How many top blocks train at ``epoch``: all above the frozen floor, or (gradual) one
    more every ``unfreeze_every`` epochs starting from the head alone, or (step) the head
    alone for ``unfreeze_every`` epochs and then all above the floor."""
    room = layers - config["num_frozen_layers"]
    schedule, every = config.get("unfreeze_schedule", "none"), config.get("unfreeze_every", 1)
    if schedule == "gradual":
        return min(room, epoch // every)
    if schedule == "step":
        return room if epoch >= every else 0
    return room


def b2_trainable(config: dict[str, Any], rows: dict[str, list], setup: dict[str, Any]) -> None:
    """What a user writes: load, freeze the bottom blocks (more at first under an unfreezing
    schedule), AdamW + linear warmup, report per epoch."""
    import random

    import torch
    from ray import tune
    from transformers import get_linear_schedule_with_warmup

    quiet_transformers()
    torch.set_num_threads(setup["threads"])
    random.seed(setup["seed"])
    torch.manual_seed(setup["seed"])
    model = load_classifier(setup["model"], setup["labels"])
    body = model.base_model
    blocks = list(body.encoder.layer)
    # Every parameter is in the optimizer; AdamW skips (and does not decay) one without a gradient.
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config["learning_rate"], weight_decay=config["weight_decay"])
    train, bs, epochs = rows["train"], setup["batch_size"], setup["epochs"]
    total = math.ceil(len(train) / bs) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_RATIO * total), total)
    for epoch in range(epochs):
        top = b2_top_blocks(config, len(blocks), epoch)
        for i, block in enumerate(blocks):
            block.requires_grad_(i >= len(blocks) - top)
        body.embeddings.requires_grad_(top == len(blocks))
        model.train()
        order = list(range(len(train)))
        random.shuffle(order)
        for i in range(0, len(order), bs):
            batch = pad_batch([train[j] for j in order[i : i + bs]], setup["pad_id"])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        metrics = evaluate_rows(model, rows["validation"], setup["pad_id"])
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            tune.report({METRIC: metrics["f1"], "eval_accuracy": metrics["accuracy"], "epoch": epoch + 1,
                         "train_samples": len(train)}, checkpoint=tune.Checkpoint.from_directory(d))


def run_b2(w: dict[str, Any], schedules: bool = True) -> dict[str, Any]:
    """Ray Tune + OptunaSearch(TPE) + ASHA over learning rate, weight decay, frozen layers and
    (unless ``schedules`` is off: B2n) the unfreezing schedule."""
    t0 = time.time()
    import logging

    import optuna
    import ray
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tok = AutoTokenizer.from_pretrained(w["model"], local_files_only=True)
    rows = {"train": encode_csv(tok, w["train"], w["labels"], w["max_length"]),
            "validation": encode_csv(tok, w["validation"], w["labels"], w["max_length"])}
    layers = AutoConfig.from_pretrained(w["model"], local_files_only=True).num_hidden_layers
    setup = {"model": w["model"], "labels": w["labels"], "pad_id": tok.pad_token_id, "seed": w["train_seed"],
             "batch_size": w["batch_size"], "epochs": w["epochs"],
             "threads": max(1, (os.cpu_count() or 1) // w["concurrency"])}
    evals: list[dict[str, Any]] = []

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            evals.append({"t": time.time() - t0, "trial": trial.trial_id, "epoch": int(result["epoch"]),
                          "score": float(result[METRIC]), "samples": int(result["train_samples"])})

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    space = {"learning_rate": FloatDistribution(*LR_RANGE, log=True),
             "weight_decay": FloatDistribution(*WD_RANGE, log=True),
             "num_frozen_layers": IntDistribution(0, layers)}
    if schedules:
        # By hand, the period is searched for every schedule (a define-by-run space could skip
        # it for "none", as autoft's does); TPE then learns it does not matter there.
        space |= {"unfreeze_schedule": CategoricalDistribution(["none", "gradual", "step"]),
                  "unfreeze_every": IntDistribution(1, 2)}
    searcher = OptunaSearch(
        space=space,
        metric=METRIC, mode="max", sampler=optuna.samplers.TPESampler(seed=w["seed"]))
    # The same ASHA settings as autoft's defaults (grace 1 epoch, halving).
    scheduler = ASHAScheduler(max_t=w["epochs"], grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(b2_trainable, rows=rows, setup=setup), {"cpu": setup["threads"]}),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=w["trials"], max_concurrent_trials=w["concurrency"],
                                    time_budget_s=remaining(w, t0)),
        run_config=tune.RunConfig(name="b2", storage_path=w["storage"], callbacks=[Recorder()], verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=1, checkpoint_score_attribute=METRIC,
                                      checkpoint_score_order="max")))
    grid = tuner.fit()
    best = grid.get_best_result(METRIC, "max", scope="all")
    ckpt = best.get_best_checkpoint(METRIC, "max")
    ray.shutdown()
    with ckpt.as_directory() as d:
        test = score_checkpoint(d, w)
    keys = tuple(space)
    chosen = {k: best.config[k] for k in keys}
    # A trial the budget stopped before its first report has no metrics (nor, maybe, config).
    trials = [{"trial": (r.metrics or {}).get("trial_id"), **{k: (r.config or {}).get(k) for k in keys}}
              for r in grid]
    return {"wall_s": time.time() - t0, "evals": evals, "chosen": chosen, "trials": trials,
            "chosen_val": max(e["score"] for e in evals if e["trial"] == best.metrics["trial_id"]), "test": test}


# --------------------------------------------------------------------------- B4: the standard recipe


def run_b4(w: dict[str, Any]) -> dict[str, Any]:
    """Trainer defaults (lr 5e-5, linear decay, no warmup, no weight decay), 3 epochs, nothing
    frozen, trained once; the test score is the final model's."""
    t0 = time.time()
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(w["model"], local_files_only=True)
    train = encode_csv(tok, w["train"], w["labels"], w["max_length"])
    val = encode_csv(tok, w["validation"], w["labels"], w["max_length"])
    evals: list[dict[str, Any]] = []
    set_seed(w["train_seed"])
    trainer = Trainer(model=load_classifier(w["model"], w["labels"]),
                      args=trainer_args(w, os.path.join(w["storage"], "b4"), learning_rate=5e-5, save_strategy="no"),
                      train_dataset=train, eval_dataset=val, processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=lambda p: scores(p.label_ids, p.predictions.argmax(-1)),
                      callbacks=[make_recorder(evals, t0, w["batch_size"], len(train))])
    trainer.train()
    pred = trainer.predict(encode_csv(tok, w["test"], w["labels"], w["max_length"]))
    return {"wall_s": time.time() - t0, "evals": evals, "chosen": {"learning_rate": 5e-5, "epochs": w["epochs"]},
            "chosen_val": evals[-1]["score"], "test": scores(pred.label_ids, pred.predictions.argmax(-1))}


SYSTEM_FUNCS = {"autoft": run_autoft, "b1": run_b1, "b2": run_b2, "b2n": lambda w: run_b2(w, schedules=False),
                "b3": run_b3, "b4": run_b4,
                **{name: (lambda w, extra=extra: run_autoft_search(w, extra)) for name, extra in VARIANTS.items()}}


# --------------------------------------------------------------------------- one run per process


def child_main(spec_path: str) -> None:
    """Run one system on one (dataset, seed) and write its record next to the spec."""
    spec = json.loads(Path(spec_path).read_text())
    record = SYSTEM_FUNCS[spec["system"]](spec)
    Path(spec_path).with_suffix(".out.json").write_text(json.dumps(record, default=str))


class LoadSampler:
    """The machine's 1-minute load average every few seconds while a run goes (ours included)."""

    def __init__(self, every_s: float = 5.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)

    def _loop(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {"mean": statistics.fmean(self.samples), "max": max(self.samples)} if self.samples else {}


def end_group(proc: subprocess.Popen, sig: int, grace_s: float) -> None:
    """Signal the process group of a run we started; SIGKILL what outlives ``grace_s``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        proc.poll()  # reap the run itself, so only live members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_isolated(w: dict[str, Any], log_path: Path, timeout_s: float) -> dict[str, Any]:
    """A fresh interpreter per run: no Ray state, environment or thread settings leak between systems."""
    spec = Path(w["storage"]) / "spec.json"
    spec.write_text(json.dumps(w))
    t0 = time.time()
    with open(log_path, "w") as log, LoadSampler() as load:
        # Its own process group: on a timeout, the run and the Ray processes it started end together.
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=w["storage"], start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = "timeout"
            end_group(proc, signal.SIGINT, 30)  # autoft and Ray shut down cleanly on Ctrl-C
        end_group(proc, signal.SIGTERM, 10)  # anything of that run still alive
    out = spec.with_suffix(".out.json")
    if rc != 0 or not out.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"exit {rc} after {time.time() - t0:.0f}s: {' | '.join(tail)[-400:]}", "load": load.summary()}
    return {**json.loads(out.read_text()), "load": load.summary()}


# --------------------------------------------------------------------------- analysis


def hit(run: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Seconds and training examples until the first epoch at or above target (None if never)."""
    if target is None:  # no search system ran on this seed (variants only): nothing to reach
        return {"t": None, "examples": None}
    evals = sorted(run["evals"], key=lambda e: e["t"])
    first = next((e for e in evals if e["score"] >= target - 1e-12), None)
    if first is None:
        return {"t": None, "examples": None}
    return {"t": first["t"], "examples": sum(e["samples"] for e in evals if e["t"] <= first["t"])}


def censored_median(values: list[float | None], bounds: list[float]) -> tuple[float, bool]:
    """Median with misses as +inf; if that is infinite, the median with misses at their
    bound (a lower bound), flagged False."""
    exact = statistics.median([math.inf if v is None else v for v in values])
    if math.isfinite(exact):
        return exact, True
    return statistics.median([b if v is None else v for v, b in zip(values, bounds)]), False


def within_budget(run: dict[str, Any], budget_s: float | None) -> dict[str, Any]:
    """The run as seen at its deadline: epochs reported after the budget (B1's last trial
    runs to its end; Ray and autoft stop a few seconds late) do not count."""
    if not budget_s or "evals" not in run:
        return run
    return {**run, "evals": [e for e in run["evals"] if e["t"] <= budget_s]}


def summarize(runs: list[dict[str, Any]], datasets: list[str], systems: list[str], epochs: int,
              tolerance: float = TOLERANCE, budget_s: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # A run's own budget (--budget-for) wins over the common one.
    runs = [r if r["system"] == "b4" else within_budget(r, r.get("budget_s") or budget_s) for r in runs]
    for ds in datasets:
        mine = [r for r in runs if r["dataset"] == ds and "error" not in r]
        seeds = sorted({r["seed"] for r in mine})
        targets = {}
        for s in seeds:
            bests = [max(e["score"] for e in r["evals"]) for r in mine
                     if r["seed"] == s and r["system"] in SEARCH_SYSTEMS and r["evals"]]
            targets[s] = max(bests) - tolerance if bests else None
        rows = {}
        for sysname in systems:
            rs = [r for r in mine if r["system"] == sysname and r["evals"]]
            if not rs:
                continue
            hits = [hit(r, targets[r["seed"]]) for r in rs]
            walls = [min(r["wall_s"], r.get("budget_s") or budget_s) if (r.get("budget_s") or budget_s)
                     else r["wall_s"] for r in rs]
            all_examples = [sum(e["samples"] for e in r["evals"]) for r in rs]
            best_val = sorted(max(e["score"] for e in r["evals"]) for r in rs)
            per_trial = [{t: max(e["epoch"] for e in r["evals"] if e["trial"] == t)
                          for t in {e["trial"] for e in r["evals"]}} for r in rs]
            rows[sysname] = {
                "seeds": [r["seed"] for r in rs],
                "reached": sum(h["t"] is not None for h in hits),
                "t_to_target": censored_median([h["t"] for h in hits], walls),
                "examples_to_target": censored_median([h["examples"] for h in hits], all_examples),
                "best_val": best_val,
                "best_val_median": statistics.median(best_val),
                "test_f1": [r["test"].get("f1") for r in rs],
                "test_f1_median": statistics.median(r["test"]["f1"] for r in rs) if all(
                    r["test"].get("f1") is not None for r in rs) else None,
                "wall_median": statistics.median(r["wall_s"] for r in rs),
                "examples_median": statistics.median(all_examples),
                "trials_median": statistics.median(len(p) for p in per_trial),
                "load_median": statistics.median(r.get("load", {}).get("mean", math.nan) for r in rs),
                "stopped_early_median": statistics.median(sum(v < epochs for v in p.values()) for p in per_trial),
                "per_seed": [{"seed": r["seed"], **h, "best_val": max(e["score"] for e in r["evals"]),
                              "test": r["test"], "wall_s": r["wall_s"], "chosen": r["chosen"]}
                             for r, h in zip(rs, hits)],
            }
        budgets = {r["system"]: r["budget_s"] for r in mine if r.get("budget_s") and r["budget_s"] != budget_s}
        out[ds] = {"tolerance": tolerance, "targets": targets, "systems": rows, "budget_s": budget_s,
                   "budget_for": budgets}
    return out


def ratio(base: tuple[float, bool], ref: tuple[float, bool]) -> str:
    """How many times longer (or more examples) the baseline needed than autoft."""
    (b, b_exact), (a, a_exact) = base, ref
    if a <= 0:
        return "n/a"
    if b_exact and a_exact:
        return f"{b / a:.2f}x"
    if not b_exact and a_exact:
        return f">{b / a:.2f}x"
    if b_exact and not a_exact:
        return f"<{b / a:.2f}x"
    return "?"


def fmt_censored(v: tuple[float, bool], spec: str) -> str:
    return (spec.format(v[0])) if v[1] else ">" + spec.format(v[0])


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([line.format(*head), "  ".join("-" * w for w in widths), *(line.format(*r) for r in rows)])


def report(summary: dict[str, Any], n_seeds: int) -> str:
    lines = []
    head = ["system", "reached", "s to target", "x autoft", "examples to target", "x autoft",
            "best val worst/med/best", "test F1", "wall s", "trials (stopped)", "load"]
    for ds, info in summary.items():
        systems = info["systems"]
        if not systems:
            lines.append(f"\n{ds}: no successful runs (see the logs)")
            continue
        targets = ", ".join(f"seed {s}: {t:.4f}" for s, t in info["targets"].items() if t is not None)
        lines.append(f"\n{ds}: target = best validation macro-F1 of any search system - {info['tolerance']} ({targets})")
        if info.get("budget_s"):
            own = "".join(f", {NAMES[k]} {v:.0f} s" for k, v in sorted(info.get("budget_for", {}).items()))
            lines.append(f"each search ran {info['budget_s']:.0f} s of wall time from its start{own}; epochs "
                         "reported later do not count")
        ref = systems.get("autoft")
        rows = []
        for name, r in systems.items():
            bv = r["best_val"]
            compare = ref is not None and name != "autoft" and name != "b4"  # not B4: trained once
            rows.append([
                NAMES[name], f"{r['reached']}/{len(r['seeds'])}",
                fmt_censored(r["t_to_target"], "{:.0f}"),
                ratio(r["t_to_target"], ref["t_to_target"]) if compare else "",
                fmt_censored(r["examples_to_target"], "{:.0f}"),
                ratio(r["examples_to_target"], ref["examples_to_target"]) if compare else "",
                f"{bv[0]:.4f}/{statistics.median(bv):.4f}/{bv[-1]:.4f}",
                "n/a" if r["test_f1_median"] is None else f"{r['test_f1_median']:.4f}",
                f"{r['wall_median']:.0f}", f"{r['trials_median']:.0f} ({r['stopped_early_median']:.0f})",
                f"{r['load_median']:.1f}",
            ])
        lines.append(table(rows, head))
        for name, r in systems.items():
            seeds = " | ".join(
                f"s{p['seed']} " + (f"{p['t']:.0f}s {p['examples']} ex" if p["t"] is not None else "not reached")
                + f", val {p['best_val']:.4f}, test {p['test'].get('f1', math.nan):.4f}" for p in r["per_seed"])
            lines.append(f"per seed {NAMES[name]:<27}: {seeds}")
        for name, r in systems.items():
            if name == "b4":
                continue
            gap = r["best_val_median"] - r["best_val"][0]
            ok = "ok" if gap <= STABILITY else "MISS"
            lines.append(f"stability {NAMES[name]:<27}: worst seed {r['best_val'][0]:.4f} vs median "
                         f"{r['best_val_median']:.4f}: {gap:.4f} below (target <= {STABILITY}, "
                         f"{len(r['seeds'])} seeds) {ok}")
        lines.extend(target_lines(systems, n_seeds))
    lines.append("\nmedians over seeds; '>' = not reached by the median seed: the value is a lower bound "
                 "(its whole search); 'x autoft' = baseline / autoft (above 1: autoft needed less); "
                 "trials (stopped) = trials run (of those, stopped before the last epoch); load = mean 1-minute "
                 "load average of the machine during the run (2 cores; this benchmark's own processes included)")
    return "\n".join(lines)


def target_lines(systems: dict[str, Any], n_seeds: int) -> list[str]:
    """The issue's targets for autoft, met or missed and by how much."""
    a = systems.get("autoft")
    if a is None:
        return []
    out = []

    def check(label: str, base: str, key: str, want: float) -> None:
        b = systems.get(base)
        if b is None:
            return
        (bv, b_exact), (av, a_exact) = b[key], a[key]
        got = bv / av if av > 0 else math.inf
        if b_exact and a_exact:
            verdict = "met" if got >= want else f"MISSED - short by {want - got:.2f}x"
            shown = f"{got:.2f}x"
        elif a_exact:  # the baseline never reached the target: the ratio is a lower bound
            verdict = "met" if got >= want else "not decided (baseline never reached the target)"
            shown = f">{got:.2f}x"
        elif b_exact:  # autoft never reached it: an upper bound
            verdict = f"MISSED - short by more than {want - got:.2f}x" if got < want else "not decided"
            shown = f"<{got:.2f}x"
        else:
            verdict, shown = "not decided (neither reached the target)", "?"
        out.append(f"target {label}: {shown} (want >= {want:g}x) {verdict}")

    check("time vs B2", "b2", "t_to_target", 3)
    check("time vs B1", "b1", "t_to_target", 5)
    check("examples vs B2", "b2", "examples_to_target", 2)
    check("examples vs B1", "b1", "examples_to_target", 2)
    # Not the B2 (a narrower space than autoft's), shown for the older tables.
    check("time vs B2n", "b2n", "t_to_target", 3)
    check("examples vs B2n", "b2n", "examples_to_target", 2)
    b4 = systems.get("b4")
    if b4 and a["test_f1_median"] is not None and b4["test_f1_median"] is not None:
        d = a["test_f1_median"] - b4["test_f1_median"]
        out.append(f"target test F1 vs B4: autoft {a['test_f1_median']:.4f} vs {b4['test_f1_median']:.4f} "
                   f"({d:+.4f}) {'met' if d >= 0 else 'MISSED'}")
    gap = a["best_val_median"] - a["best_val"][0]
    enough = len(a["seeds"]) >= 3
    out.append(f"target stability: {gap:.4f} (want <= {STABILITY} over >= 3 seeds; {len(a['seeds'])} run) "
               + ("met" if gap <= STABILITY and enough else "not decided (too few seeds)" if not enough
                  else f"MISSED by {gap - STABILITY:.4f}"))
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="trec,sst2", help="folders of ../shared/data (text,label CSVs)")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds 0..N-1 (training seed 42+s)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start the seeds here (K..K+N-1): more seeds for an earlier run, pooled with --reanalyze")
    ap.add_argument("--budget-s", type=float, default=120,
                    help="wall-clock seconds per search system and seed, from its start (0: a fixed --trials)")
    ap.add_argument("--budget-for", default="", metavar="SYSTEM=S,...",
                    help="a longer (or shorter) budget for some systems, e.g. b2=720,b1=1200: a baseline that "
                         "never reaches the target within 3x (5x) autoft's time decides a speed ratio")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per system and seed (default 8 without a budget; with one, a cap of 100)")
    ap.add_argument("--samples", type=int, default=400, help="training examples (fixed subsample)")
    ap.add_argument("--val-samples", type=int, default=300, help="validation examples (fixed subsample)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=2, help="trials at a time for the Ray systems")
    ap.add_argument("--systems", default=",".join(s for s in ALL_SYSTEMS if s not in VARIANTS),
                    help="of " + ",".join(ALL_SYSTEMS) + "; NAME@DATASET runs NAME on that dataset only")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--run-timeout", type=float, default=3600, help="seconds before one system run is killed")
    ap.add_argument("--output", type=Path, default=RESULTS / "search.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary storage folders")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help="target = best validation macro-F1 found by any search system minus this")
    ap.add_argument("--reanalyze", type=Path, nargs="+", metavar="JSON",
                    help="print the tables of earlier results files (e.g. with another --tolerance); several "
                         "files' runs are pooled (a later file's run replaces an earlier one of the same system, "
                         "dataset and seed), so targets come from every file's search systems; run nothing")
    ap.add_argument("--as-autoft", metavar="VARIANT",
                    help="with --reanalyze: judge this variant's runs as autoft's (they replace autoft's runs "
                         "and, like them, set the targets): a default changed to what the variant ran")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trials is None:
        args.trials = 100 if args.budget_s else 8
    # "name@dataset": run that system on that dataset only (e.g. pruning variants on trec).
    args.only_on = {}
    for item in (s.strip() for s in args.systems.split(",") if s.strip()):
        name, _, ds = item.partition("@")
        args.only_on.setdefault(name, set()).update([ds] if ds else [])
    args.system_list = [s for s in ALL_SYSTEMS if s in args.only_on] + [s for s in args.only_on if s not in ALL_SYSTEMS]
    args.dataset_list = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.budget_by_system = {}
    for item in (s.strip() for s in args.budget_for.split(",") if s.strip()):
        name, eq, secs = item.partition("=")
        try:
            args.budget_by_system[name] = float(secs)
        except ValueError:
            ap.error(f"--budget-for: {item!r} is not SYSTEM=SECONDS (e.g. b1=1200)")
        if not eq or name not in ALL_SYSTEMS or name == "b4":
            ap.error(f"--budget-for: {item!r}: use SYSTEM=SECONDS with a system of {','.join(s for s in ALL_SYSTEMS if s != 'b4')}")
    if args.as_autoft and (not args.reanalyze or args.as_autoft not in VARIANTS):
        ap.error(f"--as-autoft: use it with --reanalyze and one of the variants {','.join(VARIANTS)}")
    for s in args.system_list:
        if s not in ALL_SYSTEMS:
            ap.error(f"--systems: unknown system {s!r}; use some of {','.join(ALL_SYSTEMS)}")
    for d in args.dataset_list:
        if not (DATA_ROOT / d / "train.csv").is_file():
            ap.error(f"--datasets: no {DATA_ROOT / d / 'train.csv'}")
    return args


# Runs are comparable only on the same data, model and training sizes.
SAME_WORK = ("samples", "val_samples", "epochs", "max_length", "batch_size", "concurrency", "data")


def _model_name(path: str) -> str:
    return "/".join(Path(path).parts[-2:])  # the same package's model, whichever environment held it


def _b2_name(system: str, settings: dict[str, Any]) -> str:
    return "b2n" if system == "b2" and settings.get("b2_space") != B2_SPACE else system


def pooled_runs(paths: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first file's settings and the files' runs (each run keeps its own budget)."""
    files = [json.loads(p.read_text()) for p in paths]
    first = files[0]["settings"]
    for path, f in zip(paths[1:], files[1:]):
        differ = [k for k in SAME_WORK if f["settings"].get(k) != first.get(k)]
        differ += ["model"] * (_model_name(f["settings"]["model"]) != _model_name(first["model"]))
        if differ:
            sys.exit(f"--reanalyze: {path} differs from {paths[0]} in {', '.join(differ)}; pool only runs "
                     "of the same data and training sizes")
    # A later file's run replaces an earlier one of the same system, dataset and seed. A
    # file from before B2 searched schedules says nothing of it: its B2 is B2n.
    by_key: dict[tuple[str, str, int], dict[str, Any]] = {}
    for f in files:
        for r in f["runs"]:
            run = {**r, "system": _b2_name(r["system"], f["settings"]),
                   "budget_s": r.get("budget_s", f["settings"].get("budget_s"))}
            by_key[run["system"], run["dataset"], run["seed"]] = run
    runs = list(by_key.values())
    settings = {**first, "dataset_list": sorted({d for f in files for d in f["settings"]["dataset_list"]}),
                "seeds": len({r["seed"] for r in runs})}
    return settings, runs


def as_autoft(runs: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The runs with ``variant``'s in place of autoft's."""
    if not any(r["system"] == variant for r in runs):
        sys.exit(f"--as-autoft: no runs of {variant!r} in the --reanalyze files")
    return [{**r, "system": "autoft"} if r["system"] == variant else r for r in runs if r["system"] != "autoft"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.reanalyze:
        st, runs = pooled_runs(args.reanalyze)
        if args.as_autoft:
            runs = as_autoft(runs, args.as_autoft)
        systems = [s for s in ALL_SYSTEMS if any(r["system"] == s for r in runs)]
        print(report(summarize(runs, st["dataset_list"], systems, st["epochs"], args.tolerance,
                               st.get("budget_s")), st["seeds"]))
        return 0
    if {"b1", "b4"} & set(args.system_list) and importlib.util.find_spec("accelerate") is None:
        sys.exit("b1 and b4 run transformers.Trainer, which needs accelerate: ./run install "
                 "(or pip install -e '.[bench]'), or leave b1,b4 out of --systems")
    from autoft.models import resolve_model_path

    model = str(resolve_model_path(args.model))
    t_start = time.time()
    load_start = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="autoft-bench-search-"))
    logs = args.output.parent / f"{args.output.stem}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.dataset_list, args.samples, args.val_samples, work / "data")
    budget = f"{args.budget_s:.0f} s per search (at most {args.trials} trials)" if args.budget_s else \
        f"{args.trials} trials"
    log(f"{len(args.dataset_list)} datasets x {args.seeds} seeds from {args.first_seed} x systems "
        f"{','.join(args.system_list)}; "
        f"{budget} of {args.epochs} epochs, {args.samples} train / {args.val_samples} validation "
        f"examples, max_length {args.max_length}; work folder {work}")
    runs: list[dict[str, Any]] = []
    try:
        for ds in args.dataset_list:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for system in args.system_list:
                    if args.only_on[system] and ds not in args.only_on[system]:
                        continue
                    storage = work / f"{ds}-s{seed}-{system}"
                    storage.mkdir(parents=True)
                    w = {"system": system, "dataset": ds, "seed": seed, "train_seed": 42 + seed,
                         "model": model, "labels": data[ds]["labels"], "train": data[ds]["train"],
                         "validation": data[ds]["validation"], "test": data[ds]["test"],
                         "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
                         "trials": args.trials, "concurrency": args.concurrency, "storage": str(storage),
                         "budget_s": args.budget_by_system.get(system, args.budget_s) if system != "b4" else 0}
                    rec = run_isolated(w, logs / f"{ds}-s{seed}-{system}.log", args.run_timeout)
                    runs.append({"system": system, "dataset": ds, "seed": seed, "budget_s": w["budget_s"], **rec})
                    if "error" in rec:
                        log(f"{ds} seed {seed} {system}: FAILED {rec['error']}")
                    else:
                        best = max((e["score"] for e in rec["evals"]), default=float("nan"))
                        log(f"{ds} seed {seed} {system:6s}: {rec['wall_s']:6.0f}s (load {rec['load'].get('mean', 0):.1f}), "
                            f"best val {best:.4f}, test F1 {rec['test'].get('f1', float('nan')):.4f}, "
                            f"chosen {rec['chosen']}")
                    if not args.keep:
                        shutil.rmtree(storage, ignore_errors=True)
                    # Every finished run is on disk at once: a later failure (or Ctrl-C) loses
                    # no measurement, and --reanalyze reads a partial file.
                    save(args, model, data, load_start, t_start, runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(runs, args.dataset_list, args.system_list, args.epochs, args.tolerance, args.budget_s)
    text = report(summary, args.seeds)
    print(text)
    save(args, model, data, load_start, t_start, runs, summary, text)
    log(f"wrote {args.output} ({time.time() - t_start:.0f}s total)")
    return 0


def save(args: argparse.Namespace, model: str, data: dict[str, Any], load_start: list[float], t_start: float,
         runs: list[dict[str, Any]], summary: dict[str, Any] | None = None, text: str | None = None) -> None:
    import torch
    import transformers

    result = {
        "benchmark": "search",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "output")} | {
            "model": model, "metric": "validation macro-F1", "b2_space": B2_SPACE,
            "data": {d: v["sizes"] for d, v in data.items()}},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                        "load_average_start": load_start, "load_average_end": list(os.getloadavg())},
        "summary": summary, "runs": runs, "table": text, "wall_seconds": time.time() - t_start,
        "complete": summary is not None,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(args.output)


if __name__ == "__main__":
    raise SystemExit(main())
