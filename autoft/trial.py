"""One fine-tuning trial, top to bottom: build, freeze, train, evaluate, checkpoint.

No Ray and no MLflow here. Progress leaves through a :class:`Reporter`, which
the CLI prints and the search controller forwards to ``ray.tune.report``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoft import checkpoint as ckpt
from autoft import direct_write, prefix_cache, scratch
from autoft.data import PreparedData, TokenizedSplit, batch_indices, collate
from autoft.freezing import never_trained_prefix, plan_for_epoch
from autoft.handoff import Handoff, Reporter
from autoft.layers import ModelLayout, find_layout
from autoft.optim import build_param_groups
from autoft.recipe import Recipe


@dataclass
class RunOptions:
    """How (not what) to train: device, precision, evaluation and checkpoints."""

    device: str = "auto"
    precision: str = "auto"
    eval_batch_size: int = 128
    threads: int | None = None
    checkpoint_dir: Path | None = None  # where epoch checkpoints go; None = temporary, handed to the reporter
    keep_checkpoints: int = 1
    trust_remote_code: bool = False
    metric: str = "eval_f1"
    mode: str = "max"
    cache_frozen: bool = True  # reuse outputs of the never-trained prefix (prefix_cache)
    cache_dir: Path | None = None  # shared cache folder; None = the system temp folder
    cache_max_bytes: int | None = 10 * 10**9  # bound on the cache folder; None = unbounded
    epoch_hook: Any = None  # called as hook(epoch, model) before each epoch (fault-injection tests)
    # Evaluate, report and checkpoint this many times per epoch: with long epochs, the pruner
    # can stop a bad trial after half an epoch instead of a whole one.
    evals_per_epoch: int = 1
    # With checkpoints handed to the reporter (checkpoint_dir None): report on a background
    # thread, so training goes on while Ray Tune copies each checkpoint into storage (handoff).
    overlap_checkpoints: bool = False
    # Where handed-off checkpoints are written; None = the system's temporary folder. On the
    # storage's device, Ray's copy into storage is a hard link (storage_fs).
    scratch_root: Path | None = None
    # False: checkpoints without AdamW's moments; a resumed trial restarts them (not exact).
    save_optimizer_state: bool = True
    checkpoint_writes: direct_write.Mode = "auto"  # how checkpoints reach the disk


@dataclass
class TrialResult:
    status: str  # completed | diverged
    reason: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None


class PrintReporter:
    def __init__(self, echo: Any = print) -> None:
        self.echo = echo

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if "eval_f1" not in metrics:
            self.echo(f"epoch {metrics.get('epoch')}: {metrics.get('autoft_reason', '')}")
            return
        self.echo(
            f"epoch {metrics['epoch']}/{metrics['epochs_total']}  train_loss {metrics['train_loss']:.4f}  "
            f"eval_loss {metrics['eval_loss']:.4f}  acc {metrics['eval_accuracy']:.4f}  "
            f"f1 {metrics['eval_f1']:.4f}  trainable {metrics['trainable_params']:,}  "
            f"{metrics['epoch_seconds']:.1f}s ({metrics['train_samples_per_second']:.1f} samples/s)"
        )


# --------------------------------------------------------------------------- helpers


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 only on a GPU that has it; on CPU autocast is slower, not faster.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def reinit_top_blocks(model: Any, layout: ModelLayout, k: int) -> None:
    init = getattr(model, "_init_weights", None)
    for block in list(layout.blocks)[layout.num_layers - k :]:
        for module in block.modules():
            if init is not None:
                init(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()


def apply_plan(layout: ModelLayout, model: nn.Module, training_blocks: tuple[int, ...],
               embeddings_train: bool) -> None:
    """Set requires_grad and train/eval mode; frozen parts run in eval mode (no dropout)."""
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    for i, block in enumerate(layout.blocks):
        on = i in training_blocks
        block.train(on)
        for p in block.parameters():
            p.requires_grad_(on)
    for emb in layout.embeddings:
        emb.train(embeddings_train)
        for p in emb.parameters():
            p.requires_grad_(embeddings_train)


def ever_trainable(model: nn.Module, layout: ModelLayout, recipe: Recipe) -> list[nn.Parameter]:
    blocks: set[int] = set()
    embeddings = False
    for epoch in range(recipe.epochs):
        plan = plan_for_epoch(recipe, layout.num_layers, epoch)
        blocks.update(plan.training_blocks)
        embeddings = embeddings or plan.embeddings_train
    excluded = {id(p) for i, b in enumerate(layout.blocks) if i not in blocks for p in b.parameters()}
    if not embeddings:
        excluded |= {id(p) for e in layout.embeddings for p in e.parameters()}
    return [p for p in model.parameters() if id(p) not in excluded]


def evaluate(model: nn.Module, split: TokenizedSplit, batch_size: int, pad_id: int,
             device: torch.device, amp: torch.dtype | None,
             cache: tuple[Any, prefix_cache.CachedSplit] | None = None,
             between_batches: Callable[[], None] | None = None) -> dict[str, float]:
    """Loss, accuracy and macro-F1; ``cache`` = (installed stand-in, cached split);
    ``between_batches`` runs after each batch (a trial's check on its hand-off)."""
    from sklearn.metrics import f1_score

    was_training = model.training
    model.eval()
    total_loss, preds, golds = 0.0, [], []
    with torch.inference_mode():
        for idx in batch_indices(split, batch_size, shuffle=False):
            ids, mask, labels = collate(split, idx, pad_id)
            if cache is not None:
                cache[0].current = cache[1].batch(idx, ids.shape[1]).to(device)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits
            logits = logits.float()
            total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            preds.append(logits.argmax(-1).cpu().numpy())
            golds.append(labels.cpu().numpy())
            if between_batches is not None:
                between_batches()
    model.train(was_training)
    y_pred, y_true = np.concatenate(preds), np.concatenate(golds)
    return {
        "eval_loss": total_loss / max(1, len(y_true)),
        "eval_accuracy": float((y_pred == y_true).mean()),
        "eval_f1": float(f1_score(y_true, y_pred, average="macro")),
    }


def _prefix_cache(recipe: Recipe, model: nn.Module, layout: ModelLayout, data: PreparedData,
                  model_path: Path, device: torch.device, opts: RunOptions) -> tuple[int, dict[str, Any]]:
    if not opts.cache_frozen or not prefix_cache.supports_cache(model):
        return 0, {}
    # Re-initialised blocks are not pretrained: the cache may only cover blocks below them.
    depth = min(never_trained_prefix(recipe, layout.num_layers), layout.num_layers - recipe.reinit_top_layers)
    if depth <= 0:
        return 0, {}
    root = opts.cache_dir or Path(tempfile.gettempdir()) / "autoft-prefix-cache"
    folder = root / prefix_cache.cache_key(model_path, data.fingerprint)
    splits = {"train": data.train, "validation": data.validation}
    hidden = getattr(model.config, "hidden_size", None) or model.get_input_embeddings().embedding_dim
    need = prefix_cache.entry_bytes(splits, hidden, layout.num_layers)
    cached = prefix_cache.load_or_build(model, splits, data.pad_token_id, depth, folder, device,
                                        limit_bytes=opts.cache_max_bytes, need_bytes=need)
    if cached is None:
        import warnings

        warnings.warn(f"frozen-prefix cache for this data needs {need / 1e9:.3g} GB, more room than "
                      f"train.cache_max_gb={(opts.cache_max_bytes or 0) / 1e9:g} leaves; training without it "
                      "(same results, slower): raise train.cache_max_gb to cache it", stacklevel=2)
        return 0, {}
    if not prefix_cache.check_exact(model, layout, depth, data.validation, cached["validation"],
                                    data.pad_token_id, device):
        import warnings

        warnings.warn(f"frozen-prefix cache is not exact for {type(model).__name__}; training without it",
                      stacklevel=2)
        return 0, {}
    return depth, cached


@contextlib.contextmanager
def _maybe_installed(model: nn.Module, layout: ModelLayout, depth: int) -> Any:
    if depth <= 0:
        yield None
        return
    with prefix_cache.installed(model, layout, depth) as stand_in:
        yield stand_in


def evals_in_epoch(steps: int, evals_per_epoch: int) -> list[int]:
    """The optimizer step (exclusive) at which each evaluation of an epoch falls: the
    epoch cut into near-equal parts, never more parts than steps."""
    n = max(1, min(evals_per_epoch, steps))
    return [math.ceil(steps * (k + 1) / n) for k in range(n)]


def epoch_progress(epoch: int, part: int, parts: int) -> int | float:
    """Epochs done at an evaluation: whole epochs stay ints (1, 2), parts are 0.5, 1.25..."""
    return epoch + 1 if part + 1 == parts else round(epoch + (part + 1) / parts, 4)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


# --------------------------------------------------------------------------- the loop


def run_trial(
    recipe: Recipe,
    data: PreparedData,
    model_path: Path,
    reporter: Reporter,
    options: RunOptions | None = None,
    resume_from: Path | None = None,
) -> TrialResult:
    from transformers import get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    from autoft.models import load_classifier

    opts = options or RunOptions()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    amp = autocast_dtype(device, opts.precision)

    # 1. Model: pretrained body, fresh head (seeded), optional dropout override and re-init.
    seed_everything(recipe.seed)
    model = load_classifier(model_path, data.label_names, dropout=recipe.dropout,
                            pad_token_id=data.pad_token_id, trust_remote_code=opts.trust_remote_code)
    layout = find_layout(model)
    recipe.check_against_model(layout.num_layers)
    if recipe.reinit_top_layers:
        reinit_top_blocks(model, layout, recipe.reinit_top_layers)
    model.to(device)

    # Outputs of the never-trained prefix are computed once and reused (prefix_cache).
    depth, cached = _prefix_cache(recipe, model, layout, data, model_path, device, opts)

    # 2. Optimizer over what ever trains; L2-SP anchors for the body.
    params = ever_trainable(model, layout, recipe)
    groups = build_param_groups(model, layout, recipe.learning_rate, recipe.weight_decay,
                                recipe.layerwise_lr_decay, params)
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    head_ids = {id(p) for m in layout.head for p in m.parameters()}
    anchors: list[tuple[nn.Parameter, torch.Tensor]] = []
    if recipe.l2sp_alpha > 0:
        anchors = [(p, p.detach().clone()) for p in params if id(p) not in head_ids]
    steps_per_epoch = math.ceil(len(data.train) / recipe.batch_size)
    parts = evals_in_epoch(steps_per_epoch, opts.evals_per_epoch)
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(recipe.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    # 3. Resume.
    done_evals, history = 0, []
    best: dict[str, Any] | None = None
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        done_evals = _evals_done(state, len(parts))
        ckpt.load_model_weights(resume_from, model)
        if "optimizer" in state:
            ckpt.load_optimizer(resume_from, optimizer, state["optimizer"])
        elif done_evals < recipe.epochs * len(parts):  # a finished trial's last one never has it
            warnings.warn(f"{resume_from} holds no optimizer state (train.save_optimizer_state: false): "
                          "AdamW's moments restart from zero", stacklevel=2)
        scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng(resume_from)
        history, best = state["history"], state.get("best")

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    result = TrialResult(status="completed", reason="", history=history, best=best)
    kept: list[tuple[float, Path]] = []
    if resume_from is not None and opts.checkpoint_dir is not None:
        kept = _existing_checkpoints(opts.checkpoint_dir, result.history, opts.metric)
        result.last_checkpoint = Path(resume_from)
        if kept:
            kept = _prune_kept(kept, opts.keep_checkpoints, opts.mode, keep=kept[-1][1])
        if result.best is not None:
            result.best_checkpoint = next((p for v, p in kept if v == result.best[opts.metric]), None)

    start_epoch, start_part = divmod(done_evals, len(parts))
    handed_off = opts.checkpoint_dir is None  # written to a scratch folder, handed to the reporter, deleted
    with (scratch.folder(opts.scratch_root) if handed_off else contextlib.nullcontext()) as tmp_root, \
            Handoff(reporter, background=opts.overlap_checkpoints and handed_off) as out:
        for epoch in range(start_epoch, recipe.epochs):
            if opts.epoch_hook is not None:
                out.wait()  # a fault injected here must find the checkpoints reported so far on disk
                opts.epoch_hook(epoch, model)
            plan = plan_for_epoch(recipe, layout.num_layers, epoch)
            apply_plan(layout, model, plan.training_blocks, plan.embeddings_train)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            order = batch_indices(data.train, recipe.batch_size, shuffle=True, seed=recipe.seed * 1000 + epoch)
            first = start_part if epoch == start_epoch else 0
            for part in range(first, len(parts)):
                t0 = time.perf_counter()
                loss_sum, seen = 0.0, 0
                diverged = ""
                with _maybe_installed(model, layout, depth) as stand_in:
                    for step in range(parts[part - 1] if part else 0, parts[part]):
                        idx = order[step]
                        ids, mask, labels = collate(data.train, idx, data.pad_token_id)
                        if stand_in is not None:
                            stand_in.current = cached["train"].batch(idx, ids.shape[1]).to(device)
                        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
                        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                            logits = model(input_ids=ids, attention_mask=mask).logits
                        loss = loss_fn(logits.float(), labels)
                        if anchors:
                            loss = loss + 0.5 * recipe.l2sp_alpha * sum(
                                ((p - p0) ** 2).sum() for p, p0 in anchors if p.requires_grad)
                        if not torch.isfinite(loss):
                            diverged = f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}"
                            break
                        scaler.scale(loss).backward()
                        if recipe.max_grad_norm > 0:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(
                                [p for p in model.parameters() if p.requires_grad], recipe.max_grad_norm)
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        out.check()  # a trial Ray stopped while its last report was in flight ends here
                        loss_sum += loss.item() * len(labels)
                        seen += len(labels)
                train_seconds = time.perf_counter() - t0
                progress = epoch_progress(epoch, part, len(parts))
                done_evals = epoch * len(parts) + part + 1
                if diverged:
                    result.status, result.reason = "diverged", diverged
                    metrics = {"epoch": progress, "eval_step": done_evals, "epochs_total": recipe.epochs,
                               "autoft_status": "diverged", "autoft_reason": diverged,
                               opts.metric: 0.0 if opts.mode == "max" else 1e9}
                    result.history.append(metrics)
                    out.report(metrics, None)
                    return result
                with _maybe_installed(model, layout, depth) as stand_in:
                    ev = evaluate(model, data.validation, opts.eval_batch_size, data.pad_token_id, device, amp,
                                  (stand_in, cached["validation"]) if stand_in is not None else None, out.check)
                # evaluate() put every module back in train mode; frozen ones must not drop out.
                apply_plan(layout, model, plan.training_blocks, plan.embeddings_train)
                last = epoch + 1 == recipe.epochs and part + 1 == len(parts)
                metrics = {
                    "epoch": progress,
                    "eval_step": done_evals,
                    "epochs_total": recipe.epochs,
                    "train_loss": loss_sum / max(1, seen),
                    **ev,
                    "learning_rate": optimizer.param_groups[-1]["lr"],
                    "trainable_params": trainable,
                    "blocks_training": len(plan.training_blocks),
                    # Since the previous evaluation (the epoch, unless train.evals_per_epoch > 1).
                    "epoch_seconds": time.perf_counter() - t0,
                    "train_seconds": train_seconds,
                    "train_samples": seen,
                    "train_samples_per_second": seen / max(train_seconds, 1e-9),
                    "cached_prefix_depth": depth,
                    "autoft_status": "completed" if last else "running",
                }
                value = metrics[opts.metric]
                if result.best is None or _better(value, result.best[opts.metric], opts.mode):
                    result.best = dict(metrics)
                result.history.append(metrics)
                state = {"epoch": progress, "eval_step": done_evals, "evals_per_epoch": len(parts),
                         "scheduler": scheduler.state_dict(),
                         "history": result.history, "best": result.best, "recipe": recipe.to_dict(),
                         "label_names": data.label_names}
                root = opts.checkpoint_dir or tmp_root
                assert root is not None
                # After the last evaluation nothing resumes: AdamW's moments (twice the trainable
                # weights) would only be written, copied by Ray into storage and deleted.
                out.wait()  # the previous checkpoint's hand-off, if still in flight
                t_save = time.perf_counter()
                cdir = ckpt.save_checkpoint(root / f"checkpoint-epoch-{progress}", model,
                                            None if last or not opts.save_optimizer_state else optimizer, state,
                                            writes=opts.checkpoint_writes)
                # Not in the checkpoint's own history: it is known only once that is written.
                metrics["checkpoint_seconds"] = time.perf_counter() - t_save
                result.last_checkpoint = cdir
                if opts.checkpoint_dir is not None:
                    kept.append((value, cdir))
                    kept = _prune_kept(kept, opts.keep_checkpoints, opts.mode, keep=cdir)
                    best_val = result.best[opts.metric]
                    result.best_checkpoint = next((p for v, p in kept if v == best_val), result.best_checkpoint)
                out.report(metrics, cdir, then=(lambda d=cdir: shutil.rmtree(d, ignore_errors=True))
                           if handed_off else None)
    return result


def _evals_done(state: dict[str, Any], parts: int) -> int:
    """Evaluations a checkpoint stands for, in this run's evaluations per epoch."""
    saved_parts = int(state.get("evals_per_epoch", 1))  # older checkpoints: one per epoch
    epoch = state["epoch"]
    if saved_parts == parts:
        return int(state.get("eval_step", epoch))
    if float(epoch).is_integer():
        return int(epoch) * parts
    raise ValueError(f"checkpoint taken at epoch {epoch}, {saved_parts} evaluations per epoch: resume with "
                     f"train.evals_per_epoch={saved_parts}")


def _existing_checkpoints(root: Path, history: list[dict[str, Any]], metric: str) -> list[tuple[float, Path]]:
    """(value, folder) of the complete checkpoints a resumed trial already wrote, oldest first."""
    found = []
    for h in history:
        d = Path(root) / f"checkpoint-epoch-{h.get('epoch')}"
        if metric in h and ckpt.is_complete(d):
            found.append((h[metric], d))
    return found


def _prune_kept(kept: list[tuple[float, Path]], k: int, mode: str, keep: Path) -> list[tuple[float, Path]]:
    """Keep the best ``k`` checkpoints (plus the newest, for resuming); delete the rest."""
    ranked = sorted(kept, key=lambda vp: vp[0], reverse=(mode == "max"))
    survivors = ranked[:k]
    if all(p != keep for _, p in survivors):
        survivors.append(next(vp for vp in kept if vp[1] == keep))
    for _, p in kept:
        if all(p != s for _, s in survivors):
            shutil.rmtree(p, ignore_errors=True)
    return survivors
