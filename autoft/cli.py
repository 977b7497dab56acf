"""The ``autoft`` command line. Heavy libraries load inside commands, so help is instant."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from autoft.cli_common import ConfigArg, JsonOpt, SetOpt
from autoft.cli_common import err as _err
from autoft.cli_common import fail as _fail
from autoft.errors import InputError

app = typer.Typer(
    help="AutoML for fine-tuning pretrained transformers: Ray Tune trials, Optuna samplers, "
    "early pruning, every trial and the best checkpoint in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Registering the best model reads its artifacts back; one status line says it instead.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Logging to an MLflow server, MLflow writes two "View run ... at: URL" lines per run to
    # stdout: noise in the terminal, and stdout carries --json's result.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    for name in ("mlflow", "alembic", "ray", "ray.tune", "optuna", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _sigterm_as_ctrl_c() -> None:
    """SLURM time limits, scancel and pod deletion send SIGTERM: end the search the
    way Ctrl-C does (runs closed as KILLED, checkpoints kept for `autoft resume`)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _load(config: Path | None, sets: list[str] | None, extra: list[str] | None = None) -> Any:
    from autoft.config import load_config

    return load_config(config, list(sets or []) + list(extra or []))


def _plan(config: Path | None, sets: list[str] | None, extra: list[str] | None = None) -> tuple[Any, Any]:
    """The config and its checked plan (space, data, model), or exit 2 with one line:
    every bad input is refused here, before Ray or MLflow start."""
    try:
        cfg = _load(config, sets, extra)
        from autoft.controller import plan_search

        return cfg, plan_search(cfg)
    except InputError as exc:
        _fail(exc)


@app.command()
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for epoch checkpoints.")] = Path("autoft-train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --output.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run ONE fine-tuning trial with the config's fixed params (no search), printing each epoch."""
    _quiet_libraries()
    cfg, plan = _plan(config, set_)
    from autoft import checkpoint as ckpt
    from autoft.cadence import AUTO
    from autoft.controller import model_label, tokenize_for, trial_options
    from autoft.trial import PrintReporter, RunOptions, run_trial

    _err(f"training {model_label(cfg)} on {len(plan.text.train.texts)} examples, "
         f"{len(plan.text.validation.texts)} for validation; labels {plan.text.label_names}")
    try:
        data = tokenize_for(plan)
    except InputError as exc:
        _fail(exc)
    resume_from = ckpt.latest_complete(output) if resume else None
    if resume and resume_from is None:
        _err(f"no complete checkpoint in {output}; starting from scratch")
    options = RunOptions(**trial_options(cfg), threads=cfg.train.threads,
                         checkpoint_dir=output.resolve(), keep_checkpoints=cfg.search.keep_checkpoints,
                         # auto's extra evaluations feed a pruner; one trial alone has none.
                         evals_per_epoch=1 if cfg.train.evals_per_epoch == AUTO else cfg.train.evals_per_epoch)
    result = run_trial(plan.base_recipe, data, plan.model_path, PrintReporter(_err), options, resume_from)
    majority = float(max(_label_counts(data.validation.labels)) / len(data.validation))
    out = {"status": result.status, "reason": result.reason, "best": result.best,
           "final": result.history[-1] if result.history else None,
           "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
           "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
           "majority_baseline_accuracy": majority, "recipe": plan.base_recipe.to_dict()}
    if result.status != "completed":
        _err(f"stopped: {result.reason}")
    elif result.best:
        _err(f"best {cfg.search.metric} {result.best[cfg.search.metric]:.4f} at epoch {result.best['epoch']}; "
             f"checkpoint {result.best_checkpoint}")
    if json_out:
        typer.echo(json.dumps(out, default=str))
    if result.status != "completed":
        raise typer.Exit(1)


def _label_counts(labels: Any) -> list[int]:
    import numpy as np

    return np.bincount(labels).tolist()


def _print_result(result: Any, mode: str, json_out: bool) -> None:
    from autoft.leaderboard import print_leaderboard

    print_leaderboard(result.trials, result.metric, mode, to_stderr=True,
                      more_hint=f"autoft runs {result.search_id} --top 0 lists them all")
    _err(f"best {result.metric}: {result.best_value}  (trials {result.n_trials}: {result.n_completed} completed, "
         f"{result.n_pruned} pruned, {result.n_failed} failed"
         + (f", {result.n_killed} killed" if result.n_killed else "") + f"; {result.wall_seconds:.0f}s)")
    if result.test_metrics:
        _err("test split, best checkpoint: " + ", ".join(f"{k.replace('eval_', 'test_')} {v:.4f}"
                                                        for k, v in result.test_metrics.items()))
    _err(f"best checkpoint: {result.best_checkpoint}")
    if result.model:
        _err(f"registered model: {result.model['alias_uri']}  (mlflow.pyfunc.load_model(...).predict(df))")
    _err(f"MLflow: {result.tracking_uri}  experiment {result.mlflow_experiment_id}, run {result.mlflow_run_id}")
    if result.tracking_uri.startswith("sqlite:"):
        _err(f"  view: mlflow ui --backend-store-uri {result.tracking_uri}   (or: autoft ui)")
    if json_out:
        typer.echo(json.dumps(result.to_dict(), default=str))


