"""
ScratchDQN: Deep Q-Network written from scratch on SB3's ``OffPolicyAlgorithm``.

The algorithm (Mnih et al. 2015), as in the article this project grew from:

- act ε-greedily with respect to ``Q(s, ·; θ)``;
- store ``(s, a, r, s', terminated)`` in a replay buffer ``D`` and sample minibatches from it;
- regress ``Q(s, a; θ)`` on the TD target ``y = r + γ (1 − terminated) max_a' Q(s', a'; θ⁻)`` with the Huber loss;
- every ``C = target_update_interval`` steps move the target network towards the online one,
  ``θ⁻ ← τ θ + (1 − τ) θ⁻`` (``τ = 1``: the hard copy ``θ⁻ ← θ``).

Opt-in extensions change exactly one piece each: ``double_q`` (the online network picks ``a*``), dueling/noisy/C51
heads (``policy_kwargs``), prioritized replay (``PrioritizedReplayBuffer``) and n-step returns (``n_steps``).
"""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import get_parameters_by_name, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from sb3_dqn_ext import fast_update
from sb3_dqn_ext.buffers import PrioritizedReplayBuffer, ReplayBuffer
from sb3_dqn_ext.errors import DivergenceError, ScratchDQNError
from sb3_dqn_ext.fast_update import FlatAdam, FlatMLPAdam, NumpyC51, NumpyC51Adam, NumpyMLP, NumpyMLPAdam
from sb3_dqn_ext.masking import (
    INFO_KEY,
    ActionMaskInfo,
    as_mask,
    get_action_masks,
    is_masking_supported,
    masked_argmax,
    masked_max,
    sample_legal_actions,
)
from sb3_dqn_ext.policies import CnnPolicy, DQNPolicy, MlpPolicy, MultiInputPolicy, QNetwork
from sb3_dqn_ext.schedules import make_exploration_schedule
from sb3_dqn_ext.validation import (
    check_finite_transition,
    check_hyperparameters,
    check_model_file,
    check_replay_buffer,
    check_replay_buffer_setup,
    check_spaces,
    load_replay_buffer_file,
)

SelfScratchDQN = TypeVar("SelfScratchDQN", bound="ScratchDQN")

# observations (s and s') gathered at once for the minibatches of one train() call, at most (see _minibatches)
_PREFETCH_BYTES = 32 * 2**20


