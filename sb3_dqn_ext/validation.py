"""Input validation: every rejected hyperparameter or space raises :class:`ScratchDQNError` naming it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer

from sb3_dqn_ext.errors import ScratchDQNError

SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ScratchDQNError(f"{name} must be {allowed}, got {value!r}")


def check_hyperparameters(**params: Any) -> None:
    """
    Raise :class:`ScratchDQNError` naming the first hyperparameter outside its meaningful range.

    The ranges accept every value SB3 and rl-zoo3 use (``tau=0``, ``learning_starts=0``, ``gradient_steps=-1``,
    ``exploration_fraction=0``, ``exploration_final_eps=0``).
    """
    p = params
    lr = p["learning_rate"]
    _require(callable(lr) or (_is_number(lr) and math.isfinite(lr) and lr > 0), "learning_rate", "> 0", lr)
    _require(_is_int(p["buffer_size"]) and p["buffer_size"] >= 1, "buffer_size", "an integer >= 1", p["buffer_size"])
    _require(
        _is_int(p["learning_starts"]) and p["learning_starts"] >= 0,
        "learning_starts",
        "an integer >= 0",
        p["learning_starts"],
    )
    _require(_is_int(p["batch_size"]) and p["batch_size"] >= 1, "batch_size", "an integer >= 1", p["batch_size"])
    for name in ("tau", "gamma", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
        _require(_is_number(p[name]) and 0.0 <= p[name] <= 1.0, name, "in [0, 1]", p[name])
    train_freq = p["train_freq"]
    freq, unit = train_freq if isinstance(train_freq, tuple) and len(train_freq) == 2 else (train_freq, "step")
    _require(
        _is_int(freq) and freq >= 1 and unit in ("step", "episode"),
        "train_freq",
        'an integer >= 1 or a tuple (n >= 1, "step" | "episode")',
        train_freq,
    )
    _require(
        _is_int(p["gradient_steps"]) and p["gradient_steps"] >= -1,
        "gradient_steps",
        "an integer >= 0, or -1 (as many as env steps)",
        p["gradient_steps"],
    )
    _require(_is_int(p["n_steps"]) and p["n_steps"] >= 1, "n_steps", "an integer >= 1", p["n_steps"])
    _require(
        _is_int(p["target_update_interval"]) and p["target_update_interval"] >= 1,
        "target_update_interval",
        "an integer >= 1",
        p["target_update_interval"],
    )
    _require(
        _is_number(p["max_grad_norm"]) and p["max_grad_norm"] > 0,
        "max_grad_norm",
        "> 0",
        p["max_grad_norm"],
    )
    _require(
        _is_int(p["stats_window_size"]) and p["stats_window_size"] >= 1,
        "stats_window_size",
        "an integer >= 1",
        p["stats_window_size"],
    )
    _require(isinstance(p["double_q"], bool), "double_q", "a bool", p["double_q"])
    schedule = p["exploration_schedule"]
    _require(
        callable(schedule) or schedule in ("linear", "exponential"),
        "exploration_schedule",
        '"linear", "exponential" or a callable',
        schedule,
    )
    buffer_class = p["replay_buffer_class"]
    _require(
        buffer_class is None or (isinstance(buffer_class, type) and issubclass(buffer_class, BaseBuffer)),
        "replay_buffer_class",
        "None or a replay buffer class",
        buffer_class,
    )
    for name in ("replay_buffer_kwargs", "policy_kwargs"):
        _require(p[name] is None or isinstance(p[name], dict), name, "None or a dict", p[name])


def check_spaces(observation_space: spaces.Space | None, action_space: spaces.Space | None) -> None:
    """Raise :class:`ScratchDQNError` for spaces ScratchDQN cannot learn with (``None``: not known yet)."""
    if action_space is not None and not isinstance(action_space, spaces.Discrete):
        raise ScratchDQNError(
            f"ScratchDQN needs a Discrete action space, got {action_space} (action_space); "
            "for continuous actions use SAC, TD3 or DDPG"
        )
    if observation_space is None:
        return
    inner = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    for space in inner:
        if not isinstance(space, SUPPORTED_OBSERVATION_SPACES):
            raise ScratchDQNError(
                f"unsupported observation space {space} (observation_space): use Box, Discrete, MultiDiscrete, "
                "MultiBinary or a Dict of those"
            )
