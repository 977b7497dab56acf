"""`autoft submit` against a real Ray cluster: a local Ray head started with `ray start`
(token authentication, its own ports and temp folder), an `mlflow server`, a tiny search
sent as a Ray Job, checked through the Jobs API and MLflow's client.

The head and the server are stopped by the process groups this module started, and the
last test checks that none of their processes is left (no `ray stop`: it would kill
every Ray of the user on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import SMS, build_vocab, free_port, make_tiny_bert, read_rows, write_csv

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
NAME = "tiny-job"
N_TRIALS = 3


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process group this module started (SIGTERM, then SIGKILL), nothing else."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give the rest of its group the same signal's chance.
        time.sleep(1)
    if proc.poll() is None:
        proc.kill()


def _processes_of(marker: str) -> list[int]:
    """Live processes whose command line or environment names ``marker`` (this module's
    temporary folder): Ray renames its workers (ray::...), their environment stays."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie holds nothing
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


class Cluster:
    def __init__(self) -> None:
        # A short folder of its own: Ray's socket paths must stay under 108 characters, and
        # its own temp dir keeps other tests' ray.init() from finding this head.
        self.root = Path(tempfile.mkdtemp(prefix="aftc-"))
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(self.token)
        (self.root / "home").mkdir()
        self.procs: list[subprocess.Popen] = []
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.mlflow = f"http://127.0.0.1:{free_port()}"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_")) and k not in ("PYTEST_CURRENT_TEST",)}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(self.root / "home"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        return env

    def client_env(self, token: str | None = "path") -> dict[str, str]:
        env = self.base_env()
        if token == "path":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        elif token is not None:
            env["RAY_AUTH_TOKEN"] = token
        return env

    def start(self) -> None:
        head_env = {**self.base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        dash_port = self.dashboard.rsplit(":", 1)[1]
        cmd = [str(BIN / "ray"), "start", "--head", "--port", str(free_port()), "--num-cpus", "2", "--num-gpus", "0",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", dash_port,
               "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
               "--min-worker-port", "0", "--max-worker-port", "0", "--object-store-memory", str(300 * 2**20),
               "--temp-dir", str(self.root / "ray"), "--disable-usage-stats", "--block"]
        log = open(self.root / "ray-start.log", "wb")  # noqa: SIM115 - the process holds it
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=head_env,
                                           cwd=self.root, start_new_session=True))
        mlflow_root = self.root / "mlflow"
        mlflow_root.mkdir()
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{mlflow_root / 'mlflow.db'}",
               "--artifacts-destination", str(mlflow_root / "artifacts"), "--host", "127.0.0.1",
               "--port", self.mlflow.rsplit(":", 1)[1], "--workers", "1"]
        log = open(self.root / "mlflow.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=mlflow_root,
                                           env={**self.base_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                           start_new_session=True))
        deadline = time.monotonic() + 120
        while not (_get(f"{self.dashboard}/api/version", self.token) == 200 and _get(f"{self.mlflow}/health") == 200):
            for p in self.procs:
                if p.poll() is not None:
                    pytest.fail(f"{p.args[0]} exited with {p.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head or the MLflow server did not come up in 120 s:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        out = []
        for name in ("ray-start.log", "mlflow.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def stop(self) -> list[int]:
        """Stop what this module started; return the PIDs that had to be killed one by one."""
        for proc in self.procs:
            if proc.poll() is None or _processes_of(str(self.root)):
                _stop_group(proc)
        deadline = time.monotonic() + 20
        while (left := _processes_of(str(self.root))) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # ours by construction: they name this module's temporary folder
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left

    def autoft(self, *args: str, token: str | None = "path", cwd: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "autoft"), *args], env=self.client_env(token), cwd=cwd or self.root,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture(scope="module")
def experiment(cluster: Cluster) -> Path:
    """A config next to its (relative, so shipped) training data; the model and the
    validation data by absolute path (used in place, as on shared storage)."""
    rows = read_rows(SMS / "train.csv", 2000)
    model = make_tiny_bert(cluster.root / "tiny-bert", build_vocab(rows))
    folder = cluster.root / "exp"
    write_csv(folder / "train.csv", rows[:160])
    validation = write_csv(cluster.root / "shared" / "validation.csv", read_rows(SMS / "validation.csv", 64))
    config = folder / "tiny job.yaml"  # a space in the name: quoted on the way
    config.write_text(
        f"name: {NAME}\n"
        f"model:\n  path: {model}\n"
        f"data:\n  train: train.csv\n  validation: {validation}\n"
        "train:\n  epochs: 2\n  batch_size: 16\n  max_length: 32\n"
        f"search:\n  num_trials: {N_TRIALS}\n  max_concurrent: 2\n  metric: eval_loss\n  mode: min\n"
        "resources:\n  cpus_per_trial: 1\n"
        f"tracking:\n  uri: {cluster.mlflow}\n  log_best_model: false\n"
        f"storage: {cluster.root / 'runs'}\n")
    return config


@pytest.fixture(scope="module")
def submitted(cluster: Cluster, experiment: Path) -> dict:
    t0 = time.monotonic()
    proc = cluster.autoft("submit", experiment.name, "--address", cluster.dashboard,
                          "--set", "data.text_column=text", cwd=experiment.parent)
    return {"proc": proc, "job_id": proc.stdout.splitlines()[0] if proc.stdout else "",
            "seconds": time.monotonic() - t0}


def test_submit_runs_the_search_to_success(submitted: dict, cluster: Cluster) -> None:
    proc = submitted["proc"]
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{cluster.logs()}"
    assert re.fullmatch(rf"autoft-{NAME}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}", submitted["job_id"])
    assert f"job {submitted['job_id']} SUCCEEDED" in proc.stderr
    assert "'tiny job.yaml'" in proc.stderr  # the entrypoint, quoted
    assert f"search {NAME}-" in proc.stdout  # the search's own output, followed
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"search_id"')][-1])
    assert result["n_trials"] == N_TRIALS and result["tracking_uri"] == cluster.mlflow
    assert result["storage_dir"].startswith(str(cluster.root / "runs"))


def test_mlflow_server_holds_the_search_and_every_trial(submitted: dict, cluster: Cluster) -> None:
    from mlflow import MlflowClient

    assert submitted["proc"].returncode == 0
    client = MlflowClient(tracking_uri=cluster.mlflow)
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'search'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    trials = client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'trial'", max_results=100)
    assert len(trials) == N_TRIALS
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert all(t.data.tags["autoft.status"] in ("completed", "pruned") for t in trials)
    assert parent.data.params["n_train"] == "160"  # the shipped train.csv was read
    assert parent.data.metrics["n_trials"] == N_TRIALS


def test_jobs_status_logs_list_stop(submitted: dict, cluster: Cluster) -> None:
    job_id = submitted["job_id"]
    status = cluster.autoft("jobs", "status", job_id, "--address", cluster.dashboard)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED")
    as_json = json.loads(cluster.autoft("jobs", "status", job_id, "--json", "--address", cluster.dashboard).stdout)
    assert as_json["status"] == "SUCCEEDED" and as_json["metadata"]["autoft.name"] == NAME
    logs = cluster.autoft("jobs", "logs", job_id, "--address", cluster.dashboard)
    assert logs.returncode == 0 and f"search {NAME}-" in logs.stdout and '{"search_id"' in logs.stdout
    listing = cluster.autoft("jobs", "list", "--address", cluster.dashboard)
    assert listing.returncode == 0 and job_id in listing.stdout and "SUCCEEDED" in listing.stdout
    stop = cluster.autoft("jobs", "stop", job_id, "--address", cluster.dashboard)
    assert stop.returncode == 0 and "not running (SUCCEEDED)" in stop.stdout
    missing = cluster.autoft("jobs", "status", "no-such-job", "--address", cluster.dashboard)
    assert missing.returncode == 2 and missing.stderr.startswith("error: JOB_ID: no job 'no-such-job'")


def _one_token_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: token: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_without_the_token_submission_fails_clearly(cluster: Cluster, experiment: Path) -> None:
    proc = cluster.autoft("submit", str(experiment), "--address", cluster.dashboard, "--no-wait", token=None)
    line = _one_token_line(proc)
    assert "requires an auth token and none was found" in line and proc.stdout == ""
    wrong = cluster.autoft("jobs", "list", "--address", cluster.dashboard, token="not-the-token")
    line = _one_token_line(wrong)
    assert "refused the token from RAY_AUTH_TOKEN" in line and "not-the-token" not in line


def test_jobs_stop_interrupts_the_search_and_closes_its_runs(cluster: Cluster, experiment: Path) -> None:
    """`autoft jobs stop` reaches the search as SIGINT (RAY_JOB_STOP_SIGNAL in the job's
    runtime_env): no MLflow run is left RUNNING."""
    from mlflow import MlflowClient

    proc = cluster.autoft("submit", str(experiment), "--address", cluster.dashboard, "--no-wait",
                          "--set", "name=tiny-stop", "--set", "search.num_trials=1", "--set", "train.epochs=200",
                          "--set", "pruning.scheduler=none")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    client = MlflowClient(tracking_uri=cluster.mlflow)
    deadline = time.monotonic() + 120
    while True:  # until the trial's run exists: the search is in the middle of its work
        exp = client.get_experiment_by_name("tiny-stop")
        if exp and client.search_runs([exp.experiment_id], "tags.`autoft.role` = 'trial'"):
            break
        assert time.monotonic() < deadline, cluster.autoft("jobs", "logs", job_id, "--address", cluster.dashboard).stdout
        time.sleep(1)
    stop = cluster.autoft("jobs", "stop", job_id, "--wait", "--address", cluster.dashboard)
    assert stop.returncode == 0 and stop.stdout.strip() == f"{job_id}: STOPPED", stop.stdout + stop.stderr
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status != "RUNNING" for r in runs)
    [trial] = [r for r in runs if r.data.tags["autoft.role"] == "trial"]
    assert trial.info.status == "KILLED" and trial.data.tags["autoft.status"] == "killed"


