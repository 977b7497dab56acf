"""`autoft` commands for the cluster feature; registered on the main app by autoft.cli.

``submit`` and ``jobs`` talk to a Ray cluster's Jobs API (the dashboard, port 8265);
``slurm`` and ``kuberay`` write a batch script or a manifest that runs the same
search. The logic lives in :mod:`autoft.cluster`; Ray loads inside the commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from autoft.cli_common import ConfigArg, SetOpt
from autoft.errors import InputError

T = TypeVar("T")

AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="The Ray head's dashboard (Jobs API), e.g. http://HEAD:8265. "
                 "Default: RAY_API_SERVER_ADDRESS, or RAY_ADDRESS when it is an http(s) address."),
]
JobIdArg = Annotated[str, typer.Argument(metavar="JOB_ID", help="Submission id printed by `autoft submit`.")]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(exc: InputError, code: int = 2) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _notes(notes: list[str]) -> None:
    for note in notes:
        _err(f"note: {note}")


# --------------------------------------------------------------------------- Jobs API


def _quiet_ray() -> None:
    import logging

    # Ray's SDK modules set their own INFO level ("Uploading package", "WebSocket closed").
    names = [n for n in list(logging.root.manager.loggerDict) if n == "ray" or n.startswith("ray.")]
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address
    it is given; the address autoft chose (option first) must win."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class _Cluster:
    """A JobSubmissionClient with autoft's errors: one line, no traceback."""

    def __init__(self, address: str | None) -> None:
        from autoft.cluster import address_from_env, check_address, find_auth_token

        try:
            self.address = check_address(address or address_from_env(os.environ))
            self.token = find_auth_token(os.environ, Path.home())
        except InputError as exc:
            _fail(exc)
        from ray.job_submission import JobSubmissionClient

        _quiet_ray()
        headers = self.token.headers() if self.token else None
        with _explicit_address():
            self.client = self.call(lambda: JobSubmissionClient(self.address, headers=headers))

    def call(self, fn: Callable[[], T], job_id: str | None = None) -> T:
        import requests
        from ray.exceptions import AuthenticationError

        from autoft.cluster import auth_error

        try:
            return fn()
        except AuthenticationError as exc:
            _fail(auth_error(str(exc), self.address, self.token))
        except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            _fail(InputError("--address", f"cannot reach a Ray dashboard at {self.address}",
                             "is the cluster up, and its dashboard port (8265) reachable from here?"))
        except RuntimeError as exc:
            text = str(exc)
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            if job_id is not None and "404" in text:
                _fail(InputError("JOB_ID", f"no job '{job_id}' on {self.address}",
                                 f"`autoft jobs list --address {self.address}` shows the jobs"))
            if "Version check returned 404" in text:
                _fail(InputError("--address", f"{self.address} answers but is not a Ray dashboard",
                                 "give the head's dashboard address, e.g. http://HEAD:8265"))
            _err(f"error: the Ray cluster at {self.address} answered: {first}")
            raise typer.Exit(1) from None

    def status(self, job_id: str) -> str:
        return str(self.call(lambda: self.client.get_job_status(job_id), job_id))

    def follow(self, job_id: str) -> str:
        """Print the job's logs as they come until it ends; return its final status."""
        import asyncio
        import time

        printed = 0

        async def tail() -> None:
            nonlocal printed
            async for chunk in self.client.tail_job_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
                printed += len(chunk)

        # A websocket refused (a proxy) or dropped: poll the logs instead.
        with contextlib.suppress(Exception):
            asyncio.run(tail())
        while True:
            status = self.status(job_id)
            logs = self.call(lambda: self.client.get_job_logs(job_id), job_id)
            if len(logs) > printed:
                sys.stdout.write(logs[printed:])
                sys.stdout.flush()
                printed = len(logs)
            if status in TERMINAL:
                return status
            time.sleep(2)


