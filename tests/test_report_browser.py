"""The report and the live view in headless Chromium: no JS errors, every plot drawn with data.

Chromium is driven over the DevTools protocol with aiohttp's websocket client
(aiohttp comes with ray[default]), so no webdriver is needed. The search is
written straight to MLflow and Optuna (see test_report.write_search): pruned,
failed and running trials, a conditional param, no Ray. Screenshots go to a
temporary folder; with AUTOFT_UPDATE_SCREENSHOT=1 the report's top also goes to
dashboards/report.png.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_report import REPO, add_trial, example_record, trial, write_search

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                                          "google-chrome-stable")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-allow-origins=*", "--window-size=1280,900"]

PLOTS_DATA_JS = """(() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
  id: el.id,
  traces: (el.data || []).length,
  points: (el.data || []).reduce((n, t) => n + (t.dimensions ? t.dimensions[0].values.length
          : t.z ? t.z.length * (t.z[0] || []).length : (t.y || t.x || []).length), 0),
})))()"""


class Chrome:
    """Headless Chromium over the DevTools protocol: navigate, evaluate, screenshot,
    and collect console errors and uncaught exceptions."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = []
        while not targets:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if not targets:
                time.sleep(0.1)
        self.loop = asyncio.new_event_loop()
        self.session, self.ws = self.loop.run_until_complete(self._connect(targets[0]["webSocketDebuggerUrl"]))
        self.next_id = 0
        self.errors: list[str] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    async def _connect(self, url: str) -> tuple[Any, Any]:
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(asyncio.wait_for(self._send(method, params), timeout))

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, plots: int) -> list[dict[str, Any]]:
        """Navigate and wait until ``plots`` plotly plots have rendered; their data summary."""
        self.send("Page.navigate", url=url)
        return self.wait_for(f"document.readyState === 'complete' && "
                             f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {plots}",
                             then=PLOTS_DATA_JS)

    def wait_for(self, condition: str, then: str, timeout: float = 30) -> Any:
        deadline = time.time() + timeout
        while True:
            try:
                if self.evaluate(f"!!({condition})"):
                    return self.evaluate(then)
            except RuntimeError:
                pass  # the page is navigating (a refresh): its context is gone for a moment
            if time.time() > deadline:
                try:
                    state = self.evaluate("[document.readyState, document.title, "
                                          "document.querySelectorAll('.js-plotly-plot').length]")
                except RuntimeError as exc:
                    state = str(exc)
                raise TimeoutError(f"waited {timeout}s for {condition}; page: {state}; errors: {self.errors}")
            time.sleep(0.2)

    def screenshot(self, path: Path, width: int = 1280, height: int | None = None) -> Path:
        full = self.evaluate("document.documentElement.scrollHeight")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height or full, deviceScaleFactor=1,
                  mobile=False)
        time.sleep(0.5)  # plotly redraws at the new size
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        self.send("Emulation.clearDeviceMetricsOverride")
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.loop.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    # A short path: Chromium's profile sockets must fit in 108 characters.
    profile = Path(tempfile.mkdtemp(prefix="autoft-chrome-"))
    browser = Chrome(profile)
    yield browser
    browser.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-search")
    record = example_record()
    uri = write_search(record, root)
    return root, uri, record


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def _check_plots(plots: list[dict[str, Any]], expected: set[str]) -> None:
    ids = {p["id"] for p in plots}
    assert expected <= ids, f"missing plots: {expected - ids}"
    for p in plots:
        assert p["traces"] > 0 and p["points"] > 0, f"plot {p['id']} has no data: {p}"


REFRESH = 4  # seconds; the page must load and draw within it on a busy 2-core machine
PLOTS = {"plot-by-trial", "plot-by-compute", "plot-curves", "plot-parallel", "plot-freezing"}


def more_trial(record, status: str, values: list[float], placeholder: float | None = None):
    """One more trial of the recorded search, after its last one (params of its best trial)."""
    end = max(p[2] for t in record.trials for pts in t.metrics.values() for p in pts)
    t = trial(len(record.trials), status, values, lr=3.3e-4, frozen=2, epochs=3, layers=6, t0=end,
              placeholder=placeholder)
    t.params = {**record.trials[0].params, **{k: t.params[k] for k in (
        "learning_rate", "num_frozen_layers", "unfreeze_schedule", "unfreeze_every")}}
    return t


