"""The SLURM route: an sbatch script that starts a Ray cluster across its nodes and runs the
search on it (:func:`render_slurm`)."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from autoft.cluster.capacity import capacity_note, check_fit, resource_overrides, trials_per_node
from autoft.cluster.job import JOB_ENV, ClusterJob, autoft_version, shell_command
from autoft.errors import InputError

_SLURM_TIME = re.compile(r"^(?:\d+-)?\d{1,3}:\d{2}:\d{2}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:+-]{1,128}$")

_WAIT_FOR_NODES = '''\
wait_for_ray() {  # $1: Ray nodes that must be up
  python - "$1" <<'PY'
import sys, time
import ray
want, deadline = int(sys.argv[1]), time.time() + 300
while True:
    try:
        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
        break
    except Exception as exc:
        ray.shutdown()
        if time.time() > deadline:
            sys.exit(f"the Ray head did not come up in 300 s: {exc}")
        time.sleep(3)
while (alive := sum(1 for n in ray.nodes() if n["Alive"])) < want:
    if time.time() > deadline:
        sys.exit(f"only {alive} of {want} Ray nodes joined in 300 s")
    time.sleep(3)
print(f"Ray: {alive} nodes up", file=sys.stderr)
PY
}'''


@dataclass(frozen=True)
class SlurmSpec:
    nodes: int
    gpus_per_node: int
    time: str
    partition: str | None = None
    account: str | None = None
    cpus_per_node: int | None = None  # default: sized from the config
    setup: tuple[str, ...] = ()  # shell lines run first (module load, conda activate)
    bin_dir: Path | None = None  # put first on PATH: where autoft, ray and python are
    port: int = 6379


def slurm_cpus(job: ClusterJob, spec: SlurmSpec) -> int:
    if spec.cpus_per_node is not None:
        return spec.cpus_per_node
    per_node = trials_per_node(job.cfg, spec.nodes, spec.gpus_per_node)
    # One CPU on top for Ray's own processes and the search's driver.
    return math.ceil(per_node * job.cfg.resources.cpus_per_trial) + 1


def check_slurm(job: ClusterJob, spec: SlurmSpec) -> None:
    if spec.nodes < 1:
        raise InputError("--nodes", f"{spec.nodes}; a cluster needs at least one node", "give --nodes 1 or more")
    if spec.gpus_per_node < 0:
        raise InputError("--gpus-per-node", f"{spec.gpus_per_node} is negative", "give 0 or more")
    if not _SLURM_TIME.match(spec.time):
        raise InputError("--time", f"'{spec.time}' is not HH:MM:SS", "e.g. --time 04:00:00 or --time 1-00:00:00")
    for flag, value in (("--partition", spec.partition), ("--account", spec.account)):
        if value is not None and not _SLURM_WORD.match(value):
            raise InputError(flag, f"'{value}' is not a SLURM name", "use letters, digits, '_', '-', '.', ','")
    if spec.cpus_per_node is not None and spec.cpus_per_node < 1:
        raise InputError("--cpus-per-node", f"{spec.cpus_per_node}", "give 1 or more")
    if not 1 <= spec.port <= 65535:
        raise InputError("--port", f"{spec.port}", "give a TCP port")
    for line in spec.setup:
        if "\n" in line or "\r" in line:
            raise InputError("--setup", "a line break inside one --setup line", "give one --setup per line")
    check_fit(job.cfg, spec.gpus_per_node, slurm_cpus(job, spec), "--gpus-per-node", "--cpus-per-node")


def render_slurm(job: ClusterJob, spec: SlurmSpec) -> str:
    """A SLURM batch script: a Ray head on the first node, a worker on each other node
    (one srun step each), the search against that cluster, then Ray stopped by
    killing those steps (the script owns them; no `ray stop`)."""
    check_slurm(job, spec)
    cfg = job.cfg
    cpus = slurm_cpus(job, spec)
    gpus = spec.gpus_per_node
    per_node = trials_per_node(cfg, spec.nodes, gpus)
    name = f"autoft-{cfg.name}"
    q = shlex.quote
    directives = [f"--job-name={name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1", "--exclusive",
                  f"--cpus-per-task={cpus}"]
    if gpus:
        directives.append(f"--gpus-per-task={gpus}")
    directives.append(f"--time={spec.time}")
    if spec.partition:
        directives.append(f"--partition={spec.partition}")
    if spec.account:
        directives.append(f"--account={spec.account}")
    directives.append(f"--output={name}-%j.out")

    step = ["srun", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}"]
    if gpus:
        step.append(f"--gpus-per-task={gpus}")
    res = [f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--disable-usage-stats", "--block"]
    head = shell_command(step) + ' -w "$head_node" ' + shell_command(
        ["ray", "start", "--head", "--port", str(spec.port)]) + ' --node-ip-address="$head_ip" ' + shell_command(res)
    worker = shell_command(step) + ' -w "$node" ' + shell_command(["ray", "start"]) + \
        ' --address="$RAY_ADDRESS" ' + shell_command(res)
    search = shell_command(job.search_args(resource_overrides(cfg)))
    lines = [
        "#!/bin/bash",
        f"# autoft search '{cfg.name}' on SLURM (written by autoft {autoft_version()}; submit with sbatch):",
        f"# a Ray head on the first of {spec.nodes} node(s), Ray workers on the others, then the search.",
        f"# {capacity_note(cfg, spec.nodes, per_node)} (resources.*_per_trial).",
        *[f"#SBATCH {d}" for d in directives],
        "",
        "set -euo pipefail",
        f"cd {q(str(job.workdir))}  # relative paths and storage resolve as they did here",
    ]
    if spec.bin_dir is not None:
        lines.append(f'export PATH={q(str(spec.bin_dir))}:"$PATH"')
    if spec.setup:
        lines += ["# --setup lines", *spec.setup]
    lines += [
        "",
        "# Token authentication between this job's Ray processes, with a token only it knows.",
        "export RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')",
        "export RAY_AUTH_TOKEN",
        *[f"export {k}={q(v)}" for k, v in {**JOB_ENV, **job.env}.items()],
        "",
        'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'head_node=${nodes[0]}',
        'head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk \'{print $1}\')',
        f'export RAY_ADDRESS="$head_ip:{spec.port}"',
        "",
        "ray_steps=()",
        "stop_ray() {  # the srun steps that run Ray: stopping them stops Ray on every node",
        "  local rc=$?",
        '  if [ "${#ray_steps[@]}" -gt 0 ]; then',
        '    kill "${ray_steps[@]}" 2>/dev/null || true',
        '    wait "${ray_steps[@]}" 2>/dev/null || true',
        "  fi",
        '  exit "$rc"',
        "}",
        "trap stop_ray EXIT",
        _WAIT_FOR_NODES,
        "",
        'echo "Ray head on $head_node ($RAY_ADDRESS)" >&2',
        head + " &",
        "ray_steps+=($!)",
        "wait_for_ray 1",
        'for node in "${nodes[@]:1}"; do',
        "  " + worker + " &",
        "  ray_steps+=($!)",
        "done",
        'wait_for_ray "${#nodes[@]}"',
        "",
        search,
        "",
    ]
    return "\n".join(lines)
