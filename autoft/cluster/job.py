"""One search made ready for a cluster route (:func:`prepare_job`): the ``autoft search``
command line the cluster runs (quoted with :func:`shlex.join`, never assembled from
unquoted user strings), the files that travel with it, the Ray Job's working folder,
runtime_env and metadata.

Files a config names by a *relative* path (model folder, data files, space YAML) travel
with the job and the job's command points the field at the copy; absolute paths and
``hf:`` names are used as they are on the cluster, which is where shared storage is mounted.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import posixpath
import secrets
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoft.cluster.checks import (
    LOCAL_HOSTS,
    check_remote_tracking,
    check_shared_storage,
    host_of,
    is_local_tracking,
)
from autoft.config import ExperimentConfig, apply_overrides, validate_config
from autoft.errors import InputError
from autoft.yamlio import load_yaml_file

Route = Literal["job", "slurm", "kuberay"]

JOB_FILES_DIR = "files"
KUBE_MOUNT = "/etc/autoft"
# Ray uploads the working folder through the GCS (512 MiB gRPC limit, zipped);
# leave room for the zip's overhead and say so before the upload fails.
JOB_BUNDLE_LIMIT = 400 * 1024 * 1024
# A ConfigMap holds at most 1 MiB (etcd); binary files grow by a third in base64.
CONFIGMAP_LIMIT = 900 * 1024
# Environment every process of the job gets: trials keep the job's folder as cwd,
# tokenizers do not fork threads under Ray's workers.
JOB_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TOKENIZERS_PARALLELISM": "false"}
# Read by Ray's job supervisor: `autoft jobs stop` (Jobs API stop) sends the search
# SIGINT, which it handles like Ctrl-C (open MLflow runs closed as KILLED), and gives
# it time for that before SIGKILL (Ray's default: SIGTERM, 3 s).
JOB_STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "30"}


@dataclass(frozen=True)
class Shipped:
    """A local file or folder that travels with the job."""

    field: str  # config key that names it, e.g. data.train
    source: Path  # where it is here
    dest: str  # where it lands, relative to the job's folder
    size: int  # bytes


@dataclass
class ClusterJob:
    """One search, checked for a cluster route, ready to be rendered or submitted."""

    route: Route
    cfg: ExperimentConfig
    config_path: Path | None  # the local config file (shipped verbatim)
    config_arg: str | None  # how the cluster's `autoft search` names it
    overrides: list[str]  # the user's --set, as given (minus those a copy replaces)
    shipped: list[Shipped] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)  # --set pointing fields at shipped copies
    env: dict[str, str] = field(default_factory=dict)  # environment for the job's processes
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user
    workdir: Path = field(default_factory=Path.cwd)  # where relative paths were resolved

    @property
    def tracking_uri(self) -> str | None:
        return self.cfg.tracking.uri or self.env.get("MLFLOW_TRACKING_URI")

    def search_args(self, extra: Sequence[str] = ()) -> list[str]:
        """argv of the search the cluster runs. ``--address auto`` joins the cluster the
        job runs in (Ray Jobs and the SLURM script set RAY_ADDRESS), whatever the config says."""
        args = ["autoft", "search"]
        if self.config_arg is not None:
            args.append(self.config_arg)
        for item in [*self.overrides, *self.rewrites, *extra]:
            args += ["--set", item]
        return [*args, "--address", "auto", "--json"]

    def entrypoint(self, extra: Sequence[str] = ()) -> str:
        return shell_command(self.search_args(extra))

    @property
    def bundle_bytes(self) -> int:
        own = self.config_path.stat().st_size if self.config_path else 0
        return own + sum(s.size for s in self.shipped)


def shell_command(args: Sequence[str]) -> str:
    """One shell command line from an argument list; every argument quoted as needed."""
    if not args:
        raise ValueError("empty command")
    return shlex.join([str(a) for a in args])


def _dig(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _path_fields(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """(field, value) for every config value that names a local file or folder."""
    from autoft.models import SHORT_NAMES
    from autoft.space import shipped_spaces

    out: list[tuple[str, str]] = []
    if cfg.model.path.lower() not in SHORT_NAMES:
        out.append(("model.path", cfg.model.path))
    for split in ("train", "validation", "test"):
        value = getattr(cfg.data, split)
        if value is not None and not value.startswith("hf:"):
            out.append((f"data.{split}", value))
    if isinstance(cfg.space, str) and cfg.space not in shipped_spaces():
        out.append(("space", cfg.space))
    return out


def _local_source(value: str, config_dir: Path | None, cwd: Path) -> Path | None:
    """Where a relative path points here, by load_config's rule: the current folder
    first, then the config's folder."""
    for base in [cwd] + ([config_dir] if config_dir else []):
        candidate = base / value
        if candidate.exists():
            return candidate.resolve()
    return None


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].strip()


