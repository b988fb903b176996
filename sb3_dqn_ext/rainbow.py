"""
Rainbow (Hessel et al. 2018) as a preset of ScratchDQN: every component on by default.

``RainbowDQN("MlpPolicy", env)`` is ``ScratchDQN`` with Double Q-learning, a dueling distributional (C51) head with
noisy layers, prioritized replay and 3-step returns, and no ε-greedy (the noisy layers explore). Its other defaults
are SB3's DQN defaults; the paper's Atari values and values that work on classic control are given as dicts:

=============================  ==============================  ===========================
parameter                      Rainbow paper, Atari            ``CLASSIC_CONTROL``
=============================  ==============================  ===========================
learning_rate                  6.25e-5 (Adam ε = 1.5e-4)       6.3e-4
buffer_size                    1M transitions                  100k
learning_starts                80k frames = 20k steps          1000
batch_size                     32                              64
train_freq / gradient_steps    4 / 1                           4 / 1
target_update_interval         32k frames = 8k steps           500
gamma                          0.99                            0.99
n_steps                        3                               3
PER α / β₀ → 1                 0.5 / 0.4                       0.5 / 0.4
noisy σ₀                       0.5                             0.5
atoms / [v_min, v_max]         51 / [−10, 10]                  51 / [−10, 10] (×100 env reward scale, see below)
max_grad_norm                  10                              10
=============================  ==============================  ===========================

C51's support must cover the returns: with CartPole's +1 per step and γ = 0.99 returns reach ~100, so pass
``policy_kwargs=dict(v_min=0, v_max=100)`` (``CLASSIC_CONTROL`` does); Atari rewards are clipped to [−1, 1].
"""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import MaybeCallback

from sb3_dqn_ext.buffers import PrioritizedReplayBuffer
from sb3_dqn_ext.dqn import ScratchDQN
from sb3_dqn_ext.policies import DQNPolicy

RAINBOW_POLICY_KWARGS: dict[str, Any] = dict(
    dueling=True, noisy=True, noisy_std_init=0.5, n_atoms=51, v_min=-10.0, v_max=10.0
)
RAINBOW_REPLAY_KWARGS: dict[str, Any] = dict(alpha=0.5, beta=0.4)

ATARI: dict[str, Any] = dict(
    policy="CnnPolicy",
    learning_rate=6.25e-5,
    buffer_size=1_000_000,
    learning_starts=20_000,
    batch_size=32,
    train_freq=4,
    gradient_steps=1,
    target_update_interval=8_000,
    gamma=0.99,
    n_steps=3,
    policy_kwargs=dict(optimizer_kwargs=dict(eps=1.5e-4)),
)
CLASSIC_CONTROL: dict[str, Any] = dict(
    policy="MlpPolicy",
    learning_rate=6.3e-4,
    buffer_size=100_000,
    learning_starts=1_000,
    batch_size=64,
    train_freq=4,
    gradient_steps=1,
    target_update_interval=500,
    gamma=0.99,
    n_steps=3,
    policy_kwargs=dict(net_arch=[256, 256], v_min=0.0, v_max=100.0),
)


class RainbowDQN(ScratchDQN):
    """
    ScratchDQN with every Rainbow component on by default (see the module docstring for the paper's values).

    Same parameters as :class:`~sb3_dqn_ext.ScratchDQN`, with these defaults changed:

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param replay_buffer_class: ``PrioritizedReplayBuffer``
    :param replay_buffer_kwargs: ``dict(alpha=0.5, beta=0.4)``, merged with the given dict
    :param n_steps: 3
    :param exploration_initial_eps: 0 (noisy networks explore)
    :param exploration_final_eps: 0
    :param policy_kwargs: ``dueling=True, noisy=True, noisy_std_init=0.5, n_atoms=51, v_min=-10, v_max=10``,
        merged with the given dict
    :param double_q: True
    :param kwargs: every other :class:`~sb3_dqn_ext.ScratchDQN` parameter
    """

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: Any,
        replay_buffer_class: type | None = PrioritizedReplayBuffer,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        n_steps: int = 3,
        exploration_initial_eps: float = 0.0,
        exploration_final_eps: float = 0.0,
        policy_kwargs: dict[str, Any] | None = None,
        double_q: bool = True,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if replay_buffer_class is PrioritizedReplayBuffer:
            replay_buffer_kwargs = {**RAINBOW_REPLAY_KWARGS, **(replay_buffer_kwargs or {})}
        super().__init__(
            policy,
            env,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            n_steps=n_steps,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            policy_kwargs={**RAINBOW_POLICY_KWARGS, **(policy_kwargs or {})},
            double_q=double_q,
            device=device,
            _init_setup_model=_init_setup_model,
            **kwargs,
        )

    def learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "RainbowDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        use_masking: bool = True,
    ) -> RainbowDQN:
        return super().learn(
            total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar, use_masking
        )
