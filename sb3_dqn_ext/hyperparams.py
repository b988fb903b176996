"""
rl-zoo3-format hyperparameters: read a ``dqn.yml``-style file into constructor keyword arguments.

The built-in table holds rl-zoo3 2.9.2's tuned DQN hyperparameters for the classic-control envs
(``rl_zoo3/hyperparams/dqn.yml``, MIT licence), so that the ``train`` and ``compare`` commands start from the values
SB3 users know without needing rl-zoo3 installed, and the MinAtar paper's DQN values for the MinAtar games.
"""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path
from typing import Any

import torch as th
import yaml

from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.torch_layers import MINATAR_GAMES, SmallCNN

_ZOO_COMMON = dict(policy="MlpPolicy", gamma=0.99)
ZOO_DQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(
        _ZOO_COMMON,
        n_timesteps=50_000,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs="dict(net_arch=[256, 256])",
    ),
    "Acrobot-v1": dict(
        _ZOO_COMMON,
        n_timesteps=100_000,
        learning_rate=6.3e-4,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=0,
        target_update_interval=250,
        train_freq=4,
        gradient_steps=-1,
        exploration_fraction=0.12,
        exploration_final_eps=0.1,
        policy_kwargs="dict(net_arch=[256, 256])",
    ),
    "MountainCar-v0": dict(
        n_timesteps=120_000,
        policy="MlpPolicy",
        learning_rate=4e-3,
        batch_size=128,
        buffer_size=10_000,
        learning_starts=1000,
        gamma=0.98,
        target_update_interval=600,
        train_freq=16,
        gradient_steps=8,
        exploration_fraction=0.2,
        exploration_final_eps=0.07,
        policy_kwargs="dict(net_arch=[256, 256])",
    ),
}

# rl-zoo3 tunes LunarLander-v3 with exactly Acrobot-v1's values
ZOO_DQN["LunarLander-v3"] = dict(ZOO_DQN["Acrobot-v1"])

# Not rl-zoo3's (it has no MinAtar entry): the DQN of the MinAtar paper (Young & Tian, 2019, table 1) — batch 32,
# replay 100k, target update every 1000 steps, one update per step, γ 0.99, lr 2.5e-4, replay start 5000, ε 1 → 0.1
# over the first 100k steps — and its network (SmallCNN, 128 units). Two changes: Adam (SB3's default) instead of
# RMSprop, and a budget of 500k steps instead of 5M (exploration_fraction 0.2 keeps the paper's 100k-step ε decay).
_MINATAR = dict(
    policy="CnnPolicy",
    n_timesteps=500_000,
    learning_rate=2.5e-4,
    batch_size=32,
    buffer_size=100_000,
    learning_starts=5000,
    gamma=0.99,
    target_update_interval=1000,
    train_freq=1,
    gradient_steps=1,
    exploration_fraction=0.2,
    exploration_final_eps=0.1,
    policy_kwargs=dict(
        features_extractor_class=SmallCNN, features_extractor_kwargs=dict(channels_last=True), net_arch=[]
    ),
)
MINATAR_DQN: dict[str, dict[str, Any]] = {
    f"MinAtar/{game}-v{version}": dict(_MINATAR) for game in MINATAR_GAMES for version in (0, 1)
}
BUILTIN_DQN = {**ZOO_DQN, **MINATAR_DQN}

# keys of an rl-zoo3 entry that are not constructor arguments
NON_CONSTRUCTOR_KEYS = {"n_timesteps", "policy", "env_wrapper", "frame_stack", "normalize", "n_envs", "callback"}


class LinearLRSchedule:
    """rl-zoo3's ``lin_<value>``: ``value · progress_remaining`` (picklable)."""

    def __init__(self, initial_value: float) -> None:
        self.initial_value = initial_value

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial_value

    def __repr__(self) -> str:
        return f"lin_{self.initial_value}"


def parse_kwargs(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """
    Read rl-zoo3's ``"dict(net_arch=[256, 256], activation_fn=nn.ReLU)"`` strings without ``eval``.

    Only ``dict(key=value, ...)`` is accepted, each value a Python literal or a ``nn.<Module>`` class name.

    :param text: the string (a dict or ``None`` is returned as a dict)
    :return: the keyword arguments
    """
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn":
            module = getattr(th.nn, node.attr, None)
            if isinstance(module, type) and issubclass(module, th.nn.Module):
                return module
            raise ValueError(f"nn.{node.attr} is not a torch.nn module")
        return ast.literal_eval(node)

    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict"):
            raise ValueError("not a dict(...) call")
        if call.args or any(keyword.arg is None for keyword in call.keywords):
            raise ValueError("only keyword arguments are allowed")
        return {keyword.arg: value(keyword.value) for keyword in call.keywords}  # type: ignore[misc]
    except (SyntaxError, ValueError) as error:
        raise ScratchDQNError(f"cannot read {text!r} as dict(key=value, ...): {error}") from None


def to_constructor_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    """
    Turn one rl-zoo3 entry into ``ScratchDQN``/``DQN`` keyword arguments (``policy`` and ``n_timesteps`` dropped).

    :param entry: the entry of one env, e.g. ``ZOO_DQN["CartPole-v1"]``
    :return: keyword arguments, with ``policy_kwargs`` parsed and ``lin_<x>`` learning rates made schedules
    """
    kwargs = {k: v for k, v in entry.items() if k not in NON_CONSTRUCTOR_KEYS}
    for key in ("policy_kwargs", "replay_buffer_kwargs"):
        if key in kwargs:
            kwargs[key] = parse_kwargs(kwargs[key])
    lr = kwargs.get("learning_rate")
    if isinstance(lr, str):
        if not lr.startswith("lin_"):
            raise ScratchDQNError(f"learning_rate {lr!r}: only numbers and rl-zoo3's lin_<value> are understood")
        kwargs["learning_rate"] = LinearLRSchedule(float(lr[4:]))
    for key in ("buffer_size", "learning_starts", "batch_size", "target_update_interval", "gradient_steps"):
        if isinstance(kwargs.get(key), float) and math.isfinite(kwargs[key]) and kwargs[key].is_integer():
            kwargs[key] = int(kwargs[key])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    return kwargs


def load_hyperparams(env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """
    The rl-zoo3 entry for ``env_id``, from ``path`` (an rl-zoo3-format YAML) or the built-in table.

    :param env_id: gymnasium env id
    :param path: YAML file; ``None`` uses the built-in table (:data:`ZOO_DQN`, :data:`MINATAR_DQN`; SB3's defaults
        for unknown envs)
    :return: the raw entry (``n_timesteps``, ``policy`` and constructor arguments)
    """
    if path is None:
        return copy.deepcopy(BUILTIN_DQN.get(env_id, {"policy": "MlpPolicy", "n_timesteps": 1_000_000}))
    try:
        with open(path) as file:
            table = yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as exc:
        raise ScratchDQNError(f"cannot read hyperparameters file {path}: {exc}") from exc
    if not isinstance(table, dict) or not isinstance(table.get(env_id), dict):
        raise ScratchDQNError(f"hyperparameters file {path} has no entry for {env_id!r}")
    return dict(table[env_id])
