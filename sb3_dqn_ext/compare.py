"""
``sb3-dqn-ext compare``: train several DQN variants on the same envs and seeds, and compare them with
:mod:`sb3_dqn_ext.stats`.

Every ``(algorithm, env, seed)`` is one run: the algorithm is built with the env's hyperparameters (rl-zoo3's DQN
values, or a YAML), trained, and evaluated every ``eval_freq`` steps (and before training and at the end) on an
evaluation env of its own with deterministic actions. Runs execute in worker processes (or on a Dask cluster) and
each finished run is saved on its own under ``OUT/runs/``, so a comparison that was stopped finishes what is missing
when started again; with ``checkpoint_every`` a run that was stopped midway also resumes from its newest checkpoint
(:mod:`sb3_dqn_ext.checkpoints`) instead of starting over. The final scores are normalised per env (:data:`ENVS`)
and aggregated with stratified-bootstrap confidence intervals; ``OUT`` receives ``results.md``, ``results.json`` and
PNG plots.

The algorithms, and the per-env reference scores used for normalising, are data: :data:`ALGORITHMS` and
:data:`ENVS`. An ablation is a list of registry names.
"""

from __future__ import annotations

import concurrent.futures
import copy
import importlib
import inspect
import json
import math
import multiprocessing
import os
import platform
import shutil
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from sb3_dqn_ext import stats
from sb3_dqn_ext.buffers import PrioritizedReplayBuffer, ReplayBuffer
from sb3_dqn_ext.checkpoints import (
    ResumableCheckpointCallback,
    _checkpoint_folders,
    checkpoint_timesteps,
    learn_remaining,
    pickle_vec_env,
    resume_from_checkpoint,
)
from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.hyperparams import load_hyperparams, to_constructor_kwargs
from sb3_dqn_ext.rainbow import RAINBOW_POLICY_KWARGS, RAINBOW_REPLAY_KWARGS
from sb3_dqn_ext.torch_layers import register_minatar_envs

# Evaluation envs are seeded apart from the training envs (the same offset as the tuning command).
EVAL_SEED_OFFSET = 10_000
# A resumed run whose envs could not be saved with its checkpoint gets new ones, seeded apart from both
RESUME_SEED_OFFSET = 20_000
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EnvReference:
    """
    What the comparison needs to know about an env, besides its hyperparameters.

    :param random_score: mean return of the uniformly random policy: normalised score 0
    :param max_score: normalised score 1: the env's maximum return when it has one, else its reward threshold
    :param threshold: the return at which a run counts as having solved the env (gymnasium's ``reward_threshold``)
    :param rainbow: Rainbow's env-specific ``policy_kwargs``: the C51 support, which must cover the discounted returns
    :param qrdqn: QR-DQN's env-specific ``policy_kwargs``: ``n_quantiles`` from rl-zoo3 2.9.2's ``qrdqn.yml``
    :param source: where the reference scores come from
    :param max_episode_steps: time limit of the comparison's training and evaluation envs, for envs registered
        without one (MinAtar's games end only when the agent loses)
    """

    random_score: float
    max_score: float
    threshold: float
    rainbow: dict[str, Any]
    qrdqn: dict[str, Any]
    source: str
    max_episode_steps: int | None = None


_RANDOM_SOURCE = (
    "random: mean return of 1000 episodes of uniformly random actions (env.reset(seed=0), action_space.seed(0)), "
    "measured with gymnasium 1.4.0"
)
ENVS: dict[str, EnvReference] = {
    "CartPole-v1": EnvReference(
        random_score=22.55,
        max_score=500.0,
        threshold=475.0,
        # +1 per step and γ = 0.99: discounted returns stay below 1 / (1 − γ) = 100
        rainbow=dict(v_min=0.0, v_max=100.0),
        qrdqn=dict(n_quantiles=10),
        source=f"{_RANDOM_SOURCE} (± 0.38 s.e.); max: episodes end after 500 steps of reward +1",
    ),
    "Acrobot-v1": EnvReference(
        random_score=-499.33,
        max_score=-100.0,
        threshold=-100.0,
        # −1 per step and γ = 0.99: discounted returns stay above −100
        rainbow=dict(v_min=-100.0, v_max=0.0),
        qrdqn=dict(n_quantiles=25),
        source=f"{_RANDOM_SOURCE} (± 0.29 s.e.); max: the reward threshold (good agents reach about −65, above 1)",
    ),
    "LunarLander-v3": EnvReference(
        random_score=-184.73,
        max_score=200.0,
        threshold=200.0,
        # a crash is −100 and a landing +100 (+10 per leg), plus shaping rewards
        rainbow=dict(v_min=-200.0, v_max=200.0),
        qrdqn=dict(n_quantiles=170),
        source=f"{_RANDOM_SOURCE} (± 3.52 s.e.); max: the reward threshold",
    ),
    "MountainCar-v0": EnvReference(
        random_score=-200.0,
        max_score=-110.0,
        threshold=-110.0,
        # −1 per step and rl-zoo3's γ = 0.98: discounted returns stay above −50
        rainbow=dict(v_min=-50.0, v_max=0.0),
        qrdqn=dict(n_quantiles=25),
        source=f"{_RANDOM_SOURCE} (never reaches the goal in 200 steps); max: the reward threshold",
    ),
    # MinAtar (Young & Tian, 2019), registered by register_minatar_envs; hyperparameters: MINATAR_DQN (the paper's)
    "MinAtar/Breakout-v1": EnvReference(
        random_score=0.416,
        max_score=10.0,
        threshold=10.0,
        # +1 per brick; the discounted returns of agents breaking up to a few dozen bricks stay below 20
        rainbow=dict(v_min=0.0, v_max=20.0),
        qrdqn=dict(n_quantiles=200),
        source=(
            f"{_RANDOM_SOURCE} (± 0.021 s.e., 10.2 steps per episode); max and threshold: 10 bricks per episode, "
            "our choice (MinAtar publishes no threshold)"
        ),
        max_episode_steps=10_000,
    ),
}


def make_env(env_id: str, seed: int | None = None) -> VecEnv:
    """
    One-env ``VecEnv`` of ``env_id`` as the comparison trains and evaluates on it.

    MinAtar ids are registered first (:func:`~sb3_dqn_ext.torch_layers.register_minatar_envs`), and envs with a
    ``max_episode_steps`` in :data:`ENVS` get that time limit.

    :param env_id: a gymnasium env id
    :param seed: seed of the env (``None``: not seeded here; the algorithm seeds it)
    """
    if env_id.startswith("MinAtar/"):
        register_minatar_envs()
    reference = ENVS.get(env_id)
    limit = reference.max_episode_steps if reference is not None else None
    return make_vec_env(
        env_id, n_envs=1, seed=seed, env_kwargs=None if limit is None else dict(max_episode_steps=limit)
    )