def _rows(samples: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of every field of a sampled batch (views, no copy)."""

    def cut(field: Any) -> Any:
        if field is None:
            return None
        if isinstance(field, dict):
            return {key: value[start:stop] for key, value in field.items()}
        return field[start:stop]

    return type(samples)(*(cut(field) for field in samples))


def categorical_projection(atoms: th.Tensor, probs: th.Tensor, support: th.Tensor) -> th.Tensor:
    """
    Project a categorical distribution with atoms at ``atoms`` onto the fixed ``support`` (C51's Φ operator).

    Each atom ``Tz_j`` (clipped to ``[v_min, v_max]``) splits its probability between the two nearest support
    points ``z_l ≤ Tz_j ≤ z_u`` in proportion to its distance from each: ``z_l`` gets ``p_j (u − b_j)``, ``z_u``
    gets ``p_j (b_j − l)``, with ``b_j = (Tz_j − v_min) / Δz``. An atom exactly on a support point keeps all its mass.

    :param atoms: shifted atoms ``Tz = r + γ^n (1 − done) z``, shape ``(batch, n_atoms)``
    :param probs: their probabilities, shape ``(batch, n_atoms)``
    :param support: the support ``z``, shape ``(n_atoms,)``, evenly spaced
    :return: the projected probabilities on ``support``, shape ``(batch, n_atoms)``
    """
    n_atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta_z = (v_max - v_min) / (n_atoms - 1)
    b = (atoms.clamp(v_min, v_max) - v_min) / delta_z
    lower, upper = b.floor(), b.ceil()
    on_point = (lower == upper).to(probs.dtype)
    projected = th.zeros_like(probs)
    projected.scatter_add_(1, lower.long().clamp(0, n_atoms - 1), probs * (upper - b + on_point))
    projected.scatter_add_(1, upper.long().clamp(0, n_atoms - 1), probs * (b - lower))
    return projected


class ScratchDQN(OffPolicyAlgorithm):
    """
    Deep Q-Network (DQN), from scratch, with opt-in Rainbow extensions; a drop-in for SB3's ``DQN``.

    Paper: https://arxiv.org/abs/1312.5602, https://www.nature.com/articles/nature14236
    Default hyperparameters are SB3's ``DQN`` defaults (the Nature paper's, except for the optimizer and learning
    rate), and with every extension off the algorithm is SB3's DQN.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) default 1 for hard update
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param replay_buffer_class: Replay buffer class to use: ``None`` (our uniform ``ReplayBuffer``),
        ``PrioritizedReplayBuffer``, or any SB3 buffer class (for instance ``HerReplayBuffer``).
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation
        (e.g. ``alpha`` and ``beta`` for ``PrioritizedReplayBuffer``).
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity.
        See https://github.com/DLR-RM/stable-baselines3/issues/37#issuecomment-637501195
    :param n_steps: When ``n_steps > 1``, uses n-step returns when updating the Q-value network. Unlike SB3, it
        applies to this package's buffers however they are chosen (also ``PrioritizedReplayBuffer`` and Dict
        observations); with SB3's own buffer classes it is ignored with SB3's warning.
    :param target_update_interval: update the target network every ``target_update_interval``
        environment steps.
    :param exploration_fraction: fraction of entire training period over which the exploration rate is reduced
        (the time constant of the decay for ``exploration_schedule="exponential"``)
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability
    :param max_grad_norm: The maximum value for the gradient clipping
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation; besides SB3's
        (``net_arch``, ``activation_fn``, ``features_extractor_class``, ``optimizer_class``...), ``dueling``,
        ``dueling_net_arch``, ``noisy``, ``noisy_std_init``, ``n_atoms``, ``v_min``, ``v_max`` and ``channels_last``
        (see :class:`~sb3_dqn_ext.policies.DQNPolicy`). With ``noisy=True`` and the exploration values left at their
        defaults, ε-greedy is off (ε = 0): the noise explores.
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param double_q: Double DQN (van Hasselt et al. 2016): the online network picks the next action
        ``a* = argmax_a Q(s', a; θ)`` and the target network values it
    :param exploration_schedule: how ε decays from ``exploration_initial_eps`` to ``exploration_final_eps``:
        ``"linear"`` (SB3's), ``"exponential"``, or a callable of SB3's ``progress_remaining``
    :param mlp_backend: what computes a plain MLP Q-network on CPU (``nn.Linear`` layers with ReLU, Tanh or Sigmoid
        on flattened ``Box`` observations, Adam): ``"torch"`` (default: the numbers of SB3's DQN, bitwise) or
        ``"numpy"``: the gradient step, the TD targets and the greedy actions (rollouts, ``predict``) in NumPy on the
        same weights, which for small networks skips most of PyTorch's per-op overhead. The mathematics is the same;
        the low-order bits differ from the ``"torch"`` backend (another BLAS), runs stay deterministic for a seed.
        While ``learn()``
        runs with it, NumPy's BLAS is limited to one thread (``threadpoolctl``): a small network's products are
        slower on several. For a C51 network (``n_atoms``) of such layers, noisy or not, with a plain or dueling head
        (one layer per stream; Rainbow's network), ``"numpy"`` computes the whole C51 gradient step (TD target,
        projection, loss, backward, clipping, Adam) in NumPy (:class:`~sb3_dqn_ext.fast_update.NumpyC51Adam`), and
        so are its rollouts' greedy actions (``predict`` stays PyTorch's). Anything else (CNN or Dict features,
        dueling or noisy heads without C51, action masks, hooks) uses the PyTorch path, as does the gradient step
        with another optimizer than Adam.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    exploration_schedule: Schedule
    q_net: QNetwork
    q_net_target: QNetwork
    policy: DQNPolicy

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[BaseBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        target_update_interval: int = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        double_q: bool = False,
        exploration_schedule: str | Schedule = "linear",
        mlp_backend: str = "torch",
    ) -> None:
        check_hyperparameters(
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            n_steps=n_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
            stats_window_size=stats_window_size,
            policy_kwargs=policy_kwargs,
            double_q=double_q,
            exploration_schedule=exploration_schedule,
            mlp_backend=mlp_backend,
            seed=seed,
            device=device,
        )
        if not isinstance(env, str):  # before SB3 wraps the env, which fails on some spaces with its own errors
            check_spaces(getattr(env, "observation_space", None), getattr(env, "action_space", None))
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,
            replay_buffer_class=replay_buffer_class,  # type: ignore[arg-type]
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=None,  # checked below, with our error
            support_multi_env=True,
        )
        check_spaces(getattr(self, "observation_space", None), getattr(self, "action_space", None))

        if self.policy_kwargs.get("noisy", False) and (exploration_initial_eps, exploration_final_eps) == (1.0, 0.05):
            # NoisyNet explores through its weights: no ε-greedy unless asked for explicitly
            exploration_initial_eps = exploration_final_eps = 0.0
        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.exploration_schedule_kind = exploration_schedule
        self.target_update_interval = target_update_interval
        self.double_q = double_q
        self.mlp_backend = mlp_backend
        # For updating the target network with multiple envs:
        self._n_calls = 0
        self.max_grad_norm = max_grad_norm
        # "epsilon" for the epsilon-greedy exploration
        self.exploration_rate = 0.0
        # invalid-action masking (set by learn(use_masking=...)) and the masks of the current states
        self._use_masking = False
        self._last_action_masks: np.ndarray | None = None
        self._first_obs_checked = False

        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if self.replay_buffer is None:
            self.replay_buffer = self._make_replay_buffer()
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        self._convert_train_freq()
        self._create_aliases()
        self._fast_update: FlatAdam | None = None
        self._fast_update_unsupported: tuple[Any, Any] | None = None
        self.exploration_schedule = make_exploration_schedule(
            self.exploration_schedule_kind,
            self.exploration_initial_eps,
            self.exploration_final_eps,
            self.exploration_fraction,
        )
        if self.n_envs > 1 and self.n_envs > self.target_update_interval:
            warnings.warn(
                "The number of environments used is greater than the target network "
                f"update interval ({self.n_envs} > {self.target_update_interval}), "
                "therefore the target network will be updated after each call to env.step() "
                f"which corresponds to {self.n_envs} steps."
            )

    def _make_replay_buffer(self) -> BaseBuffer:
        """Our buffers get ``n_steps`` and ``gamma``; SB3's own classes are set up exactly as SB3 does."""
        buffer_class = self.replay_buffer_class if self.replay_buffer_class is not None else ReplayBuffer
        kwargs = self.replay_buffer_kwargs.copy()
        if issubclass(buffer_class, ReplayBuffer):
            kwargs.setdefault("n_steps", self.n_steps)
            kwargs.setdefault("gamma", self.gamma)
        elif self.n_steps > 1:
            warnings.warn(
                f"`n_steps={self.n_steps}` is ignored because a custom `replay_buffer_class` "
                f"(`{buffer_class.__name__}`) was passed: n-step returns are only set up "
                "automatically when `replay_buffer_class` is `None`. "
                "To use n-step returns with a custom replay buffer, configure it explicitly, e.g. "
                f'`replay_buffer_kwargs={{"n_steps": {self.n_steps}, "gamma": {self.gamma}}}`.'
            )
        if issubclass(buffer_class, HerReplayBuffer):
            if self.env is None:
                raise ScratchDQNError("You must pass an environment when using `HerReplayBuffer`")
            kwargs["env"] = self.env
        check_replay_buffer_setup(
            self.buffer_size,
            self.observation_space,
            self.action_space,
            self.n_envs,
            self.optimize_memory_usage,
            prioritized=issubclass(buffer_class, PrioritizedReplayBuffer),
        )
        return buffer_class(
            self.buffer_size,
            self.observation_space,
            self.action_space,
            device=self.device,
            n_envs=self.n_envs,
            optimize_memory_usage=self.optimize_memory_usage,
            **kwargs,
        )

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        """SB3's wrapping, plus :class:`ActionMaskInfo` around a maskable env (the final state's mask in infos)."""
        if not isinstance(env, VecEnv) and is_masking_supported(env):
            env = ActionMaskInfo(env)
        return OffPolicyAlgorithm._wrap_env(env, verbose, monitor_wrapper)

    def _create_aliases(self) -> None:
        self.q_net = self.policy.q_net
        self.q_net_target = self.policy.q_net_target
        # Parameter lists gathered once, for the target update (no parameter walk per update)
        self._online_params = list(self.q_net.parameters())
        self._target_params = list(self.q_net_target.parameters())
        # BatchNorm running statistics are always copied (SB3 GH issue #996)
        self._online_stats = get_parameters_by_name(self.q_net, ["running_"])
        self._target_stats = get_parameters_by_name(self.q_net_target, ["running_"])
        self._noisy = bool(self.q_net.noisy)
        self._distributional = bool(self.q_net.distributional)

    # ------------------------------------------------------------------------------------------------ acting
    def _on_step(self) -> None:
        """
        Update the exploration rate and, every ``target_update_interval`` env steps, the target network.
        This method is called in ``collect_rollouts()`` after each step in the environment.
        """
        self._n_calls += 1
        # each call to step() corresponds to n_envs transitions
        if self._n_calls % max(self.target_update_interval // self.n_envs, 1) == 0:
            self.update_target_network()
        self.exploration_rate = self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    @th.no_grad()
    def update_target_network(self) -> None:
        """``θ⁻ ← τ θ + (1 − τ) θ⁻`` (``τ = 1``: hard copy, ``τ = 0``: no change); BatchNorm statistics are copied."""
        if self.tau == 1.0:
            th._foreach_copy_(self._target_params, self._online_params)
        elif self.tau > 0.0:
            # (1 − τ) θ⁻ first, then + τ θ: SB3's polyak_update order, so the same rounding
            th._foreach_mul_(self._target_params, 1.0 - self.tau)
            th._foreach_add_(self._target_params, self._online_params, alpha=self.tau)
        if self._target_stats:
            th._foreach_copy_(self._target_stats, self._online_stats)

    def _clip_grad_norm(self) -> None:
        """
        Scale the gradients by ``min(max_grad_norm / (‖g‖₂ + 1e-6), 1)``: ``th.nn.utils.clip_grad_norm_``'s ops
        (per-tensor norms, the norm of the norms, clamp, in-place multiply), called directly when every parameter
        lives on one CPU or CUDA device with one dtype (otherwise it calls ``clip_grad_norm_`` itself), so without
        its per-call grouping of the tensors.
        """
        grads = [p.grad for p in self._online_params if p.grad is not None]
        if not grads:
            return
        first = grads[0]
        if first.device.type not in ("cpu", "cuda") or any(
            g.device != first.device or g.dtype != first.dtype or type(g) is not th.Tensor for g in grads
        ):
            th.nn.utils.clip_grad_norm_(self._online_params, self.max_grad_norm)
            return
        total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
        th._foreach_mul_(grads, th.clamp(float(self.max_grad_norm) / (total_norm + 1e-6), max=1.0))

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        masks = self._current_action_masks(n_envs) if self._use_masking else None
        if self.num_timesteps < learning_starts:
            # warm-up: uniform actions, drawn as SB3 draws them (uniform over the legal ones with masking)
            if masks is not None:
                action = sample_legal_actions(masks)
                return action, action
            return super()._sample_action(learning_starts, action_noise, n_envs)
        if self._noisy:
            # NoisyNet: a new noise sample for each action selection
            self.q_net.reset_noise()
        # ε-greedy on the current observation: the same random draws as `predict`, without its per-call overhead
        if np.random.rand() < self.exploration_rate:
            if masks is not None:
                action = sample_legal_actions(masks)
            else:
                action = np.array([self.action_space.sample() for _ in range(n_envs)])
        elif masks is None and (numpy_mlp := self._numpy_mlp("q_net")) is not None:
            action = numpy_mlp(numpy_mlp.features(self._last_obs)).argmax(axis=1)  # argmax_a Q(s, a), in NumPy
        elif masks is None and (numpy_c51 := self.__dict__.get("_numpy_c51_checked")) is not None:
            # argmax_a Σ_i z_i p(s, a, z_i), in NumPy, on the noise just drawn
            action = numpy_c51.q_values(NumpyMLP.features(self._last_obs)).argmax(axis=1)
        else:
            with th.inference_mode():
                obs = obs_as_tensor(self._last_obs, self.device)
                if masks is None:
                    # (not deterministic: noisy layers act on the noise just drawn, not on their mean weights)
                    action = self.q_net._predict(obs, deterministic=False).cpu().numpy()
                else:
                    action = masked_argmax(self.q_net(obs), th.as_tensor(masks, device=self.device)).cpu().numpy()
        return action, action

    def _current_action_masks(self, n_envs: int) -> np.ndarray:
        """Legal actions of the current states (kept from the last step, or asked from the env)."""
        if self._last_action_masks is None:
            self._last_action_masks = get_action_masks(self.env)
        return as_mask(self._last_action_masks, n_envs, self.action_space.n, self.num_timesteps)

    def _next_action_masks(self, dones: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
        """
        Legal actions of each next state ``s'``: the env's current masks, except where an episode ended and the
        VecEnv already reset; there the final state's mask from ``info["action_mask"]`` (:class:`ActionMaskInfo`),
        or every action when the env does not provide it (see :mod:`sb3_dqn_ext.masking`).
        """
        current = np.asarray(get_action_masks(self.env), dtype=bool).reshape(len(dones), -1)
        self._last_action_masks = current
        next_masks = current.copy()
        for i in np.flatnonzero(dones):
            next_masks[i] = infos[i].get(INFO_KEY, True)
        return next_masks

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos) -> None:  # type: ignore[no-untyped-def,override]
        """
        Store ``(s, a, r, s', done)``; ``s'`` is the terminal observation when an episode ended (VecEnvs reset).

        Same as SB3's, without its deep copy of every observation: the buffer copies into its own arrays.
        """
        # every observation is checked once, as the next observation of the step that returned it; only the first
        # observation of a learn() call is checked as the current one
        first_obs = None if self._first_obs_checked else self._last_obs
        check_finite_transition(first_obs, new_obs, reward, infos, self.num_timesteps)
        self._first_obs_checked = True
        if self._vec_normalize_env is not None:
            new_obs_ = self._vec_normalize_env.get_original_obs()
            reward_ = self._vec_normalize_env.get_original_reward()
        else:
            self._last_original_obs, new_obs_, reward_ = self._last_obs, new_obs, reward
        next_obs = new_obs_
        # (a Python pass over a few bools is cheaper than numpy's for one env or a handful)
        ended = [
            i for i, done in enumerate(dones.tolist()) if done and infos[i].get("terminal_observation") is not None
        ]
        if ended:
            next_obs = {k: v.copy() for k, v in new_obs_.items()} if isinstance(new_obs_, dict) else new_obs_.copy()
            for i in ended:
                terminal = infos[i]["terminal_observation"]
                if self._vec_normalize_env is not None:
                    terminal = self._vec_normalize_env.unnormalize_obs(terminal)
                if isinstance(next_obs, dict):
                    for key in next_obs:
                        next_obs[key][i] = terminal[key]
                else:
                    next_obs[i] = terminal
        if self._use_masking:
            masks = self._next_action_masks(dones, infos)
            replay_buffer.add(self._last_original_obs, next_obs, buffer_action, reward_, dones, infos, masks)
        else:
            replay_buffer.add(self._last_original_obs, next_obs, buffer_action, reward_, dones, infos)
        self._last_obs = new_obs
        if self._vec_normalize_env is not None:
            self._last_original_obs = new_obs_

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        ε-greedy action: uniform with probability ``exploration_rate`` (unless ``deterministic``), else greedy.

        :param observation: the input observation (one, or one per env)
        :param state: The last states (can be None, used in recurrent policies)
        :param episode_start: The last masks (can be None, used in recurrent policies)
        :param deterministic: Whether or not to return deterministic actions.
        :param action_masks: legal actions, ``(n_actions,)`` or ``(n_envs, n_actions)`` bools, as in sb3-contrib's
            ``MaskablePPO.predict``: random and greedy actions are then chosen among the legal ones only
        :return: the model's action and the next state (used in recurrent policies)
        """
        if action_masks is not None:
            return self._predict_masked(observation, action_masks, deterministic), state
        if not deterministic and np.random.rand() < self.exploration_rate:
            if self.policy.is_vectorized_observation(observation):
                if isinstance(observation, dict):
                    n_batch = observation[next(iter(observation.keys()))].shape[0]
                else:
                    n_batch = observation.shape[0]
                action = np.array([self.action_space.sample() for _ in range(n_batch)])
            else:
                action = np.array(self.action_space.sample())
        elif isinstance(observation, np.ndarray) and (numpy_mlp := self._numpy_predictor()) is not None:
            action = self._numpy_predict(numpy_mlp, observation)  # mlp_backend="numpy"
        else:
            action, state = self.policy.predict(observation, state, episode_start, deterministic)
        return action, state

    def _numpy_predictor(self) -> NumpyMLP | None:
        """
        The NumPy forward pass for ``predict``, where ``policy.predict`` would compute exactly
        ``argmax_a q_net(s, a)`` (the policy's classes' own ``predict``, ``obs_to_tensor`` and ``_predict``, nothing
        patched, ``policy.q_net`` being ``q_net``); checked at each call (``predict`` runs outside rollouts and
        ``train()``).
        """
        policy = self.policy
        if (
            self.__dict__.get("mlp_backend", "torch") != "numpy"
            or policy.q_net is not self.q_net
            or type(policy)._predict is not DQNPolicy._predict
            or type(policy).predict is not BasePolicy.predict
            or type(policy).obs_to_tensor is not BasePolicy.obs_to_tensor
            or any(name in policy.__dict__ for name in ("predict", "_predict", "obs_to_tensor"))
        ):
            return None
        return self._numpy_mlp("q_net", use_checked=False)

    def _numpy_predict(self, numpy_mlp: NumpyMLP, observation: np.ndarray) -> np.ndarray:
        """The greedy action(s) of ``policy.predict``, computed by ``mlp_backend="numpy"``: the same checks of the
        observation's shape, the same shapes and dtype out."""
        if self.policy.training:
            self.policy.set_training_mode(False)  # (as policy.predict leaves it)
        vectorized = self.policy.is_vectorized_observation(observation)  # (raises SB3's error for a wrong shape)
        obs = observation.reshape((-1, *self.observation_space.shape))  # type: ignore[misc]
        action = numpy_mlp(numpy_mlp.features(obs)).argmax(axis=1)  # argmax_a Q(s, a)
        return action if vectorized else action.squeeze(axis=0)

    def _predict_masked(self, observation: Any, action_masks: np.ndarray, deterministic: bool) -> np.ndarray:
        self.policy.set_training_mode(False)
        obs, vectorized = self.policy.obs_to_tensor(observation)
        n_batch = next(iter(obs.values())).shape[0] if isinstance(obs, dict) else obs.shape[0]
        masks = as_mask(action_masks, n_batch, self.action_space.n)
        if not deterministic and np.random.rand() < self.exploration_rate:
            action = sample_legal_actions(masks)
        else:
            with th.inference_mode():
                if deterministic and self._noisy:
                    with self.q_net.mean_weights():
                        q_values = self.q_net(obs)
                else:
                    q_values = self.q_net(obs)
                action = masked_argmax(q_values, th.as_tensor(masks, device=self.device)).cpu().numpy()
        return action if vectorized else action[0]

    # ------------------------------------------------------------------------------------------------ learning
    def _discounts_and_masks(self, data: Any) -> tuple[th.Tensor | float, th.Tensor | None]:
        """``γ^n`` per sample for n-step returns (``γ`` otherwise) and the legal actions of ``s'`` (``None``: all)."""
        discounts = data.discounts if data.discounts is not None else self.gamma
        masks = getattr(data, "next_action_masks", None)
        if masks is not None:
            # a terminal state may have no legal action; its value is multiplied by 0 anyway
            masks = masks | ~masks.any(dim=1, keepdim=True)
        return discounts, masks

    @th.no_grad()
    def _td_target(self, data: Any) -> th.Tensor:
        """The TD target ``y = r + γ^n (1 − terminated) Q_target(s', a*)`` of each sampled transition."""
        discounts, masks = self._discounts_and_masks(data)
        if masks is None and (numpy_mlps := self._numpy_target_mlps()) is not None:  # mlp_backend="numpy"
            return self._numpy_td_target(data, discounts, *numpy_mlps)
        return data.rewards + discounts * (1 - data.dones) * self._next_q_values(data.next_observations, masks)

    def _minibatches(self, gradient_steps: int, batch_size: int) -> Iterator[tuple[Any, th.Tensor | None]]:
        """
        The minibatch of each gradient step, with its TD targets where they can be computed ahead (else ``None``).

        With this library's uniform :class:`ReplayBuffer` the minibatches of several gradient steps are drawn with
        the random numbers that one ``sample()`` per step would draw, and gathered in one pass (up to
        ``_PREFETCH_BYTES`` of observations at a time). Where the target network alone gives ``Q_target(s', a*)``
        (no ``double_q``, no noisy or C51 heads, target not in training mode), nothing changes it between gradient
        steps of one ``train()`` call, so the TD targets of those minibatches come from one forward pass. Each row
        goes through the same ops; the results are bitwise the per-step ones where the BLAS computes a matrix
        product's rows independently of the number of rows, as on the CPUs the tests run on (they compare with SB3's
        DQN bitwise); elsewhere only low-order bits could differ. Any other buffer is sampled once per gradient step,
        as SB3 does.
        """
        buffer = self.replay_buffer
        env = self._vec_normalize_env
        if type(buffer) is not ReplayBuffer:  # prioritized replay, a subclass or another buffer class: per step
            for _ in range(gradient_steps):
                yield buffer.sample(batch_size, env=env), None  # type: ignore[union-attr]
            return
        per_batch = max(batch_size * buffer._observation_row_nbytes() * 2, 1)
        chunk = max(1, min(gradient_steps, _PREFETCH_BYTES // per_batch))
        ahead = not (self.double_q or self._noisy or self._distributional or self.q_net_target.training)
        for first in range(0, gradient_steps, chunk):
            n_batches = min(chunk, gradient_steps - first)
            data = buffer._sample_batches(n_batches, batch_size, env=env)
            td_target = self._td_target(data) if ahead else None
            if n_batches == 1:
                yield data, td_target
                continue
            for k in range(n_batches):
                start, stop = k * batch_size, (k + 1) * batch_size
                yield (
                    _rows(data, start, stop),
                    None if td_target is None else td_target[start:stop],
                )

    def _next_q_values(self, next_observations: Any, masks: th.Tensor | None) -> th.Tensor:
        """
        ``Q_target(s', a*)``: ``a* = argmax_a Q_target(s', a)``, or ``argmax_a Q(s', a)`` with ``double_q``; the
        max/argmax run over the legal actions of ``s'`` when ``masks`` is given.
        """
        next_q_target = self.q_net_target(next_observations)
        if self.double_q:
            next_q_online = self.q_net(next_observations)
            next_actions = next_q_online.argmax(1) if masks is None else masked_argmax(next_q_online, masks)
            return next_q_target.gather(1, next_actions.reshape(-1, 1))
        if masks is None:
            return next_q_target.max(dim=1, keepdim=True).values
        return masked_max(next_q_target, masks)

    @staticmethod
    def _numpy_td_target(
        data: Any, discounts: th.Tensor | float, target: NumpyMLP, online: NumpyMLP | None
    ) -> th.Tensor:
        """The TD target of :meth:`_td_target` (no masks) computed by ``mlp_backend="numpy"``: the same equation."""
        x = NumpyMLP.features(data.next_observations.numpy())
        next_q_target = target(x)
        if online is None:
            next_q = next_q_target.max(axis=1, keepdims=True)  # max_a Q_target(s', a)
        else:
            next_actions = online(x).argmax(axis=1)  # a* = argmax_a Q(s', a; θ)
            next_q = np.take_along_axis(next_q_target, next_actions[:, None], axis=1)  # Q_target(s', a*)
        gamma = discounts.numpy() if isinstance(discounts, th.Tensor) else float(discounts)
        return th.from_numpy(data.rewards.numpy() + gamma * (1 - data.dones.numpy()) * next_q)

    def _numpy_c51_target(self) -> NumpyC51 | None:
        """The target network's NumPy forward pass for :class:`~sb3_dqn_ext.fast_update.NumpyC51Adam`, where it
        applies now, else ``None``."""
        return self._numpy_c51("q_net_target")

    def _numpy_c51(self, name: str) -> NumpyC51 | None:
        """The NumPy forward pass of the C51 network ``name`` (``"q_net"`` or ``"q_net_target"``) where
        ``mlp_backend="numpy"`` applies to it now (see :class:`~sb3_dqn_ext.fast_update.NumpyC51`), else ``None``;
        rebuilt when the network or its storage changed."""
        if self.__dict__.get("mlp_backend", "torch") != "numpy" or not fast_update.ENABLED:
            return None
        q_net = getattr(self, name)
        cache = self.__dict__.setdefault("_numpy_c51s", {})
        cached = cache.get(name)
        if cached is None or cached[0] is not q_net or cached[1] is None or cached[1].stale():
            cached = cache[name] = (q_net, NumpyC51.for_network(q_net))  # (unsupported: checked again each time)
        numpy_c51 = cached[1]
        return numpy_c51 if numpy_c51 is not None and numpy_c51.ready() else None

    def _numpy_target_mlps(self) -> tuple[NumpyMLP, NumpyMLP | None] | None:
        """The NumPy forward passes the TD target needs (the target network's, and the online one's with
        ``double_q``) where ``mlp_backend="numpy"`` applies to them now, else ``None``."""
        target = self._numpy_mlp("q_net_target")
        if target is None:
            return None
        if not self.double_q:
            return target, None
        online = self._numpy_mlp("q_net")
        return None if online is None else (target, online)

    def _numpy_mlp(self, name: str, use_checked: bool = True) -> NumpyMLP | None:
        """
        The NumPy forward pass of the network ``name`` (``"q_net"`` or ``"q_net_target"``) where
        ``mlp_backend="numpy"`` applies to it now (see :class:`~sb3_dqn_ext.fast_update.NumpyMLP`), else ``None``.
        Checked once per rollout and once per ``train()`` call (:meth:`_check_numpy_mlps`), as the autograd-free
        step is: a hook registered in the middle of one takes effect from the next (``use_checked=False``: check now).
        """
        checked = self.__dict__.get("_numpy_checked") if use_checked else None
        if checked is not None and name in checked:
            return checked[name]
        if self.__dict__.get("mlp_backend", "torch") != "numpy" or not fast_update.ENABLED:
            return None
        q_net = getattr(self, name)
        cache = self.__dict__.setdefault("_numpy_mlps", {})
        entry = cache.get(name)
        if entry is not None and entry[0] is q_net and entry[1] is not None and not entry[1].stale():
            numpy_mlp = entry[1]
        else:  # a new network, new layers, parameters or parameter storage, or one not supported the last time
            numpy_mlp = NumpyMLP.for_network(q_net)
            cache[name] = (q_net, numpy_mlp)
        return numpy_mlp if numpy_mlp is not None and numpy_mlp.ready() else None

    def _check_numpy_mlps(self, *names: str) -> None:
        """Check the NumPy forward passes of the networks ``names`` once, for the rollout or ``train()`` call that
        starts (see :meth:`_numpy_mlp`); ``_numpy_checked = None`` ends it."""
        self._numpy_checked = None
        if self.__dict__.get("mlp_backend", "torch") == "numpy":
            self._numpy_checked = {name: self._numpy_mlp(name) for name in names}

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> Any:
        """SB3's ``collect_rollouts``, with the check of ``mlp_backend="numpy"``'s forward pass done once for it."""
        self._check_numpy_mlps("q_net")  # (the actions)
        self._numpy_c51_checked = self._numpy_c51("q_net") if self._numpy_checked is not None else None
        try:
            return super().collect_rollouts(*args, **kwargs)
        finally:
            self._numpy_checked = None
            self._numpy_c51_checked = None

    def _categorical_loss(
        self, data: Any, discounts: th.Tensor | float, masks: th.Tensor | None
    ) -> tuple[th.Tensor, th.Tensor]:
        """C51: per-sample cross-entropy between ``Φ(r + γ^n (1 − done) z)`` and ``p(s, a)``."""
        support = self.q_net.support
        batch = th.arange(data.rewards.shape[0], device=support.device)
        with th.no_grad():
            next_probs = self.q_net_target.log_probs(data.next_observations).exp()  # (batch, actions, atoms)
            # greedy next action by expected value (online network with double_q), over legal actions if masked
            next_q = self.q_net(data.next_observations) if self.double_q else (next_probs * support).sum(dim=-1)
            next_actions = next_q.argmax(dim=1) if masks is None else masked_argmax(next_q, masks)
            target_atoms = data.rewards + discounts * (1 - data.dones) * support  # Tz, (batch, atoms)
            target_probs = categorical_projection(target_atoms, next_probs[batch, next_actions], support)
        log_probs = self.q_net.log_probs(data.observations)[batch, data.actions.long().reshape(-1)]
        per_sample = -(target_probs * log_probs).sum(dim=-1)
        return per_sample, per_sample.detach()

    def _flat_adam(self) -> FlatAdam | None:
        """
        Adam on flat buffers for this Q-network and optimizer when it applies now (see :mod:`fast_update`): a
        :class:`FlatMLPAdam` (the whole step without autograd) for a plain MLP, a :class:`FlatAdam` (clipping and
        Adam after autograd's backward pass) otherwise; ``None``: ``clip_grad_norm_`` and ``optimizer.step()``.
        """
        if not fast_update.ENABLED:
            return None
        q_net, optimizer = self.q_net, self.policy.optimizer
        backend = self.__dict__.get("mlp_backend", "torch")
        fast = getattr(self, "_fast_update", None)
        if fast is None or fast.stale(q_net, optimizer) or getattr(self, "_fast_update_backend", None) != backend:
            if getattr(self, "_fast_update_unsupported", None) == (q_net, optimizer, backend):
                return None
            numpy_step = (
                NumpyMLPAdam.for_network(q_net, optimizer) or NumpyC51Adam.for_network(q_net, optimizer)
                if backend == "numpy"
                else None
            )
            fast = numpy_step or FlatMLPAdam.for_network(q_net, optimizer) or FlatAdam.for_network(q_net, optimizer)
            if fast is not None:
                # channels_last on convolutions (opt-in, other rounding already): Adam by PyTorch's fused kernel, as
                # Adam(fused=True); without 4-D weights the option changes nothing, Adam's bits included
                fast.fused_kernel = bool(getattr(q_net, "channels_last", False)) and any(
                    p.dim() == 4 for p in fast.params
                )
            self._fast_update = fast
            self._fast_update_backend = backend
            self._fast_update_unsupported = (q_net, optimizer, backend) if fast is None else None
        return fast if fast is not None and fast.ready() else None

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        prioritized = isinstance(self.replay_buffer, PrioritizedReplayBuffer)
        if prioritized:
            self.replay_buffer.set_progress(self._current_progress_remaining)  # type: ignore[union-attr]
        # Adam on CPU: clipping and Adam on flat buffers; for a plain MLP the whole step without autograd's
        # bookkeeping (bitwise the same numbers either way)
        flat = self._flat_adam()
        fast = flat if isinstance(flat, FlatMLPAdam) and flat.mlp_ready() else None
        # mlp_backend="numpy": whether the TD targets' forward passes run in NumPy
        self._check_numpy_mlps("q_net_target", *(("q_net",) if self.double_q else ()))
        # mlp_backend="numpy" with a C51 network: the whole C51 step in NumPy (without action masks)
        numpy_c51 = flat if isinstance(flat, NumpyC51Adam) and flat.c51_ready() else None
        target_c51 = self._numpy_c51_target() if numpy_c51 is not None else None

        losses, td_errors, weights_mean = [], [], []
        for data, td_target in self._minibatches(gradient_steps, batch_size):
            if self._noisy:
                self.q_net.reset_noise()
                self.q_net_target.reset_noise()

            weights = data.weights.reshape(-1) if prioritized else None  # importance-sampling weights
            stepped = False  # whether the gradient step is done (the autograd-free steps)
            if self._distributional:
                discounts, masks = self._discounts_and_masks(data)
                if target_c51 is not None and masks is None:
                    # minimise (w ·) H(Φ(r + γ^n (1 − done) z), p(s, a)): TD target, loss, backward, clipping and
                    # Adam in one call (NumPy)
                    loss, priority = numpy_c51.step(  # type: ignore[union-attr]
                        target_c51, data, discounts, self.max_grad_norm, weights, self.double_q
                    )
                    stepped = True
                else:
                    per_sample_loss, priority = self._categorical_loss(data, discounts, masks)
                    loss = (per_sample_loss if weights is None else weights * per_sample_loss).mean()
            else:
                if td_target is None:
                    td_target = self._td_target(data)  # y = r + γ^n (1 − terminated) Q_target(s', a*)
                if fast is not None:
                    # minimise (w ·) huber(Q(s, a; θ) − y): forward, backward, clipping and Adam in one call
                    # (the NumPy step flattens the observations itself)
                    numpy_step = isinstance(fast, NumpyMLPAdam)
                    features = data.observations if numpy_step else self.q_net._features(data.observations)
                    loss, q_values = fast.step(features, data.actions.long(), td_target, self.max_grad_norm, weights)
                else:
                    q_values = self.q_net(data.observations).gather(1, data.actions.long())  # Q(s, a; θ)
                    if weights is None:
                        loss = F.smooth_l1_loss(q_values, td_target)
                    else:
                        per_sample_loss = F.smooth_l1_loss(q_values, td_target, reduction="none").reshape(-1)
                        loss = (weights * per_sample_loss).mean()
                if prioritized:
                    priority = (td_target - q_values).detach().abs().reshape(-1)  # |δ|

            if prioritized:
                self.replay_buffer.update_priorities(data.indices, priority)  # type: ignore[union-attr]
                td_errors.append(priority.mean())
                weights_mean.append(weights.mean())  # type: ignore[union-attr]
            losses.append(loss.detach())

            if stepped or fast is not None:
                pass  # (an autograd-free step did forward, backward, clipping and Adam)
            elif flat is not None:
                flat.zero_grad()
                loss.backward()
                flat.clip_grad_norm(self.max_grad_norm)
                flat.adam_step()
            else:
                self.policy.optimizer.zero_grad()
                loss.backward()
                self._clip_grad_norm()
                self.policy.optimizer.step()

        # (the check holds for this call only; predict() never reads it, and the next rollout or train() replaces it)
        self._numpy_checked = None
        self._n_updates += gradient_steps
        if gradient_steps == 0:
            return
        loss_values = th.stack(losses)
        mean_loss = loss_values.mean().item()
        # (a non-finite loss makes the mean non-finite; the mean alone may also overflow)
        if not math.isfinite(mean_loss) and not bool(th.isfinite(loss_values).all()):
            first_bad = int((~th.isfinite(loss_values)).nonzero()[0, 0])
            raise DivergenceError(
                f"the loss became {loss_values[first_bad].item()} at gradient step "
                f"{self._n_updates - gradient_steps + first_bad + 1} (timestep {self.num_timesteps}): "
                "training diverged; lower the learning rate or check rewards/observations"
            )
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", mean_loss)
        if prioritized:
            self.logger.record("train/td_error_mean", th.stack(td_errors).mean().item())
            self.logger.record("train/is_weight_mean", th.stack(weights_mean).mean().item())
            self.logger.record("train/per_beta", self.replay_buffer.beta)  # type: ignore[union-attr]

    def learn(
        self: SelfScratchDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "ScratchDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        use_masking: bool = True,
    ) -> SelfScratchDQN:
        """
        Train the model; SB3's ``learn`` with one more, last, keyword.

        :param total_timesteps: The total number of samples (env steps) to train on
        :param callback: callback(s) called at every step with state of the algorithm.
        :param log_interval: The number of episodes before logging.
        :param tb_log_name: the name of the run for TensorBoard logging
        :param reset_num_timesteps: whether or not to reset the current timestep number (used in logging)
        :param progress_bar: Display a progress bar using tqdm and rich.
        :param use_masking: mask invalid actions when the env has an ``action_masks()`` method (sb3-contrib's
            convention, e.g. ``ActionMasker``); ignored otherwise
        :return: the trained model
        """
        self._use_masking = bool(use_masking) and self.env is not None and is_masking_supported(self.env)
        self._last_action_masks = None
        self._first_obs_checked = False
        if self._use_masking:
            if not isinstance(self.replay_buffer, ReplayBuffer):
                raise ScratchDQNError(
                    "action masking needs one of sb3_dqn_ext's replay buffers (replay_buffer_class), "
                    f"got {type(self.replay_buffer).__name__}"
                )
            self.replay_buffer.enable_action_masks(int(self.action_space.n))
        # mlp_backend="numpy": a small network's matrix products are faster on one BLAS thread than on several
        numpy_backend = self.__dict__.get("mlp_backend", "torch") == "numpy" and (
            NumpyMLP.for_network(self.q_net) is not None or NumpyC51.for_network(self.q_net) is not None
        )
        with threadpool_limits(limits=1, user_api="blas") if numpy_backend else contextlib.nullcontext():
            return super().learn(
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )

    # ------------------------------------------------------------------------------------------------ save/load
    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfScratchDQN],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfScratchDQN:
        """
        SB3's ``load``, after :func:`~sb3_dqn_ext.validation.check_model_file`: a file that is not a model, is
        truncated or corrupt, was saved by another algorithm or for other spaces than ``env``'s raises
        :class:`ScratchDQNError` naming the problem. The parameters are SB3's.
        """
        check_model_file(path, env=env, algorithm=cls, custom_objects=custom_objects)
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer from a pickle file (ours, with priorities for PER, or one of SB3's).

        :param path: Path to the pickled replay buffer.
        :param truncate_last_traj: When using ``HerReplayBuffer`` with online sampling:
            If set to ``True``, we assume that the last trajectory in the replay buffer was finished
            (and truncate it).
            If set to ``False``, we assume that we continue the same trajectory (same episode).
        """
        buffer = load_replay_buffer_file(path, self.verbose)
        check_replay_buffer(self, buffer)
        self.replay_buffer = buffer
        if isinstance(buffer, HerReplayBuffer):
            if self.env is None:
                raise ScratchDQNError("You must pass an environment at load time when using `HerReplayBuffer`")
            buffer.set_env(self.env)
            if truncate_last_traj:
                buffer.truncate_last_trajectory()
        # Update saved replay buffer device to match current setting, see SB3 GH#1561
        self.replay_buffer.device = self.device

    def __getstate__(self) -> dict[str, Any]:
        # (the NumPy forward passes are views of this model's weights; a copy or an unpickled model builds its own)
        state = self.__dict__.copy()
        state.pop("_numpy_mlps", None)
        state.pop("_numpy_checked", None)
        state.pop("_numpy_c51s", None)
        state.pop("_numpy_c51_checked", None)
        return state

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "q_net",
            "q_net_target",
            "_online_params",
            "_target_params",
            "_online_stats",
            "_target_stats",
            "_last_action_masks",
            "_fast_update",
            "_fast_update_unsupported",
            "_fast_update_backend",
            "_numpy_mlps",
            "_numpy_checked",
            "_numpy_c51s",
            "_numpy_c51_checked",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []
