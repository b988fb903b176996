"""The search space, defined once as data, and its conversion to constructor hyperparameters.

The common space follows rl-zoo3's ``sample_dqn_params`` (``rl_zoo3/hyperparams_opt.py``) with three changes, each
marked in the table:

- the batch size ranges over 32-256 instead of 4-2048: rl-zoo3's tuned DQN configurations use 32-128, and a trial's
  cost grows with the batch size (a 1024 batch makes a CartPole trial several times slower on a CPU);
- the replay buffer size is tuned;
- ``subsample_steps`` has a fixed range (1-8) instead of ``1..min(train_freq, 8)``, so that the space is the same
  for every trial, as CMA-ES needs; ``gradient_steps = max(train_freq // subsample_steps, 1)`` as in rl-zoo3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

# rl-zoo3's names for network sizes (``convert_offpolicy_params``).
NET_ARCHS: dict[str, list[int]] = {"small": [64, 64], "medium": [256, 256], "big": [400, 300]}


@dataclass(frozen=True)
class Param:
    """How Optuna samples one hyperparameter.

    :param name: the Optuna parameter name
    :param kind: ``"float"``, ``"int"`` or ``"categorical"``
    :param low: lower bound (float and int)
    :param high: upper bound, inclusive (float and int)
    :param log: sample on a log scale
    :param choices: the values of a categorical parameter
    :param when: ``(other_name, value)``: sample only when that parameter took that value
    :param meaning: what the value becomes in the constructor, for the docs table
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: tuple[str, Any] | None = None
    meaning: str = ""

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, self.choices)

    def range_text(self) -> str:
        if self.kind == "categorical":
            return ", ".join(str(choice) for choice in self.choices)
        scale = " (log)" if self.log else ""
        return f"{self.low:g} - {self.high:g}{scale}"


SEARCH_SPACE: tuple[Param, ...] = (
    Param("learning_rate", "float", 1e-5, 2e-3, log=True, meaning="`learning_rate`"),
    Param("batch_size_pow", "int", 5, 8, meaning="`batch_size = 2**batch_size_pow` (32 - 256; rl-zoo3: 4 - 2048)"),
    Param(
        "buffer_size",
        "categorical",
        choices=(10_000, 50_000, 100_000, 1_000_000),
        meaning="`buffer_size` (not tuned by rl-zoo3)",
    ),
    Param("one_minus_gamma", "float", 1e-4, 0.03, log=True, meaning="`gamma = 1 - one_minus_gamma`"),
    Param("target_update_interval", "int", 1, 20_000, log=True, meaning="`target_update_interval` (env steps)"),
    Param("train_freq", "int", 1, 10, meaning="`train_freq` (env steps)"),
    Param(
        "subsample_steps",
        "int",
        1,
        8,
        meaning="`gradient_steps = max(train_freq // subsample_steps, 1)` (rl-zoo3: 1 - min(train_freq, 8))",
    ),
    Param("exploration_fraction", "float", 0.0, 0.5, meaning="`exploration_fraction`"),
    Param("exploration_final_eps", "float", 0.0, 0.2, meaning="`exploration_final_eps`"),
    Param(
        "net_arch",
        "categorical",
        choices=tuple(NET_ARCHS),
        meaning="`policy_kwargs.net_arch`: " + ", ".join(f"{k} = {v}" for k, v in NET_ARCHS.items()),
    ),
)

