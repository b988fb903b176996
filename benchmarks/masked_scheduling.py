"""
Single-machine scheduling with invalid actions: a small masked task for the action-masking benchmark
(``benchmarks/masking.py``).

Each episode draws ``n_jobs`` jobs (default 8) with integer processing times ``p_j`` and weights ``w_j``, uniform on
``1..10``. One machine processes one job at a time, without pre-emption or idle time; at each step the agent picks the
next job among those not yet scheduled, which then completes at ``C_j = (time so far) + p_j``. The objective is the
total weighted completion time ``sum_j w_j C_j`` (the scheduling problem ``1 || sum w_j C_j``), minimised by Smith's
WSPT rule, which orders the jobs by ``w_j / p_j``, highest first. So the optimum ``OPT`` of every episode is known and
a schedule is scored by its optimality ratio ``OPT / sum_j w_j C_j`` in ``(0, 1]``.

- Actions: ``Discrete(n_jobs)``, the index of the job to run next. A job already scheduled is illegal: the first step
  has every action legal, the last only one, so on average nearly half the actions of a state are illegal (7/16 with
  8 jobs), and the more of the episode is done the more illegal actions there are.
- Observation (float32 ``Box`` in ``[0, 1]``, ``3 * n_jobs + 1`` values): for each job ``p_j / 10``, ``w_j / 10`` and
  a scheduled flag (1 when scheduled), then the fraction of the step limit used (``steps / max_steps``). The jobs come
  in random order: the network has to learn the ratio rule for every slot.
- Reward: scheduling job ``j`` pays ``-w_j C_j / OPT``. Without illegal moves the return is ``-sum_j w_j C_j / OPT``
  = ``-1 / (optimality ratio)``: -1 at the optimum, -1.53 on average for a random order (mean ratio 0.68).
- ``action_masks()`` returns the unscheduled jobs (sb3-contrib's convention), so a masking agent never sees an
  illegal action.
- Illegal actions (``mode="penalty"``, for agents without masks): the step pays ``penalty`` (default ``-1 / n_jobs``,
  the cost of an average job at the optimum) and leaves the schedule unchanged; only the step counter moves. An
  episode gets at most ``max_steps = 3 * n_jobs`` steps. If the limit is reached with jobs left, the remaining jobs are
  scheduled in the *worst* order (ascending ``w_j / p_j``, reverse WSPT) and their cost is paid in that last step,
  which ends the episode as *terminated* (nothing is left to bootstrap from, and the step counter is in the
  observation, so the end is part of the state). Every episode thus ends with a complete schedule, and the
  optimality ratio compares every agent on the same footing: unfinished work counts at its worst-case cost.
  With ``mode="masked"`` an illegal action raises ``ValueError`` instead (a check that masks are honoured).

``info`` of the last step holds ``optimality_ratio``, ``illegal_moves`` and ``completed`` (all jobs chosen by the
agent, i.e. the step limit was not hit). ``reset(options={"processing_times": p, "weights": w})`` sets a fixed
instance.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MAX_VALUE = 10  # processing times and weights are drawn uniformly from 1..MAX_VALUE


def weighted_completion_time(processing_times: np.ndarray, weights: np.ndarray, order: np.ndarray) -> float:
    """``sum_j w_j C_j`` of the jobs run in ``order`` from time 0."""
    p, w = np.asarray(processing_times, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    order = np.asarray(order, dtype=np.int64)
    return float(np.sum(w[order] * np.cumsum(p[order])))


def wspt_order(processing_times: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Smith's rule: the jobs by ``w_j / p_j``, highest first (optimal for ``1 || sum w_j C_j``); stable on ties."""
    ratio = np.asarray(weights, dtype=np.float64) / np.asarray(processing_times, dtype=np.float64)
    return np.argsort(-ratio, kind="stable")


