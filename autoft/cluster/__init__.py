"""Run one search on a cluster: as a Ray Job, a SLURM batch job, or a KubeRay RayJob.

Pure logic, no Ray, one module per job: :mod:`~autoft.cluster.checks` (can the search run
away from this machine: tracking, storage, address, token), :mod:`~autoft.cluster.job` (the
search made ready for a route: its command line, shipped files, the Ray Job's folder and
runtime_env), :mod:`~autoft.cluster.capacity` (trials per node),
:mod:`~autoft.cluster.slurm` (the sbatch script) and :mod:`~autoft.cluster.kuberay` (the
RayJob manifest). ``autoft.cli_cluster`` wires these to the Jobs API and the command line.
"""

from autoft.cluster.capacity import capacity_note, resource_overrides, trials_per_node
from autoft.cluster.checks import (
    AuthToken,
    address_from_env,
    auth_error,
    check_address,
    check_remote_tracking,
    check_shared_storage,
    find_auth_token,
    is_local_tracking,
)
from autoft.cluster.job import (
    JOB_BUNDLE_LIMIT,
    KUBE_MOUNT,
    ClusterJob,
    Route,
    Shipped,
    autoft_version,
    failure_hint,
    job_config_name,
    job_metadata,
    last_json_line,
    prepare_job,
    runtime_env,
    shell_command,
    submission_id,
    tracking_notes,
    write_job_folder,
)
from autoft.cluster.kuberay import KubeSpec, check_kube, kube_name, kube_notes, render_kuberay
from autoft.cluster.slurm import SlurmSpec, check_slurm, render_slurm

__all__ = ["JOB_BUNDLE_LIMIT", "KUBE_MOUNT", "AuthToken", "ClusterJob", "KubeSpec", "Route", "Shipped", "SlurmSpec",
           "address_from_env", "auth_error", "autoft_version", "capacity_note", "check_address", "check_kube",
           "check_remote_tracking", "check_shared_storage", "check_slurm", "failure_hint", "find_auth_token", "is_local_tracking",
           "job_config_name", "job_metadata", "kube_name", "kube_notes", "last_json_line", "prepare_job",
           "render_kuberay", "render_slurm", "resource_overrides", "runtime_env", "shell_command", "submission_id",
           "tracking_notes", "trials_per_node", "write_job_folder"]
