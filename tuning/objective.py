"""The Optuna objective: train one model per seed, evaluate every ``eval_freq`` steps, report the seed average.

The seeds of a trial run in lock-step, each in a thread of its own that pauses at every evaluation checkpoint, so
that a trial can be pruned at its first checkpoint whatever the number of seeds. Only one thread runs at a time and
each keeps its own copy of the global ``random``/NumPy/PyTorch generator states (which SB3 seeds and uses for
exploration and replay sampling), so every seed trains exactly as it would alone in the process.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from tuning.space import sample_params, search_space, to_hyperparams

ALGOS = ("scratch_dqn", "sb3_dqn", "rainbow")
# Evaluation environments are seeded apart from the training ones.
EVAL_SEED_OFFSET = 10_000


class TrainingDiverged(Exception):
    """Training produced non-finite network weights or evaluation returns."""


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The class behind an ``--algo`` name; imported here so that ``import tuning`` needs neither library."""
    if algo == "sb3_dqn":
        from stable_baselines3 import DQN

        return DQN
    if algo == "scratch_dqn":
        from sb3_dqn_ext import ScratchDQN

        return ScratchDQN
    if algo == "rainbow":
        from sb3_dqn_ext import RainbowDQN

        return RainbowDQN
    raise ValueError(f"unknown algo {algo!r}, expected one of {', '.join(ALGOS)}")


def divergence_errors(algo: str) -> tuple[type[Exception], ...]:
    """Exceptions that mean "these hyperparameters do not work", as opposed to a bug: the trial is pruned."""
    if algo == "sb3_dqn":
        return (TrainingDiverged,)
    from sb3_dqn_ext import ScratchDQNError

    return (TrainingDiverged, ScratchDQNError)


def build_model(algo: str, env: VecEnv, hyperparams: dict[str, Any], seed: int, device: str = "cpu") -> BaseAlgorithm:
    """Construct ``algo`` on ``env`` from rl-zoo3-style hyperparameters (``policy``, ``n_timesteps`` are dropped)."""
    kwargs = {key: value for key, value in hyperparams.items() if key not in ("policy", "n_timesteps")}
    buffer_name = kwargs.get("replay_buffer_class")
    if isinstance(buffer_name, str):
        import sb3_dqn_ext

        if buffer_name not in ("ReplayBuffer", "PrioritizedReplayBuffer"):
            raise ValueError(f"unknown replay_buffer_class {buffer_name!r}")
        kwargs["replay_buffer_class"] = getattr(sb3_dqn_ext, buffer_name)
    policy = hyperparams.get("policy", "MlpPolicy")
    return algo_class(algo)(policy, env, seed=seed, device=device, verbose=0, **kwargs)


# SB3 draws exploration and replay samples from the legacy global generators: those are the states to swap.
def _rng_state() -> tuple[Any, Any, Any]:
    return random.getstate(), np.random.get_state(), th.get_rng_state()  # noqa: NPY002


def _set_rng_state(state: tuple[Any, Any, Any]) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])  # noqa: NPY002
    th.set_rng_state(state[2])


class _Checkpoints(BaseCallback):
    """Evaluates at every ``eval_freq`` steps and at the end, then pauses until the lock-step driver says go on."""

    def __init__(self, run: _SeedRun) -> None:
        super().__init__()
        self._run = run

    def _on_step(self) -> bool:
        run = self._run
        if run.stop_requested:
            return False
        if self.num_timesteps % run.eval_freq != 0 and self.num_timesteps != run.n_timesteps:
            return True
        if not all(th.isfinite(p).all() for p in self.model.policy.parameters()):
            raise TrainingDiverged(f"non-finite network weights at step {self.num_timesteps}")
        mean_return, _ = evaluate_policy(self.model, run.eval_env, run.n_eval_episodes, deterministic=True, warn=False)
        if not np.isfinite(mean_return):
            raise TrainingDiverged(f"non-finite evaluation return at step {self.num_timesteps}")
        return run.pause(self.num_timesteps, float(mean_return))


