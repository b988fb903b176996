"""
Invalid-action masking with sb3-contrib's convention: an env (or VecEnv) with an ``action_masks()`` method, e.g.
wrapped in ``sb3_contrib.common.wrappers.ActionMasker``, returns a boolean mask of the legal actions of its current
state. ScratchDQN masks everywhere it chooses or maximises: warm-up and ε-greedy actions are uniform over the legal
actions, greedy actions and the TD target's ``max``/``argmax`` are taken over the legal actions only.

When an episode ends, a VecEnv has already reset by the time the algorithm sees the step, so ``action_masks()`` then
describes the next episode's first state. The mask of the final state (needed to bootstrap a truncated step) comes
from :class:`ActionMaskInfo`, which ScratchDQN wraps around every maskable ``gym.Env`` it vectorises itself: it
copies the post-step mask into ``info["action_mask"]``. A VecEnv built by the user has no such wrapper unless the
user adds it (``ActionMaskInfo(ActionMasker(env, fn))`` inside the VecEnv); without it, the final state of a
*truncated* episode bootstraps over all actions (terminated episodes do not bootstrap, so their mask is irrelevant).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

from sb3_dqn_ext.errors import ScratchDQNError

try:
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
except ImportError:  # pragma: no cover - sb3-contrib is optional; the same logic as its helpers
    from stable_baselines3.common.vec_env import VecEnv

    def get_action_masks(env: Any) -> np.ndarray:
        if isinstance(env, VecEnv):
            return np.stack(env.env_method("action_masks"))
        return env.get_wrapper_attr("action_masks")()

    def is_masking_supported(env: Any) -> bool:
        if isinstance(env, VecEnv):
            return env.has_attr("action_masks")
        try:
            env.get_wrapper_attr("action_masks")
            return True
        except AttributeError:
            return False


__all__ = ["ActionMaskInfo", "get_action_masks", "is_masking_supported", "masked_argmax", "sample_legal_actions"]

INFO_KEY = "action_mask"


class ActionMaskInfo(gym.Wrapper):
    """
    Put the legal-action mask of the state reached by each step into ``info["action_mask"]``.

    :param env: an env with an ``action_masks()`` method (e.g. wrapped in sb3-contrib's ``ActionMasker``)
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[INFO_KEY] = np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        return self.env.get_wrapper_attr("action_masks")()


def as_mask(masks: Any, n_envs: int, n_actions: int, step: int | None = None) -> np.ndarray:
    """
    Validate masks: a ``(n_envs, n_actions)`` boolean array with at least one legal action per row.

    :param masks: the masks (any array-like of bools or 0/1)
    :param n_envs: number of rows expected
    :param n_actions: number of actions
    :param step: the timestep, named in the error when a state has no legal action
    """
    masks = np.asarray(masks, dtype=bool).reshape(n_envs, n_actions)
    empty = ~masks.any(axis=1)
    if empty.any():
        where = f" at timestep {step}" if step is not None else ""
        raise ScratchDQNError(f"env(s) {np.flatnonzero(empty).tolist()} have no legal action{where} (action_masks)")
    return masks


def sample_legal_actions(masks: np.ndarray) -> np.ndarray:
    """One action per row, uniform over that row's legal actions (argmax of i.i.d. uniform keys on legal ones)."""
    keys = np.random.random_sample(masks.shape)
    return np.where(masks, keys, -1.0).argmax(axis=1)


def masked_argmax(q_values: th.Tensor, masks: th.Tensor) -> th.Tensor:
    """``argmax_a Q(s, a)`` over the legal actions of each row (shape ``(batch,)``)."""
    return q_values.masked_fill(~masks, -th.inf).argmax(dim=1)


def masked_max(q_values: th.Tensor, masks: th.Tensor) -> th.Tensor:
    """``max_a Q(s, a)`` over the legal actions of each row (shape ``(batch, 1)``)."""
    return q_values.masked_fill(~masks, -th.inf).max(dim=1, keepdim=True).values
