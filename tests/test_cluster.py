"""Cluster routes without a cluster: the command the cluster runs (quoting), the refusals
(local MLflow store, relative storage, missing token), the SLURM script (bash -n, and a
run against fake srun/ray/autoft) and the KubeRay manifest (the fields KubeRay needs).

No Ray starts here; tests/test_cluster_ray.py submits to a real local Ray head.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from typer.testing import CliRunner

from autoft import cluster as cl
from autoft.cli import app
from autoft.errors import InputError

runner = CliRunner()

HOSTILE = [
    "a b", "'", '"', "$(touch pwned)", "`touch pwned`", "; touch pwned", "&& touch pwned", "| cat",
    "x\ny", "*", "~", "-x", "--set", "$HOME", "a\\b", "!!", "ä ö", "", "{a,b}", "#", "%s",
]
SERVER = "http://mlflow.example:5000"


def one_error_line(result, field: str) -> str:  # noqa: ANN001 - click's Result
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {field}: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def write_config(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = f"name: tiny\nstorage: /mnt/shared/runs\ntracking:\n  uri: {SERVER}\n"


# --------------------------------------------------------------------------- quoting


def test_shell_command_survives_a_real_shell(tmp_path: Path) -> None:
    args = ["printf", "%s\\0", *HOSTILE]
    command = cl.shell_command(args)
    assert shlex.split(command) == args
    out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == HOSTILE
    assert not (tmp_path / "pwned").exists()


def test_entrypoint_quotes_config_name_and_overrides(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD, name="my exp $(touch pwned); rm -rf ~.yaml")
    overrides = [f"data.text_column={h}" for h in HOSTILE] + [f"tracking.experiment={h}x" for h in HOSTILE[:5]]
    job = cl.prepare_job(cfg, overrides, "job", env={}, cwd=tmp_path)
    args = shlex.split(job.entrypoint())
    assert args == job.search_args()
    assert args[:3] == ["autoft", "search", cfg.name]
    assert args[-3:] == ["--address", "auto", "--json"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == overrides
    # The same words reach a program run by a shell, nothing is executed on the way.
    out = subprocess.run(["bash", "-c", cl.shell_command(["printf", "%s\\0", *args])], cwd=tmp_path,
                         capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == args
    assert not (tmp_path / "pwned").exists()


def test_config_named_like_an_option_is_not_read_as_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD, name="--help.yaml")
    job = cl.prepare_job(cfg, [], "job", env={}, cwd=tmp_path)
    assert job.search_args()[2] == "./--help.yaml"
    assert cl.job_config_name(job) == "--help.yaml"


def test_shell_command_refuses_nothing_to_run() -> None:
    with pytest.raises(ValueError):
        cl.shell_command([])


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("uri", [None, "sqlite:///tmp/mlflow.db", "sqlite:////abs/mlflow.db", "file:///tmp/mlruns",
                                 "/tmp/mlruns", "mlruns"])
@pytest.mark.parametrize("route", ["job", "kuberay"])
def test_local_tracking_store_is_refused(tmp_path: Path, uri: str | None, route: str) -> None:
    text = "storage: /mnt/shared/runs\n" + (f"tracking:\n  uri: '{uri}'\n" if uri else "")
    cfg = write_config(tmp_path, text)
    with pytest.raises(InputError) as err:
        cl.prepare_job(cfg, [], route, env={}, cwd=tmp_path)  # type: ignore[arg-type]
    assert err.value.field == "tracking.uri"
    assert "tracking.uri=http://" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("uri", [SERVER, "https://mlflow.example", "databricks", "databricks://profile",
                                 "postgresql://u:p@db/mlflow"])
def test_server_tracking_is_accepted(tmp_path: Path, uri: str) -> None:
    job = cl.prepare_job(None, ["storage=/mnt/runs", f"tracking.uri={uri}"], "job", env={}, cwd=tmp_path)
    assert job.tracking_uri == uri


def test_tracking_uri_from_the_environment_travels_with_the_job(tmp_path: Path) -> None:
    job = cl.prepare_job(None, ["storage=/mnt/runs"], "job", env={"MLFLOW_TRACKING_URI": SERVER}, cwd=tmp_path)
    assert job.env["MLFLOW_TRACKING_URI"] == SERVER
    assert cl.runtime_env(job, None)["env_vars"]["MLFLOW_TRACKING_URI"] == SERVER
    with pytest.raises(InputError, match="tracking.uri"):
        cl.prepare_job(None, ["storage=/mnt/runs"], "job", env={"MLFLOW_TRACKING_URI": "sqlite:///x.db"}, cwd=tmp_path)


@pytest.mark.parametrize(("storage", "fragment"), [("autoft-runs", "relative"), ("runs/x", "relative"),
                                                   ("~/runs", "home folder"), ("s3://bucket/runs", "URI"),
                                                   ("file:///mnt/runs", "URI")])
def test_storage_must_be_an_absolute_shared_path(tmp_path: Path, storage: str, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        cl.prepare_job(None, [f"storage={storage}", f"tracking.uri={SERVER}"], "job", env={}, cwd=tmp_path)
    assert err.value.field == "storage"
    assert fragment in str(err.value) and "--set storage=/" in str(err.value)


def test_slurm_resolves_relative_storage_and_says_so(tmp_path: Path) -> None:
    job = cl.prepare_job(None, ["storage=runs"], "slurm", env={}, cwd=tmp_path)
    assert any(str(tmp_path / "runs") in n for n in job.notes)
    assert any("SQLite" in n for n in job.notes)  # allowed on SLURM: one writer, storage is shared


def test_bad_config_is_refused_with_the_field(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD + "train:\n  epoch: 3\n")
    with pytest.raises(InputError) as err:
        cl.prepare_job(cfg, [], "job", env={}, cwd=tmp_path)
    assert err.value.field == "train.epoch"


# --------------------------------------------------------------------------- what travels


def test_relative_files_travel_and_absolute_ones_stay(tmp_path: Path) -> None:
    conf_dir, work = tmp_path / "conf", tmp_path / "work"
    (conf_dir / "data").mkdir(parents=True)
    (conf_dir / "data" / "train.csv").write_text("text,label\nhi,ham\n")
    (conf_dir / "space.yaml").write_text("name: s\nparams: {}\n")
    (work / "model").mkdir(parents=True)
    (work / "model" / "config.json").write_text("{}")
    (work / "val.csv").write_text("text,label\nyo,spam\n")
    cfg = write_config(conf_dir, GOOD + "data:\n  train: data/train.csv\n  test: /shared/test.csv\nspace: space.yaml\n")
    job = cl.prepare_job(cfg, ["data.validation=val.csv", "model.path=model", "search.num_trials=3"], "job",
                         env={}, cwd=work)
    shipped = {s.field: s for s in job.shipped}
    assert set(shipped) == {"data.train", "data.validation", "model.path", "space"}
    assert shipped["data.train"].source == conf_dir / "data" / "train.csv"
    assert shipped["data.validation"].source == work / "val.csv"
    assert any("data.test" in n and "/shared/test.csv" in n for n in job.notes)
    # The user's overrides that a shipped copy replaces are dropped; the rest stay.
    assert job.overrides == ["search.num_trials=3"]
    assert "data.validation=files/data.validation/val.csv" in job.rewrites
    folder = cl.write_job_folder(job, tmp_path / "job")
    assert (folder / "exp.yaml").read_bytes() == cfg.read_bytes()
    assert (folder / "files/data.train/train.csv").read_text() == "text,label\nhi,ham\n"
    assert (folder / "files/model.path/model/config.json").is_file()
    assert (folder / "files/space/space.yaml").is_file()
    # Every rewritten path exists in the job's folder (the job's working directory).
    for item in job.rewrites:
        assert (folder / item.split("=", 1)[1]).exists(), item
    env = cl.runtime_env(job, folder)
    assert env["working_dir"] == str(folder)
    assert env["env_vars"]["RAY_CHDIR_TO_TRIAL_DIR"] == "0"


def test_relative_config_path_is_read_from_cwd(tmp_path: Path) -> None:
    write_config(tmp_path / "sub", GOOD)
    job = cl.prepare_job("sub/exp.yaml", [], "job", env={}, cwd=tmp_path)
    assert job.config_path == tmp_path / "sub" / "exp.yaml" and job.config_arg == "exp.yaml"
    with pytest.raises(InputError) as err:
        cl.prepare_job("sub/missing.yaml", [], "job", env={}, cwd=tmp_path)
    assert err.value.field == "config"


def test_bundled_model_data_and_shipped_space_are_not_files(tmp_path: Path) -> None:
    job = cl.prepare_job(None, ["storage=/mnt/runs", f"tracking.uri={SERVER}", "space=ulmfit"], "job",
                         env={}, cwd=tmp_path)
    assert job.shipped == [] and job.rewrites == [] and job.config_arg is None
    assert job.search_args()[:3] == ["autoft", "search", "--set"]


def test_missing_relative_file_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD + "data:\n  train: nowhere.csv\n")
    with pytest.raises(InputError) as err:
        cl.prepare_job(cfg, [], "job", env={}, cwd=tmp_path)
    assert err.value.field == "data.train" and "absolute path" in str(err.value)


def test_too_large_a_job_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.csv").write_text("text,label\n" + "x,y\n" * 1000)
    monkeypatch.setattr(cl.job, "JOB_BUNDLE_LIMIT", 1000)
    cfg = write_config(tmp_path, GOOD + "data:\n  train: big.csv\n")
    with pytest.raises(InputError, match="shared storage") as err:
        cl.prepare_job(cfg, [], "job", env={}, cwd=tmp_path)
    assert err.value.field == "data.train"


def test_submission_id_and_metadata(tmp_path: Path) -> None:
    job = cl.prepare_job(write_config(tmp_path, GOOD), [], "job", env={}, cwd=tmp_path)
    sid = cl.submission_id("tiny")
    assert re.fullmatch(r"autoft-tiny-\d{8}-\d{6}-[0-9a-f]{4}", sid)
    assert cl.job_metadata(job)["autoft.name"] == "tiny"
    assert all(isinstance(v, str) for v in cl.job_metadata(job).values())


def test_last_json_line() -> None:
    logs = 'noise\n{"not": "it"}\n{"search_id": "tiny-1", "best_value": 0.9}\ntrailing\n'
    assert cl.last_json_line(logs) == {"search_id": "tiny-1", "best_value": 0.9}
    assert cl.last_json_line("nothing") is None


# --------------------------------------------------------------------------- address and token


@pytest.mark.parametrize(("given", "expected"), [("http://head:8265", "http://head:8265"),
                                                 ("head:8265/", "http://head:8265"),
                                                 ("https://ray.example.com", "https://ray.example.com")])
def test_address(given: str, expected: str) -> None:
    assert cl.check_address(given) == expected


@pytest.mark.parametrize("bad", [None, "", "ray://head:10001", "http://"])
def test_bad_address(bad: str | None) -> None:
    with pytest.raises(InputError) as err:
        cl.check_address(bad)
    assert err.value.field == "--address"


def test_address_from_env() -> None:
    assert cl.address_from_env({"RAY_API_SERVER_ADDRESS": "http://a:8265", "RAY_ADDRESS": "http://b:8265"}) == "http://a:8265"
    assert cl.address_from_env({"RAY_ADDRESS": "http://b:8265"}) == "http://b:8265"
    assert cl.address_from_env({"RAY_ADDRESS": "10.0.0.1:6379"}) is None  # a GCS address, not the Jobs API


def test_token_lookup_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text("  from-path \n")
    assert cl.find_auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}, home).value == "from-env"
    found = cl.find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}, home)
    assert found is not None and found.value == "from-path" and "RAY_AUTH_TOKEN_PATH" in found.source
    found = cl.find_auth_token({}, home)
    assert found is not None and found.value == "from-home"
    assert found.headers() == {"Authorization": "Bearer from-home"}
    assert cl.find_auth_token({}, tmp_path / "nobody") is None
    with pytest.raises(InputError) as err:
        cl.find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)
    assert err.value.field == "token"


def test_auth_errors_are_one_line_and_never_show_the_token() -> None:
    tok = cl.AuthToken("s3cret-value", "/home/me/.ray/auth_token")
    missing = cl.auth_error("Authentication required: Unauthorized: Missing authentication token\n\n...",
                            "http://h:8265", None)
    wrong = cl.auth_error("Authentication failed: Forbidden: Invalid authentication token\n\n...",
                          "http://h:8265", tok)
    for err in (missing, wrong):
        assert err.field == "token" and "\n" not in str(err) and "ray get-auth-token" in str(err)
    assert "none was found" in str(missing)
    assert "refused the token from /home/me/.ray/auth_token" in str(wrong) and "s3cret" not in str(wrong)


# --------------------------------------------------------------------------- SLURM

GPU_CFG = GOOD + "resources:\n  cpus_per_trial: 2\n  gpus_per_trial: 0.5\nsearch:\n  max_concurrent: 8\n"


def slurm_job(tmp_path: Path, text: str = GPU_CFG, overrides: list[str] | None = None) -> cl.ClusterJob:
    return cl.prepare_job(write_config(tmp_path, text), overrides or [], "slurm", env={}, cwd=tmp_path)


def test_slurm_script_is_valid_bash_and_carries_resources(tmp_path: Path) -> None:
    job = slurm_job(tmp_path, overrides=[f"data.text_column={h}" for h in HOSTILE])
    spec = cl.SlurmSpec(nodes=3, gpus_per_node=2, time="04:00:00", partition="gpu", account="proj-1",
                        setup=("module load cuda/12.4",))
    script = cl.render_slurm(job, spec)
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)
    directives = re.findall(r"^#SBATCH (\S+)$", script, re.M)
    per_node = 4  # 2 GPUs / 0.5 GPU per trial
    cpus = per_node * 2 + 1
    for d in ("--nodes=3", "--ntasks-per-node=1", "--exclusive", f"--cpus-per-task={cpus}", "--gpus-per-task=2",
              "--time=04:00:00", "--partition=gpu", "--account=proj-1", "--job-name=autoft-tiny"):
        assert d in directives, d
    assert "ray start --head" in script and f"--num-cpus={cpus} --num-gpus=2" in script
    assert "ray stop" not in script  # Ray ends with the script's own srun steps
    # The search is the script's last command (a quoted newline may span lines).
    assert script.count("\nautoft search ") == 1
    args = shlex.split(script[script.index("\nautoft search "):])
    assert args == job.search_args(cl.resource_overrides(job.cfg))
    assert "resources.gpus_per_trial=0.5" in args and "resources.cpus_per_trial=2" in args
    assert args[2] == str(tmp_path / "exp.yaml")
    assert "module load cuda/12.4" in script.splitlines()


def test_slurm_script_runs_head_workers_search_and_stops_ray(tmp_path: Path) -> None:
    """The script against fake srun, scontrol, ray, python and autoft: the order of the
    steps, the search's exact argv, its exit code, and Ray's steps ended at the end."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fakes = {
        "scontrol": 'printf "node1\\nnode2\\nnode3\\n"',
        "hostname": 'echo "10.0.0.1 fe80::1"',
        "srun": ('node=-; while [ "${1#-}" != "$1" ]; do [ "$1" = -w ] && { node=$2; shift; }; shift; done\n'
                 'echo "srun $node: $*" >> "$LOG"; exec "$@"'),
        "ray": ('echo "ray $* (RAY_ADDRESS=$RAY_ADDRESS token=${RAY_AUTH_TOKEN:+set})" >> "$LOG"\n'
                'trap \'echo "ray stopped" >> "$LOG"; exit 0\' TERM\n'
                'while true; do sleep 0.05; done'),
        # wait_for_ray: like the real one, returns once $2 Ray nodes have started.
        "python": ('if [ "$1" != - ]; then echo tok123; exit; fi; cat > /dev/null\n'
                   'for _ in $(seq 400); do [ "$(grep -c "^ray start" "$LOG")" -ge "$2" ] && break; sleep 0.05; done\n'
                   'echo "wait for $2" >> "$LOG"'),
        "autoft": 'echo "search" >> "$LOG"; printf "%s\\0" "$@" > "$ARGS"; exit 3',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    job = slurm_job(tmp_path, overrides=["data.text_column=$(touch pwned) x", "tracking.experiment=a'b\"c"])
    script = cl.render_slurm(job, cl.SlurmSpec(nodes=3, gpus_per_node=2, time="01:00:00", bin_dir=bin_dir))
    (tmp_path / "job.sbatch").write_text(script)
    env = {"PATH": "/usr/bin:/bin", "LOG": str(log), "ARGS": str(tmp_path / "args"),
           "SLURM_JOB_NODELIST": "node[1-3]", "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr  # the search's exit code
    calls = log.read_text().splitlines()
    heads = [c for c in calls if c.startswith("ray start --head")]
    workers = [c for c in calls if c.startswith("ray start --address")]
    assert len(heads) == 1 and "--node-ip-address=10.0.0.1" in heads[0] and "token=set" in heads[0]
    assert len(workers) == 2 and all("RAY_ADDRESS=10.0.0.1:6379" in w for w in workers)
    assert "srun node1: hostname --ip-address" in calls
    assert {c.split(":")[0] for c in calls if c.startswith("srun") and "ray start" in c} == \
        {"srun node1", "srun node2", "srun node3"}
    order = [c.split()[0] if not c.startswith("wait") else c for c in calls]
    assert order.index("wait for 1") < calls.index(workers[0]) < calls.index("wait for 3") < calls.index("search")
    assert calls.count("ray stopped") == 3 and calls.index("search") < calls.index("ray stopped")
    argv = (tmp_path / "args").read_bytes().decode().split("\0")[:-1]
    assert argv == job.search_args(cl.resource_overrides(job.cfg))[1:]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("spec", "field"), [
    ({"gpus_per_node": 0}, "--gpus-per-node"),  # trials need GPUs
    ({"time": "4h"}, "--time"),
    ({"partition": "gpu; rm"}, "--partition"),
    ({"cpus_per_node": 1}, "--cpus-per-node"),  # less than cpus_per_trial=2
    ({"setup": ("a\nb",)}, "--setup"),
])
def test_slurm_refusals(tmp_path: Path, spec: dict, field: str) -> None:
    base = {"nodes": 2, "gpus_per_node": 1, "time": "01:00:00"}
    with pytest.raises(InputError) as err:
        cl.render_slurm(slurm_job(tmp_path), cl.SlurmSpec(**{**base, **spec}))
    assert err.value.field == field


