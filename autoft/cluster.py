"""Run one search on a cluster: as a Ray Job, a SLURM batch job, or a KubeRay RayJob.

Pure logic, no Ray: checks that a config can run away from this machine, the
``autoft search`` command line the cluster runs (quoted with :func:`shlex.join`,
never assembled from unquoted user strings), the Ray Job's working folder and
runtime_env, the SLURM script and the KubeRay manifest. ``autoft.cli_cluster``
wires these to the Jobs API and the command line.

Files a config names by a *relative* path (model folder, data files, space
YAML) travel with the job and the job's command points the field at the copy;
absolute paths and ``hf:`` names are used as they are on the cluster, which is
where shared storage is mounted.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
import posixpath
import re
import secrets
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

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
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
SHARED_STORAGE_FIX = "give an absolute path on storage every node mounts, e.g. --set storage=/mnt/shared/autoft-runs"
TRACKING_FIX = ("run an MLflow server the cluster can reach (mlflow server --host 0.0.0.0 --port 5000 ...) and "
                "pass --set tracking.uri=http://HOST:5000, or set MLFLOW_TRACKING_URI")


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


# --------------------------------------------------------------------------- checks


def is_local_tracking(uri: str) -> bool:
    """A store only this machine (or one node) can read: SQLite, files, a bare path."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("sqlite", "file"):
        return True
    if scheme == "databricks" or uri == "databricks":
        return False
    return "://" not in uri


def check_remote_tracking(uri: str | None) -> None:
    if not uri:
        raise InputError("tracking.uri", "not set, so the search would log to SQLite (sqlite:///<storage>/mlflow.db) "
                         "on a cluster node where nobody reads it", TRACKING_FIX)
    if is_local_tracking(uri):
        raise InputError("tracking.uri", f"'{uri}' is a local store that a cluster cannot share", TRACKING_FIX)


def check_shared_storage(storage: str) -> None:
    """Storage every node writes to: an absolute path (NFS, Lustre, a mounted bucket)."""
    if "://" in storage:
        raise InputError("storage", f"'{storage}' is a URI; the search keeps optuna.db and checkpoints under a "
                         "folder path", "mount it on every node and " + SHARED_STORAGE_FIX.removeprefix("give "))
    if storage.startswith("~"):
        raise InputError("storage", f"'{storage}' would expand to a home folder on the cluster, not here",
                         SHARED_STORAGE_FIX)
    if not posixpath.isabs(storage):
        raise InputError("storage", f"'{storage}' is relative: on the cluster it would land in the job's "
                         "temporary folder and be lost with it", SHARED_STORAGE_FIX)


