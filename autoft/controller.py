"""The search controller: validate, prepare once, run Ray Tune with Optuna, log to MLflow.

Everything that can be wrong with the input is checked in :func:`plan_search`
before Ray starts or MLflow is touched; :func:`run_search` then owns the Ray
runtime, the Optuna study and the MLflow parent run for one search.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoft import ray_state
from autoft.best_checkpoint import drop_trial_checkpoints, export_best, score_test, trial_dirname
from autoft.cadence import cadence_note, largest_batch_size, resolve_evals_per_epoch
from autoft.config import UNBOUNDED_TRIALS, ExperimentConfig, config_to_dict
from autoft.data import PreparedData, TextData, load_text_data, prepare_data
from autoft.errors import InputError
from autoft.models import check_model_dir, load_tokenizer, model_config, preload_classifier_code
from autoft.outcome import best_row, row_best
from autoft.recipe import Recipe
from autoft.space import SearchSpace, load_space
from autoft.storage_fs import linking_local, links_and_renames


@dataclass
class SearchPlan:
    cfg: ExperimentConfig
    model_path: Path
    num_layers: int
    space: SearchSpace
    base_recipe: Recipe
    text: TextData
    hidden_size: int | None = None  # of the model's blocks: sizes the frozen-prefix cache
    evals_per_epoch: int = 1  # train.evals_per_epoch, "auto" resolved for this data and space


@dataclass
class SearchResult:
    search_id: str
    best_value: float | None
    best_config: dict[str, Any]
    best_checkpoint: str | None
    mlflow_experiment_id: str
    mlflow_run_id: str
    tracking_uri: str
    storage_dir: str
    n_trials: int
    n_completed: int
    n_pruned: int
    n_failed: int
    wall_seconds: float
    metric: str
    mode: str = "max"
    n_killed: int = 0  # cut short by the time budget or the search's end, epochs kept
    test_metrics: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # registered model name, version, URIs
    # Where the driver's wall time went (prepare, ray_start, tune, export, test, register, finish;
    # ray_start includes opening MLflow, which runs beside it): everything but "tune" is paid
    # once per search, whatever the trials cost.
    phase_seconds: dict[str, float] = field(default_factory=dict)
    trials: Any = None  # pandas.DataFrame

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trials")
        return d


def model_shape(model_path: Path, trust_remote_code: bool) -> tuple[int, int | None]:
    """(blocks, hidden size) from the model's config, read once."""
    cfg = model_config(model_path, trust_remote_code)
    hidden = getattr(cfg, "hidden_size", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(getattr(cfg, key, None), int):
            return int(getattr(cfg, key)), hidden if isinstance(hidden, int) else None
    raise InputError("model.path", f"cannot tell how many blocks '{model_path}' has", "use a transformer checkpoint")


def plan_search(cfg: ExperimentConfig) -> SearchPlan:
    """Every input check, with no side effect: no Ray, no MLflow, no folders."""
    model_path = check_model_dir(cfg.model.path)
    layers, hidden = model_shape(model_path, cfg.model.trust_remote_code)
    base = cfg.base_recipe()
    base.check_against_model(layers)
    space = load_space(cfg.space).resolve(layers)
    # Fixed values of the space must make a valid recipe on this model too.
    cfg.base_recipe(space.fixed).check_against_model(layers)
    _check_storage(cfg.storage)
    text = load_text_data(cfg.data, cfg.train.seed)
    evals = resolve_evals_per_epoch(cfg.train.evals_per_epoch, len(text.train.texts), len(text.validation.texts),
                                    largest_batch_size(space.params, space.fixed, base.batch_size))
    return SearchPlan(cfg, model_path, layers, space, base, text, hidden, evals)


def _check_storage(storage: str) -> None:
    if "://" in storage and not storage.startswith("file://"):
        return  # a URI (s3://, gs://): Ray checks it
    p = Path(storage).expanduser()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise InputError("storage", f"'{storage}' is not a writable folder", "give a folder you can write to")


def tokenize_for(plan: SearchPlan) -> PreparedData:
    tok = load_tokenizer(plan.model_path, plan.cfg.model.trust_remote_code)
    return prepare_data(plan.text, tok, plan.cfg.train.max_length, str(plan.model_path))


def new_search_id(name: str) -> str:
    return f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _max_epochs(plan: SearchPlan) -> int:
    spec = plan.space.params.get("epochs")
    if spec is not None:
        return int(spec.high)
    return int(plan.space.fixed.get("epochs", plan.base_recipe.epochs))


def model_label(cfg: ExperimentConfig) -> str:
    """The model as the user named it (a path's last part): the bundled model's folder is just "model"."""
    return Path(str(cfg.model.path)).name or str(cfg.model.path)


def _unfreeze_oracle(plan: SearchPlan) -> Any:
    """``(trial config, evaluations done) -> bool``: does the trial unfreeze more blocks right after
    (only ever at the end of an epoch)?"""
    from autoft.freezing import unfreezes_after
    from autoft.recipe import RECIPE_FIELDS

    base, layers = plan.base_recipe.to_dict(), plan.num_layers
    per_epoch = plan.evals_per_epoch

    def oracle(config: dict[str, Any], evals_done: int) -> bool:
        # A trial with fewer steps than evals_per_epoch evaluates less often; this
        # oracle then errs toward judging it, as plain ASHA would.
        if evals_done % per_epoch:
            return False
        recipe = Recipe.from_dict({**base, **{k: v for k, v in config.items() if k in RECIPE_FIELDS}})
        return unfreezes_after(recipe, layers, evals_done // per_epoch)

    return oracle


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        # "local": a Ray of this search's own. Ray's default would attach to whatever cluster
        # the last `ray start` on this machine recorded (its ray_current_cluster file): someone
        # else's head, one needing a token, or a dead one. A cluster is reached by address only.
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


STATE_FILE = "autoft_search.json"
RESULT_FILE = "search.json"  # written when a search ends, whatever its status
SCRATCH_DIR = ".scratch"  # in the storage folder: trials' checkpoints until Ray takes them


def _scratch_root(cfg: ExperimentConfig, storage: Path) -> Path | None:
    """Where trials write checkpoints before Ray takes them; None = each worker's temporary folder.

    In the storage folder Ray's copy is a hard link (storage_fs), if that folder takes links and
    renames (a FUSE-mounted bucket may not). Reports on a background thread are for storage Ray
    must copy into: their checkpoints are written locally and copied beside the training.
    """
    if cfg.train.overlap_checkpoints or not links_and_renames(storage / SCRATCH_DIR):
        return None
    return storage / SCRATCH_DIR


@dataclass
class _Resume:
    parent_run_id: str
    restart_errored: bool


def trial_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The trial engine's options (autoft.trial.RunOptions) that come straight from the config, the
    same for a search's trials and for `autoft train`; each adds what only it knows."""
    return {"device": cfg.train.device, "precision": cfg.train.precision,
            "eval_batch_size": cfg.train.eval_batch_size, "trust_remote_code": cfg.model.trust_remote_code,
            "metric": cfg.search.metric, "mode": cfg.search.mode, "cache_frozen": cfg.train.cache_frozen,
            "cache_max_bytes": cfg.train.cache_max_bytes, "save_optimizer_state": cfg.train.save_optimizer_state,
            "checkpoint_writes": cfg.train.checkpoint_writes}


def run_search(cfg: ExperimentConfig, echo: Any = print, plan: SearchPlan | None = None,
               search_id: str | None = None) -> SearchResult:
    """Run a new search to the end; see :func:`resume_search` to continue one."""
    return _run(cfg, echo, plan or plan_search(cfg), search_id or new_search_id(cfg.name), None)


def find_search_dir(target: str, storage: str) -> Path:
    """A search folder from a path, a search id, or a search name (its newest search)."""
    p = Path(target).expanduser()
    if (p / STATE_FILE).is_file():
        return p.resolve()
    if "/" in target or "\\" in target or target.startswith(".") or not target:
        raise InputError("NAME_OR_PATH", f"'{target}' is not a search folder (no {STATE_FILE})",
                         "give a search id, a search name, or the folder of a search")
    root = Path(storage).expanduser().resolve()
    if (root / target / STATE_FILE).is_file():
        return root / target
    matches = sorted(d for d in root.glob(f"{target}-*") if (d / STATE_FILE).is_file())
    if not matches:
        raise InputError("NAME_OR_PATH", f"no search '{target}' under {root}",
                         "pass --storage, or a search id printed by `autoft search`")
    return matches[-1]


def resume_search(target: str, storage: str = "autoft-runs", echo: Any = print,
                  restart_errored: bool = False, overrides: list[str] | None = None) -> SearchResult:
    """Continue an interrupted search from its folder: Ray state, Optuna study, MLflow runs."""
    from autoft.config import apply_overrides, validate_config

    search_dir = find_search_dir(target, storage)
    state = json.loads((search_dir / STATE_FILE).read_text())
    raw = state["config"]
    if overrides:
        raw = apply_overrides(json.loads(json.dumps(raw)), overrides)
    cfg = validate_config(raw, str(search_dir / STATE_FILE))
    # evals_per_epoch: the pruner's rungs and the trials' checkpoints count evaluations.
    for key in ("search.metric", "search.mode", "space", "pruning.scheduler", "search.sampler",
                "search.startup_trials", "train.evals_per_epoch"):
        before, after = _dig(state["config"], key), _dig(config_to_dict(cfg), key)
        if before != after:
            raise InputError(key, f"changed from {before!r} to {after!r}; a resumed search keeps its objective, space "
                             "and evaluation cadence",
                             "start a new search to change it")
    _check_unfinished(search_dir)
    _check_not_moved(search_dir, state)
    # The search continues where its files are, whatever the current folder is.
    cfg = cfg.model_copy(update={"storage": str(search_dir.parent)})
    plan = plan_search(cfg)
    if json.loads(json.dumps(_space_dict(plan.space), default=str)) != state["space"]:
        raise InputError("space", f"the space '{plan.space.name}' changed since the search started",
                         "restore the space file, or start a new search")
    if not (search_dir / "tuner.pkl").is_file():
        raise InputError("NAME_OR_PATH", f"{search_dir} has no Ray state to resume", "start a new search")
    _repair_saved_state(search_dir, echo)
    return _run(cfg, echo, plan, state["search_id"], _Resume(state["parent_run_id"], restart_errored))


def _check_unfinished(search_dir: Path) -> None:
    """Refuse a search that ended: its trials' checkpoints are gone and Ray has nothing left to
    run, so a resume could only fail and mark the finished search failed. A search that ended
    with every trial errored ("failed") can still be resumed with --restart-errored."""
    path = search_dir / RESULT_FILE
    if not path.is_file():
        return
    try:
        ended = json.loads(path.read_text())
    except ValueError:
        return  # torn by a crash while written: the search did not end cleanly
    # Files written before the status was recorded: only an all-errored search ended "failed".
    status = ended.get("status") or ("failed" if ended.get("n_failed") == ended.get("n_trials") else "completed")
    if status != "failed":
        raise InputError("NAME_OR_PATH", f"search {search_dir.name} already ended ({status}, "
                         f"{ended.get('n_trials', 0)} trials, best {ended.get('best_value')}); there is nothing to resume",
                         "start a new search to run more trials: autoft search ...")


def _check_not_moved(search_dir: Path, state: dict[str, Any]) -> None:
    """Refuse a search folder moved or copied since the search started. Ray's saved state
    (the searcher's Optuna database, the folders of trials still to come) and MLflow's
    artifact location name the old folder by its absolute path, so a resume from the copy
    would write into the original's records, or fail if it is gone."""
    started = state.get("search_dir")
    if started is None:  # written before the folder was recorded: the storage, if absolute
        storage = Path(_dig(state, "config.storage") or "")
        started = str(storage / search_dir.name) if storage.is_absolute() else None
    if started is not None and Path(started).resolve() != search_dir.resolve():
        raise InputError("NAME_OR_PATH", f"search {search_dir.name} was started in {started} and is now in "
                         f"{search_dir}; its saved Ray, Optuna and MLflow state name the old folder, so a resume "
                         "here would write into it", f"move the storage folder back to {Path(started).parent} "
                         "and resume it there")


def _repair_saved_state(search_dir: Path, echo: Any) -> None:
    """Ray state files a kill cut short, left unwritten or left a save behind (see
    :mod:`autoft.ray_state`) are put back from autoft's whole copy or set aside; where no whole
    save is left, the resume is refused before anything changes."""
    plan = ray_state.plan_repair(search_dir)
    lost = "Ray cannot resume it; its finished trials stay in MLflow and the Optuna study"
    if plan.tuner == "cut":
        raise InputError("NAME_OR_PATH", f"{search_dir / ray_state.TUNER} was cut short (the search was killed "
                         f"while Ray wrote it) and no whole copy is left; {lost}", "start a new search")
    for gone, what in ((plan.trial_list is None, "trial list"), (not plan.searcher_left, "searcher state")):
        if gone:
            raise InputError("NAME_OR_PATH", f"Ray's saved {what} in {search_dir} was cut short (the search was "
                             f"killed while Ray copied it) and no whole one is left; {lost}", "start a new search")
    if plan.needed:
        ray_state.apply_repair(search_dir, plan)
        cut = [s for s in plan.put_back if s not in plan.behind]
        if cut or plan.tuner == "put back":
            saves = [f"save {s}" for s in cut] + ([ray_state.TUNER] if plan.tuner == "put back" else [])
            echo(f"resume: Ray's copy of its saved state was cut short by the kill; put back whole from "
                 f"{ray_state.COPY_DIR}/ ({', '.join(saves)})")
        if plan.behind:
            echo(f"resume: Ray's copy of its saved state was behind the driver's last save when the kill came; "
                 f"put back whole from {ray_state.COPY_DIR}/ ({', '.join(f'save {s}' for s in plan.behind)})")
        if plan.set_aside:
            echo(f"resume: Ray's saved state was cut short by the kill ({', '.join(p.name for p in plan.set_aside)}; "
                 f"no whole copy, and a searcher save goes whole): set aside as *{ray_state.SET_ASIDE}; "
                 "Ray resumes from its newest whole save")
    # Ray rewrites tuner.pkl in place at every save of a resumed search: keep it while whole.
    ray_state.keep_tuner(search_dir)


def _dig(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


# Ray Tune reads these from the environment. Trials keep the driver's working directory
# (relative data paths stay valid), autoft's callbacks replace Tune's default loggers, and
# Ray's experiment state is saved every 2 s so a killed driver loses at most seconds.
_TUNE_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
             "TUNE_GLOBAL_CHECKPOINT_S": "2"}


@contextlib.contextmanager
def _tune_environment() -> Any:
    """Set ``_TUNE_ENV`` (where the user has not) for one search, then put the caller's
    environment back: a notebook or a benchmark running other code afterwards must not
    inherit them."""
    added = {k: v for k, v in _TUNE_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _run(cfg: ExperimentConfig, echo: Any, plan: SearchPlan, search_id: str, resume: _Resume | None) -> SearchResult:
    with _tune_environment():
        return _run_search(cfg, echo, plan, search_id, resume)


def _run_search(cfg: ExperimentConfig, echo: Any, plan: SearchPlan, search_id: str,
                resume: _Resume | None) -> SearchResult:
    import pandas as pd

    t_start = time.time()
    phases = _Phases()
    phases.enter("prepare")
    storage = Path(cfg.storage).expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)
    search_dir = storage / search_id
    metric, mode = cfg.search.metric, cfg.search.mode

    budget = cfg.search.time_budget_s
    bounded = cfg.search.num_trials < UNBOUNDED_TRIALS
    trials = (f"{cfg.search.num_trials} trials" if bounded else "trials") + (f" for up to {budget:g} s" if budget else "")
    echo(f"{'resuming' if resume else 'search'} {search_id}: {trials}, space "
         f"'{plan.space.name}', model {model_label(cfg)} ({plan.num_layers} blocks), "
         f"{len(plan.text.train.texts)} train / {len(plan.text.validation.texts)} validation examples"
         + cadence_note(plan.evals_per_epoch, cfg.train.evals_per_epoch))
    data = tokenize_for(plan)
    if cfg.train.cache_frozen and plan.hidden_size:
        from autoft.prefix_cache import over_bound_notice

        notice = over_bound_notice({"train": data.train, "validation": data.validation}, plan.hidden_size,
                                   plan.num_layers, cfg.train.cache_max_bytes)
        if notice:
            echo(notice)

    from ray import tune

    from autoft.callbacks import (
        MlflowTrialCallback,
        PrunedCheckpointJanitor,
        ResumeRepair,
        StatusLineCallback,
        TrialTimeout,
    )
    from autoft.pruning import (
        PruneAwareOptunaSearch,
        ResumableGenerator,
        ResumableLimiter,
        find_in,
        make_sampler,
        make_scheduler,
    )
    from autoft.ray_trainable import tune_trial
    from autoft.tracking import log_best_model

    static = {"model": str(cfg.model.path), "dataset": plan.text.identity["train"],
              "n_train": len(data.train), "n_validation": len(data.validation), "max_length": cfg.train.max_length}
    # Ray's start-up is mostly waiting on its processes; MLflow's (imports, a new store's
    # migrations, the parent run) is mostly the driver's CPU: the two overlap.
    phases.enter("ray_start")
    with ThreadPoolExecutor(1, thread_name_prefix="autoft-mlflow") as pool:
        opening = pool.submit(_open_tracking, cfg, plan, search_dir, resume, static)
        try:
            _init_ray(cfg.address, None)
        except BaseException as exc:
            status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
            with contextlib.suppress(Exception):
                opening.result()[0].end_search(status, {}, {
                    "autoft.reason": f"Ray did not start: {type(exc).__name__}: {exc}"[:500]})
            raise
        tracker, parent, log = opening.result()
    tracking_uri = tracker.uri
    # The driver imports the model's classes only to score the test set at the end, and
    # the import costs seconds: it runs beside Tune, while the first trial's worker starts.
    preload = None
    if data.test is not None and not cfg.model.trust_remote_code:
        preload = threading.Thread(target=preload_classifier_code, args=(plan.model_path,),
                                   name="autoft-preload", daemon=True)
        preload.start()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = cfg.train.threads or max(1, int(cfg.resources.cpus_per_trial))
    setup = {"base_recipe": plan.base_recipe.to_dict(), "model_path": str(plan.model_path),
             "options": {**trial_options(cfg), "threads": threads, "cache_dir": storage / "prefix-cache",
                         "evals_per_epoch": plan.evals_per_epoch,
                         "overlap_checkpoints": cfg.train.overlap_checkpoints,
                         "scratch_root": _scratch_root(cfg, storage)}}
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, data=data, setup=setup),
        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial})
    mlflow_cb = MlflowTrialCallback(tracker, plan.space, plan.base_recipe.to_dict(), static, search_id,
                                    metric, mode, log)
    callbacks = [mlflow_cb, PrunedCheckpointJanitor(log, search_dir, metric, mode),
                 StatusLineCallback(log, metric, mode, echo, cfg.search.num_trials if bounded else None)]
    if cfg.search.trial_timeout_s:
        callbacks.append(TrialTimeout(cfg.search.trial_timeout_s, mlflow_cb))
    phases.enter("tune")
    if resume is None:
        searcher = PruneAwareOptunaSearch(
            space=plan.space.define_by_run(), metric=metric, mode=mode,
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed, cfg.search.resolved_startup_trials()),
            study_name=search_id, storage=optuna.storages.RDBStorage(f"sqlite:///{storage / 'optuna.db'}"),
            points_to_evaluate=plan.space.starting_points() if cfg.search.warm_start else None,
            num_trials=cfg.search.num_trials,
        )
        # The schedulers count evaluations (pruning.TIME_ATTR), not epochs.
        scheduler = make_scheduler(cfg.pruning.scheduler, _max_epochs(plan) * plan.evals_per_epoch,
                                   cfg.pruning.grace_period,
                                   cfg.pruning.reduction_factor,
                                   _unfreeze_oracle(plan) if cfg.pruning.align_to_unfreezing else None,
                                   stop_ties=cfg.pruning.stop_ties,
                                   tie_breaker=cfg.pruning.tie_breaker)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The searcher counts the trials (num_trials) and the limiter caps them in flight,
                # both correctable on resume (ResumeRepair); Ray's own counter is not.
                metric=metric, mode=mode,
                search_alg=ResumableGenerator(ResumableLimiter(searcher, cfg.search.max_concurrent)),
                scheduler=scheduler, num_samples=-1,
                time_budget_s=cfg.search.time_budget_s, reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=search_id, storage_path=str(storage), storage_filesystem=linking_local(),
                callbacks=callbacks, verbose=0,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=cfg.search.keep_checkpoints, checkpoint_score_attribute=metric,
                    checkpoint_score_order=mode),
                failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            ),
        )
    else:
        tuner = tune.Tuner.restore(str(search_dir), trainable, storage_filesystem=linking_local(),
                                   resume_unfinished=True,
                                   resume_errored=not resume.restart_errored,
                                   restart_errored=resume.restart_errored)
    search_alg = _restored_search_alg(tuner)
    if isinstance(search_alg, ResumableGenerator):  # (a search saved before the copy existed gets it now)
        search_alg._keep_copy_in = str(search_dir)
    if resume is not None:
        # Tuner.restore has no run_config argument; the pickled callbacks hold the
        # dead driver's state, so this run's callbacks replace them.
        # Ray restores the searcher's state into this same object when fit() starts.
        searcher = find_in(search_alg, PruneAwareOptunaSearch)
        tuner._local_tuner._run_config.callbacks = [*callbacks, ResumeRepair(search_alg, echo)]
    status = "completed"
    try:
        with _SigintWatch() as sigint:
            grid = tuner.fit()
    except BaseException as exc:
        status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
        tracker.close_open_trials("killed", f"search {status}: {type(exc).__name__}")
        tracker.end_search(status, {}, {"autoft.reason": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    if sigint.fired:
        # Ray Tune caught Ctrl-C, stopped the trials, saved its state and returned
        # normally: end the search as killed, keep the trial checkpoints for resume.
        tracker.close_open_trials("killed", "search interrupted (SIGINT); `autoft resume` continues it")
        tracker.end_search("killed", {}, {"autoft.reason": "interrupted (SIGINT)"})
        raise KeyboardInterrupt
    if grid.num_errors and all(r.error for r in grid):
        status = "failed"
    why = "the search's time budget ran out" if cfg.search.time_budget_s else "the search ended"
    cut_short = mlflow_cb.close_unfinished(why)
    if searcher is not None:
        searcher.close_unfinished(cut_short, why)
    tracker.close_open_trials("killed", "search ended before the trial finished")

    rows = log.in_order()
    leader = best_row(rows, metric, mode)
    best_ckpt_dir: Path | None = None
    test_metrics: dict[str, float] = {}
    model_info: dict[str, Any] = {}
    if leader is not None:
        try:
            phases.enter("export")
            best_ckpt_dir = export_best(grid, leader.get("trial_id"), metric, mode, search_dir, plan.model_path,
                                        cfg.model.trust_remote_code)
            if best_ckpt_dir is not None and data.test is not None:
                phases.enter("test")
                if preload is not None:
                    preload.join()
                test_metrics = score_test(best_ckpt_dir, data, cfg)
            if best_ckpt_dir is not None and cfg.tracking.log_best_model:
                phases.enter("register")
                echo("logging the best checkpoint to MLflow as a registered model...")
                model_info = log_best_model(tracking_uri, parent, best_ckpt_dir,
                                            cfg.tracking.experiment or cfg.name, cfg.train.max_length)
        except Exception as exc:
            # The trials are all recorded; the search run must not stay RUNNING in MLflow, and
            # the trial checkpoints stay on disk for a look at what went wrong.
            doing = {"export": "exporting the best checkpoint", "test": "scoring the test split",
                     "register": "registering the best model"}.get(phases.current, phases.current)
            reason = f"failed after its trials, {doing}: {type(exc).__name__}: {exc}"
            tracker.end_search("failed", {}, {"autoft.reason": reason[:500]})
            raise
    phases.enter("finish")
    if status == "completed":
        drop_trial_checkpoints(search_dir)
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("completed", "pruned", "failed", "killed")}
    trials_df = pd.DataFrame([{
        "number": r.get("number"), "trial_id": r.get("trial_id"), "status": r["status"],
        metric: r.get("best"), "epochs": r.get("epochs"), "reason": r.get("reason", ""),
        "wall_seconds": r.get("wall_seconds"),
        "compute_seconds": sum(h.get("epoch_seconds", 0.0) for h in r["history"]),
        "checkpoint_seconds": sum(h.get("checkpoint_seconds", 0.0) for h in r["history"]),
        "train_samples": sum(h.get("train_samples", 0) for h in r["history"]),
        "run_id": r.get("run_id"), **(r.get("params") or {}),
    } for r in rows])
    result = SearchResult(
        search_id=search_id,
        best_value=row_best(leader, metric, mode) if leader else None,
        best_config=leader["recipe"] if leader else {},
        best_checkpoint=str(best_ckpt_dir) if best_ckpt_dir else None,
        mlflow_experiment_id=tracker.experiment_id, mlflow_run_id=parent, tracking_uri=tracking_uri,
        storage_dir=str(search_dir), n_trials=len(rows), n_completed=counts["completed"],
        n_pruned=counts["pruned"], n_failed=counts["failed"], n_killed=counts["killed"],
        wall_seconds=time.time() - t_start,
        metric=metric, mode=mode, test_metrics=test_metrics, model=model_info, trials=trials_df,
    )
    # "finish" stops here: ending the MLflow run and writing search.json are not timed.
    result.phase_seconds = phases.done()
    summary = {"best_value": result.best_value or 0.0, "n_trials": result.n_trials,
               "n_completed": result.n_completed, "n_pruned": result.n_pruned, "n_failed": result.n_failed,
               "n_killed": result.n_killed,
               "wall_seconds": result.wall_seconds, **{f"test_{k.removeprefix('eval_')}": v for k, v in test_metrics.items()},
               **{f"phase_{k}_seconds": v for k, v in result.phase_seconds.items()}}
    if leader:
        tracker.log_dict(parent, leader["recipe"], "best_config.yaml")
    tracker.end_search(status, summary, {"autoft.best_trial_run": leader.get("run_id", "") if leader else ""})
    search_dir.mkdir(parents=True, exist_ok=True)
    (search_dir / RESULT_FILE).write_text(json.dumps({"status": status, **result.to_dict()}, indent=2, default=str))
    return result


def _open_tracking(cfg: ExperimentConfig, plan: SearchPlan, search_dir: Path, resume: _Resume | None,
                   static: dict[str, Any]) -> tuple[Any, str, Any]:
    """The search's MLflow side: a new parent run (with the config, the space and the
    resume state file), or the interrupted search's run and the trials it recorded."""
    from autoft.callbacks import TrialLog
    from autoft.tracking import SearchTracker, default_tracking_uri

    storage, search_id = search_dir.parent, search_dir.name
    tracking_uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage)
    tracker = SearchTracker(tracking_uri, cfg.tracking.experiment or cfg.name, storage / "mlartifacts")
    log = TrialLog()
    if resume is not None:
        tracker.attach_search(resume.parent_run_id)
        log.load_from_mlflow(tracker, plan.space, cfg.search.metric)
        return tracker, resume.parent_run_id, log
    parent = tracker.start_search(search_id, {
        "space": plan.space.name, "sampler": cfg.search.sampler, "scheduler": cfg.pruning.scheduler,
        "startup_trials": cfg.search.resolved_startup_trials(), "num_trials": cfg.search.num_trials,
        "time_budget_s": cfg.search.time_budget_s,
        "max_concurrent": cfg.search.max_concurrent, "metric": cfg.search.metric, "mode": cfg.search.mode,
        "search_seed": cfg.search.seed, "grace_period": cfg.pruning.grace_period,
        "reduction_factor": cfg.pruning.reduction_factor, "stop_ties": cfg.pruning.stop_ties,
        "tie_breaker": cfg.pruning.tie_breaker, "evals_per_epoch": plan.evals_per_epoch, **static},
        {"autoft.storage": str(search_dir)})
    config, space = config_to_dict(cfg), _space_dict(plan.space)
    tracker.log_dict(parent, config, "config.yaml")
    tracker.log_dict(parent, space, "space.yaml")
    search_dir.mkdir(parents=True, exist_ok=True)
    _write_json(search_dir / STATE_FILE, {
        "search_id": search_id, "search_dir": str(search_dir), "parent_run_id": parent,
        "experiment_id": tracker.experiment_id, "tracking_uri": tracking_uri, "config": config, "space": space,
        "created": dt.datetime.now().isoformat(timespec="seconds")})
    return tracker, parent, log


