"""``search.seed`` repeats a search: with trials run one at a time, the same seed gives the
same configurations in the same order, the same scores and the same pruning decisions.
(With trials in parallel, which one reports first depends on timing, and TPE's later
suggestions and ASHA's cuts with it: README, "Repeating a search".)"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray

TIMING = ("trial_id", "run_id", "wall_seconds", "compute_seconds", "checkpoint_seconds")


def _search(tiny_model, tiny_data, storage, seed, trials=5):
    from autoft.config import load_config
    from autoft.controller import run_search

    cfg = load_config(None, [
        f"model.path={tiny_model}", f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}", "train.epochs=2", "train.batch_size=16",
        "train.max_length=32", f"storage={storage}", "name=again", f"search.num_trials={trials}",
        "search.max_concurrent=1", f"search.seed={seed}", "search.metric=eval_loss", "search.mode=min",
        "tracking.log_best_model=false",
    ])
    trials = run_search(cfg, echo=lambda line: None).trials
    return trials.drop(columns=list(TIMING)).sort_values("number").reset_index(drop=True)


def test_same_seed_same_search_one_trial_at_a_time(tiny_model, tiny_data, tmp_path):
    import pandas as pd
    import ray

    try:
        first = _search(tiny_model, tiny_data, tmp_path / "a", seed=7)
        again = _search(tiny_model, tiny_data, tmp_path / "b", seed=7)
        other = _search(tiny_model, tiny_data, tmp_path / "c", seed=8, trials=3)
    finally:
        ray.shutdown()
    assert len(first) == 5 and set(first["status"]) <= {"completed", "pruned"}
    pd.testing.assert_frame_equal(first, again, check_exact=False, rtol=1e-6)
    # The seed is what repeats it: another seed searches elsewhere (warm starts aside).
    assert first["learning_rate"][2] != pytest.approx(other["learning_rate"][2])
