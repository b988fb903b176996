"""Create or resume a study and run its trials in worker processes.

``--n-jobs N`` starts N worker *processes*, not Optuna's threads: SB3 seeds and draws from the global random
generators, so trials in threads of one process would corrupt each other. Every worker (of this machine or another
one sharing the storage) runs ``study.optimize`` until the study holds this command's number of finished trials,
counted by ``MaxTrialsCallback``; failed trials do not count, so a retried trial takes the place of the one whose
worker died.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from tuning.objective import Objective
from tuning.storage import open_storage

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
# The states that count towards ``--n-trials``.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Study settings that define the objective: a study cannot be continued with other values.
OBJECTIVE_SETTINGS = (
    "algo",
    "env_id",
    "n_timesteps",
    "eval_freq",
    "n_eval_episodes",
    "seeds_per_trial",
    "seed",
    "extensions",
)


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Everything a worker needs to run trials; the fields are the command-line options."""

    algo: str
    env_id: str
    storage: str
    study_name: str
    out: Path
    n_trials: int = 20
    n_timesteps: int = 10_000
    eval_freq: int = 1_000
    n_eval_episodes: int = 5
    seeds_per_trial: int = 1
    extensions: bool = False
    sampler: str = "tpe"
    pruner: str = "median"
    n_jobs: int = 1
    timeout: float | None = None
    seed: int = 0
    device: str = "cpu"
    heartbeat_interval: int = 60
    grace_period: int = 120

    @property
    def results(self) -> Path:
        """Where the study's outputs go: ``OUT/STUDY_NAME/``, so that one ``--out`` can hold several studies."""
        return self.out / re.sub(r"[^\w.-]", "_", self.study_name)

    def objective(self) -> Objective:
        seeds = [self.seed + k for k in range(self.seeds_per_trial)]
        return Objective(
            self.algo,
            self.env_id,
            self.n_timesteps,
            self.eval_freq,
            self.n_eval_episodes,
            seeds,
            self.extensions,
            self.device,
        )


class StudyMismatch(Exception):
    """The named study exists and was created for another objective."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE and CMA-ES use 5 random trials first (rl-zoo3: 10, for longer studies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # ``group`` handles the conditional extension parameters (PER α/β, σ₀, C51 support).
            return optuna.samplers.TPESampler(n_startup_trials=5, multivariate=True, group=True, seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            # CMA-ES samples the numeric parameters; categorical ones fall back to random sampling.
            return optuna.samplers.CmaEsSampler(n_startup_trials=5, seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}, expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, n_timesteps: int, eval_freq: int) -> optuna.pruners.BasePruner:
    """Pruners whose steps are environment steps, as reported by the objective."""
    if name == "median":
        # As rl-zoo3: no pruning in the first third of training, nor before 5 trials finished (rl-zoo3: 10).
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=n_timesteps // 3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(eval_freq, n_timesteps), max_resource=n_timesteps)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}, expected one of {', '.join(PRUNERS)}")


def load_study(config: TuningConfig) -> optuna.Study:
    """Create the study, or load it and check that it optimises the same objective.

    The sampler's seed mixes ``--seed`` with the process id and the study's size, so that workers running side by
    side, here or on other machines, and resumed runs do not sample the same trials. The training seeds (``--seed``,
    ``--seed`` + 1, ...) are the same in every trial of a study, so that trials differ by their hyperparameters only.
    """
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period)
    study = optuna.create_study(
        storage=storage,
        study_name=config.study_name,
        direction="maximize",
        pruner=make_pruner(config.pruner, config.n_timesteps, config.eval_freq),
        load_if_exists=True,
    )
    entropy = [config.seed, os.getpid(), len(study.get_trials(deepcopy=False))]
    study.sampler = make_sampler(config.sampler, int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    for key in OBJECTIVE_SETTINGS:
        value = getattr(config, key)
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif stored != value:
            raise StudyMismatch(
                f"study {config.study_name!r} was created with {key}={stored!r}, this command has {key}={value!r}: "
                "use the same settings to continue it, or another --study-name"
            )
    return study


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_worker(
    config: TuningConfig,
    max_finished: int,
    callbacks: tuple[Callable[[optuna.Study, FrozenTrial], None], ...] = (),
) -> None:
    """Run trials until the study holds ``max_finished`` finished trials or ``config.timeout`` passed."""
    torch.set_num_threads(1)  # several workers share the cores; tiny networks gain nothing from threads
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(config)
    if n_finished(study) >= max_finished:
        return
    study.optimize(
        config.objective(),
        n_trials=None,
        timeout=config.timeout,
        callbacks=[MaxTrialsCallback(max_finished, states=FINISHED), *callbacks],
        gc_after_trial=True,
    )


class Progress:
    """A progress bar over this command's trials, and one line per finished trial of the study."""

    def __init__(self, study: optuna.Study, n_trials: int) -> None:
        self._study = study
        self._first = n_finished(study)
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._bar = tqdm(total=n_trials, unit="trial", desc=f"study {study.study_name}", dynamic_ncols=True)

    def update(self, *_: object) -> None:
        trials = self._study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self._seen:
                self._seen.add(trial.number)
                self._bar.write(describe(trial))
        done = sum(trial.state in FINISHED for trial in trials) - self._first
        self._bar.update(min(done, self._bar.total) - self._bar.n)
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            self._bar.set_postfix(best=f"{max(complete):.1f}")

    def close(self) -> None:
        self._bar.close()


def describe(trial: FrozenTrial) -> str:
    """One line for a finished trial."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"mean return {trial.value:.1f}"
    elif trial.state == TrialState.PRUNED:
        steps = max(trial.intermediate_values, default=0)
        outcome = trial.user_attrs.get("fail_reason") or f"pruned at step {steps}"
    else:
        outcome = trial.user_attrs.get("fail_reason", "its worker died (no heartbeat) or raised, see its log")
    retried = trial.system_attrs.get("failed_trial")
    retry = f" (retry of trial {retried})" if retried is not None else ""
    return f"trial {trial.number}{retry}: {trial.state.name.lower()}, {outcome}"


def _worker_process(config: TuningConfig, max_finished: int) -> None:
    """The target of a worker process: Ctrl-C (sent to the whole process group) ends it quietly with code 130."""
    try:
        run_worker(config, max_finished)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def tune(config: TuningConfig) -> list[int]:
    """Run ``config.n_trials`` more trials in ``config.n_jobs`` worker processes.

    Returns the exit codes of the worker processes (empty when the only worker was this process).
    """
    study = load_study(config)
    max_finished = n_finished(study) + config.n_trials
    progress = Progress(study, config.n_trials)
    try:
        if config.n_jobs == 1:
            run_worker(config, max_finished, callbacks=(progress.update,))
            return []
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_worker_process, args=(config, max_finished)) for _ in range(config.n_jobs)]
        for worker in workers:
            worker.start()
        try:
            while any(worker.is_alive() for worker in workers):
                time.sleep(1.0)
                progress.update()
        finally:
            for worker in workers:
                worker.join()
        return [worker.exitcode for worker in workers]
    finally:
        progress.update()
        progress.close()
