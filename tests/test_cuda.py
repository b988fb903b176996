"""
ScratchDQN on a CUDA device: the same numbers as SB3's DQN on that device, every component on, save/load across
devices. Skipped where no GPU is visible (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from envs import DictChain, make_chain
from stable_baselines3 import DQN
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.vec_env import DummyVecEnv
from test_masking import illegal_count, masked_env

from sb3_dqn_ext import PrioritizedReplayBuffer, RainbowDQN, ScratchDQN

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device")

SMALL = dict(learning_starts=64, train_freq=8, target_update_interval=40, batch_size=32, buffer_size=2000)
RAINBOW_SMALL = dict(
    learning_starts=30, buffer_size=500, batch_size=16, target_update_interval=20, policy_kwargs=dict(n_atoms=11)
)


@pytest.mark.parametrize("kwargs", [dict(), dict(tau=0.5, gradient_steps=2), dict(max_grad_norm=0.05)])
def test_defaults_match_sb3_dqn_on_cuda(kwargs):
    common = dict(SMALL, seed=5, device="cuda", **kwargs)
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **common).learn(700)
    theirs = DQN("MlpPolicy", "CartPole-v1", **common).learn(700)
    for a, b in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert a.device.type == "cuda"
        th.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "policy, env_fn",
    [
        ("MlpPolicy", lambda: DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)),
        ("MultiInputPolicy", lambda: DictChain(make_chain())),
        ("CnnPolicy", lambda: FakeImageEnv(screen_height=36, screen_width=36, discrete=True)),
    ],
)
def test_rainbow_on_cuda_saves_and_loads_onto_cpu(policy, env_fn, tmp_path):
    env = env_fn()
    model = RainbowDQN(policy, env, seed=0, device="cuda", **RAINBOW_SMALL).learn(150)
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert model.replay_buffer.tree.total > 0 and model.logger.name_to_value["train/per_beta"] > 0.4
    obs = model.get_env().reset()
    actions = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "rainbow.zip")
    on_cpu = RainbowDQN.load(tmp_path / "rainbow.zip", device="cpu")
    assert all(p.device.type == "cpu" for p in on_cpu.policy.parameters())
    np.testing.assert_array_equal(on_cpu.predict(obs, deterministic=True)[0], actions)
    back = RainbowDQN.load(tmp_path / "rainbow.zip", env=env, device="cuda")
    back.learn(60, reset_num_timesteps=False)


def test_prioritized_double_n_step_on_cuda_writes_priorities():
    model = ScratchDQN(
        "MlpPolicy",
        "CartPole-v1",
        double_q=True,
        n_steps=3,
        replay_buffer_class=PrioritizedReplayBuffer,
        replay_buffer_kwargs=dict(alpha=0.6, beta=0.4),
        device="cuda",
        seed=0,
        **SMALL,
    ).learn(400)
    priorities = model.replay_buffer.tree.get(np.arange(model.replay_buffer.pos))
    assert len(np.unique(priorities)) > 2  # written back from |δ|, not all the max priority
    assert np.isfinite(model.logger.name_to_value["train/td_error_mean"])


def test_masking_on_cuda_never_takes_illegal_actions():
    env = DummyVecEnv([lambda: masked_env()] * 2)
    model = ScratchDQN("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0, device="cuda").learn(400)
    assert illegal_count(model) == 0