@dataclass(frozen=True)
class Algorithm:
    """
    One entry of the comparison's registry: a class and the constructor arguments that define the variant.

    :param cls: the class, as ``"module:Name"`` (imported when needed, so that optional libraries stay optional)
    :param description: one line for the tables
    :param kwargs: constructor arguments that define this algorithm; they override a shared hyperparameters file
    :param policy_kwargs: ``policy_kwargs`` entries that define it, merged into the shared ones (e.g. ``net_arch``)
    :param env_policy_kwargs: name of the :class:`EnvReference` field holding its env-specific ``policy_kwargs``
    :param package: the pip package that provides ``cls``, for the error message when it is missing
    """

    cls: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_policy_kwargs: str | None = None
    package: str = "sb3-dqn-ext"


_PER = dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(alpha=0.6, beta=0.4))
ALGORITHMS: dict[str, Algorithm] = {
    "sb3_dqn": Algorithm("stable_baselines3:DQN", "SB3's DQN", package="stable-baselines3"),
    "scratch_dqn": Algorithm("sb3_dqn_ext:ScratchDQN", "ScratchDQN, no extension"),
    "scratch_dqn_numpy": Algorithm(
        "sb3_dqn_ext:ScratchDQN", "ScratchDQN, no extension, NumPy MLP backend", kwargs=dict(mlp_backend="numpy")
    ),
    "double": Algorithm("sb3_dqn_ext:ScratchDQN", "ScratchDQN + Double DQN", kwargs=dict(double_q=True)),
    "dueling": Algorithm("sb3_dqn_ext:ScratchDQN", "ScratchDQN + dueling head", policy_kwargs=dict(dueling=True)),
    "per": Algorithm("sb3_dqn_ext:ScratchDQN", "ScratchDQN + prioritized replay (α 0.6, β 0.4 → 1)", kwargs=_PER),
    "nstep3": Algorithm("sb3_dqn_ext:ScratchDQN", "ScratchDQN + 3-step returns", kwargs=dict(n_steps=3)),
    "double_dueling_per_nstep3": Algorithm(
        "sb3_dqn_ext:ScratchDQN",
        "ScratchDQN + Double, dueling, PER, 3-step",
        kwargs=dict(double_q=True, n_steps=3, **_PER),
        policy_kwargs=dict(dueling=True),
    ),
    # RainbowDQN's own defaults add Double, dueling, PER (α 0.5), 3-step, noisy layers and C51 (51 atoms);
    # the noisy layers explore, so ε-greedy is off whatever the shared file says.
    "rainbow": Algorithm(
        "sb3_dqn_ext:RainbowDQN",
        "RainbowDQN (all six extensions)",
        kwargs=dict(exploration_initial_eps=0.0, exploration_final_eps=0.0),
        env_policy_kwargs="rainbow",
    ),
    # the same Rainbow with its C51 step and rollout actions in NumPy (mlp_backend="numpy": same mathematics)
    "rainbow_numpy": Algorithm(
        "sb3_dqn_ext:RainbowDQN",
        "RainbowDQN, NumPy backend",
        kwargs=dict(exploration_initial_eps=0.0, exploration_final_eps=0.0, mlp_backend="numpy"),
        env_policy_kwargs="rainbow",
    ),
    # Rainbow less its noisy layers: every other component with RainbowDQN's settings, and the ε-greedy exploration
    # of the shared hyperparameters (SB3's DQN's): isolates what the noisy layers do to learning
    "rainbow_no_noisy": Algorithm(
        "sb3_dqn_ext:ScratchDQN",
        "Rainbow without noisy layers (ε-greedy)",
        kwargs=dict(
            double_q=True,
            n_steps=3,
            replay_buffer_class=PrioritizedReplayBuffer,
            replay_buffer_kwargs=dict(RAINBOW_REPLAY_KWARGS),
        ),
        policy_kwargs=dict(dueling=True, n_atoms=RAINBOW_POLICY_KWARGS["n_atoms"]),
        env_policy_kwargs="rainbow",
    ),
    "qrdqn": Algorithm("sb3_contrib:QRDQN", "sb3-contrib's QR-DQN", env_policy_kwargs="qrdqn", package="sb3-contrib"),
}

# Replay buffer classes that a hyperparameters file may name (the tuning command writes these names).
BUFFER_CLASSES = {"ReplayBuffer": ReplayBuffer, "PrioritizedReplayBuffer": PrioritizedReplayBuffer}


class CompareError(ValueError):
    """A bad input of the comparison, found before any work; its message is one line for the user."""


def import_class(path: str) -> type:
    """``"module:Name"`` -> the class."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run; picklable, and the settings are saved with the result."""

    algo: str
    env_id: str
    seed: int
    cls: str
    policy: str
    kwargs: dict[str, Any]
    timesteps: int
    eval_freq: int
    n_eval_episodes: int
    device: str = "cpu"
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None

    def path(self, out: Path) -> Path:
        """Where this run's result is saved."""
        return out / "runs" / self.env_id / self.algo / f"seed_{self.seed}.json"

    def checkpoint_path(self, out: Path) -> Path:
        """Where this run's checkpoints are kept while it runs (deleted once its result is saved)."""
        return out.resolve() / "checkpoints" / self.env_id / self.algo / f"seed_{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The settings that define the run, as JSON: a saved run is reused only if they are equal."""
        return jsonable(
            dict(
                format=RUN_FORMAT_VERSION,
                cls=self.cls,
                policy=self.policy,
                hyperparameters=self.kwargs,
                timesteps=self.timesteps,
                eval_freq=self.eval_freq,
                n_eval_episodes=self.n_eval_episodes,
                eval_seed=self.seed + EVAL_SEED_OFFSET,
            )
        )


def jsonable(value: Any) -> Any:
    """Constructor arguments as JSON: classes by their import path, schedules and other objects by ``repr``."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _constructor_kwargs(entry: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    """An rl-zoo3 entry as constructor arguments, with the replay buffer class named as the tuning command names it."""
    kwargs = to_constructor_kwargs(entry)
    buffer_class = kwargs.get("replay_buffer_class")
    if isinstance(buffer_class, str):
        if buffer_class not in BUFFER_CLASSES:
            raise ScratchDQNError(
                f"{path}: replay_buffer_class {buffer_class!r} is not one of {', '.join(BUFFER_CLASSES)}"
            )
        kwargs["replay_buffer_class"] = BUFFER_CLASSES[buffer_class]
    return kwargs


def _accepted_arguments(cls: type) -> set[str]:
    """Keyword arguments of a constructor, following ``**kwargs`` to the base classes (``RainbowDQN``)."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        parameters = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return accepted - {"self", "policy", "env"}


