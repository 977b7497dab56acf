"""`autoft dashboard`: the report page served live over HTTP, rebuilt on request."""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

from autoft.errors import InputError
from autoft.report.page import build_html
from autoft.report.render import plotly_js


class LiveView:
    """Rebuilds the page on request (at most every ``refresh_s / 2`` seconds)."""

    def __init__(self, tracking_uri: str, name: str, storage: str | Path | None, refresh_s: int) -> None:
        self.uri, self.name, self.storage, self.refresh_s = tracking_uri, name, storage, refresh_s
        self._lock = threading.Lock()
        self._page: bytes = b""
        self._at = 0.0
        self._js: bytes | None = None

    def page(self) -> bytes:
        with self._lock:
            if self._page and time.time() - self._at < self.refresh_s / 2:
                return self._page
            try:
                page, _, _ = build_html(self.uri, self.name, self.storage, inline_plotly=False,
                                        refresh_s=self.refresh_s)
            except InputError as exc:
                page = _message_page(f"Waiting for search '{self.name}'", f"{exc} (MLflow store {self.uri})",
                                     self.refresh_s)
            except Exception as exc:  # noqa: BLE001 - a store busy mid-write: show it, retry next refresh
                page = _message_page("Could not read the search (retrying)", f"{type(exc).__name__}: {exc}",
                                     self.refresh_s)
            self._page, self._at = page.encode("utf-8"), time.time()
            return self._page

    def plotly_js(self) -> bytes:
        if self._js is None:
            self._js = plotly_js().encode("utf-8")
        return self._js

    def offline(self) -> bytes:
        page, _, _ = build_html(self.uri, self.name, self.storage)
        return page.encode("utf-8")


def _message_page(title: str, text: str, refresh_s: int) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='{refresh_s}'>"
            f"<title>{html.escape(title)}</title></head><body style='font-family:system-ui;margin:2em'>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
            f"<p>This page refreshes every {refresh_s} s.</p></body></html>")


def make_server(view: LiveView, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A small threaded HTTP server: / (the live page), /plotly.min.js, /report.html (offline copy)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(view.page(), "text/html; charset=utf-8", "no-store")
                elif path == "/plotly.min.js":
                    self._send(view.plotly_js(), "application/javascript; charset=utf-8", "max-age=86400")
                elif path == "/report.html":
                    self._send(view.offline(), "text/html; charset=utf-8", "no-store",
                               {"Content-Disposition": "attachment; filename=report.html"})
                elif path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                else:
                    self.send_error(404)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, body: bytes, ctype: str, cache: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