class _Phases:
    """Wall seconds per phase of the driver, phases entered one after another."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name, self._t0 = "", 0.0

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._name:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + now - self._t0
        self._name, self._t0 = name, now

    @property
    def current(self) -> str:
        """The phase entered last ("" before the first)."""
        return self._name

    def done(self) -> dict[str, float]:
        self.enter("")
        return dict(self.seconds)


class _SigintWatch:
    """Tells whether Ray Tune's SIGINT handler fired during ``Tuner.fit``.

    ``fit`` installs a handler that, on Ctrl-C, stops the experiment, saves its state,
    puts back the handler it found and lets ``fit`` return normally: no KeyboardInterrupt.
    After a normal end it leaves its own handler installed (a later Ctrl-C would be
    swallowed), so the handler found before ``fit`` is put back either way."""

    def __enter__(self) -> _SigintWatch:
        import signal
        import threading

        self.fired = False
        self._main = threading.current_thread() is threading.main_thread()
        self._before = signal.getsignal(signal.SIGINT) if self._main else None
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if not self._main or self._before is None:
            return
        # Ray's handler, having fired, restored exactly the handler it found.
        self.fired = (exc[0] is None and signal.getsignal(signal.SIGINT) is self._before
                      and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0"))
        signal.signal(signal.SIGINT, self._before)


def _restored_search_alg(tuner: Any) -> Any:
    """The search algorithm a new or restored Tuner runs with (ResumableGenerator(ResumableLimiter(
    PruneAwareOptunaSearch)), or the bare searcher of a search saved before them): Ray rebuilt
    it from its saved state and offers no public handle on it (it lives in the tuner's TuneConfig)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    return getattr(config, "search_alg", None)


def _trial_dirname(trial: Any) -> str:
    return trial_dirname(trial.trial_id)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _space_dict(space: SearchSpace) -> dict[str, Any]:
    """The resolved space as plain YAML/JSON data (lists, not tuples)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    params = {}
    for n, p in space.params.items():
        spec = {k: plain(v) for k, v in asdict(p).items() if v is not None and v != () and v != {}}
        if not spec.get("log"):
            spec.pop("log", None)
        params[n] = spec
    return {"name": space.name, "description": space.description, "fixed": space.fixed, "params": params}