class MaskedSchedulingEnv(gym.Env):
    """
    Pick the next job of a single-machine schedule; minimise the total weighted completion time (see module docs).

    :param n_jobs: number of jobs (= number of actions)
    :param mode: ``"penalty"`` (an illegal action pays ``penalty`` and changes nothing but the step counter) or
        ``"masked"`` (an illegal action raises ``ValueError``)
    :param penalty: reward of an illegal action; default ``-1 / n_jobs``
    :param max_steps: step limit; default ``3 * n_jobs``
    """

    metadata = {"render_modes": []}

    def __init__(
        self, n_jobs: int = 8, mode: str = "penalty", penalty: float | None = None, max_steps: int | None = None
    ) -> None:
        if mode not in ("penalty", "masked"):
            raise ValueError(f"mode must be 'penalty' or 'masked', got {mode!r}")
        if n_jobs < 2:
            raise ValueError(f"n_jobs must be >= 2, got {n_jobs}")
        self.n_jobs = n_jobs
        self.mode = mode
        self.penalty = -1.0 / n_jobs if penalty is None else float(penalty)
        self.max_steps = 3 * n_jobs if max_steps is None else int(max_steps)
        if self.max_steps < n_jobs:
            raise ValueError(f"max_steps ({self.max_steps}) must be >= n_jobs ({n_jobs})")
        self.observation_space = spaces.Box(0.0, 1.0, shape=(3 * n_jobs + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(n_jobs)
        self.processing_times = np.ones(n_jobs, dtype=np.int64)
        self.weights = np.ones(n_jobs, dtype=np.int64)
        self.scheduled = np.zeros(n_jobs, dtype=bool)
        self.order: list[int] = []
        self.time = 0
        self.steps = 0
        self.illegal_moves = 0
        self.optimum = 1.0
        self.cost = 0.0

    # ------------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        if "processing_times" in options or "weights" in options:
            self.processing_times = np.asarray(options["processing_times"], dtype=np.int64).copy()
            self.weights = np.asarray(options["weights"], dtype=np.int64).copy()
            if self.processing_times.shape != (self.n_jobs,) or self.weights.shape != (self.n_jobs,):
                raise ValueError(f"processing_times and weights must have shape ({self.n_jobs},)")
        else:
            self.processing_times = self.np_random.integers(1, MAX_VALUE + 1, size=self.n_jobs)
            self.weights = self.np_random.integers(1, MAX_VALUE + 1, size=self.n_jobs)
        self.scheduled = np.zeros(self.n_jobs, dtype=bool)
        self.order = []
        self.time = 0
        self.steps = 0
        self.illegal_moves = 0
        self.cost = 0.0
        self.optimum = weighted_completion_time(
            self.processing_times, self.weights, wspt_order(self.processing_times, self.weights)
        )
        return self._obs(), {"optimum": self.optimum}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        job = int(action)
        if not 0 <= job < self.n_jobs:
            raise ValueError(f"action {job} out of range [0, {self.n_jobs})")
        self.steps += 1
        if self.scheduled[job]:
            if self.mode == "masked":
                raise ValueError(f"illegal action {job}: job already scheduled (mode='masked')")
            self.illegal_moves += 1
            reward = self.penalty
        else:
            reward = -self._schedule(job) / self.optimum
        terminated = bool(self.scheduled.all())
        info: dict[str, Any] = {}
        if not terminated and self.steps >= self.max_steps:
            # step limit: the remaining jobs run in the worst order (ascending w/p) and their cost is paid now
            remaining = np.flatnonzero(~self.scheduled)
            worst_first = remaining[wspt_order(self.processing_times[remaining], self.weights[remaining])[::-1]]
            reward -= sum(self._schedule(int(j)) for j in worst_first) / self.optimum
            terminated = True
            info["completed"] = False
        elif terminated:
            info["completed"] = True
        if terminated:
            info["optimality_ratio"] = self.optimum / self.cost
            info["illegal_moves"] = self.illegal_moves
            info["weighted_completion_time"] = self.cost
            info["optimum"] = self.optimum
        return self._obs(), float(reward), terminated, False, info

    def action_masks(self) -> np.ndarray:
        """Legal actions: the jobs not yet scheduled (all False once the episode is over)."""
        return ~self.scheduled

    # ------------------------------------------------------------------------------------------------ helpers
    def _schedule(self, job: int) -> float:
        """Run ``job`` next; return its weighted completion time ``w_j C_j``."""
        self.time += int(self.processing_times[job])
        self.scheduled[job] = True
        self.order.append(job)
        cost = float(self.weights[job] * self.time)
        self.cost += cost
        return cost

    def _obs(self) -> np.ndarray:
        return np.concatenate(
            [
                np.stack([self.processing_times / MAX_VALUE, self.weights / MAX_VALUE, self.scheduled], axis=1).ravel(),
                [self.steps / self.max_steps],
            ]
        ).astype(np.float32)
