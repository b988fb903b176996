"""
Schedules: functions of SB3's ``progress_remaining`` (1 at the start of training, 0 at the end).

The exploration rate ε of ε-greedy decays from ``initial`` to ``final`` during the first ``fraction`` of training,
either linearly (SB3's default) or exponentially (the article's ``ε_end + (ε_start − ε_end) exp(−t / decay)``). The
prioritized-replay exponent β is annealed linearly from its initial value to 1 over the whole run.
All schedules are small picklable classes so that models that hold them save and load with SB3's ``save``/``load``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sb3_dqn_ext.errors import ScratchDQNError

Schedule = Callable[[float], float]


class LinearSchedule:
    """
    Linear interpolation from ``start`` to ``end`` over the first ``end_fraction`` of training, then constant.

    With progress ``p = 1 − progress_remaining``: ``value(p) = start + (end − start) · min(p / end_fraction, 1)``.
    This is exactly SB3's ``LinearSchedule``, which ``DQN`` uses for ε.

    :param start: value at the start of training
    :param end: value once ``end_fraction`` of training has passed
    :param end_fraction: fraction of training over which the value changes (0 means ``end`` at once)
    """

    def __init__(self, start: float, end: float, end_fraction: float) -> None:
        self.start = start
        self.end = end
        self.end_fraction = end_fraction

    def __call__(self, progress_remaining: float) -> float:
        progress = 1.0 - progress_remaining
        if progress > self.end_fraction:
            return self.end
        return self.start + progress * (self.end - self.start) / self.end_fraction

    def __repr__(self) -> str:
        return f"LinearSchedule(start={self.start}, end={self.end}, end_fraction={self.end_fraction})"


class ExponentialSchedule:
    """
    Exponential decay from ``start`` towards ``end``: ``value(p) = end + (start − end) · exp(−p / decay_fraction)``,
    with ``p = 1 − progress_remaining``.

    ``decay_fraction`` is the time constant in units of the whole run: after ``decay_fraction`` of training the
    distance to ``end`` has shrunk by a factor ``e``, after ``3 · decay_fraction`` by about 20. This is the article's
    ``ε = ε_end + (ε_start − ε_end) · exp(−steps / ε_decay)`` with ``ε_decay = decay_fraction · total_timesteps``.

    :param start: value at the start of training
    :param end: asymptotic value
    :param decay_fraction: time constant as a fraction of training (0 means ``end`` at once)
    """

    def __init__(self, start: float, end: float, decay_fraction: float) -> None:
        self.start = start
        self.end = end
        self.decay_fraction = decay_fraction

    def __call__(self, progress_remaining: float) -> float:
        progress = 1.0 - progress_remaining
        if self.decay_fraction == 0.0:
            return self.end
        return self.end + (self.start - self.end) * math.exp(-progress / self.decay_fraction)

    def __repr__(self) -> str:
        return f"ExponentialSchedule(start={self.start}, end={self.end}, decay_fraction={self.decay_fraction})"


EXPLORATION_SCHEDULES = {"linear": LinearSchedule, "exponential": ExponentialSchedule}


def make_exploration_schedule(
    kind: str | Schedule, initial_eps: float, final_eps: float, exploration_fraction: float
) -> Schedule:
    """
    Build the ε schedule that ``ScratchDQN`` uses.

    :param kind: ``"linear"`` (SB3's), ``"exponential"``, or a callable ``progress_remaining -> ε`` used as is
    :param initial_eps: ε at the start of training
    :param final_eps: ε at the end of the decay
    :param exploration_fraction: fraction of training over which ε decays (the time constant for ``"exponential"``)
    :return: the schedule, a picklable callable of ``progress_remaining``
    """
    if callable(kind):
        return kind
    if kind not in EXPLORATION_SCHEDULES:
        raise ScratchDQNError(
            f"exploration_schedule must be one of {sorted(EXPLORATION_SCHEDULES)} or a callable, got {kind!r}"
        )
    return EXPLORATION_SCHEDULES[kind](initial_eps, final_eps, exploration_fraction)