def test_slurm_cpu_only_sizes_nodes_from_concurrency(tmp_path: Path) -> None:
    job = slurm_job(tmp_path, GOOD + "resources:\n  cpus_per_trial: 3\nsearch:\n  max_concurrent: 5\n")
    script = cl.render_slurm(job, cl.SlurmSpec(nodes=2, gpus_per_node=0, time="00:30:00"))
    assert "#SBATCH --cpus-per-task=10" in script  # ceil(5/2)=3 trials x 3 CPUs + 1
    assert "--gpus-per-task" not in script and "--num-gpus=0" in script


def test_cli_slurm_prints_script_and_submit_needs_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, GPU_CFG)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["slurm", str(cfg), "--nodes", "2", "--gpus-per-node", "1", "--time", "01:00:00"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("#!/bin/bash\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(app, ["slurm", str(cfg), "-N", "2", "-G", "1", "-t", "01:00:00", "--submit"])
    assert "sbatch" in one_error_line(result, "--submit")


# --------------------------------------------------------------------------- KubeRay

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def kube_docs(tmp_path: Path, text: str = GPU_CFG, overrides: list[str] | None = None,
              **spec: object) -> tuple[cl.ClusterJob, dict, dict]:
    job = cl.prepare_job(write_config(tmp_path, text), overrides or [], "kuberay", env={}, cwd=tmp_path)
    kw = {"image": "registry.example/autoft:0.1.0", "workers": 2, "gpus_per_worker": 2, **spec}
    docs = list(yaml.safe_load_all(cl.render_kuberay(job, cl.KubeSpec(**kw))))  # type: ignore[arg-type]
    assert len(docs) == 2
    return job, docs[0], docs[1]


def test_rayjob_has_the_fields_kuberay_requires(tmp_path: Path) -> None:
    _, cm, rj = kube_docs(tmp_path)
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob"
    assert DNS_LABEL.match(rj["metadata"]["name"]) and len(rj["metadata"]["name"]) <= 40
    spec = rj["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].startswith("autoft search ")
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"], dict)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    head_c = head["template"]["spec"]["containers"][0]
    assert head_c["image"] == "registry.example/autoft:0.1.0" and head_c["name"]
    [group] = cluster["workerGroupSpecs"]
    assert group["groupName"] and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert isinstance(group["rayStartParams"], dict)
    assert group["template"]["spec"]["containers"][0]["image"] == "registry.example/autoft:0.1.0"
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap" and DNS_LABEL.match(cm["metadata"]["name"])


def test_rayjob_resources_follow_the_config(tmp_path: Path) -> None:
    job, _, rj = kube_docs(tmp_path)
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    res = worker["template"]["spec"]["containers"][0]["resources"]
    per_pod = 4  # 2 GPUs / 0.5 per trial
    for kind in ("requests", "limits"):
        assert res[kind]["nvidia.com/gpu"] == "2"
        assert res[kind]["cpu"] == str(math.ceil(per_pod * 2))
        assert res[kind]["memory"] == f"{4 * per_pod}Gi"
    assert worker["rayStartParams"] == {"num-cpus": "8", "num-gpus": "2"}
    assert rj["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    args = shlex.split(rj["spec"]["entrypoint"])
    assert "resources.cpus_per_trial=2" in args and "resources.gpus_per_trial=0.5" in args
    assert args == job.search_args(cl.resource_overrides(job.cfg))


def test_rayjob_ships_config_and_small_files_in_the_configmap(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\nhi,ham\n")
    (tmp_path / "val.parquet").write_bytes(b"PAR1\xff\xfe\x00binary")
    text = GPU_CFG + "data:\n  train: train.csv\n"
    job, cm, rj = kube_docs(tmp_path, text, ["data.validation=val.parquet", f"data.text_column={HOSTILE[3]}"],
                            pvc="shared-runs")
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [config_vol] = [v for v in head["volumes"] if "configMap" in v]
    items = {i["key"]: i["path"] for i in config_vol["configMap"]["items"]}
    assert cm["data"]["config"] == text and items["config"] == "exp.yaml"
    shipped = {i["path"]: i["key"] for i in config_vol["configMap"]["items"]}
    assert cm["data"][shipped["files/data.train/train.csv"]] == "text,label\nhi,ham\n"
    import base64

    assert base64.b64decode(cm["binaryData"][shipped["files/data.validation/val.parquet"]]) == \
        b"PAR1\xff\xfe\x00binary"
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts == {cl.KUBE_MOUNT, "/mnt/shared/runs"}
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["volumes"] == [{"name": "autoft-storage", "persistentVolumeClaim": {"claimName": "shared-runs"}}]
    args = shlex.split(rj["spec"]["entrypoint"])
    assert args[2] == f"{cl.KUBE_MOUNT}/exp.yaml"
    assert f"data.train={cl.KUBE_MOUNT}/files/data.train/train.csv" in args
    assert f"data.text_column={HOSTILE[3]}" in args


def test_rayjob_refuses_folders_sqlite_and_misfits(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(InputError, match="folder; a ConfigMap") as err:
        kube_docs(tmp_path, GPU_CFG, ["model.path=./model"])
    assert err.value.field == "model.path"
    with pytest.raises(InputError) as err:
        kube_docs(tmp_path, "storage: /mnt/runs\n")
    assert err.value.field == "tracking.uri"
    with pytest.raises(InputError) as err:
        kube_docs(tmp_path, gpus_per_worker=0)
    assert err.value.field == "--gpus-per-worker"
    with pytest.raises(InputError) as err:
        kube_docs(tmp_path, name="Bad_Name")
    assert err.value.field == "--name"


def test_kube_name_is_a_dns_label() -> None:
    for name in ("tiny", "My.Search_v2", "a" * 100, "x-"):
        assert DNS_LABEL.match(cl.kube_name(name)) and len(cl.kube_name(name)) <= 40


def test_cli_kuberay(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GPU_CFG)
    result = runner.invoke(app, ["kuberay", str(cfg), "--image", "img:1", "--workers", "3", "--gpus-per-worker", "1"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert docs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert "note:" in result.stderr  # capacity, shared storage


# --------------------------------------------------------------------------- submit / jobs: input errors


def test_cli_submit_refuses_sqlite_before_connecting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "storage: /mnt/runs\ntracking:\n  uri: sqlite:///mlflow.db\n")
    result = runner.invoke(app, ["submit", str(cfg), "--address", "http://127.0.0.1:1"])
    line = one_error_line(result, "tracking.uri")
    assert "--set tracking.uri=http://" in line


def test_cli_submit_needs_an_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    result = runner.invoke(app, ["submit", str(write_config(tmp_path, GOOD))])
    one_error_line(result, "--address")


def test_cli_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["submit", str(write_config(tmp_path, GOOD)), "--address", address])
    assert address in one_error_line(result, "--address")
    result = runner.invoke(app, ["jobs", "status", "some-id", "--address", address])
    one_error_line(result, "--address")


@pytest.mark.parametrize("command", [["submit"], ["jobs"], ["jobs", "list"], ["jobs", "status"], ["jobs", "logs"],
                                     ["jobs", "stop"], ["slurm"], ["kuberay"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_shell_tools_present() -> None:
    assert shutil.which("bash"), "the SLURM tests need bash"
    assert os.name == "posix"


@pytest.mark.parametrize(("exit_code", "message", "hinted"), [
    (127, "", True),
    (None, "Job entrypoint command failed with exit code 127, last available logs: autoft: not found", True),
    (1, "Job entrypoint command failed with exit code 1", False),
    (None, "", False),
])
def test_a_job_whose_shell_found_no_autoft_gets_a_hint(exit_code, message, hinted) -> None:
    hint = cl.failure_hint(exit_code, message)
    assert (hint is not None) is hinted
    if hinted:
        assert "`autoft`" in hint and "ray start" in hint


def test_submit_prints_the_hint_when_the_job_found_no_autoft(capsys) -> None:
    from types import SimpleNamespace

    from autoft.cli_cluster import _follow_and_report

    info = SimpleNamespace(message="Job entrypoint command failed with exit code 127", driver_exit_code=127)
    cluster = SimpleNamespace(address="http://127.0.0.1:8265", follow=lambda job_id: "FAILED",
                              call=lambda fn, *a: fn(), client=SimpleNamespace(get_job_info=lambda job_id: info))
    assert _follow_and_report(cluster, "job-1") == 1
    err = capsys.readouterr().err
    assert "job job-1 FAILED: Job entrypoint command failed with exit code 127" in err
    assert "hint: the cluster found no `autoft` command" in err