def prepare_job(config: str | Path | None, overrides: Sequence[str], route: Route, *,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ClusterJob:
    """Check a config and its overrides for ``route`` and work out what travels with the job.

    Raises :class:`InputError` (one line: field, problem, fix) for anything that cannot
    work away from this machine: a local MLflow store, relative or URI storage, a
    relative path that does not exist here, a job folder too large to upload.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    config_path = None if config is None else Path(config).expanduser()
    if config_path is not None and not config_path.is_absolute():
        config_path = cwd / config_path
    raw: Any = {} if config_path is None else load_yaml_file(config_path, "config")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"config '{config}'", "top level must be a mapping", "write 'key: value' lines")
    overrides = [str(o) for o in overrides]
    merged = apply_overrides(raw, overrides)
    cfg = validate_config(merged, str(config or "config"))
    if config_path is not None:
        config_path = config_path.resolve()
    config_dir = config_path.parent if config_path else None

    job = ClusterJob(route, cfg, config_path, None, overrides, workdir=cwd.resolve())
    tracking_env = env.get("MLFLOW_TRACKING_URI")
    if not cfg.tracking.uri and tracking_env:
        job.env["MLFLOW_TRACKING_URI"] = tracking_env  # the job does not inherit this shell's environment

    if route == "slurm":
        _prepare_slurm(job, cwd)
    else:
        check_remote_tracking(job.tracking_uri)
        check_shared_storage(cfg.storage)
        _ship_relative_paths(job, config_dir, cwd)
    if config_path is not None:
        job.config_arg = _config_arg(job, config_path)
    return job


def _config_arg(job: ClusterJob, config_path: Path) -> str:
    if job.route == "slurm":
        return str(config_path)
    name = config_path.name
    if name == JOB_FILES_DIR:
        name = f"{name}.yaml"
    if job.route == "kuberay":
        return f"{KUBE_MOUNT}/{name}"
    # Relative to the job's folder, its working directory; never read as an option.
    return f"./{name}" if name.startswith("-") else name


def job_config_name(job: ClusterJob) -> str | None:
    """The config's file name inside the job's folder (or the ConfigMap mount)."""
    if job.config_arg is None:
        return None
    return posixpath.basename(job.config_arg)


def _prepare_slurm(job: ClusterJob, cwd: Path) -> None:
    storage = job.cfg.storage
    if "://" in storage:
        check_shared_storage(storage)
    elif not posixpath.isabs(storage) and not storage.startswith("~"):
        job.notes.append(f"storage '{storage}' is relative: the script runs from {cwd}, so it is "
                         f"{(cwd / storage).resolve()} on the cluster; every node must mount it")
    uri = job.tracking_uri
    if not uri:
        job.notes.append("tracking.uri is not set: MLflow runs go to SQLite under storage (only the search's "
                         "driver writes it); `autoft runs --storage ...` reads them after the job")
    elif is_local_tracking(uri) and not uri.startswith("sqlite:"):
        job.notes.append(f"tracking.uri '{uri}' is a local store: it must be on storage the head node mounts")


def _ship_relative_paths(job: ClusterJob, config_dir: Path | None, cwd: Path) -> None:
    total = job.config_path.stat().st_size if job.config_path else 0
    replaced: set[str] = set()
    for key, value in _path_fields(job.cfg):
        if value.startswith("~") or posixpath.isabs(value) or Path(value).is_absolute():
            job.notes.append(f"{key} '{value}' is used as it is on the cluster: it must exist there on every node")
            continue
        source = _local_source(value, config_dir, cwd)
        if source is None:
            raise InputError(key, f"'{value}' is not found here (looked in {cwd}"
                             + (f" and {config_dir}" if config_dir else "") + ")",
                             "relative paths travel with the job, so give an existing one; or give an absolute "
                             "path that exists on the cluster")
        dest = f"{JOB_FILES_DIR}/{key}/{source.name}"
        size = _size(source)
        if job.route == "kuberay" and source.is_dir():
            raise InputError(key, f"'{value}' is a folder; a ConfigMap carries single small files",
                             "put it in the image or on a volume (--pvc) and give its absolute path")
        total += size
        job.shipped.append(Shipped(key, source, dest, size))
        target = f"{KUBE_MOUNT}/{dest}" if job.route == "kuberay" else dest
        job.rewrites.append(f"{key}={target}")
        replaced.add(key)
    limit = CONFIGMAP_LIMIT if job.route == "kuberay" else JOB_BUNDLE_LIMIT
    if job.route == "kuberay":
        total = sum(_configmap_bytes(p) for p in [job.config_path, *[s.source for s in job.shipped]] if p)
    if total > limit:
        where = "a ConfigMap" if job.route == "kuberay" else "the job's upload"
        biggest = max(job.shipped, key=lambda s: s.size).field if job.shipped else "config"
        raise InputError(biggest, f"the files that travel with the job come to {total / 2**20:.1f} MiB, "
                         f"more than {where} holds ({limit / 2**20:.1f} MiB)",
                         "put the biggest on shared storage and give its absolute path")
    job.overrides = [o for o in job.overrides if _override_key(o) not in replaced]


def _configmap_bytes(path: Path) -> int:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return len(data)
    except UnicodeDecodeError:
        return len(base64.b64encode(data))


def write_job_folder(job: ClusterJob, dest: Path) -> Path:
    """Fill ``dest`` with the Ray Job's working folder: the config (verbatim) and the
    relative files it names, at the places the job's command points to."""
    dest.mkdir(parents=True, exist_ok=True)
    name = job_config_name(job)
    if job.config_path is not None and name is not None:
        shutil.copyfile(job.config_path, dest / name)
    for item in job.shipped:
        target = dest / item.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.source.is_dir():
            shutil.copytree(item.source, target)
        else:
            shutil.copyfile(item.source, target)
    return dest


def runtime_env(job: ClusterJob, working_dir: Path | None) -> dict[str, Any]:
    env: dict[str, Any] = {"env_vars": {**JOB_ENV, **JOB_STOP_ENV, **job.env}}
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    return env


def submission_id(name: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"autoft-{name}-{stamp}-{secrets.token_hex(2)}"


def autoft_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("autoft")
    except md.PackageNotFoundError:
        return "unknown"


def job_metadata(job: ClusterJob) -> dict[str, str]:
    return {"autoft.name": job.cfg.name, "autoft.config": job_config_name(job) or "",
            "autoft.version": autoft_version()}


def tracking_notes(job: ClusterJob, address: str) -> list[str]:
    """A tracking server on localhost is the head node's localhost once the job runs."""
    uri = job.tracking_uri or ""
    if "://" in uri and host_of(uri) in LOCAL_HOSTS and host_of(address) not in LOCAL_HOSTS:
        return [f"tracking.uri '{uri}' names localhost: the job reaches it from the cluster's head node, "
                "not from this machine"]
    return []


def last_json_line(logs: str) -> dict[str, Any] | None:
    """The result ``autoft search --json`` prints as its last stdout line."""
    import json

    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"search_id"' in line:
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# What a shell's "command not found" exits with.
NOT_FOUND_EXIT = 127


def failure_hint(exit_code: int | None, message: str) -> str | None:
    """What to do about a job whose entrypoint never ran autoft: the shell of the Ray head
    found no ``autoft`` command (Ray Jobs run the entrypoint with the PATH of the process
    that started the head)."""
    if exit_code == NOT_FOUND_EXIT or f"exit code {NOT_FOUND_EXIT}" in message:
        return ("the cluster found no `autoft` command: install autoft (the same version) in every node's "
                "environment and start Ray from it, e.g. activate that virtualenv before `ray start`")
    return None
