"""A trial Ray Tune stops while its report is handed off on a background thread ends
before the next trial reuses its actor (Ray's real FunctionTrainable, reuse_actors=True).

Ray ends a stopped trial's thread with ``SystemExit`` from inside ``tune.report``; with the
report on autoft's hand-off thread, the training thread sees it only at its next step. Ray
waits ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s by default) for the old thread before a reused
actor takes the next trial, and refuses the reuse if the thread is still alive, so the worker
raises that wait (autoft.ray_trainable.wait_for_stopped_threads). Steps here are 3 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

STEP_S = 3.0


def test_reused_actor_takes_the_next_trial_after_a_stop(local_ray: None, tmp_path: Path) -> None:
    """Without the raised wait (Ray 2.60, measured): Ray logs "Could not re-use actor ...
    reset_config() to be implemented and return True" for the second trial, and the
    search never ends (stopped by this suite's 300 s timeout)."""
    from ray import tune

    def slow_trainable(config: dict[str, Any]) -> None:
        # Defined here so that Ray pickles it by value (workers cannot import this test module).
        from autoft.handoff import Handoff
        from autoft.ray_trainable import _TuneReporter, wait_for_stopped_threads

        wait_for_stopped_threads()
        with Handoff(_TuneReporter(), background=True) as out:
            for i in range(4):
                time.sleep(STEP_S)  # one optimizer step, longer than Ray's default wait
                out.check()
                out.report({"i": i, "score": float(i)}, None)

    tuner = tune.Tuner(
        tune.with_resources(slow_trainable, {"cpu": 1}),
        param_space={"n": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name="handoff", storage_path=str(tmp_path), verbose=0,
                                  stop={"training_iteration": 1}),
    )
    grid = tuner.fit()
    assert [r.error for r in grid if r.error is not None] == []
    assert sorted(r.metrics["training_iteration"] for r in grid) == [1, 1]