def hyperparameters(
    algo: str, env_id: str, shared_file: str | Path | None = None, own_file: str | Path | None = None
) -> tuple[str, dict[str, Any]]:
    """
    The policy and constructor arguments of ``algo`` on ``env_id``.

    Three layers, each overriding the one before: the shared hyperparameters (``shared_file``, else rl-zoo3's DQN
    values), identical for every algorithm; the registry entry that defines the algorithm (:data:`ALGORITHMS`,
    with its env-specific ``policy_kwargs`` from :data:`ENVS`); and the algorithm's own file ``own_file`` (e.g.
    the tuning command's YAML for this algorithm), which replaces the shared file and wins over the registry.
    ``policy_kwargs`` are merged key by key. Shared arguments that the class does not take (``double_q`` for SB3's
    DQN) are left out.

    :param algo: a name in :data:`ALGORITHMS`
    :param env_id: an env in :data:`ENVS`
    :param shared_file: rl-zoo3-format YAML for every algorithm (``None``: rl-zoo3's DQN values)
    :param own_file: rl-zoo3-format YAML for this algorithm only
    :return: ``(policy, kwargs)``
    :raises ScratchDQNError: a file cannot be read, has no entry for the env, or names an unknown buffer class
    """
    spec = ALGORITHMS[algo]
    path = own_file if own_file is not None else shared_file
    entry = load_hyperparams(env_id, path)
    from_file = _constructor_kwargs(entry, path)
    own_policy_kwargs = getattr(ENVS[env_id], spec.env_policy_kwargs) if spec.env_policy_kwargs else {}
    registry = {**spec.kwargs, "policy_kwargs": {**spec.policy_kwargs, **own_policy_kwargs}}
    if own_file is None:
        accepted = _accepted_arguments(import_class(spec.cls))
        from_file = {key: value for key, value in from_file.items() if key in accepted}
    kwargs: dict[str, Any] = {}
    for layer in (from_file, registry) if own_file is None else (registry, from_file):
        for key, value in layer.items():
            kwargs[key] = {**kwargs.get(key, {}), **value} if key == "policy_kwargs" else value
    return entry.get("policy", "MlpPolicy"), copy.deepcopy(kwargs)  # never a reference into the registry


@dataclass
class ComparisonConfig:
    """
    The inputs of a comparison (the command's options).

    :param envs: env ids, each in :data:`ENVS`
    :param algos: names in :data:`ALGORITHMS`
    :param seeds: number of seeds; the seeds are ``0 .. seeds − 1``
    :param timesteps: training steps of each run (``None``: the hyperparameters' ``n_timesteps`` of each env)
    :param eval_freq: evaluate every ``eval_freq`` steps (and at 0 and at the end)
    :param n_eval_episodes: episodes per evaluation
    :param out: output folder
    :param hyperparams: shared rl-zoo3-format YAML (``None``: rl-zoo3's DQN values)
    :param algo_hyperparams: algorithm name -> its own YAML
    :param workers: local worker processes
    :param dask_scheduler: address of a Dask scheduler to run on instead of local processes
    :param device: PyTorch device of the runs
    :param command: the command line, recorded in the outputs
    :param checkpoint_every: save a resumable checkpoint of each run (model, replay buffer, random generators,
        envs, evaluations so far) every this many env steps under ``OUT/checkpoints/``, so that a run stopped
        midway resumes from its newest checkpoint when the command runs again; ``None``: runs start over
    """

    envs: list[str]
    algos: list[str]
    seeds: int = 10
    timesteps: int | None = None
    eval_freq: int = 5000
    n_eval_episodes: int = 10
    out: Path = Path("compare_out")
    hyperparams: str | None = None
    algo_hyperparams: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    dask_scheduler: str | None = None
    device: str = "cpu"
    command: str = ""
    checkpoint_every: int | None = None


def _check_env(env_id: str) -> None:
    import gymnasium as gym

    try:
        if env_id.startswith("MinAtar/"):
            register_minatar_envs()
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise CompareError(f"unknown env id {env_id!r} ({error})") from None
    if spec.id not in ENVS:
        raise CompareError(
            f"no reference scores for env {env_id!r}: add it to sb3_dqn_ext.compare.ENVS (known: {', '.join(ENVS)})"
        )


def plan(config: ComparisonConfig) -> list[RunSpec]:
    """
    Check every input and list the runs, before any work: a bad input raises :class:`CompareError`.

    Each (algorithm, env) model is built once, so that bad hyperparameters are found here and not in a worker.

    :param config: the comparison's inputs
    :return: the runs, seed-major (every algorithm's seed 0 first), so that a stopped comparison is balanced
    """
    for name, value in (("seeds", config.seeds), ("eval-freq", config.eval_freq)):
        if value <= 0:
            raise CompareError(f"--{name} must be > 0, got {value}")
    if config.n_eval_episodes <= 0:
        raise CompareError(f"--n-eval-episodes must be > 0, got {config.n_eval_episodes}")
    if config.workers <= 0:
        raise CompareError(f"--workers must be > 0, got {config.workers}")
    if config.timesteps is not None and config.timesteps <= 0:
        raise CompareError(f"--timesteps must be > 0, got {config.timesteps}")
    if config.checkpoint_every is not None and config.checkpoint_every <= 0:
        raise CompareError(f"--checkpoint-every must be > 0, got {config.checkpoint_every}")
    if not config.algos:
        raise CompareError("--algos is empty")
    for algo in [*config.algos, *config.algo_hyperparams]:
        if algo not in ALGORITHMS:
            raise CompareError(f"unknown algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")
    for names, what in ((config.algos, "algorithm"), (config.envs, "env")):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise CompareError(f"{what} {duplicates[0]!r} is given twice")
    for env_id in config.envs:
        _check_env(env_id)
    for algo in config.algos:
        try:
            import_class(ALGORITHMS[algo].cls)
        except ImportError as error:
            raise CompareError(
                f"{algo} needs {ALGORITHMS[algo].package}: pip install {ALGORITHMS[algo].package} ({error})"
            ) from None
    _check_unknown_keys(config)

    runs = []
    for env_id in config.envs:
        try:
            timesteps = config.timesteps or int(load_hyperparams(env_id, config.hyperparams).get("n_timesteps", 0))
        except ScratchDQNError as error:
            raise CompareError(str(error)) from None
        if timesteps <= 0:
            raise CompareError(f"no n_timesteps for {env_id} in {config.hyperparams}: pass --timesteps")
        for algo in config.algos:
            policy, kwargs = _checked_hyperparameters(config, algo, env_id)
            for seed in range(config.seeds):
                runs.append(
                    RunSpec(
                        algo,
                        env_id,
                        seed,
                        ALGORITHMS[algo].cls,
                        policy,
                        kwargs,
                        timesteps,
                        config.eval_freq,
                        config.n_eval_episodes,
                        config.device,
                        config.checkpoint_every,
                    )
                )
    runs.sort(key=lambda run: (run.seed, config.envs.index(run.env_id), config.algos.index(run.algo)))
    if config.checkpoint_every is not None:
        runs = [replace(run, checkpoint_dir=str(run.checkpoint_path(config.out))) for run in runs]
    for run in runs:
        saved = read_run(run.path(config.out))
        if saved is not None and saved.get("settings") != run.settings():
            raise CompareError(
                f"{run.path(config.out)} was made with other settings than this command's "
                f"({_first_difference(saved.get('settings'), run.settings())}); use another --out, or delete it"
            )
        if saved is None and run.checkpoint_dir is not None:
            for settings in _checkpointed_settings(Path(run.checkpoint_dir)):
                if settings != run.settings():
                    raise CompareError(
                        f"the checkpoints in {run.checkpoint_dir} were made with other settings than this command's "
                        f"({_first_difference(settings, run.settings())}); use another --out, or delete them"
                    )
    return runs


