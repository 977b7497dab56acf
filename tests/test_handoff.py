"""autoft.handoff.Handoff: reports in order, off the training thread, with errors raised back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from autoft.handoff import Handoff


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: int | None = None, error: BaseException | None = None) -> None:
        self.delay, self.fail_on, self.error = delay, fail_on, error
        self.calls: list[tuple[dict[str, Any], Path | None, str]] = []
        self.events: list[str] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.events.append(f"start {metrics['i']}")
        time.sleep(self.delay)
        self.calls.append((metrics, checkpoint_dir, threading.current_thread().name))
        self.events.append(f"end {metrics['i']}")
        if self.fail_on == metrics["i"]:
            raise self.error or RuntimeError("reporter failed")


def test_background_reports_arrive_in_order_one_at_a_time(tmp_path: Path) -> None:
    rec = Recorder(delay=0.05)
    out = Handoff(rec, background=True)
    for i in range(3):
        out.report({"i": i}, tmp_path / str(i), then=lambda i=i: rec.events.append(f"then {i}"))
    out.close()
    assert rec.events == ["start 0", "end 0", "then 0", "start 1", "end 1", "then 1", "start 2", "end 2", "then 2"]
    assert [c[1] for c in rec.calls] == [tmp_path / "0", tmp_path / "1", tmp_path / "2"]
    assert {c[2] for c in rec.calls} == {"autoft-report"}


def test_report_returns_before_the_reporter_is_done() -> None:
    release = threading.Event()

    class Blocking:
        def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            assert release.wait(10)

    out = Handoff(Blocking(), background=True)
    out.report({"i": 0}, None)  # would block for 10 s if it ran here
    release.set()
    t0 = time.monotonic()
    out.wait()
    assert time.monotonic() - t0 < 10


def test_the_reporter_gets_a_copy_of_the_metrics() -> None:
    rec = Recorder(delay=0.05)
    out = Handoff(rec, background=True)
    metrics = {"i": 0}
    out.report(metrics, None)
    metrics["later"] = 1  # the trial's history entry, changed while the report is in flight
    out.close()
    assert rec.calls[0][0] == {"i": 0}


@pytest.mark.parametrize("error", [RuntimeError("boom"), SystemExit(0)], ids=["error", "ray-stop"])
def test_what_the_reporter_raises_is_raised_in_the_caller(error: BaseException) -> None:
    rec = Recorder(fail_on=0, error=error)
    out = Handoff(rec, background=True)
    then = []
    out.report({"i": 0}, None, then=lambda: then.append(1))
    with pytest.raises(type(error)):
        out.wait()
    assert then == [1]  # the clean-up ran although the report raised
    out.check()  # raised once, not again


def test_check_raises_without_waiting_once_the_report_failed() -> None:
    rec = Recorder(fail_on=0, error=SystemExit(0))
    out = Handoff(rec, background=True)
    out.report({"i": 0}, None)
    deadline = time.monotonic() + 10
    while True:  # a training loop: check once per step until told to stop
        try:
            out.check()
        except SystemExit:
            break
        assert time.monotonic() < deadline, "check() never raised the reporter's SystemExit"
        time.sleep(0.01)


def test_close_on_a_failing_trial_keeps_the_trial_error() -> None:
    out = Handoff(Recorder(fail_on=0), background=True)
    out.report({"i": 0}, None)
    out.close(raise_error=False)  # the reporter's RuntimeError is dropped, not raised over another


def test_inline_reports_run_in_the_caller_and_raise_at_once() -> None:
    rec = Recorder(fail_on=1)
    out = Handoff(rec, background=False)
    out.report({"i": 0}, None)
    assert rec.calls[0][2] == threading.current_thread().name
    then = []
    with pytest.raises(RuntimeError):
        out.report({"i": 1}, None, then=lambda: then.append(1))
    assert then == [1]