def _follow_and_report(cluster: _Cluster, job_id: str) -> int:
    from autoft.cluster import failure_hint, last_json_line

    try:
        status = cluster.follow(job_id)
    except KeyboardInterrupt:
        _err(f"stopped following; job {job_id} goes on. Logs: autoft jobs logs {job_id} --follow "
             f"--address {cluster.address}; stop it: autoft jobs stop {job_id} --address {cluster.address}")
        return 130
    info = cluster.call(lambda: cluster.client.get_job_info(job_id), job_id)
    if status == "SUCCEEDED":
        result = last_json_line(cluster.call(lambda: cluster.client.get_job_logs(job_id), job_id))
        if result:
            _err(f"job {job_id} SUCCEEDED: best {result.get('metric')} {result.get('best_value')} "
                 f"({result.get('n_trials')} trials); MLflow run {result.get('mlflow_run_id')} at "
                 f"{result.get('tracking_uri')}; best checkpoint {result.get('best_checkpoint')}")
        else:
            _err(f"job {job_id} SUCCEEDED")
        return 0
    _err(f"job {job_id} {status}: {(info.message or '').strip() or 'see the logs above'}")
    hint = failure_hint(getattr(info, "driver_exit_code", None), info.message or "")
    if hint:
        _err(f"hint: {hint}")
    return 1


# --------------------------------------------------------------------------- commands


def submit(
    config: ConfigArg = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the job id and return; do not follow the logs.")] = False,
) -> None:
    """Run the search on a Ray cluster as a Ray Job (Jobs API), following its logs.

    The job's folder holds the config and the files it names by a relative path (sent with the job); absolute paths must exist on the cluster (shared storage), and the bundled model and data come from autoft installed there. The cluster needs autoft installed, `storage` an absolute path every node mounts, and `tracking.uri` an MLflow server it can reach (a local sqlite: store is refused). Prints the job id first; exits 0 when the job SUCCEEDED, 1 when it FAILED or was STOPPED, 2 on bad input or a missing/wrong Ray auth token (~/.ray/auth_token, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH).
    """
    import tempfile

    from autoft import cluster as cl

    try:
        job = cl.prepare_job(config, set_ or [], "job")
    except InputError as exc:
        _fail(exc)
    ray_cluster = _Cluster(address)
    _notes(job.notes + cl.tracking_notes(job, ray_cluster.address))
    entrypoint = job.entrypoint()
    with tempfile.TemporaryDirectory(prefix="autoft-job-") as tmp:
        folder = cl.write_job_folder(job, Path(tmp) / "job") if job.config_path or job.shipped else None
        sent = f"; sending {len(job.shipped) + (1 if job.config_path else 0)} file(s), " \
               f"{job.bundle_bytes / 1024:.0f} KiB" if folder else ""
        _err(f"submitting search '{job.cfg.name}' to {ray_cluster.address}: {entrypoint}{sent}")
        job_id = ray_cluster.call(lambda: ray_cluster.client.submit_job(
            entrypoint=entrypoint, runtime_env=cl.runtime_env(job, folder),
            submission_id=cl.submission_id(job.cfg.name), metadata=cl.job_metadata(job)))
    typer.echo(job_id)
    if no_wait:
        _err(f"follow: autoft jobs logs {job_id} --follow --address {ray_cluster.address}")
        return
    _err(f"following job {job_id} (Ctrl-C stops following, not the job)")
    raise typer.Exit(_follow_and_report(ray_cluster, job_id))


