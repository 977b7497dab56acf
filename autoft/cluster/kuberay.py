"""The KubeRay route: a RayJob manifest (with the config and small shipped files in a
ConfigMap) that runs the search on a Ray cluster Kubernetes creates for it (:func:`render_kuberay`)."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoft.cluster.capacity import capacity_note, check_fit, resource_overrides, trials_per_node
from autoft.cluster.job import JOB_ENV, JOB_STOP_ENV, KUBE_MOUNT, ClusterJob, job_config_name
from autoft.errors import InputError

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
    check_fit(job.cfg, spec.gpus_per_worker, kube_cpus(job, spec), "--gpus-per-worker", "--cpus-per-worker")


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
