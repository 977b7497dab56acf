"""Search reports: one self-contained HTML page per search, and a live view of it.

Three layers, in one direction, one module each:

1. **load** (:mod:`~autoft.report.load`, I/O): MLflow runs + the Optuna study ->
   :class:`SearchRecord` (:mod:`~autoft.report.records`), plain JSON-able data;
2. **model** (:mod:`~autoft.report.model`, pure): :class:`SearchRecord` ->
   :class:`ReportModel`: leaderboard, best-so-far, learning curves, parallel coordinates,
   freezing schedules, best config; importances from a study;
3. **render** (:mod:`~autoft.report.render`): :class:`ReportModel` -> HTML with plotly
   figures and the template in ``dashboards/``.

:func:`write_report` (:mod:`~autoft.report.page`) runs all three and logs the page to the
search's parent run; :func:`make_server` (:mod:`~autoft.report.live`) serves it live.
"""

from autoft.report.live import LiveView, make_server
from autoft.report.load import find_study, load_search
from autoft.report.model import ReportModel, build_model, fmt, parse_param, study_importances
from autoft.report.page import build_html, write_report
from autoft.report.records import ABSENT, SearchRecord, TrialRecord
from autoft.report.render import figures, render_html

__all__ = ["ABSENT", "LiveView", "ReportModel", "SearchRecord", "TrialRecord", "build_html", "build_model",
           "figures", "find_study", "fmt", "load_search", "make_server", "parse_param", "render_html",
           "study_importances", "write_report"]