jobs_app = typer.Typer(
    help="The Ray Jobs on a cluster (autoft submit's and others): list, status, logs, stop.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@jobs_app.command("list")
def jobs_list(
    address: AddressOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Also list drivers started without the Jobs API.")] = False,
) -> None:
    """List the cluster's jobs, oldest first: id, status, start time, search name, command."""
    import datetime as dt

    ray_cluster = _Cluster(address)
    jobs = ray_cluster.call(ray_cluster.client.list_jobs)
    rows = sorted((j for j in jobs if all_ or j.submission_id), key=lambda j: j.start_time or 0)
    if not rows:
        _err(f"no jobs on {ray_cluster.address}")
        return
    typer.echo(f"{'JOB_ID':<44} {'STATUS':<10} {'STARTED':<19} {'NAME':<20} ENTRYPOINT")
    for j in rows:
        started = dt.datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else "-"
        name = (j.metadata or {}).get("autoft.name", "-")
        entry = j.entrypoint or ""
        entry = entry if len(entry) <= 80 else entry[:77] + "..."
        typer.echo(f"{j.submission_id or j.job_id or '-':<44} {str(j.status):<10} {started:<19} {name:<20} {entry}")


@jobs_app.command("status")
def jobs_status(
    job_id: JobIdArg,
    address: AddressOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the job's details as one JSON object.")] = False,
) -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and its message."""
    import json

    ray_cluster = _Cluster(address)
    info = ray_cluster.call(lambda: ray_cluster.client.get_job_info(job_id), job_id)
    if json_out:
        keys = ("submission_id", "job_id", "status", "message", "entrypoint", "start_time", "end_time",
                "metadata", "driver_exit_code")
        typer.echo(json.dumps({k: getattr(info, k, None) for k in keys}, default=str))
        return
    message = (info.message or "").strip()
    typer.echo(f"{job_id}: {info.status}" + (f" ({message})" if message else ""))


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobIdArg,
    address: AddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends; exit 0 if it SUCCEEDED, else 1.")] = False,
) -> None:
    """Print a job's logs (the search's output), or follow them with --follow."""
    ray_cluster = _Cluster(address)
    if follow:
        raise typer.Exit(_follow_and_report(ray_cluster, job_id))
    logs = ray_cluster.call(lambda: ray_cluster.client.get_job_logs(job_id), job_id)
    sys.stdout.write(logs)


@jobs_app.command("stop")
def jobs_stop(
    job_id: JobIdArg,
    address: AddressOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job has ended.")] = False,
) -> None:
    """Stop a running job (its search ends; trial runs are closed by the search's driver)."""
    import time

    ray_cluster = _Cluster(address)
    stopping = ray_cluster.call(lambda: ray_cluster.client.stop_job(job_id), job_id)
    if not stopping:
        typer.echo(f"{job_id}: not running ({ray_cluster.status(job_id)})")
        return
    if wait:
        deadline = time.time() + 120
        while (status := ray_cluster.status(job_id)) not in TERMINAL and time.time() < deadline:
            time.sleep(1)
        typer.echo(f"{job_id}: {status}")
    else:
        typer.echo(f"{job_id}: stopping")


def slurm(
    config: ConfigArg = None,
    set_: SetOpt = None,
    nodes: Annotated[int, typer.Option("--nodes", "-N", min=1, help="Nodes in the allocation: one Ray head, the rest Ray workers.")] = ...,  # type: ignore[assignment]
    time_limit: Annotated[str, typer.Option("--time", "-t", help="Wall-time limit, HH:MM:SS or D-HH:MM:SS.")] = ...,  # type: ignore[assignment]
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", "-G", min=0, help="GPUs per node (at least resources.gpus_per_trial when trials use GPUs).")] = 0,
    partition: Annotated[str | None, typer.Option("--partition", "-p", help="SLURM partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", "-A", help="SLURM account to charge.")] = None,
    cpus_per_node: Annotated[int | None, typer.Option("--cpus-per-node", min=1, help="CPUs per node for Ray. Default: the trials a node holds x resources.cpus_per_trial, plus 1.")] = None,
    setup: Annotated[list[str] | None, typer.Option("--setup", help="A shell line run before Ray starts, verbatim (e.g. 'module load cuda'); repeatable.")] = None,
    do_submit: Annotated[bool, typer.Option("--submit", help="Pass the script to sbatch instead of printing it.")] = False,
) -> None:
    """Write a SLURM batch script (stdout) that runs the search on a Ray cluster inside the allocation.

    The script starts a Ray head on the first node and a worker on each other one (srun steps, token authentication with a per-job token), waits for them, runs `autoft search` against that cluster and stops Ray by ending its own steps. It runs from the current folder (relative paths and storage resolve as here, which every node must mount) with this Python's bin folder first on PATH. SBATCH resources follow resources.cpus_per_trial and resources.gpus_per_trial. With --submit it goes to sbatch (which must be on PATH).
    """
    import shutil
    import subprocess

    from autoft import cluster as cl

    bin_dir = Path(sys.executable).parent
    try:
        job = cl.prepare_job(config, set_ or [], "slurm")
        spec = cl.SlurmSpec(nodes=nodes, gpus_per_node=gpus_per_node, time=time_limit, partition=partition,
                            account=account, cpus_per_node=cpus_per_node, setup=tuple(setup or ()),
                            bin_dir=bin_dir if (bin_dir / "autoft").exists() else None)
        script = cl.render_slurm(job, spec)
    except InputError as exc:
        _fail(exc)
    _notes(job.notes)
    if not do_submit:
        typer.echo(script, nl=False)
        return
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        _fail(InputError("--submit", "sbatch is not on PATH (not a SLURM login node?)",
                         "drop --submit, save the script (autoft slurm ... > search.sbatch) and run "
                         "`sbatch search.sbatch` where SLURM is"))
    proc = subprocess.run([sbatch], input=script, text=True, capture_output=True)
    if proc.stdout:
        typer.echo(proc.stdout.rstrip())
    if proc.returncode != 0:
        _err(f"error: sbatch exited with {proc.returncode}: {proc.stderr.strip()}")
        raise typer.Exit(1)


def kuberay(
    config: ConfigArg = None,
    set_: SetOpt = None,
    image: Annotated[str, typer.Option("--image", help="Container image with Ray 2.60 and autoft installed (head and workers).")] = ...,  # type: ignore[assignment]
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker pods; trials run there, the driver on the head.")] = 1,
    gpus_per_worker: Annotated[int, typer.Option("--gpus-per-worker", min=0, help="nvidia.com/gpu per worker pod.")] = 0,
    cpus_per_worker: Annotated[int | None, typer.Option("--cpus-per-worker", min=1, help="CPUs per worker pod. Default: the trials a pod holds x resources.cpus_per_trial.")] = None,
    memory_per_worker: Annotated[str | None, typer.Option("--memory-per-worker", help="Memory per worker pod, e.g. 16Gi. Default: 4Gi per trial it holds.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="RayJob name (default autoft-<search name>); the ConfigMap is <name>-config.")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Kubernetes namespace of the RayJob and ConfigMap.")] = None,
    pvc: Annotated[str | None, typer.Option("--pvc", help="PersistentVolumeClaim (ReadWriteMany) mounted at the storage path in every pod.")] = None,
) -> None:
    """Write a KubeRay RayJob manifest (stdout) that runs the search: kubectl apply -f it.

    Two documents: a ConfigMap with the config (and small files it names by a relative path) mounted on the head at /etc/autoft, and a RayJob (ray.io/v1) whose cluster has a head for the driver and --workers pods for trials, sized from resources.cpus_per_trial and resources.gpus_per_trial, deleted when the job ends (shutdownAfterJobFinishes). Needs `tracking.uri` an MLflow server the pods reach and `storage` an absolute path all pods share (--pvc).
    """
    from autoft import cluster as cl

    try:
        job = cl.prepare_job(config, set_ or [], "kuberay")
        spec = cl.KubeSpec(image=image, workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, memory_per_worker=memory_per_worker,
                           name=name, namespace=namespace, pvc=pvc)
        manifest = cl.render_kuberay(job, spec)
    except InputError as exc:
        _fail(exc)
    _notes(job.notes + cl.kube_notes(job, spec))
    typer.echo(f"# autoft search '{job.cfg.name}' as a KubeRay RayJob: kubectl apply -f <this file>")
    typer.echo(manifest, nl=False)


def register(app: typer.Typer) -> None:
    """Add this feature's commands to the main app."""
    app.command()(submit)
    app.add_typer(jobs_app, name="jobs")
    app.command()(slurm)
    app.command()(kuberay)
