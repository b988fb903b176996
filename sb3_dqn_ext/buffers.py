"""
Replay buffers of ScratchDQN: uniform experience replay with n-step returns, and prioritized replay.

Storage follows SB3's public buffer contract, because SB3's tools and user code read it: arrays ``observations``,
``next_observations``, ``actions``, ``rewards``, ``dones`` and ``timeouts`` of shape ``(buffer_size // n_envs,
n_envs, ...)``, a write position ``pos`` and a ``full`` flag. Dict observations are stored as dicts of such arrays.

Sampling draws uniform row indices and then env indices from numpy's global generator, in that order, as SB3 does,
and converts each field to a tensor once per batch.

n-step returns (``n_steps > 1``) are computed at sampling time from the stored 1-step transitions: for a window
``t, ..., t+n−1`` cut at the first episode end,

    R = Σ_{k<m} γ^k r_{t+k},   discount = γ^m,   s' = s_{t+m}

where ``m ≤ n`` is the window length. A termination inside the window sets ``done`` (no bootstrap); a time-limit
truncation cuts the window but bootstraps from the truncated state; so does the newest stored transition.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples, TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.sum_tree import SumTree

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


def replay_buffer_nbytes(
    buffer_size: int,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    n_envs: int = 1,
    optimize_memory_usage: bool = False,
    prioritized: bool = False,
) -> int:
    """
    Bytes a replay buffer allocates: observations (twice, or once with ``optimize_memory_usage``), actions, and
    rewards, dones and timeouts as float32; plus the two float64 trees of :class:`PrioritizedReplayBuffer`.
    """
    rows = max(buffer_size // n_envs, 1)
    inner = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    obs_bytes = sum(int(np.prod(space.shape or (1,))) * np.dtype(space.dtype).itemsize for space in inner)
    copies = 1 if optimize_memory_usage else 2
    action_dim = int(np.prod(action_space.shape or (1,)))
    action_bytes = action_dim * np.dtype(action_space.dtype).itemsize
    total = rows * n_envs * (copies * obs_bytes + action_bytes + 3 * 4)
    if prioritized:
        total += SumTree.nbytes_for(rows * n_envs)
    return total


class DQNReplayBufferSamples(NamedTuple):
    """
    SB3's sample fields plus what the extensions need: importance weights and sampled leaves (prioritized replay)
    and the legal actions of the state the target bootstraps from (action masking).
    """

    observations: th.Tensor | TensorDict
    actions: th.Tensor
    next_observations: th.Tensor | TensorDict
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None = None
    weights: th.Tensor | None = None
    indices: np.ndarray | None = None
    next_action_masks: th.Tensor | None = None


class ReplayBuffer(BaseBuffer):
    """
    Uniform experience replay (Box or Dict observations) with optional n-step returns.

    :param buffer_size: Max number of transitions in the buffer (over all envs)
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Store each observation once (``next_observations`` is read from the next row),
        almost halving memory. Not available with Dict observations nor with ``handle_timeout_termination``.
    :param handle_timeout_termination: Treat time-limit truncations (``info["TimeLimit.truncated"]``) as
        non-terminal: the target bootstraps from the truncated state.
    :param n_steps: Number of steps of the n-step return (1: the usual 1-step transition)
    :param gamma: Discount factor used to accumulate n-step returns
    """

    observations: np.ndarray | dict[str, np.ndarray]
    next_observations: np.ndarray | dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, (int, np.integer)) or buffer_size < 1:
            raise ScratchDQNError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ScratchDQNError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ScratchDQNError(f"gamma must be in [0, 1], got {gamma}")
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.is_dict = isinstance(observation_space, spaces.Dict)
        if optimize_memory_usage and handle_timeout_termination:
            raise ScratchDQNError(
                "optimize_memory_usage=True cannot be combined with handle_timeout_termination=True: the truncated "
                "state would be overwritten by the next episode's first observation. Pass "
                "replay_buffer_kwargs=dict(handle_timeout_termination=False) or optimize_memory_usage=False."
            )
        if optimize_memory_usage and self.is_dict:
            raise ScratchDQNError("optimize_memory_usage=True is not supported with Dict observation spaces")
        self.optimize_memory_usage = optimize_memory_usage
        self.handle_timeout_termination = handle_timeout_termination
        self.n_steps = int(n_steps)
        self.gamma = float(gamma)

        self._check_memory()
        rows = (self.buffer_size, self.n_envs)
        if self.is_dict:
            self.observations = {
                key: np.zeros((*rows, *shape), dtype=observation_space[key].dtype)
                for key, shape in self.obs_shape.items()  # type: ignore[union-attr]
            }
            self.next_observations = {key: np.zeros_like(obs) for key, obs in self.observations.items()}
        else:
            self.observations = np.zeros((*rows, *self.obs_shape), dtype=observation_space.dtype)
            if not optimize_memory_usage:
                self.next_observations = np.zeros_like(self.observations)
        # legal actions of each transition's next state, stored once masking is enabled (bools, not floats)
        self.next_action_masks: np.ndarray | None = None
        action_dtype = np.float32 if action_space.dtype == np.float64 else action_space.dtype
        self.actions = np.zeros((*rows, self.action_dim), dtype=action_dtype)
        self.rewards = np.zeros(rows, dtype=np.float32)
        self.dones = np.zeros(rows, dtype=np.float32)
        self.timeouts = np.zeros(rows, dtype=np.float32)

    def _check_memory(self) -> None:
        """Warn before allocating a buffer larger than the machine's available memory."""
        if psutil is None:
            return
        needed = replay_buffer_nbytes(
            self.buffer_size * self.n_envs,
            self.observation_space,
            self.action_space,
            self.n_envs,
            self.optimize_memory_usage,
            isinstance(self, PrioritizedReplayBuffer),
        )
        available = psutil.virtual_memory().available
        if needed > available:
            warnings.warn(
                "This system does not have apparently enough memory to store the complete "
                f"replay buffer {needed / 1e9:.2f}GB > {available / 1e9:.2f}GB"
            )

    def enable_action_masks(self, n_actions: int) -> None:
        """Start storing next-state action masks; rows already stored count every action as legal."""
        if self.next_action_masks is None:
            self.next_action_masks = np.ones((self.buffer_size, self.n_envs, n_actions), dtype=bool)

    def add(
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        next_obs: np.ndarray | dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
        next_action_masks: np.ndarray | None = None,
    ) -> None:
        """
        Store one transition per env at row ``pos`` (numpy copies the values into the preallocated arrays).

        :param obs: observations ``s_t`` (one per env)
        :param next_obs: next observations ``s_{t+1}`` (the terminal observation when an episode ended)
        :param action: actions ``a_t``
        :param reward: rewards ``r_{t+1}``
        :param done: episode ends (termination or truncation)
        :param infos: the VecEnv's infos, read for ``TimeLimit.truncated``
        :param next_action_masks: legal actions of the next states, ``(n_envs, n_actions)`` bools (masking only)
        """
        pos = self.pos
        if self.is_dict:
            for key, store in self.observations.items():  # type: ignore[union-attr]
                store[pos] = np.reshape(obs[key], store.shape[1:])  # type: ignore[index]
                self.next_observations[key][pos] = np.reshape(next_obs[key], store.shape[1:])  # type: ignore[index]
        else:
            row_shape = self.observations.shape[1:]  # type: ignore[union-attr]
            self.observations[pos] = np.reshape(obs, row_shape)  # type: ignore[index]
            if self.optimize_memory_usage:
                self.observations[(pos + 1) % self.buffer_size] = np.reshape(next_obs, row_shape)  # type: ignore[index]
            else:
                self.next_observations[pos] = np.reshape(next_obs, row_shape)  # type: ignore[index]
        self.actions[pos] = np.reshape(action, (self.n_envs, self.action_dim))
        self.rewards[pos] = reward
        self.dones[pos] = done
        if self.handle_timeout_termination:
            self.timeouts[pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        if self.next_action_masks is not None:
            self.next_action_masks[pos] = True if next_action_masks is None else next_action_masks
        self._on_add(pos)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def _on_add(self, pos: int) -> None:
        """Hook for subclasses, called after row ``pos`` was written."""

    def _valid_rows(self) -> tuple[int, int]:
        """Half-open range ``[low, low + count)`` (mod buffer_size) of rows that hold complete transitions."""
        if not self.full:
            return 0, self.pos
        if self.optimize_memory_usage:
            # row `pos` is the oldest row whose next observation was already overwritten
            return self.pos + 1, self.buffer_size - 1
        return 0, self.buffer_size

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples | DictReplayBufferSamples:
        """
        Sample a batch of transitions uniformly.

        :param batch_size: Number of transitions to sample
        :param env: associated VecNormalize env, to normalize the observations/rewards when sampling
        :return: SB3's ``ReplayBufferSamples`` (``DictReplayBufferSamples`` for Dict observations); ``discounts`` is
            ``γ^m`` per sample for n-step returns and ``None`` for 1-step transitions
        """
        return self._sample_batches(1, batch_size, env=env)  # type: ignore[return-value]

    def _observation_row_nbytes(self) -> int:
        """Bytes of one stored observation (every key of a Dict observation)."""
        stores = self.observations.values() if self.is_dict else [self.observations]  # type: ignore[union-attr]
        return sum(store[0, 0].nbytes for store in stores)  # type: ignore[index]

    def _sample_batches(
        self, n_batches: int, batch_size: int, env: VecNormalize | None = None
    ) -> ReplayBufferSamples | DictReplayBufferSamples | DQNReplayBufferSamples:
        """
        ``n_batches`` uniform minibatches gathered at once (:meth:`sample` is the case ``n_batches = 1``): the rows
        that ``n_batches`` calls of :meth:`sample` would draw, from the same random numbers in the same order (SB3's
        draws: the rows, then with several envs the env of each row), returned as one batch whose ``k``-th block of
        ``batch_size`` rows is the ``k``-th minibatch. (Uniform sampling only: it does not apply to subclasses that
        sample differently, such as :class:`PrioritizedReplayBuffer`.)

        :param n_batches: number of minibatches
        :param batch_size: rows per minibatch
        :param env: associated VecNormalize env, to normalize the observations/rewards when sampling
        """
        low, count = self._valid_rows()
        if count < 1:
            raise ScratchDQNError("cannot sample from an empty replay buffer")
        if self.n_envs == 1:
            # one call draws what n_batches calls draw (numpy's legacy randint consumes the stream value by value)
            batch_inds = (np.random.randint(0, count, size=n_batches * batch_size) + low) % self.buffer_size
            return self._get_samples(batch_inds, env=env)
        # several envs: each minibatch draws its rows, then their envs
        draws = [
            (np.random.randint(0, count, size=batch_size), np.random.randint(0, high=self.n_envs, size=(batch_size,)))
            for _ in range(n_batches)
        ]
        batch_inds = (np.concatenate([rows for rows, _ in draws]) + low) % self.buffer_size
        return self._get_samples(batch_inds, env=env, env_indices=np.concatenate([envs for _, envs in draws]))

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, env_indices: np.ndarray | None = None
    ) -> ReplayBufferSamples | DictReplayBufferSamples | DQNReplayBufferSamples:
        if env_indices is None:
            # (SB3 draws them with randint, which draws nothing from numpy's generator when there is one env)
            if self.n_envs == 1:
                env_indices = np.zeros(len(batch_inds), dtype=np.int64)
            else:
                env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        if self.n_steps == 1:
            rewards = self.rewards[batch_inds, env_indices]
            last_inds = batch_inds
            dones = self.dones[batch_inds, env_indices] * (1.0 - self.timeouts[batch_inds, env_indices])
            discounts = None
        else:
            rewards, last_inds, dones, discounts = self._n_step_window(batch_inds, env_indices)

        obs = self._get_obs(self.observations, batch_inds, env_indices, env)
        if self.optimize_memory_usage:
            next_obs = self._get_obs(self.observations, (last_inds + 1) % self.buffer_size, env_indices, env)
        else:
            next_obs = self._get_obs(self.next_observations, last_inds, env_indices, env)
        fields = dict(
            observations=obs,
            actions=self.to_torch(self.actions[batch_inds, env_indices], copy=False),
            next_observations=next_obs,
            dones=self.to_torch(dones.reshape(-1, 1), copy=False),
            rewards=self.to_torch(self._normalize_reward(rewards.reshape(-1, 1), env), copy=False),
            discounts=None if discounts is None else self.to_torch(discounts.reshape(-1, 1), copy=False),
        )
        if self.next_action_masks is not None:
            # the mask of the state the target bootstraps from (for n-step, the window's last next state)
            masks = self.next_action_masks[last_inds, env_indices]
            return DQNReplayBufferSamples(**fields, next_action_masks=self.to_torch(masks, copy=False))
        samples_class = DictReplayBufferSamples if self.is_dict else ReplayBufferSamples
        return samples_class(**fields)  # type: ignore[arg-type]

    def _get_obs(
        self,
        store: np.ndarray | dict[str, np.ndarray],
        rows: np.ndarray,
        env_indices: np.ndarray,
        env: VecNormalize | None,
    ) -> th.Tensor | TensorDict:
        # fancy indexing copies once; as_tensor then shares that copy
        if self.is_dict:
            obs = self._normalize_obs({key: arr[rows, env_indices] for key, arr in store.items()}, env)  # type: ignore[union-attr]
            return {key: self.to_torch(value, copy=False) for key, value in obs.items()}  # type: ignore[union-attr]
        return self.to_torch(self._normalize_obs(store[rows, env_indices], env), copy=False)  # type: ignore[arg-type,index]

    def _n_step_window(
        self, batch_inds: np.ndarray, env_indices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """
        n-step return of each sampled start row, vectorised over the batch.

        :return: ``(R, last_rows, done, discount)``: the discounted reward sum over the window, the row of the
            window's last transition (its next observation is ``s'``), whether that transition terminated (no
            bootstrap), and ``γ^m`` with ``m`` the window length
        """
        steps = np.arange(self.n_steps)
        rows = (batch_inds[:, None] + steps) % self.buffer_size  # (batch, n)
        cols = env_indices[:, None]
        terminated = self.dones[rows, cols] * (1.0 - self.timeouts[rows, cols]) > 0
        episode_end = self.dones[rows, cols] > 0  # termination or truncation
        # The newest row is where stored data ends: cut there and bootstrap from its next observation
        newest = (self.pos - 1) % self.buffer_size
        cut = episode_end | (rows == newest)
        # Window length m: up to and including the first cut
        first_cut = np.where(cut.any(axis=1), cut.argmax(axis=1), self.n_steps - 1)
        in_window = steps[None, :] <= first_cut[:, None]
        gamma_k = self.gamma ** steps.astype(np.float32)
        returns = (self.rewards[rows, cols] * gamma_k * in_window).sum(axis=1)
        last_rows = rows[np.arange(len(batch_inds)), first_cut]
        dones = terminated[np.arange(len(batch_inds)), first_cut].astype(np.float32)
        discounts = (self.gamma ** (first_cut + 1)).astype(np.float32)
        return returns.astype(np.float32), last_rows, dones, discounts

    def to_torch(self, array: np.ndarray, copy: bool = True) -> th.Tensor:
        """
        Convert a numpy array to a tensor on the buffer's device.

        :param array: the array
        :param copy: copy the data (``False`` shares memory with ``array`` on the CPU)
        """
        if copy:
            return th.tensor(array, device=self.device)
        if self.device.type == "cpu" and type(array) is np.ndarray and array.flags.writeable:
            try:
                # shares memory as th.as_tensor does on the CPU, without its argument parsing (a few µs per call)
                return th.from_numpy(array)
            except (TypeError, ValueError):  # a dtype or strides from_numpy does not take: as_tensor's handling
                pass
        return th.as_tensor(array, device=self.device)


class PrioritizedReplayBuffer(ReplayBuffer):
    """
    Prioritized experience replay (Schaul et al. 2016), proportional variant, on a sum-tree.

    Transition ``i`` is sampled with probability ``P(i) = p_i^α / Σ_k p_k^α`` (stratified over ``batch_size``
    segments) and its loss is weighted by ``w_i = (N · P(i))^−β / max_j w_j``. New transitions get the largest
    priority seen so far; after a gradient step :meth:`update_priorities` sets ``p_i = |δ_i| + ε``.
    β is annealed linearly from ``beta`` to ``final_beta`` over training (``ScratchDQN`` calls
    :meth:`set_progress`).

    :param buffer_size: Max number of transitions in the buffer (over all envs)
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: as in :class:`ReplayBuffer`
    :param handle_timeout_termination: as in :class:`ReplayBuffer`
    :param n_steps: as in :class:`ReplayBuffer`
    :param gamma: as in :class:`ReplayBuffer`
    :param alpha: priority exponent α (0: uniform sampling)
    :param beta: initial importance-sampling exponent β
    :param final_beta: β at the end of training (1 corrects the sampling bias fully)
    :param epsilon: small constant ε added to ``|δ|`` so that no transition gets probability zero
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        alpha: float = 0.6,
        beta: float = 0.4,
        final_beta: float = 1.0,
        epsilon: float = 1e-6,
    ) -> None:
        for name, value in (("alpha", alpha), ("beta", beta), ("final_beta", final_beta)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ScratchDQNError(f"{name} must be in [0, 1], got {value!r}")
        if not (isinstance(epsilon, (int, float)) and 0.0 < epsilon < 1.0):
            raise ScratchDQNError(f"epsilon must be in (0, 1), got {epsilon!r}")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
            n_steps=n_steps,
            gamma=gamma,
        )
        self.alpha = float(alpha)
        self.initial_beta = float(beta)
        self.final_beta = float(final_beta)
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        # one leaf per (row, env): leaf = row * n_envs + env
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0  # stored as p^α
        # rows added since the last sample: they get the max priority in one batched tree update
        self._pending_rows = 0

    def set_progress(self, progress_remaining: float) -> None:
        """Anneal β linearly: ``β = β_0 + (1 − progress_remaining) · (β_final − β_0)``."""
        self.beta = self.initial_beta + (1.0 - progress_remaining) * (self.final_beta - self.initial_beta)

    def _on_add(self, pos: int) -> None:
        self._pending_rows = min(self._pending_rows + 1, self.buffer_size)

    def _flush_new_rows(self) -> None:
        """
        Give the rows added since the last sample the max priority, in one tree update.

        Priorities only change in :meth:`update_priorities`, after a sample, so the max priority at the flush is the
        max priority at the time each row was added: the same as writing the priority in :meth:`add`.
        """
        if self._pending_rows == 0:
            return
        rows = (self.pos - self._pending_rows + np.arange(self._pending_rows)) % self.buffer_size
        priorities = np.full(rows.size * self.n_envs, self.max_priority)
        if self.optimize_memory_usage and self.full:
            # row `pos` is about to be overwritten (its next observation already is): never sample it
            rows = np.append(rows, self.pos)
            priorities = np.append(priorities, np.zeros(self.n_envs))
        leaves = (rows[:, None] * self.n_envs + np.arange(self.n_envs)).reshape(-1)
        self.tree.update(leaves, priorities)
        self._pending_rows = 0

    def reset(self) -> None:
        super().reset()
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0
        self._pending_rows = 0

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DQNReplayBufferSamples:  # type: ignore[override]
        """
        Sample a batch with probabilities ``P(i) ∝ p_i^α``.

        :param batch_size: Number of transitions to sample
        :param env: associated VecNormalize env, to normalize the observations/rewards when sampling
        :return: the batch with importance weights ``weights`` (shape ``(batch, 1)``) and the sampled leaf
            ``indices`` to pass back to :meth:`update_priorities`
        """
        self._flush_new_rows()
        if self.tree.total <= 0.0:
            raise ScratchDQNError("cannot sample from an empty replay buffer")
        leaves = self.tree.sample(batch_size)
        batch_inds, env_indices = np.divmod(leaves, self.n_envs)
        samples = self._get_samples(batch_inds, env=env, env_indices=env_indices)
        # w_i = (N P(i))^-β / max_j w_j = (p_i / min_j p_j)^-β, since max_j w_j = (N min_j P(j))^-β
        weights = (self.tree.get(leaves) / self.tree.min_priority) ** (-self.beta)
        return DQNReplayBufferSamples(
            **{
                **samples._asdict(),
                "weights": self.to_torch(weights.astype(np.float32).reshape(-1, 1), copy=False),
                "indices": leaves,
            }
        )

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray | th.Tensor) -> None:
        """
        Set the priorities of sampled transitions to ``(|δ| + ε)^α``.

        :param indices: the ``indices`` of the sampled batch
        :param td_errors: a per-sample error (TD error, or the per-sample loss for C51)
        """
        if isinstance(td_errors, th.Tensor):
            td_errors = td_errors.detach().cpu().numpy()
        priorities = (np.abs(np.asarray(td_errors, dtype=np.float64).reshape(-1)) + self.epsilon) ** self.alpha
        self.tree.update(indices, priorities)
        self.max_priority = max(self.max_priority, float(priorities.max()))
