"""The refinement stage: an Optuna study over plans, stored, resumable and shared by worker processes.

Every trial samples a plan (:func:`torchslim.search.plan.suggest`), scores it
(:func:`torchslim.search.evaluate.score`) and returns two values to minimise, the
objective and the accuracy drop, with ``drop - budget`` (and, with ``min_ratio``, the
objective's shortfall) as Optuna constraints, so the sampler (multi-objective TPE or
NSGA-II) learns where the budget holds. The study lives in its storage (SQLite in the
output directory by default, or any RDB URL such as ``postgresql://user@host/db``): a
search started again on the same storage and study continues where it stopped, and
worker processes on this or other machines that open the same study share its trials.
Workers keep a heartbeat; a trial whose worker died (no heartbeat for three intervals)
is marked failed and run again once. The last trials of the budget (``refine_trials``) refine
the best plan within the budget (:func:`refine_best`): a pattern search over its stronger
neighbours, after the sampler's exploration.

Example:
    >>> storage_url("runs/s")
    'sqlite:///runs/s/study.db'
"""

from __future__ import annotations

import multiprocessing as mp
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from torchslim.errors import TorchslimError
from torchslim.search.evaluate import Env, Hopeless, score
from torchslim.search.outcome import exact_drop
from torchslim.search.plan import RANGES, suggest, unchanged
from torchslim.search.result import SensitivityResult
from torchslim.search.searchconfig import SearchConfig

__all__ = [
    "FINISHED", "counted", "finished_trials", "open_study", "run_study", "run_workers", "refine_best", "storage_url", "stronger_neighbours",
]


#: the trial states of a finished trial (which of them count against the budget: :func:`counted`)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_url(out: str | Path, storage: str | None = None) -> str:
    """The study's storage: ``storage`` as given, else ``sqlite:///<out>/study.db``."""
    return storage if storage else f"sqlite:///{Path(out).as_posix()}/study.db"


def open_study(cfg: SearchConfig, url: str) -> optuna.Study:
    """Create the study or load it (same name, same storage): its finished trials stay."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; pinned with optuna==5.1.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, heartbeat_interval=cfg.heartbeat, grace_period=3 * cfg.heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sampler: optuna.samplers.BaseSampler
    if cfg.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True,
                                             n_startup_trials=max(4, cfg.proposals))
    return optuna.create_study(storage=storage, study_name=cfg.study, sampler=sampler,
                               directions=["minimize", "minimize"], load_if_exists=True)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


#: a study also stops once this many times ``trials`` plans were pruned before their healing
PRUNED_PER_TRIAL = 3


def _counts(study: optuna.Study) -> tuple[int, int]:
    """``(counted, pruned)``: see :func:`counted`."""
    n = pruned = 0
    for t in study.get_trials(deepcopy=False):
        n += t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "reason" in t.user_attrs)
        pruned += t.state == TrialState.PRUNED
    return n, pruned


def counted(study: optuna.Study) -> int:
    """Trials that count against the budget: scored, or failed for a reason of the plan's own (a trial whose
    worker died has no reason: it is run again and does not count). A plan pruned before its healing
    (``max_one_shot_drop``) costs seconds and does not count; :func:`exhausted` bounds how many there are."""
    return _counts(study)[0]


def exhausted(study: optuna.Study, trials: int) -> bool:
    """Whether the study holds its ``trials`` counted trials, or ``PRUNED_PER_TRIAL * trials`` pruned ones."""
    n, pruned = _counts(study)
    return n >= trials or pruned >= PRUNED_PER_TRIAL * trials


def _stop_at_budget(trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    def check(study: optuna.Study, _trial: FrozenTrial) -> None:
        if exhausted(study, trials):
            study.stop()

    return check


def stronger_neighbours(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plans one grid step stronger than ``params`` in one of its active numeric families each.

    A family left unchanged stays so (the neighbours refine the combination the plan chose);
    a parameter at the end of its range has no neighbour.

    Example:
        >>> [n["sparsity"] if n["sparsity"] != 0.4 else n["bits"] for n in
        ...  stronger_neighbours({"sparsity": 0.4, "bits": 3.0, "channels": 1.0, "heal_epochs": 1})]
        [0.45, 2.5]
    """
    out = []
    for name, (low, high, step) in RANGES.items():
        if name not in params or abs(float(params[name]) - unchanged(name)) < 1e-9:
            continue
        sign = -1 if unchanged(name) == high else 1  # away from unchanged: towards the range's other end
        value = round(float(params[name]) + sign * step, 6)
        if low - 1e-9 <= value <= high + 1e-9:
            out.append({**params, name: value})
    return out