def test_report_file_renders_without_errors(chrome, search, shots, tmp_path):
    from autoft.report import write_report

    root, uri, record = search
    out, _, _ = write_report(uri, record.search_id, tmp_path / "report.html", storage=root)
    chrome.errors.clear()
    plots = chrome.open(out.resolve().as_uri(), len(PLOTS))
    _check_plots(plots, PLOTS)
    assert chrome.errors == []
    note = chrome.evaluate("document.querySelector('#importance .note').textContent")
    assert "at least 3 completed trials" in note, "2 completed trials: a note, no plot"
    chrome.screenshot(shots / "report-full.png")
    top = chrome.screenshot(shots / "report-top.png", height=1700)
    assert top.stat().st_size > 10_000
    if os.environ.get("AUTOFT_UPDATE_SCREENSHOT") == "1":
        _save_small_png(top, REPO / "dashboards" / "report.png")
    # the leaderboard sorts: by trial number ascending, then descending
    order = chrome.evaluate("(() => { const th = [...document.querySelectorAll('#leaderboard-table th')]"
                            ".find(h => h.textContent === 'trial'); th.click(); const a = [...document"
                            ".querySelectorAll('#leaderboard-table tbody tr')].map(r => +r.dataset.trial);"
                            " th.click(); const b = [...document.querySelectorAll('#leaderboard-table tbody"
                            " tr')].map(r => +r.dataset.trial); return [a, b]; })()")
    numbers = sorted(t.number for t in record.trials)
    assert order == [numbers, numbers[::-1]]
    # pruned and failed trials are marked on the learning curves
    names = chrome.evaluate("document.getElementById('plot-curves').data.map(t => t.name)")
    assert "pruned here" in names and "best: t04" in names
    assert chrome.errors == []


def _save_small_png(src: Path, dst: Path, max_bytes: int = 300_000) -> None:
    """The README screenshot: scaled and palette-reduced under ``max_bytes``."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    width = 1100
    while True:
        small = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        if dst.stat().st_size < max_bytes or width < 500:
            return
        width = int(width * 0.85)


def test_live_view_serves_refreshes_and_stops_on_ctrl_c(chrome, search, shots):
    root, uri, record = search
    add_trial(uri, record, more_trial(record, "failed", [0.9], placeholder=0.0))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # MLflow sets it for children
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "autoft.cli", "dashboard", record.search_id, "--port", "0",
                             "--storage", str(root), "--refresh", str(REFRESH)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 60
        while "http://" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, f"no address printed: {line!r}"
        url = match.group(0) + "/"
        chrome.errors.clear()
        plots = chrome.open(url, len(PLOTS))
        _check_plots(plots, PLOTS)
        assert chrome.evaluate("document.querySelector('meta[http-equiv=refresh]').content") == str(REFRESH)
        assert chrome.evaluate("[...document.scripts].some(s => s.src.endsWith('/plotly.min.js'))")
        names = chrome.evaluate("document.getElementById('plot-curves').data.map(t => t.name)")
        assert "failed after" in names, "the failed trial's last epoch is marked"
        rows = chrome.evaluate("document.querySelectorAll('#leaderboard-table tbody tr').length")
        assert rows == len(record.trials)
        chrome.screenshot(shots / "live.png", height=900)
        # the search goes on: a third completed trial appears after the next refresh, with
        # no reload by hand, and with it the importances
        add_trial(uri, record, more_trial(record, "completed", [0.93, 0.95, 0.955]))
        plots = chrome.wait_for(
            f"document.querySelectorAll('#leaderboard-table tbody tr').length === {rows + 1} && "
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(PLOTS) + 1}",
            then=PLOTS_DATA_JS, timeout=60)
        _check_plots(plots, PLOTS | {"plot-importances"})
        chrome.screenshot(shots / "live-refreshed.png")
        assert chrome.errors == []
        with urllib.request.urlopen(match.group(0) + "/report.html", timeout=30) as r:
            offline = r.read().decode()
        assert "<script src=" not in offline and "Plotly" in offline
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "stopped" in out