def _drivers(cluster: Cluster) -> list[str]:
    """Ids of the jobs that connected to the head as plain drivers (not submitted)."""
    req = urllib.request.Request(f"{cluster.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return [j["job_id"] for j in json.load(r) if j.get("type") == "DRIVER"]


def test_a_search_without_an_address_starts_its_own_ray_beside_a_ray_start_head(
        cluster: Cluster, experiment: Path) -> None:
    """Plain ``ray.init()`` attaches to the head the last ``ray start`` recorded on this machine;
    a search without an address must not (it is someone else's cluster, maybe needing a token)."""
    # This head's record, where a default `ray start` leaves it (<RAY_TMPDIR>/ray/ray_current_cluster),
    # in a folder of its own so the search's Ray does not share the head's session folder.
    elsewhere = cluster.root / "t"
    (elsewhere / "ray").mkdir(parents=True)
    shutil.copy(cluster.root / "ray" / "ray_current_cluster", elsewhere / "ray" / "ray_current_cluster")
    before = _drivers(cluster)
    proc = subprocess.run([str(BIN / "autoft"), "search", str(experiment), "--set", "data.text_column=text",
                           "--set", "name=tiny-local", "--set", "search.num_trials=1", "--set", "train.epochs=1",
                           "--json"],
                          env={**cluster.client_env(), "RAY_TMPDIR": str(elsewhere)}, cwd=experiment.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n_completed"] == 1
    assert _drivers(cluster) == before, "the search ran its trials on the `ray start` head"


def test_zz_nothing_of_this_cluster_is_left(cluster: Cluster) -> None:
    killed_one_by_one = cluster.stop()
    assert _processes_of(str(cluster.root)) == []
    assert killed_one_by_one == [], f"processes outside the groups started here: {killed_one_by_one}"