def refine_best(study: optuna.Study, cfg: SearchConfig) -> int:
    """Queue the stronger neighbours of the best plan within the budget, in the study's last trials.

    Once the study holds ``trials - refine`` counted trials (:meth:`SearchConfig.refine_count`) and
    nothing is queued, the best scored plan whose drop leaves part of the budget unspent has its
    untried neighbours (:func:`stronger_neighbours`) queued; one of them that does better becomes the
    next best, and so on (a pattern search). Returns how many were queued.
    """
    refine = cfg.refine_count()
    if refine == 0 or _counts(study)[0] < cfg.trials - refine:
        return 0
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING))
    if any(t.state == TrialState.WAITING for t in trials):
        return 0
    fits = [t for t in trials if exact_drop(t.user_attrs.get("drop", float("inf"))) <= cfg.budget and "objective" in t.user_attrs]
    if not fits:
        return 0
    best = min(fits, key=lambda t: (t.user_attrs["objective"], exact_drop(t.user_attrs["drop"])))
    if exact_drop(best.user_attrs["drop"]) >= cfg.budget:
        return 0
    return enqueue_proposals(study, stronger_neighbours(best.params))


def _record(trial: optuna.Trial, plan: Mapping[str, Any]) -> None:
    trial.set_user_attr("plan", dict(plan))


def objective_fn(env: Env) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The function a study optimises: plan, score, constraints (the figures are kept as user attributes)."""
    cfg = env.cfg

    def run(trial: optuna.Trial) -> tuple[float, float]:
        plan = suggest(trial, cfg)
        _record(trial, plan)
        try:
            s = score(env, plan)
        except Hopeless as exc:
            trial.set_user_attr("reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except (TorchslimError, RuntimeError, ValueError) as exc:
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        ratio_gap = 0.0
        if cfg.min_ratio is not None and env.baseline.objective > 0:
            ratio_gap = cfg.min_ratio * s.objective / env.baseline.objective - 1.0
        for key, value in (("accuracy", s.accuracy), ("drop", s.drop), ("objective", s.objective),
                           ("seconds", s.seconds), ("stages", s.stages), ("measured_on", s.extra.get("measured_on"))):
            trial.set_user_attr(key, value)
        trial.set_constraint("drop_over_budget", s.drop - cfg.budget)  # feasible when <= 0
        trial.set_constraint("ratio_short", ratio_gap)
        return s.objective, s.drop

    return run


def enqueue_proposals(study: optuna.Study, plans: list[dict[str, Any]]) -> int:
    """Queue the fast stage's plans that the study holds no trial of yet (queued, running or finished).

    A restarted search queues none twice; a study continued with more ``trials`` and another
    ``proposals_from`` gets the new source's plans first. Returns how many were queued.
    """
    before = len(study.get_trials(deepcopy=False))
    for p in plans:
        study.enqueue_trial(p, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def run_study(env: Env, study: optuna.Study, *, callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
              deadline: float | None = None) -> None:
    """Run trials in this process until the study has ``cfg.trials`` finished trials or the deadline passes."""
    cfg = env.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    if exhausted(study, cfg.trials):
        return
    timeout = None if deadline is None else max(1.0, deadline - time.time())
    refine_best(study, cfg)  # a continued study past its exploration refines its best first
    callbacks: list[Any] = [lambda s, _t: refine_best(s, cfg), _stop_at_budget(cfg.trials)]
    if callback is not None:
        callbacks.append(callback)
    study.optimize(objective_fn(env), n_trials=None, timeout=timeout, callbacks=callbacks,
                   catch=(TorchslimError, RuntimeError, ValueError), gc_after_trial=True, show_progress_bar=False)


def _worker(head: dict[str, Any], cfg_data: dict[str, Any], url: str, sens_data: dict[str, Any] | None,
            deadline: float | None) -> None:
    """One worker process: its own model and data, the shared study."""
    cfg = SearchConfig.parse(cfg_data)
    torch.set_num_threads(cfg.threads or 1)
    sens = SensitivityResult.from_dict(sens_data) if sens_data is not None else None
    env = Env.build(head, cfg, sens)
    run_study(env, open_study(cfg, url), deadline=deadline)


def run_workers(env: Env, url: str, *, deadline: float | None, poll: Callable[[optuna.Study], None] | None = None) -> None:
    """Run the study in ``cfg.workers`` processes (spawned) and wait for them, polling progress."""
    cfg = env.cfg
    sens = env.sens.to_dict() if env.sens is not None else None
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(env.head, cfg.model_dump(mode="json"), url, sens, deadline),
                         daemon=True) for _ in range(cfg.workers)]
    for p in procs:
        p.start()
    study = open_study(cfg, url)
    try:
        while any(p.is_alive() for p in procs):
            if poll is not None:
                poll(study)
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad and not finished_trials(study):
        raise TorchslimError(f"search workers exited with codes {bad} and finished no trial")