def host_of(url: str) -> str:
    try:
        return (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
    except ValueError:
        return ""


def check_address(address: str | None) -> str:
    """The Ray dashboard's HTTP address (Jobs API), e.g. http://HEAD:8265."""
    if not address:
        raise InputError("--address", "no Ray cluster given",
                         "pass --address http://HEAD:8265 (the head's dashboard) or set RAY_API_SERVER_ADDRESS")
    address = address.strip()
    if "://" not in address:
        address = f"http://{address}"
    scheme, rest = address.split("://", 1)
    scheme = scheme.lower()
    address = f"{scheme}://{rest.rstrip('/')}"
    if scheme not in ("http", "https"):
        raise InputError("--address", f"'{address}' is not the dashboard's HTTP address",
                         "pass --address http://HEAD:8265 (the Jobs API, not ray:// or the GCS port)")
    if not host_of(address):
        raise InputError("--address", f"'{address}' names no host", "pass --address http://HEAD:8265")
    return address


def address_from_env(env: Mapping[str, str]) -> str | None:
    """What Ray's own job CLI would use: RAY_API_SERVER_ADDRESS, else an HTTP RAY_ADDRESS."""
    api = env.get("RAY_API_SERVER_ADDRESS")
    if api:
        return api
    addr = env.get("RAY_ADDRESS", "")
    return addr if addr.startswith(("http://", "https://")) else None


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class AuthToken:
    value: str
    source: str  # where it came from, for messages (never the token itself)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def find_auth_token(env: Mapping[str, str], home: Path) -> AuthToken | None:
    """The Ray auth token, looked up the way Ray does: RAY_AUTH_TOKEN, then the file
    RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. None when there is none."""
    value = env.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return AuthToken(value, "RAY_AUTH_TOKEN")
    path_env = env.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        path = Path(path_env).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            value = ""
        if not value:
            raise InputError("token", f"RAY_AUTH_TOKEN_PATH is '{path_env}' but that file is missing, unreadable or "
                             "empty", "point it at a copy of the head's token (`ray get-auth-token` on the head "
                             "prints it), or unset it")
        return AuthToken(value, f"RAY_AUTH_TOKEN_PATH ({path})")
    path = home / ".ray" / "auth_token"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return AuthToken(value, str(path)) if value else None


TOKEN_FIX = ("copy the head's token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token, "
             "or set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it")


def auth_error(message: str, address: str, token: AuthToken | None) -> InputError:
    """One line for the Jobs API's 401 (no token) or 403 (wrong token)."""
    refused = message.startswith("Authentication failed") or "Invalid authentication token" in message
    if token is not None and refused:
        return InputError("token", f"the Ray cluster at {address} refused the token from {token.source}: "
                          "it is not this cluster's token", TOKEN_FIX)
    if token is not None:
        return InputError("token", f"the Ray cluster at {address} did not accept the token from {token.source}",
                          TOKEN_FIX)
    return InputError("token", f"the Ray cluster at {address} requires an auth token and none was found "
                      "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)", TOKEN_FIX)


# --------------------------------------------------------------------------- the job


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


# --------------------------------------------------------------------------- capacity


def _check_fit(cfg: ExperimentConfig, gpus: int, cpus: float | None, gpu_flag: str, cpu_flag: str) -> None:
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


# --------------------------------------------------------------------------- SLURM

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
    _check_fit(job.cfg, spec.gpus_per_node, slurm_cpus(job, spec), "--gpus-per-node", "--cpus-per-node")


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


# --------------------------------------------------------------------------- KubeRay

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_K8S_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


@dataclass(frozen=True)
class KubeSpec:
    image: str
    workers: int
    gpus_per_worker: int
    cpus_per_worker: int | None = None  # default: sized from the config
    memory_per_worker: str | None = None  # default: 4Gi per trial a worker holds
    head_cpus: int = 2
    head_memory: str = "8Gi"
    name: str | None = None  # RayJob name; default autoft-<search name>
    namespace: str | None = None
    pvc: str | None = None  # PersistentVolumeClaim mounted at the storage path
    ttl_seconds: int = 3600


def kube_name(search_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", search_name.lower()).strip("-")
    return ("autoft-" + base)[:40].rstrip("-") or "autoft"


def kube_cpus(job: ClusterJob, spec: KubeSpec) -> int:
    if spec.cpus_per_worker is not None:
        return spec.cpus_per_worker
    per_node = trials_per_node(job.cfg, spec.workers, spec.gpus_per_worker)
    return max(1, math.ceil(per_node * job.cfg.resources.cpus_per_trial))


def kube_memory(job: ClusterJob, spec: KubeSpec) -> str:
    if spec.memory_per_worker is not None:
        return spec.memory_per_worker
    return f"{4 * trials_per_node(job.cfg, spec.workers, spec.gpus_per_worker)}Gi"


def check_kube(job: ClusterJob, spec: KubeSpec) -> None:
    if not spec.image or any(c.isspace() for c in spec.image):
        raise InputError("--image", f"'{spec.image}' is not an image reference",
                         "e.g. --image registry.example.com/autoft:0.1.0 (Ray 2.60 with autoft installed)")
    if spec.workers < 1:
        raise InputError("--workers", f"{spec.workers}", "give 1 or more worker pods")
    if spec.gpus_per_worker < 0:
        raise InputError("--gpus-per-worker", f"{spec.gpus_per_worker} is negative", "give 0 or more")
    if spec.cpus_per_worker is not None and spec.cpus_per_worker < 1:
        raise InputError("--cpus-per-worker", f"{spec.cpus_per_worker}", "give 1 or more")
    for flag, value in (("--memory-per-worker", spec.memory_per_worker), ("--head-memory", spec.head_memory)):
        if value is not None and not _K8S_QUANTITY.match(value):
            raise InputError(flag, f"'{value}' is not a Kubernetes quantity", "e.g. 16Gi")
    if spec.name is not None and (len(spec.name) > 40 or not _DNS_LABEL.match(spec.name)):
        raise InputError("--name", f"'{spec.name}' is not a valid RayJob name",
                         "use lowercase letters, digits and '-', at most 40 characters")
    if spec.namespace is not None and (len(spec.namespace) > 63 or not _DNS_LABEL.match(spec.namespace)):
        raise InputError("--namespace", f"'{spec.namespace}' is not a namespace name", "use lowercase letters, digits and '-'")
    if spec.pvc is not None and (len(spec.pvc) > 253 or not _DNS_SUBDOMAIN.match(spec.pvc)):
        raise InputError("--pvc", f"'{spec.pvc}' is not a PersistentVolumeClaim name", "use lowercase letters, digits, '-', '.'")
    _check_fit(job.cfg, spec.gpus_per_worker, kube_cpus(job, spec), "--gpus-per-worker", "--cpus-per-worker")


def _file_entry(path: Path) -> tuple[str, str]:
    """('data' or 'binaryData', content) for a ConfigMap."""
    data = path.read_bytes()
    try:
        return "data", data.decode("utf-8")
    except UnicodeDecodeError:
        return "binaryData", base64.b64encode(data).decode("ascii")


def render_kuberay(job: ClusterJob, spec: KubeSpec) -> str:
    """A ConfigMap (the config and the small files it names) and a KubeRay RayJob
    (ray.io/v1) that starts a cluster sized from the config's trial resources, runs
    the search as its entrypoint and deletes the cluster when the job ends."""
    return yaml.dump_all(kuberay_documents(job, spec), Dumper=_PlainDumper, sort_keys=False, width=120)


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper without anchors and aliases: a manifest repeats values, never refers to them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_block(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    """Multi-line strings (files in the ConfigMap, runtimeEnvYAML) as readable literal blocks."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_PlainDumper.add_representer(str, _str_block)


def kuberay_documents(job: ClusterJob, spec: KubeSpec) -> list[dict[str, Any]]:
    import importlib.metadata as md

    check_kube(job, spec)
    cfg = job.cfg
    name = spec.name or kube_name(cfg.name)
    cm_name = f"{name}-config"
    labels = {"app.kubernetes.io/name": "autoft", "app.kubernetes.io/instance": name}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    cm_meta: dict[str, Any] = {"name": cm_name, "labels": labels}
    if spec.namespace:
        meta["namespace"] = spec.namespace
        cm_meta["namespace"] = spec.namespace

    configmap: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta}
    items: list[dict[str, str]] = []
    files = []
    if job.config_path is not None:
        files.append(("config", job.config_path, job_config_name(job) or "config.yaml"))
    files += [(f"file-{i}", s.source, s.dest) for i, s in enumerate(job.shipped)]
    for key, path, dest in files:
        kind, content = _file_entry(path)
        configmap.setdefault(kind, {})[key] = content
        items.append({"key": key, "path": dest})

    cpus = kube_cpus(job, spec)
    memory = kube_memory(job, spec)
    gpus = spec.gpus_per_worker
    worker_res: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        worker_res["nvidia.com/gpu"] = str(gpus)
    head_res = {"cpu": str(spec.head_cpus), "memory": spec.head_memory}

    head_vols: list[dict[str, Any]] = []
    head_mounts: list[dict[str, Any]] = []
    worker_vols: list[dict[str, Any]] = []
    worker_mounts: list[dict[str, Any]] = []
    if items:  # only the head needs the config: the driver runs there, trials get data from it
        head_vols.append({"name": "autoft-config", "configMap": {"name": cm_name, "items": items}})
        head_mounts.append({"name": "autoft-config", "mountPath": KUBE_MOUNT, "readOnly": True})
    if spec.pvc:
        for vols, mounts in ((head_vols, head_mounts), (worker_vols, worker_mounts)):
            vols.append({"name": "autoft-storage", "persistentVolumeClaim": {"claimName": spec.pvc}})
            mounts.append({"name": "autoft-storage", "mountPath": cfg.storage})
    env = [{"name": k, "value": v} for k, v in {**JOB_ENV, **job.env}.items()]

    def container(role: str, res: dict[str, Any], mounts: list[dict[str, Any]]) -> dict[str, Any]:
        c: dict[str, Any] = {"name": f"ray-{role}", "image": spec.image, "env": env,
                             "resources": {"requests": dict(res), "limits": dict(res)}}
        if role == "head":
            c["ports"] = [{"containerPort": 6379, "name": "gcs-server"},
                          {"containerPort": 8265, "name": "dashboard"},
                          {"containerPort": 10001, "name": "client"}]
        if mounts:
            c["volumeMounts"] = mounts
        return c

    def pod(role: str, res: dict[str, Any], mounts: list[dict[str, Any]], vols: list[dict[str, Any]]) -> dict[str, Any]:
        pod_spec: dict[str, Any] = {"containers": [container(role, res, mounts)]}
        if vols:
            pod_spec["volumes"] = vols
        return {"metadata": {"labels": dict(labels)}, "spec": pod_spec}

    per_node = trials_per_node(cfg, spec.workers, gpus)
    runtime = {"env_vars": {**JOB_ENV, **JOB_STOP_ENV, **job.env}}
    rayjob: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {**meta, "annotations": {"autoft/capacity": capacity_note(cfg, spec.workers, per_node)}},
        "spec": {
            "entrypoint": job.entrypoint(resource_overrides(cfg)),
            "runtimeEnvYAML": yaml.safe_dump(runtime, sort_keys=False),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": spec.ttl_seconds,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "rayVersion": md.version("ray"),
                "headGroupSpec": {
                    # No trials on the head: it runs the search's driver and Ray's services.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": pod("head", head_res, head_mounts, head_vols),
                },
                "workerGroupSpecs": [{
                    "groupName": "trials",
                    "replicas": spec.workers,
                    "minReplicas": spec.workers,
                    "maxReplicas": spec.workers,
                    "rayStartParams": {"num-cpus": str(cpus), "num-gpus": str(gpus)},
                    "template": pod("worker", worker_res, worker_mounts, worker_vols),
                }],
            },
        },
    }
    return [configmap, rayjob]


def kube_notes(job: ClusterJob, spec: KubeSpec) -> list[str]:
    notes = [capacity_note(job.cfg, spec.workers, trials_per_node(job.cfg, spec.workers, spec.gpus_per_worker))]
    if spec.pvc is None:
        notes.append(f"storage '{job.cfg.storage}' must be shared by all pods (trials on workers save checkpoints "
                     "the driver on the head reads): mount a volume there, e.g. --pvc CLAIM")
    return notes
