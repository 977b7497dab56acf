"""`autoft report` and `autoft dashboard`: a search at a glance, in a browser.

Registered on the main app by autoft.cli; heavy imports (MLflow, Optuna, plotly)
load inside the commands, so `--help` stays instant.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from autoft.cli_common import fail as _fail
from autoft.errors import InputError

NameArg = Annotated[str, typer.Argument(help="Search id (e.g. autoft-20250101-120000) or search name (its newest search).")]
DEFAULT_STORAGE = "autoft-runs"
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Storage folder of the search: its mlflow.db and optuna.db. [default: autoft-runs]")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite:///<storage>/mlflow.db.")]



def _tracking_uri(storage: str | None, tracking_uri: str | None) -> str:
    """--tracking-uri, else the mlflow.db of an explicit --storage, else MLFLOW_TRACKING_URI,
    else the mlflow.db of the default storage."""
    from autoft.tracking import default_tracking_uri

    explicit = default_tracking_uri(Path(storage)) if storage is not None else None
    if tracking_uri:
        uri = tracking_uri
    elif explicit and Path(explicit.removeprefix("sqlite:///")).exists():
        uri = explicit
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or explicit or default_tracking_uri(Path(DEFAULT_STORAGE))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        _fail(InputError("--storage", f"no MLflow store at {uri}", "run a search first, or pass --storage / --tracking-uri"))
    return uri


def _need_plotly() -> None:
    import importlib.util

    for module, package in (("plotly", "plotly"), ("jinja2", "jinja2")):
        if importlib.util.find_spec(module) is None:
            _fail(InputError("report", f"{package} is not installed", "pip install 'autoft[dashboard]'"))


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)


def register(app: typer.Typer) -> None:
    """Add this feature's commands to the main app."""

    @app.command()
    def report(
        name: NameArg,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file to write. Default: <search id>-report.html in the current folder.")] = None,
        storage: StorageOpt = None,
        tracking_uri: UriOpt = None,
        no_log: Annotated[bool, typer.Option("--no-log", help="Do not log the page to the search's MLflow parent run.")] = False,
    ) -> None:
        """Write one self-contained HTML report of a search; it opens offline, with no server.

        Leaderboard, best-so-far by trial and by training compute, learning curves,
        hyperparameter importances, parallel coordinates, freezing schedules of the top
        trials and the best config, from the search's MLflow runs and Optuna study.
        The page is also logged to the search's MLflow parent run as report.html.
        """
        _quiet()
        _need_plotly()
        uri = _tracking_uri(storage, tracking_uri)
        from autoft.report import write_report

        try:
            path, record, model = write_report(uri, name, output, storage or DEFAULT_STORAGE,
                                               log_artifact=not no_log)
        except InputError as exc:
            _fail(exc)
        best = f"best {model.metric} {model.best.value:.4g} ({model.best.label})" if model.best else "no value yet"
        typer.echo(f"report of {record.search_id}: {path.resolve()}  ({len(record.trials)} trials, {best})")
        if not no_log and record.run_id:
            typer.echo(f"logged to MLflow run {record.run_id} as report.html")

    @app.command()
    def dashboard(
        name: NameArg,
        port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 8765,
        storage: StorageOpt = None,
        tracking_uri: UriOpt = None,
        refresh: Annotated[int, typer.Option("--refresh", min=1, help="Seconds between page refreshes.")] = 10,
        host: Annotated[str, typer.Option("--host", help="Bind address; keep 127.0.0.1 unless you mean to share it.")] = "127.0.0.1",
        optuna: Annotated[bool, typer.Option("--optuna", help="Start optuna-dashboard on the search's Optuna study instead.")] = False,
    ) -> None:
        """Serve the report of a search on 127.0.0.1, live while the search runs.

        The page is rebuilt from MLflow and Optuna on request and reloads itself every
        --refresh seconds; /report.html gives the offline copy. Ctrl-C stops it.
        """
        _quiet()
        if optuna:
            _optuna_dashboard(name, storage or DEFAULT_STORAGE, tracking_uri, host, port)
            return
        _need_plotly()
        uri = _tracking_uri(storage, tracking_uri)
        from autoft.report import LiveView, make_server

        # Ctrl-C is armed before the address is printed: a script that reads the address and
        # at once sends SIGINT must stop the server, not hit the inherited SIG_IGN.
        with _stop_on_ctrl_c():
            try:
                server = make_server(LiveView(uri, name, storage or DEFAULT_STORAGE, refresh), host, port)
            except OSError as exc:
                _fail(InputError("--port", f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                                 "pick another port, or --port 0 for any free one"))
            address = f"http://{server.server_address[0]}:{server.server_address[1]}"
            typer.echo(f"live report of {name}: {address}  (refreshes every {refresh} s; Ctrl-C to stop)")
            typer.echo(f"offline copy: {address}/report.html")
            try:
                server.serve_forever(poll_interval=0.5)
            finally:
                server.server_close()
        typer.echo("stopped")


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[None]:
    """Ctrl-C (and SIGTERM, as `kill` sends) ends the block quietly."""
    import signal

    # A process started in the background by a non-interactive shell (`cmd &` in a
    # script, CI) inherits SIGINT ignored, and Python then installs no Ctrl-C handler.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _optuna_dashboard(name: str, storage: str, tracking_uri: str | None, host: str, port: int) -> None:
    from autoft.report import find_study
    from autoft.tracking import default_tracking_uri

    uri = tracking_uri
    if uri is None:
        local = (Path(storage) / "mlflow.db").exists()
        uri = default_tracking_uri(Path(storage)) if local else os.environ.get("MLFLOW_TRACKING_URI")
    url, study = find_study(uri, name, storage)
    if url is None:
        _fail(InputError("--storage", f"no optuna.db for '{name}' in {Path(storage).resolve()}",
                         "pass the --storage the search ran with"))
    try:
        from optuna_dashboard import run_server
    except ImportError:
        _fail(InputError("--optuna", "optuna-dashboard is not installed", "pip install 'autoft[dashboard]'"))
    with _stop_on_ctrl_c():
        typer.echo(f"optuna-dashboard for {url}: http://{host}:{port}/dashboard  (study {study}; Ctrl-C to stop)")
        run_server(url, host=host, port=port)
    typer.echo("stopped")
