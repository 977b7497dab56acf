"""One search's report page end to end: load, model, render; written to a file and
logged to the search's MLflow run (:func:`write_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoft.leaderboard import mlflow_client
from autoft.report.load import load_search
from autoft.report.model import ReportModel, build_model
from autoft.report.records import SearchRecord
from autoft.report.render import render_html


def build_html(tracking_uri: str, name: str, storage: str | Path | None = None, **render: Any) -> tuple[str, SearchRecord, ReportModel]:
    record = load_search(tracking_uri, name, storage)
    model = build_model(record)
    return render_html(model, **render), record, model


def write_report(tracking_uri: str, name: str, output: Path | None = None, storage: str | Path | None = None,
                 log_artifact: bool = True) -> tuple[Path, SearchRecord, ReportModel]:
    """Build the self-contained page, write it, log it to the parent run as ``report.html``."""
    import os
    import shutil
    import tempfile

    page, record, model = build_html(tracking_uri, name, storage)
    output = Path(output) if output is not None else Path(f"{record.search_id}-report.html")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, output)
    if log_artifact and record.run_id:
        with tempfile.TemporaryDirectory() as d:
            shutil.copyfile(output, Path(d) / "report.html")
            mlflow_client(tracking_uri).log_artifact(record.run_id, str(Path(d) / "report.html"))
    return output, record, model