def _check_unknown_keys(config: ComparisonConfig) -> None:
    """A shared file's argument that no chosen algorithm takes is a typo: say so instead of dropping it."""
    if config.hyperparams is None:
        return
    accepted = set().union(*(_accepted_arguments(import_class(ALGORITHMS[algo].cls)) for algo in config.algos))
    for env_id in config.envs:
        try:
            kwargs = _constructor_kwargs(load_hyperparams(env_id, config.hyperparams), config.hyperparams)
        except ScratchDQNError as error:
            raise CompareError(str(error)) from None
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise CompareError(f"{config.hyperparams}: no chosen algorithm takes {unknown[0]!r} ({env_id})")


def _checked_hyperparameters(config: ComparisonConfig, algo: str, env_id: str) -> tuple[str, dict[str, Any]]:
    try:
        policy, kwargs = hyperparameters(algo, env_id, config.hyperparams, config.algo_hyperparams.get(algo))
        # a copy: SB3's classes keep and modify the policy_kwargs dict they are given (QR-DQN adds its optimizer)
        model = import_class(ALGORITHMS[algo].cls)(policy, env_id, device=config.device, **copy.deepcopy(kwargs))
    except (ScratchDQNError, ValueError, TypeError, AssertionError, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CompareError(f"{algo} on {env_id}: {message}") from None
    model.env.close()
    return policy, kwargs


def _first_difference(saved: Any, wanted: Any, where: str = "") -> str:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted)):
            if saved.get(key) != wanted.get(key):
                return _first_difference(saved.get(key), wanted.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'settings'}: {saved!r} there, {wanted!r} here"