class _SeedRun:
    """One seed's ``learn()`` in a thread that hands control back to the driver at each evaluation checkpoint."""

    def __init__(
        self, model: BaseAlgorithm, eval_env: VecEnv, n_timesteps: int, eval_freq: int, n_eval_episodes: int
    ) -> None:
        self.model, self.eval_env = model, eval_env
        self.n_timesteps, self.eval_freq, self.n_eval_episodes = n_timesteps, eval_freq, n_eval_episodes
        self._rng = _rng_state()  # right after the constructor seeded the generators
        self._to_run: queue.Queue[bool] = queue.Queue(maxsize=1)  # driver -> thread: stop?
        self._to_driver: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)  # thread -> driver
        self._thread: threading.Thread | None = None
        self.paused = False  # waiting at a checkpoint
        self.stop_requested = False  # checked at every step
        self.finished = False

    def advance(self) -> tuple[int, float] | None:
        """Run to the next checkpoint and return ``(step, mean return)``, or ``None`` once ``learn()`` returned.

        Exceptions from training are raised here.
        """
        if self.finished:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._learn, daemon=True)
            self._thread.start()
        else:
            self._resume(stop=False)
        return self._wait()

    def stop(self) -> None:
        """End ``learn()`` at the next step, and wait for it (also when the driver was interrupted while it ran)."""
        if self._thread is None or self.finished:
            return
        self.stop_requested = True
        if self.paused:
            self._resume(stop=True)
        while self._wait() is not None:  # a checkpoint it reached meanwhile
            self._resume(stop=True)

    def pause(self, step: int, mean_return: float) -> bool:
        """Called from the training thread: hand the evaluation to the driver; ``False`` stops training."""
        self._rng = _rng_state()
        self._to_driver.put(("checkpoint", (step, mean_return)))
        stop = self._to_run.get()
        _set_rng_state(self._rng)
        return not stop

    def _resume(self, stop: bool) -> None:
        self.paused = False
        self._to_run.put(stop)

    def _wait(self) -> tuple[int, float] | None:
        kind, payload = self._to_driver.get()
        if kind == "checkpoint":
            self.paused = True
            return payload
        self.finished = True
        self._thread.join()
        if kind == "error":
            raise payload
        return None

    def _learn(self) -> None:
        _set_rng_state(self._rng)
        try:
            self.model.learn(self.n_timesteps, callback=_Checkpoints(self))
        except BaseException as error:  # handed to the driver thread, which raises it
            self._to_driver.put(("error", error))
        else:
            self._to_driver.put(("done", None))


def train_and_evaluate(
    make_model: Callable[[int], BaseAlgorithm],
    env_id: str,
    seeds: Sequence[int],
    n_timesteps: int,
    eval_freq: int,
    n_eval_episodes: int,
    on_evaluation: Callable[[int, float], None],
) -> list[float]:
    """Train ``make_model(seed)`` for each seed in lock-step and evaluate it on its own environment.

    After each checkpoint ``on_evaluation(step, mean over seeds)`` is called; an exception it raises (such as
    ``optuna.TrialPruned``) stops every seed and is raised from here. Returns each seed's last evaluation.
    """
    runs: list[_SeedRun] = []
    last = [float("nan")] * len(seeds)
    try:
        for seed in seeds:
            model = make_model(seed)
            eval_env = make_vec_env(env_id, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
            runs.append(_SeedRun(model, eval_env, n_timesteps, eval_freq, n_eval_episodes))
        while True:
            checkpoints = [run.advance() for run in runs]
            if any(checkpoint is None for checkpoint in checkpoints):
                break
            last = [value for _, value in checkpoints]
            on_evaluation(checkpoints[0][0], float(np.mean(last)))
    finally:
        for run in runs:  # stop the other seeds after one raised or the trial was pruned
            with contextlib.suppress(Exception):  # the first error is the one being raised
                run.stop()
            run.eval_env.close()
            run.model.env.close()
    return last


class Objective:
    """The objective of a study: the seed-averaged evaluation return at the end of training.

    :param algo: ``scratch_dqn``, ``sb3_dqn`` or ``rainbow``
    :param env_id: Gymnasium environment id
    :param n_timesteps: training budget of each seed, in environment steps
    :param eval_freq: evaluate (and report to the pruner) every ``eval_freq`` steps, and at the end
    :param n_eval_episodes: episodes per evaluation
    :param seeds: the training seeds, the same for every trial (common random numbers)
    :param extensions: also tune the ScratchDQN-only parameters
    :param device: PyTorch device
    """

    def __init__(
        self,
        algo: str,
        env_id: str,
        n_timesteps: int,
        eval_freq: int,
        n_eval_episodes: int,
        seeds: Sequence[int],
        extensions: bool = False,
        device: str = "cpu",
    ) -> None:
        self.algo, self.env_id, self.n_timesteps = algo, env_id, n_timesteps
        self.eval_freq, self.n_eval_episodes, self.seeds = eval_freq, n_eval_episodes, tuple(seeds)
        self.space = search_space(extensions)
        self.device = device

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        hyperparams = to_hyperparams(sample_params(trial, self.space))
        for key in ("gamma", "batch_size", "gradient_steps"):
            trial.set_user_attr(key, hyperparams[key])

        def make_model(seed: int) -> BaseAlgorithm:
            env = make_vec_env(self.env_id, n_envs=1)
            return build_model(self.algo, env, hyperparams, seed=seed, device=self.device)

        def on_evaluation(step: int, mean_return: float) -> None:
            trial.report(mean_return, step)
            if step < self.n_timesteps and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with mean return {mean_return:.1f}")

        try:
            returns = train_and_evaluate(
                make_model,
                self.env_id,
                self.seeds,
                self.n_timesteps,
                self.eval_freq,
                self.n_eval_episodes,
                on_evaluation,
            )
        except divergence_errors(self.algo) as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason)
            raise optuna.TrialPruned(reason) from error
        except optuna.TrialPruned:
            raise
        except (Exception, KeyboardInterrupt) as error:  # recorded, then Optuna fails the trial and re-raises
            interrupted = isinstance(error, KeyboardInterrupt)
            trial.set_user_attr("fail_reason", "interrupted" if interrupted else f"{type(error).__name__}: {error}")
            raise
        trial.set_user_attr("seed_returns", returns)
        return float(np.mean(returns))