@app.command()
def search(
    config: ConfigArg = None,
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="Number of trials (search.num_trials).")] = None,
    time_budget: Annotated[str | None, typer.Option("--time-budget", help="Wall-time limit, e.g. 5400, 90m or 1.5h (search.time_budget_s); alone, trials run until it is spent.")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="Trials at once (search.max_concurrent).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Search name: MLflow experiment (name).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Folder for checkpoints, Ray state, default MLflow/Optuna stores.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (tracking.uri).")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (HOST:PORT, or auto for the one `ray start` began on this machine); default RAY_ADDRESS, else a new local Ray of this search's own.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a hyperparameter search: Ray Tune trials, an Optuna sampler, ASHA pruning, MLflow runs."""
    _quiet_libraries()
    extra = [f"{k}={v}" for k, v in (("search.num_trials", trials), ("search.time_budget_s", time_budget),
                                       ("search.max_concurrent", max_concurrent),
                                       ("name", name), ("storage", storage), ("tracking.uri", tracking_uri),
                                       ("address", address)) if v is not None]
    cfg, plan = _plan(config, set_, extra)
    from autoft.controller import run_search

    _sigterm_as_ctrl_c()
    try:
        result = run_search(cfg, echo=_err, plan=plan)
    except KeyboardInterrupt:
        _err("interrupted: open trial runs were closed as KILLED")
        raise typer.Exit(130) from None
    _print_result(result, cfg.search.mode, json_out)


@app.command()
def resume(
    target: Annotated[str, typer.Argument(metavar="NAME_OR_PATH", help="Search id, search name (its newest search) or search folder.")],
    storage: Annotated[str, typer.Option("--storage", help="Storage folder the search was run with.")] = "autoft-runs",
    restart_errored: Annotated[bool, typer.Option("--restart-errored", help="Start errored trials over instead of resuming them from their last checkpoint.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Continue an interrupted search (Ctrl-C, killed driver): nothing lost, nothing run twice."""
    _quiet_libraries()
    from autoft.controller import resume_search

    _sigterm_as_ctrl_c()
    try:
        result = resume_search(target, storage, echo=_err, restart_errored=restart_errored)
    except InputError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _err("interrupted: open trial runs were closed as KILLED; `autoft resume` continues again")
        raise typer.Exit(130) from None
    _print_result(result, result.mode, json_out)


@app.command()
def validate(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Check a config, its search space, dataset and model path without running anything."""
    _quiet_libraries()
    cfg, plan = _plan(config, set_)
    typer.echo(f"ok: model {plan.model_path} ({plan.num_layers} blocks), space '{plan.space.name}' "
               f"({len(plan.space.params)} params), {len(plan.text.train.texts)} train / "
               f"{len(plan.text.validation.texts)} validation examples, labels {plan.text.label_names}")


@app.command()
def spaces() -> None:
    """List the shipped search spaces (search_spaces/*.yaml), one line each."""
    from autoft.space import load_space, shipped_spaces

    for name in shipped_spaces():
        s = load_space(name)
        typer.echo(f"{name:<22} {len(s.params):>2} params  {s.description}")


@app.command()
def runs(
    name: Annotated[str | None, typer.Argument(help="Search name (MLflow experiment) or search id. Omitted: list searches.")] = None,
    storage: Annotated[str, typer.Option("--storage", help="Storage folder holding the default mlflow.db.")] = "autoft-runs",
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Show the best N trials; 0 shows every trial.")] = 20,
) -> None:
    """Print the leaderboard of a search from MLflow (works after the search has ended)."""
    _quiet_libraries()
    from autoft.leaderboard import leaderboard_from_mlflow, list_searches, print_leaderboard
    from autoft.tracking import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(Path(storage))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        _fail(InputError("--storage", f"no MLflow store at {uri}", "run a search first or pass --tracking-uri"))
    try:
        if name is None:
            list_searches(uri)
            return
        df, metric, mode = leaderboard_from_mlflow(uri, name)
    except InputError as exc:
        _fail(exc)
    print_leaderboard(df, metric, mode, limit=top, more_hint="--top 0 shows them all")


@app.command()
def ui(
    storage: Annotated[str, typer.Option("--storage", help="Storage folder holding mlflow.db.")] = "autoft-runs",
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Bind address; keep 127.0.0.1 unless you mean to share it.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI for the default store on 127.0.0.1 and print its address."""
    import subprocess

    from autoft.tracking import default_tracking_uri

    uri = default_tracking_uri(Path(storage))
    artifacts = (Path(storage) / "mlartifacts").resolve()
    typer.echo(f"MLflow UI for {uri}: http://{host}:{port}  (Ctrl-C to stop)")
    typer.echo("  runs of a search: Experiments -> the search name -> 'Model training' view; "
               "expand the search run to see its trials")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--artifacts-destination", str(artifacts), "--workers", "1"]
    # MLflow 3 starts background-job workers by default; a local UI needs none.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    raise typer.Exit(_run_server(subprocess.Popen(cmd, env=env, start_new_session=True)))


def _run_server(proc: Any, grace_s: float = 10.0) -> int:
    """Wait for a server started in its own process group; on Ctrl-C or SIGTERM stop the whole
    group (mlflow server runs its web server as a child process, which would outlive it) and
    return 0. Its exit status otherwise."""
    import signal
    import time

    stopping = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        # Whatever ended it, leave nothing of the group behind: SIGTERM, then SIGKILL after a grace.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_running(proc.pid):
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
    return 0 if stopping else rc


def _group_running(pgid: int) -> bool:
    """Does any process of the group still run? Zombies do not count: the server's children,
    orphaned when it exits, stay zombies for good under a PID 1 that reaps nothing (a
    container's), and waiting on them would hold every stop for the whole grace."""
    import psutil

    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
    return False


def _register_features() -> None:
    from autoft import cli_cluster, cli_report

    cli_cluster.register(app)
    cli_report.register(app)


_register_features()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