# ---------------------------------------------------------------------------------------------------- one run
def run_one(spec: RunSpec) -> dict[str, Any]:
    """
    Train and evaluate one run (in a worker process: one torch thread). With ``spec.checkpoint_dir`` the run saves
    checkpoints every ``spec.checkpoint_every`` steps and, when one is there already, resumes from the newest.

    :param spec: the run
    :return: the result: evaluation steps and returns, final return, training and evaluation wall times
    """
    th.set_num_threads(1)
    resumed = _resume(spec) if spec.checkpoint_dir is not None else None
    if resumed is None and spec.checkpoint_dir is not None:
        shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)  # nothing to resume from in it: start clean
    if resumed is None:
        eval_env = make_env(spec.env_id, seed=spec.seed + EVAL_SEED_OFFSET)
        # an env id, as before MinAtar, unless the env needs a time limit (the algorithm seeds it either way)
        reference = ENVS.get(spec.env_id)
        env = make_env(spec.env_id) if reference is not None and reference.max_episode_steps else spec.env_id
        model = import_class(spec.cls)(
            spec.policy, env, seed=spec.seed, device=spec.device, verbose=0, **copy.deepcopy(spec.kwargs)
        )
        evaluation = _PeriodicEvaluation(eval_env, spec.eval_freq, spec.n_eval_episodes, spec.timesteps)
        evaluation.evaluate(model, 0)
        train_seconds, resumes = 0.0, []
    else:
        model, evaluation, train_seconds, resumes = resumed
    callbacks: list[BaseCallback] = [evaluation]
    if spec.checkpoint_dir is not None:
        assert spec.checkpoint_every is not None
        callbacks.append(_RunCheckpoints(spec, evaluation, train_seconds, resumes))
    start = time.perf_counter()
    if resumed is None:
        model.learn(spec.timesteps, callback=callbacks)
    else:
        learn_remaining(model, callback=callbacks)
    learn_seconds = time.perf_counter() - start
    evaluation.eval_env.close()
    model.env.close()
    saving = callbacks[1].seconds if len(callbacks) > 1 else 0.0  # type: ignore[attr-defined]
    train_seconds += learn_seconds - evaluation.seconds_after_start - saving
    returns = [float(np.mean(episodes)) for episodes in evaluation.episode_returns]
    result = dict(
        algo=spec.algo,
        env=spec.env_id,
        seed=spec.seed,
        settings=spec.settings(),
        steps=evaluation.steps,
        returns=returns,
        episode_returns=evaluation.episode_returns,
        final_return=returns[-1],
        train_seconds=train_seconds,
        eval_seconds=evaluation.seconds,
        steps_per_second=spec.timesteps / train_seconds,
        torch_threads=th.get_num_threads(),
        host=socket.gethostname(),
        versions=_versions(),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if resumes:
        result["resumed"] = resumes
    return result


# ---------------------------------------------------------------------------------------------------- checkpoints
def _progress_file(folder: Path) -> Path:
    """The evaluations and timings that go with the checkpoint ``folder`` (a file beside it)."""
    return folder.parent / f"progress-{checkpoint_timesteps(folder):012d}.pkl"


def _checkpointed_settings(checkpoint_dir: Path) -> list[Any]:
    """The settings recorded with each checkpoint in ``checkpoint_dir`` (none if there are none)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in sorted(checkpoint_dir.glob("progress-*.pkl")):
        try:
            found.append(cloudpickle.loads(path.read_bytes())["settings"])
        except Exception:  # noqa: BLE001 - a half-written or foreign file: never resumed from
            continue
    return found


class _RunCheckpoints(ResumableCheckpointCallback):
    """
    :class:`~sb3_dqn_ext.checkpoints.ResumableCheckpointCallback` for one comparison run: each checkpoint gets a
    progress file beside it with the evaluations so far, the training time so far and the evaluation env (pickled
    when it can be), written before the checkpoint itself so that a checkpoint never lacks its progress file.
    """

    def __init__(self, spec: RunSpec, evaluation: _PeriodicEvaluation, train_seconds: float, resumes: list[dict]):
        assert spec.checkpoint_dir is not None and spec.checkpoint_every is not None
        super().__init__(spec.checkpoint_every, spec.checkpoint_dir, keep_last=2)
        self.spec, self.evaluation = spec, evaluation
        self.train_seconds_before, self.resumes = train_seconds, resumes
        self.seconds = 0.0  # time spent saving, taken out of the training time
        self.start = time.perf_counter()

    def _save(self) -> None:
        begin = time.perf_counter()
        evaluation = self.evaluation
        eval_env, _ = pickle_vec_env(evaluation.eval_env)  # (None, e.g. for Box2D: a resumed run gets a new one)
        train_seconds = self.train_seconds_before + (begin - self.start) - evaluation.seconds_after_start - self.seconds
        progress = dict(
            settings=self.spec.settings(),
            num_timesteps=int(self.model.num_timesteps),
            steps=list(evaluation.steps),
            episode_returns=[list(r) for r in evaluation.episode_returns],
            eval_seconds=evaluation.seconds,
            train_seconds=train_seconds,
            eval_env=eval_env,
            resumes=list(self.resumes),
        )
        folder = Path(self.spec.checkpoint_dir)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"progress-{self.model.num_timesteps:012d}.pkl"
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        temporary.write_bytes(cloudpickle.dumps(progress))
        os.replace(temporary, target)
        with warnings.catch_warnings():  # an env that cannot be saved is recorded when the run resumes
            warnings.filterwarnings("ignore", message="the checkpoint does not hold the env")
            super()._save()
        kept = {_progress_file(path) for _, path in _checkpoint_folders(folder)}
        for path in folder.glob("progress-*.pkl"):
            if path not in kept:
                path.unlink(missing_ok=True)
        self.seconds += time.perf_counter() - begin

    def _on_training_end(self) -> None:
        """No checkpoint of a finished run: its result is saved instead."""


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove ``folder``'s parents up to (not including) ``stop`` while they are empty (``checkpoints/ENV/ALGO``)."""
    for parent in folder.parents:
        if parent == stop or stop not in parent.parents:
            return
        try:
            parent.rmdir()  # only an empty folder: another run's checkpoints stay
        except OSError:
            return


def _resume(spec: RunSpec) -> tuple[BaseAlgorithm, _PeriodicEvaluation, float, list[dict]] | None:
    """The run rebuilt from its newest checkpoint that has its progress file, or ``None`` when there is none."""
    folder = Path(spec.checkpoint_dir)  # type: ignore[arg-type]
    if not folder.is_dir():
        return None
    for _, checkpoint in reversed(_checkpoint_folders(folder)):
        try:
            progress = cloudpickle.loads(_progress_file(checkpoint).read_bytes())
        except Exception:  # noqa: BLE001 - no (complete) progress file: an older checkpoint, or start over
            continue
        if progress["settings"] != spec.settings():
            continue
        steps = progress["num_timesteps"]
        try:
            model = resume_from_checkpoint(checkpoint, device=spec.device)
            env_restored = True
        except ScratchDQNError:  # the env could not be saved with the checkpoint (e.g. Box2D): new episodes
            env = make_env(spec.env_id, seed=spec.seed + RESUME_SEED_OFFSET + steps)
            model = resume_from_checkpoint(checkpoint, env=env, device=spec.device)
            env_restored = False
        if progress["eval_env"] is not None:
            eval_env = cloudpickle.loads(progress["eval_env"])
        else:
            eval_env = make_env(spec.env_id, seed=spec.seed + EVAL_SEED_OFFSET + RESUME_SEED_OFFSET + steps)
        evaluation = _PeriodicEvaluation(eval_env, spec.eval_freq, spec.n_eval_episodes, spec.timesteps)
        evaluation.steps = list(progress["steps"])
        evaluation.episode_returns = [list(r) for r in progress["episode_returns"]]
        evaluation.seconds = progress["eval_seconds"]
        resumes = [
            *progress["resumes"],
            dict(at=steps, env_restored=env_restored, eval_env_restored=progress["eval_env"] is not None),
        ]
        return model, evaluation, progress["train_seconds"], resumes
    return None


class _PeriodicEvaluation(BaseCallback):
    """Deterministic evaluation every ``eval_freq`` steps and at the last step, with SB3's ``evaluate_policy``."""

    def __init__(self, eval_env: VecEnv, eval_freq: int, n_episodes: int, total_timesteps: int) -> None:
        super().__init__()
        self.eval_env, self.eval_freq, self.n_episodes = eval_env, eval_freq, n_episodes
        self.total_timesteps = total_timesteps
        self.steps: list[int] = []
        self.episode_returns: list[list[float]] = []
        self.seconds = 0.0  # all evaluations
        self.seconds_after_start = 0.0  # the evaluations inside learn(), taken out of the training time

    def evaluate(self, model: BaseAlgorithm, step: int) -> None:
        start = time.perf_counter()
        returns, _ = evaluate_policy(
            model, self.eval_env, self.n_episodes, deterministic=True, return_episode_rewards=True, warn=False
        )
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        if step > 0:
            self.seconds_after_start += elapsed
        self.steps.append(step)
        self.episode_returns.append([float(value) for value in returns])

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0 or self.num_timesteps == self.total_timesteps:
            self.evaluate(self.model, self.num_timesteps)
        return True


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "numpy", "sb3-dqn-ext"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def read_run(path: Path) -> dict[str, Any] | None:
    """A saved run, or ``None`` if there is none (or only a partly written one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_run(path: Path, result: dict[str, Any]) -> None:
    """Write a run atomically: a stopped comparison never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(result, indent=1))
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------- execution
def _init_worker() -> None:
    th.set_num_threads(1)