# ScratchDQN-only parameters, added by ``--extensions``.
EXTENSION_SPACE: tuple[Param, ...] = (
    Param("double_q", "categorical", choices=(False, True), meaning="`double_q`"),
    Param("dueling", "categorical", choices=(False, True), meaning="`policy_kwargs.dueling`"),
    Param("n_steps", "int", 1, 5, meaning="`n_steps` (n-step returns)"),
    Param(
        "prioritized_replay",
        "categorical",
        choices=(False, True),
        meaning="`replay_buffer_class`: `PrioritizedReplayBuffer` or `ReplayBuffer`",
    ),
    Param("per_alpha", "float", 0.2, 1.0, when=("prioritized_replay", True), meaning="`replay_buffer_kwargs.alpha`"),
    Param("per_beta", "float", 0.2, 1.0, when=("prioritized_replay", True), meaning="`replay_buffer_kwargs.beta`"),
    Param("noisy", "categorical", choices=(False, True), meaning="`policy_kwargs.noisy`"),
    Param("noisy_std_init", "float", 0.1, 1.0, when=("noisy", True), meaning="`policy_kwargs.noisy_std_init` (σ₀)"),
    Param(
        "distributional",
        "categorical",
        choices=(False, True),
        meaning="C51 head: `policy_kwargs.n_atoms` set, or `None`",
    ),
    Param("n_atoms", "categorical", choices=(21, 51, 101), when=("distributional", True), meaning="`n_atoms`"),
    Param(
        "v_max",
        "float",
        10.0,
        1000.0,
        log=True,
        when=("distributional", True),
        meaning="C51 support: `v_max`, and `v_min = -v_max`",
    ),
)


def search_space(extensions: bool = False) -> tuple[Param, ...]:
    """The parameters every algorithm is tuned over; ``extensions`` adds the ScratchDQN-only ones.

    The space does not depend on the algorithm: ``scratch_dqn``, ``sb3_dqn`` and ``rainbow`` are compared on
    exactly the same parameters and ranges.
    """
    return SEARCH_SPACE + EXTENSION_SPACE if extensions else SEARCH_SPACE


def sample_params(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Sample every parameter of ``space`` whose condition holds, in order."""
    params: dict[str, Any] = {}
    for param in space:
        if param.when is None or params.get(param.when[0]) == param.when[1]:
            params[param.name] = param.suggest(trial)
    return params


def to_hyperparams(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled parameters -> constructor hyperparameters, as rl-zoo3's ``convert_offpolicy_params`` converts them.

    The result holds plain values only (numbers, booleans, lists, dicts and the replay buffer's class *name*), so it
    can be written to YAML as it is; :func:`tuning.objective.build_model` resolves the class name.
    """
    hyperparams: dict[str, Any] = {
        "learning_rate": params["learning_rate"],
        "batch_size": 2 ** params["batch_size_pow"],
        "buffer_size": params["buffer_size"],
        "gamma": 1.0 - params["one_minus_gamma"],
        "target_update_interval": params["target_update_interval"],
        "train_freq": params["train_freq"],
        "gradient_steps": max(params["train_freq"] // params["subsample_steps"], 1),
        "exploration_fraction": params["exploration_fraction"],
        "exploration_final_eps": params["exploration_final_eps"],
    }
    policy_kwargs: dict[str, Any] = {"net_arch": list(NET_ARCHS[params["net_arch"]])}
    if "double_q" in params:
        hyperparams["double_q"] = params["double_q"]
        hyperparams["n_steps"] = params["n_steps"]
        if params["prioritized_replay"]:
            hyperparams["replay_buffer_class"] = "PrioritizedReplayBuffer"
            hyperparams["replay_buffer_kwargs"] = {"alpha": params["per_alpha"], "beta": params["per_beta"]}
        else:
            hyperparams["replay_buffer_class"] = "ReplayBuffer"
        policy_kwargs["dueling"] = params["dueling"]
        policy_kwargs["noisy"] = params["noisy"]
        if params["noisy"]:
            policy_kwargs["noisy_std_init"] = params["noisy_std_init"]
        if params["distributional"]:
            policy_kwargs.update(n_atoms=params["n_atoms"], v_min=-params["v_max"], v_max=params["v_max"])
        else:
            policy_kwargs["n_atoms"] = None
    hyperparams["policy_kwargs"] = policy_kwargs
    return hyperparams


def markdown_table(space: Sequence[Param]) -> str:
    """The space as a Markdown table, as printed in ``docs/tuning.md``."""
    lines = ["| Parameter | Type | Range | Becomes |", "|---|---|---|---|"]
    for param in space:
        condition = f" (when `{param.when[0]}` = {param.when[1]})" if param.when else ""
        lines.append(f"| `{param.name}`{condition} | {param.kind} | {param.range_text()} | {param.meaning} |")
    return "\n".join(lines)
