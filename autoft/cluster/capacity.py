"""How many trials a cluster's nodes hold at once, from the config's resources per trial."""

from __future__ import annotations

import math

from autoft.config import ExperimentConfig
from autoft.errors import InputError


def check_fit(cfg: ExperimentConfig, gpus: int, cpus: float | None, gpu_flag: str, cpu_flag: str) -> None:
    r = cfg.resources
    if r.gpus_per_trial > 0 and gpus == 0:
        raise InputError(gpu_flag, f"0, but resources.gpus_per_trial is {r.gpus_per_trial:g}",
                         f"give {gpu_flag} at least {math.ceil(r.gpus_per_trial)}, or set resources.gpus_per_trial=0")
    if r.gpus_per_trial > gpus:
        raise InputError(gpu_flag, f"{gpus}, less than one trial needs (resources.gpus_per_trial="
                         f"{r.gpus_per_trial:g})", f"give {gpu_flag} at least {math.ceil(r.gpus_per_trial)}")
    if cpus is not None and r.cpus_per_trial > cpus:
        raise InputError(cpu_flag, f"{cpus:g}, less than one trial needs (resources.cpus_per_trial="
                         f"{r.cpus_per_trial:g})", f"give {cpu_flag} at least {math.ceil(r.cpus_per_trial)}")


def trials_per_node(cfg: ExperimentConfig, nodes: int, gpus: int) -> int:
    """Trials one node (or worker pod) should hold at once: what its GPUs allow, or on
    CPU the search's concurrency spread over the nodes."""
    r = cfg.resources
    if r.gpus_per_trial > 0:
        return max(1, math.floor(gpus / r.gpus_per_trial + 1e-9))
    return max(1, math.ceil(cfg.search.max_concurrent / nodes))


def capacity_note(cfg: ExperimentConfig, nodes: int, per_node: int) -> str:
    r = cfg.resources
    total = nodes * per_node
    each = f"each trial {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU"
    if cfg.search.max_concurrent > total:
        return (f"{each}: {total} trials fit at once, search.max_concurrent is {cfg.search.max_concurrent}, "
                "the rest wait")
    if cfg.search.max_concurrent < total:
        return (f"{each}: {total} trials fit at once but search.max_concurrent is {cfg.search.max_concurrent}; "
                f"raise it (--set search.max_concurrent={total}) to use them all")
    return f"{each}: {total} trials at once"


def resource_overrides(cfg: ExperimentConfig) -> list[str]:
    """The trial resources the cluster was sized for, pinned on the search's command line."""
    r = cfg.resources
    return [f"resources.cpus_per_trial={r.cpus_per_trial:g}", f"resources.gpus_per_trial={r.gpus_per_trial:g}"]
