"""The MLflow UI shows a finished search the way the README promises: the search's
parent run on the experiment page, its trial runs nested under it.

Headless Chromium is driven over the Chrome DevTools Protocol (``--remote-debugging-port``)
with aiohttp's websocket client (a Ray dependency): no selenium, no chromedriver.
The screenshot lands in the test's tmp folder, and in docs/mlflow-ui.png when
AUTOFT_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
NAME = "tiny-ui"
N_TRIALS = 3

pytestmark = [
    pytest.mark.browser,
    pytest.mark.ray,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                       "(apt-get install chromium)"),
]


def _get(url: str, timeout: float = 2) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process group this module started (server or browser), by its id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def ui_search(tmp_path_factory, tiny_model, tiny_data):
    """A finished tiny search in a SQLite store, and ``mlflow server`` on that store."""
    import ray
    from mlflow import MlflowClient

    from autoft.config import load_config
    from autoft.controller import run_search

    root = tmp_path_factory.mktemp("mlflow-ui")
    storage = root / "runs"
    storage.mkdir()
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # create the schema once, before two processes use it
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in teardown
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", str(storage / "mlartifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        cfg = load_config(None, [
            f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
            f"data.validation={tiny_data['validation']}", "train.epochs=2", "train.batch_size=16",
            "train.max_length=32", f"storage={storage}", f"name={NAME}", f"search.num_trials={N_TRIALS}",
            "search.max_concurrent=2", "search.metric=eval_loss", "search.mode=min",
            "pruning.scheduler=none", "tracking.log_best_model=false", f"tracking.uri={uri}",
        ])
        sigint = signal.getsignal(signal.SIGINT)
        try:
            result = run_search(cfg, echo=lambda _line: None)  # the server starts meanwhile
        finally:
            signal.signal(signal.SIGINT, sigint)  # Ray Tune leaves its own handler installed
            ray.shutdown()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while _get(f"{url}/health") is None:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not come up:\n" + (root / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        children = MlflowClient(tracking_uri=uri).search_runs(
            [result.mlflow_experiment_id], f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'")
        yield {"url": url, "result": result, "children": sorted(c.info.run_name for c in children), "root": root}
    finally:
        _stop_group(server)
        log.close()


class DevTools:
    """The few Chrome DevTools Protocol calls this test needs, over one page's websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == my_id:  # anything else is an event: not needed here
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_text(self, needles: list[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.js("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            await asyncio.sleep(0.5)
        raise AssertionError(f"not on the page after {timeout:.0f} s: "
                             f"{[n for n in needles if n not in text]}\n--- page text ---\n{text[:3000]}")


# Click the expander in the Run Name cell of the row whose run link reads NAME.
EXPAND_JS = """(() => {
  const name = %s;
  const link = [...document.querySelectorAll('[role=gridcell] a')].find(a => a.innerText.trim() === name);
  const button = link && link.closest('[role=gridcell]').querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})()"""

# MLflow 3 opens in its GenAI workflow; switch the sidebar to "Model training" (if there).
MODEL_TRAINING_JS = """(() => {
  const el = [...document.querySelectorAll('[role=button], button')]
    .find(e => e.innerText && e.innerText.trim() === 'Model training');
  if (!el) return false;
  el.click();
  return true;
})()"""

# Close MLflow's assistant side panel when it is open (more room for the runs table).
CLOSE_ASSISTANT_JS = """(() => {
  const b = [...document.querySelectorAll('button[aria-label="Close"]')];
  b.forEach(x => x.click());
  return b.length;
})()"""


async def _drive(page_ws: str, url: str, parent: str, children: list[str], shot: Path) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(page_ws, max_msg_size=0) as ws:
        dt = DevTools(ws)
        await dt.call("Page.enable")
        await dt.call("Page.navigate", url=url)
        await dt.wait_text([parent], timeout=60)
        await dt.js(CLOSE_ASSISTANT_JS)
        if await dt.js(MODEL_TRAINING_JS):
            await asyncio.sleep(0.5)
            await dt.call("Page.navigate", url=url)  # the toggle may land elsewhere: back to the runs
            await dt.wait_text([parent], timeout=30)
        text = await dt.js("document.body.innerText")
        expanded = False
        if not all(c in text for c in children):
            expanded = await dt.js(EXPAND_JS % json.dumps(parent))
            assert expanded, "no expander button next to the parent run"
        text = await dt.wait_text([parent, *children], timeout=30)
        await asyncio.sleep(1)  # let the table settle before the picture
        png = await dt.call("Page.captureScreenshot", format="png")
        shot.write_bytes(base64.b64decode(png["data"]))
        order = await dt.js("[...document.querySelectorAll('[role=gridcell] a')].map(a => a.innerText.trim())")
        return {"text": text, "expanded": expanded, "links": order}


def test_experiment_page_nests_trial_runs_under_the_search(ui_search, tmp_path):
    result = ui_search["result"]
    children = ui_search["children"]
    assert len(children) == N_TRIALS and all(c.startswith("t0") for c in children)
    cport = free_port()
    profile = tmp_path / "chromium-profile"
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 - closed below
    browser = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,900",
         f"--user-data-dir={profile}", f"--remote-debugging-port={cport}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        page_ws = None
        while page_ws is None:
            raw = _get(f"http://127.0.0.1:{cport}/json/list")
            pages = [t for t in json.loads(raw) if t.get("type") == "page"] if raw else []
            if pages:
                page_ws = pages[0]["webSocketDebuggerUrl"]
            elif browser.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Chromium's DevTools endpoint did not come up:\n"
                            + (tmp_path / "chromium.log").read_text(errors="replace")[-3000:])
            else:
                time.sleep(0.3)
        shot = tmp_path / "mlflow-ui.png"
        url = f"{ui_search['url']}/#/experiments/{result.mlflow_experiment_id}/runs"
        seen = asyncio.run(asyncio.wait_for(_drive(page_ws, url, result.search_id, children, shot), timeout=150))
    finally:
        _stop_group(browser)
        log.close()
    # The children come after their parent in the table: nested, not a flat list.
    links = seen["links"]
    assert result.search_id in links, links
    assert all(links.index(c) > links.index(result.search_id) for c in children), links
    assert shot.stat().st_size > 10_000
    if os.environ.get("AUTOFT_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "mlflow-ui.png")
    print(f"screenshot: {shot} (parent expanded by the test: {seen['expanded']})")