def _executor(config: ComparisonConfig, workers: int) -> tuple[concurrent.futures.Executor, Any]:
    """``workers`` local worker processes, or the ``concurrent.futures`` executor of a Dask client."""
    if config.dask_scheduler is None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
        return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker), None
    from distributed import Client

    try:
        client = Client(config.dask_scheduler, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise CompareError(f"cannot reach the Dask scheduler {config.dask_scheduler}: {error}") from None
    threaded = {worker: n for worker, n in client.nthreads().items() if n > 1}
    if threaded:
        client.close()
        worker, n = next(iter(threaded.items()))
        raise CompareError(
            f"Dask worker {worker} runs {n} threads: SB3 seeds and draws from process-global random generators, so "
            "runs must not share a process; start workers with --nthreads 1"
        )
    return client.get_executor(pure=False), client


def execute(runs: Sequence[RunSpec], config: ComparisonConfig) -> tuple[int, list[str]]:
    """
    Run what is not saved yet, saving each result as it finishes.

    :return: the number of runs done now, and one line per failed run
    """
    pending = [run for run in runs if read_run(run.path(config.out)) is None]
    workers = max(1, min(config.workers, len(pending)))
    where = f"Dask scheduler {config.dask_scheduler}" if config.dask_scheduler else f"{workers} worker process(es)"
    to_run = f"{len(pending)} to run on {where}" if pending else "nothing to run"
    print(f"{len(runs)} runs: {len(runs) - len(pending)} saved in {config.out}, {to_run}")
    if not pending:
        return 0, []
    executor, client = _executor(config, workers)
    failures: list[str] = []
    done = 0
    try:
        futures = {executor.submit(run_one, run): run for run in pending}
        with tqdm(total=len(pending), unit="run", desc="compare") as bar:
            for future in concurrent.futures.as_completed(futures):
                run = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # a failed run is reported; the others go on
                    failures.append(f"{run.algo} {run.env_id} seed {run.seed}: {type(error).__name__}: {error}")
                    bar.write(f"FAILED {failures[-1]}")
                else:
                    save_run(run.path(config.out), result)
                    if run.checkpoint_dir is not None:  # the result is saved: its checkpoints are not needed
                        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
                        _remove_empty_parents(Path(run.checkpoint_dir), stop=config.out.resolve())
                    done += 1
                    bar.set_postfix_str(f"{run.algo} {run.env_id} seed {run.seed}: {result['final_return']:.1f}")
                bar.update()
    except BaseException:  # Ctrl-C: stop the workers now; what was saved stays saved
        _stop(executor)
        raise
    finally:
        executor.shutdown(wait=True)
        if client is not None:
            client.close()
    return done, failures


def _stop(executor: concurrent.futures.Executor) -> None:
    """Cancel what has not started and end the local worker processes (a Dask cluster cancels on shutdown)."""
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        executor.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()
    else:
        executor.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------------- statistics
def _interval(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(value) for value in values]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summarize(
    results: Sequence[Mapping[str, Any]],
    algos: Sequence[str],
    envs: Sequence[str],
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """
    Aggregate the runs with :mod:`sb3_dqn_ext.stats` (JSON-ready; the tables and plots are drawn from it).

    Scores are the final evaluation returns, normalised per env with :data:`ENVS` (random policy 0, max 1).

    :param results: one dict per run (see :func:`run_one`); every algorithm needs the same seeds on every env
    :param algos: algorithms, in table order
    :param envs: envs, in table order
    :param reps: bootstrap replications
    :param seed: seed of the bootstrap
    :return: aggregate metrics with CIs, probabilities of improvement over the baseline (``sb3_dqn`` when present,
        else the first algorithm), per-env results (seeds solved, median steps to the threshold), IQM curves,
        performance profiles and wall times
    """
    by_key = {(r["algo"], r["env"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    missing = [(a, e, s) for a in algos for e in envs for s in seeds if (a, e, s) not in by_key]
    if missing:
        raise ValueError(f"runs missing for the summary, e.g. {missing[0]}")
    runs = {algo: [[by_key[algo, env, s] for env in envs] for s in seeds] for algo in algos}
    low = np.array([ENVS[env].random_score for env in envs])
    high = np.array([ENVS[env].max_score for env in envs])

    final = {algo: np.array([[run["final_return"] for run in row] for row in runs[algo]]) for algo in algos}
    normalised = {algo: stats.normalize(final[algo], low, high) for algo in algos}
    aggregates = stats.aggregate_with_ci(normalised, reps=reps, confidence=CONFIDENCE, seed=seed)
    baseline = "sb3_dqn" if "sb3_dqn" in algos else algos[0]
    improvement = {
        algo: _interval(stats.probability_of_improvement(normalised[algo], normalised[baseline], reps, seed=seed))
        for algo in algos
        if algo != baseline
    }

    per_env: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for j, env in enumerate(envs):
        reference = ENVS[env]
        steps = runs[algos[0]][0][j]["steps"]
        raw = {algo: np.array([row[j]["returns"] for row in runs[algo]]) for algo in algos}  # (seeds, points)
        iqm_raw = stats.iqm_curve({algo: raw[algo][:, None, :] for algo in algos}, reps, seed=seed)
        curves[env] = dict(steps=steps, iqm={algo: [_interval(band) for band in iqm_raw[algo]] for algo in algos})
        per_env[env] = {}
        for algo in algos:
            returns = final[algo][:, j]
            reached = stats.steps_to_threshold_per_run(steps, raw[algo], reference.threshold)
            per_env[env][algo] = dict(
                final_returns=_interval(returns),
                iqm=stats.iqm(returns),
                mean=float(returns.mean()),
                std=float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
                seeds_solved=int((returns >= reference.threshold).sum()),
                seeds_reached_threshold=int(np.isfinite(reached).sum()),
                median_steps_to_threshold=_finite_or_none(float(np.median(reached))),
            )

    same_steps = all(curves[env]["steps"] == curves[envs[0]]["steps"] for env in envs)
    sample_efficiency = None
    if same_steps:
        stacked = {
            algo: stats.normalize(
                np.array([[row[j]["returns"] for j in range(len(envs))] for row in runs[algo]]),
                low[:, None],
                high[:, None],
            )
            for algo in algos
        }
        iqm_normalised = stats.iqm_curve(stacked, reps, seed=seed)
        sample_efficiency = dict(
            steps=curves[envs[0]]["steps"],
            iqm={algo: [_interval(band) for band in iqm_normalised[algo]] for algo in algos},
        )

    top = max(1.0, max(float(scores.max()) for scores in normalised.values()))
    taus = np.linspace(0.0, top, 101)
    profiles = stats.performance_profile(normalised, taus, reps, seed=seed)

    timing = {}
    for algo in algos:
        flat = [run for row in runs[algo] for run in row]
        seconds = np.array([run["train_seconds"] for run in flat])
        speed = np.array([run["steps_per_second"] for run in flat])
        timing[algo] = dict(
            runs=len(flat),
            train_seconds_mean=float(seconds.mean()),
            train_seconds_total=float(seconds.sum()),
            eval_seconds_total=float(sum(run["eval_seconds"] for run in flat)),
            steps_per_second_mean=float(speed.mean()),
            steps_per_second_min=float(speed.min()),
            steps_per_second_max=float(speed.max()),
        )

    return dict(
        algos=list(algos),
        envs=list(envs),
        seeds=seeds,
        baseline=baseline,
        bootstrap=dict(reps=reps, seed=seed, confidence=CONFIDENCE),
        normalisation={
            env: dict(
                random_score=ENVS[env].random_score,
                max_score=ENVS[env].max_score,
                threshold=ENVS[env].threshold,
                source=ENVS[env].source,
            )
            for env in envs
        },
        aggregates={algo: {metric: list(values) for metric, values in aggregates[algo].items()} for algo in algos},
        probability_of_improvement=improvement,
        per_env=per_env,
        curves=curves,
        sample_efficiency=sample_efficiency,
        performance_profile=dict(
            taus=_interval(taus), fraction={algo: [_interval(band) for band in profiles[algo]] for algo in algos}
        ),
        timing=timing,
        hyperparameters={
            env: {algo: runs[algo][0][j]["settings"]["hyperparameters"] for algo in algos} for j, env in enumerate(envs)
        },
        versions=runs[algos[0]][0][0].get("versions", {}),
    )


# ---------------------------------------------------------------------------------------------------- reports
def _ci(values: Sequence[float], digits: int = 3) -> str:
    point, low, high = values
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _steps(value: float | None, reached: int, n: int) -> str:
    if value is None:
        return f"not reached ({reached}/{n} runs reach it)"
    return f"{value:,.0f}"


def headline_table(summary: Mapping[str, Any]) -> str:
    """The one table printed at the end: aggregate IQM, improvement over the baseline, seeds solved, speed."""
    baseline = summary["baseline"]
    n = len(summary["seeds"]) * len(summary["envs"])
    lines = [
        f"| algorithm | IQM (normalised) | P(better than {baseline}) | seeds solved | env steps/s |",
        "|---|---|---|---|---|",
    ]
    for algo in summary["algos"]:
        solved = sum(summary["per_env"][env][algo]["seeds_solved"] for env in summary["envs"])
        improvement = summary["probability_of_improvement"].get(algo)
        lines.append(
            f"| {algo} | {_ci(summary['aggregates'][algo]['iqm'])} | "
            f"{_ci(improvement, 2) if improvement else '(baseline)'} | {solved}/{n} | "
            f"{summary['timing'][algo]['steps_per_second_mean']:,.0f} |"
        )
    return "\n".join(lines)


def markdown_report(summary: Mapping[str, Any], command: str, settings: Mapping[str, Any]) -> str:
    """``results.md``: settings, tables ready to paste, and the plots."""
    algos, envs = summary["algos"], summary["envs"]
    reps, confidence = summary["bootstrap"]["reps"], summary["bootstrap"]["confidence"]
    seeds = summary["seeds"]
    out = [
        "# DQN comparison",
        "",
        f"Command: `{command}`",
        "",
        f"- envs: {', '.join(envs)}; algorithms: {', '.join(algos)}",
        f"- seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} runs per algorithm and env); "
        f"{settings['timesteps']} env steps per run",
        f"- evaluation: every {settings['eval_freq']} steps (and at 0 and at the end), {settings['n_eval_episodes']} "
        f"episodes with deterministic actions, on an evaluation env seeded with the run's seed + {EVAL_SEED_OFFSET}",
        f"- scores: final evaluation return, normalised per env (random policy 0, max 1); {confidence:.0%} "
        f"stratified-bootstrap confidence intervals, {reps} replications",
        f"- versions: {', '.join(f'{k} {v}' for k, v in summary['versions'].items())}",
        "",
        "## Aggregate normalised score",
        "",
        "| algorithm | IQM | mean | median | optimality gap (lower is better) |",
        "|---|---|---|---|---|",
    ]
    for algo in algos:
        metrics = summary["aggregates"][algo]
        out.append(
            f"| {algo} | {_ci(metrics['iqm'])} | {_ci(metrics['mean'])} | {_ci(metrics['median'])} | "
            f"{_ci(metrics['optimality_gap'])} |"
        )
    out += ["", "## Probability of improvement", "", "| X | Y | P(X > Y) |", "|---|---|---|"]
    for algo, values in summary["probability_of_improvement"].items():
        out.append(f"| {algo} | {summary['baseline']} | {_ci(values, 2)} |")
    out += ["", "P(X > Y): the probability that a run of X ends with a higher score than a run of Y (0.5: a tie)."]
    for env in envs:
        reference = summary["normalisation"][env]
        threshold = reference["threshold"]
        out += [
            "",
            f"## {env}",
            "",
            f"Normalised with random {reference['random_score']:g} → 0 and {reference['max_score']:g} → 1; "
            f"solved: final return ≥ {threshold:g}.",
            "",
            f"| algorithm | final return IQM | mean ± std | seeds solved | median steps to {threshold:g} |",
            "|---|---|---|---|---|",
        ]
        for algo in algos:
            row = summary["per_env"][env][algo]
            n = len(row["final_returns"])
            out.append(
                f"| {algo} | {row['iqm']:.1f} | {row['mean']:.1f} ± {row['std']:.1f} | {row['seeds_solved']}/{n} | "
                f"{_steps(row['median_steps_to_threshold'], row['seeds_reached_threshold'], n)} |"
            )
    out += [
        "",
        "## Wall time",
        "",
        "Training time excludes the evaluations; runs share the machine with the other workers.",
        "",
        "| algorithm | runs | training time per run (s, mean) | env steps/s (mean, min–max) |",
        "|---|---|---|---|",
    ]
    for algo in algos:
        t = summary["timing"][algo]
        out.append(
            f"| {algo} | {t['runs']} | {t['train_seconds_mean']:.1f} | {t['steps_per_second_mean']:,.0f} "
            f"({t['steps_per_second_min']:,.0f}–{t['steps_per_second_max']:,.0f}) |"
        )
    out += ["", "## Hyperparameters", "", "Constructor arguments of each algorithm; blank: the class's default.", ""]
    for env in envs:
        table = summary["hyperparameters"][env]
        keys = sorted(set().union(*(table[algo] for algo in algos)))
        out += [f"{env}:", "", "| parameter | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
        for key in keys:
            values = [_cell(table[algo].get(key, "")) for algo in algos]
            out.append(f"| {key} | " + " | ".join(values) + " |")
        out.append("")
    out += ["## Plots", ""]
    for name, title in _plot_names(summary):
        out.append(f"![{title}]({name})")
        out.append("")
    return "\n".join(out)


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text.replace("|", "\\|")


def _curves_file(env_id: str) -> str:
    """``curves_<env>.png``, the namespace's ``/`` made ``_`` (``MinAtar/Breakout-v1``)."""
    return f"curves_{env_id.replace('/', '_')}.png"


def _plot_names(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    names = [("aggregates.png", "Aggregate normalised scores with 95% CIs")]
    if summary["probability_of_improvement"]:
        names.append(("probability_of_improvement.png", "Probability of improvement"))
    if summary["sample_efficiency"] is not None:
        names.append(("sample_efficiency.png", "IQM normalised score vs env steps"))
    names.append(("performance_profile.png", "Performance profile"))
    names += [(_curves_file(env), f"{env}: IQM return vs env steps") for env in summary["envs"]]
    return names


def write_plots(summary: Mapping[str, Any], out: Path) -> list[Path]:
    """The PNG plots (matplotlib, no display needed)."""
    from matplotlib.figure import Figure

    algos = summary["algos"]
    colours = {algo: f"C{i % 10}" for i, algo in enumerate(algos)}
    # different dashes, so that identical curves (scratch_dqn and sb3_dqn at equal seeds) both stay visible
    dashes = {algo: ["-", "--", "-.", ":"][i % 4] for i, algo in enumerate(algos)}
    written = []

    def save(figure: Figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        written.append(out / name)

    metrics = [("iqm", "IQM"), ("mean", "Mean"), ("median", "Median"), ("optimality_gap", "Optimality gap")]
    figure = Figure(figsize=(3.2 * len(metrics), 0.5 * len(algos) + 1.4))
    for i, (metric, title) in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        for y, algo in enumerate(algos):
            point, low, high = summary["aggregates"][algo][metric]
            axes.barh(y, high - low, left=low, height=0.6, color=colours[algo], alpha=0.7)
            axes.vlines(point, y - 0.3, y + 0.3, color="black")
        axes.set_yticks(range(len(algos)), algos if i == 0 else [""] * len(algos))
        axes.set_title(title)
        axes.set_xlabel("normalised score")
        axes.invert_yaxis()
    save(figure, "aggregates.png")

    if summary["probability_of_improvement"]:
        pairs = list(summary["probability_of_improvement"].items())
        figure = Figure(figsize=(6, 0.5 * len(pairs) + 1.4))
        axes = figure.add_subplot()
        for y, (algo, (point, low, high)) in enumerate(pairs):
            axes.barh(y, high - low, left=low, height=0.6, color=colours[algo], alpha=0.7)
            axes.vlines(point, y - 0.3, y + 0.3, color="black")
        axes.axvline(0.5, color="grey", linestyle="--")
        axes.set_yticks(range(len(pairs)), [f"{algo} > {summary['baseline']}" for algo, _ in pairs])
        axes.set_xlim(0, 1)
        axes.set_xlabel("P(X > Y)")
        axes.invert_yaxis()
        save(figure, "probability_of_improvement.png")

    def band_plot(name: str, steps: list[int], bands: Mapping[str, Any], ylabel: str, line: float | None) -> None:
        figure = Figure(figsize=(6.4, 4.2))
        axes = figure.add_subplot()
        for algo in algos:
            point, low, high = bands[algo]
            axes.plot(steps, point, label=algo, color=colours[algo], linestyle=dashes[algo])
            axes.fill_between(steps, low, high, color=colours[algo], alpha=0.2)
        if line is not None:
            axes.axhline(line, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("env steps")
        axes.set_ylabel(ylabel)
        axes.legend(fontsize="small")
        save(figure, name)

    if summary["sample_efficiency"] is not None:
        curve = summary["sample_efficiency"]
        band_plot("sample_efficiency.png", curve["steps"], curve["iqm"], "IQM normalised score (95% CI)", 1.0)

    profile = summary["performance_profile"]
    band_plot("performance_profile.png", profile["taus"], profile["fraction"], "fraction of runs with score > τ", None)
    for env in summary["envs"]:
        curve = summary["curves"][env]
        threshold = summary["normalisation"][env]["threshold"]
        band_plot(_curves_file(env), curve["steps"], curve["iqm"], f"{env}: IQM return (95% CI)", threshold)
    return written


def registry_table() -> str:
    """:data:`ALGORITHMS` as a Markdown table (printed in ``docs/compare.md``; a test keeps the two equal)."""
    lines = ["| name | algorithm | class | what it sets | env-specific |", "|---|---|---|---|---|"]
    for name, algo in ALGORITHMS.items():
        settings = {**algo.kwargs, **({"policy_kwargs": algo.policy_kwargs} if algo.policy_kwargs else {})}
        text = ", ".join(f"`{key}={_short(value)}`" for key, value in settings.items()) or "nothing"
        env_specific = f"`{algo.env_policy_kwargs}` column below" if algo.env_policy_kwargs else ""
        lines.append(f"| `{name}` | {algo.description} | `{algo.cls.replace(':', '.')}` | {text} | {env_specific} |")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return value.__name__ if isinstance(value, type) else repr(value)


def reference_table() -> str:
    """:data:`ENVS` as a Markdown table (printed in ``docs/compare.md``; a test keeps the two equal)."""
    lines = [
        "| env | random policy (score 0) | score 1 | solved at | `rainbow` | `qrdqn` |",
        "|---|---|---|---|---|---|",
    ]
    for env_id, ref in ENVS.items():
        own = [", ".join(f"{k}={v:g}" for k, v in params.items()) for params in (ref.rainbow, ref.qrdqn)]
        lines.append(
            f"| {env_id} | {ref.random_score:g} | {ref.max_score:g} | {ref.threshold:g} | {own[0]} | {own[1]} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- command
def compare(config: ComparisonConfig) -> tuple[dict[str, Any] | None, list[str]]:
    """
    Plan, run what is missing, aggregate and write the outputs.

    :param config: the inputs
    :return: the summary (``None`` if runs failed), and one line per failed run
    :raises CompareError: a bad input, before any work
    """
    runs = plan(config)
    done, failures = execute(runs, config)
    if failures:
        return None, failures
    results = [read_run(run.path(config.out)) for run in runs]
    summary = summarize(results, config.algos, config.envs)  # type: ignore[arg-type]
    timesteps = sorted({run.timesteps for run in runs})
    settings = dict(
        timesteps=", ".join(str(t) for t in timesteps),
        eval_freq=config.eval_freq,
        n_eval_episodes=config.n_eval_episodes,
    )
    summary["command"] = config.command
    summary["settings"] = settings
    (config.out / "results.json").write_text(json.dumps(summary, indent=1))
    write_plots(summary, config.out)
    (config.out / "results.md").write_text(markdown_report(summary, config.command, settings))
    print(f"ran {done} runs; results in {config.out / 'results.md'}")
    return summary, []
