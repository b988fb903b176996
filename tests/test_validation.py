"""Every meaningless hyperparameter or unsupported space raises ScratchDQNError naming the parameter."""

import gymnasium as gym
import numpy as np
import pytest
from envs import make_chain
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer as SB3ReplayBuffer

from sb3_dqn_ext import DivergenceError, PrioritizedReplayBuffer, ScratchDQN, ScratchDQNError

BAD_HYPERPARAMETERS = [
    ("learning_rate", 0.0),
    ("learning_rate", -1e-3),
    ("learning_rate", float("nan")),
    ("buffer_size", 0),
    ("buffer_size", 10.5),
    ("learning_starts", -1),
    ("batch_size", 0),
    ("tau", -0.1),
    ("tau", 1.5),
    ("gamma", 1.01),
    ("gamma", -0.5),
    ("train_freq", 0),
    ("train_freq", (4, "epoch")),
    ("train_freq", (0, "step")),
    ("gradient_steps", -2),
    ("n_steps", 0),
    ("target_update_interval", 0),
    ("exploration_fraction", 1.5),
    ("exploration_initial_eps", -0.1),
    ("exploration_final_eps", 2.0),
    ("max_grad_norm", 0.0),
    ("stats_window_size", 0),
    ("double_q", "yes"),
    ("exploration_schedule", "cosine"),
    ("replay_buffer_class", dict),
    ("policy_kwargs", [1, 2]),
]


@pytest.mark.parametrize("name, value", BAD_HYPERPARAMETERS)
def test_bad_hyperparameter_names_itself(name, value):
    with pytest.raises(ScratchDQNError, match=name):
        ScratchDQN("MlpPolicy", make_chain(), **{name: value})


def test_error_class_is_value_and_assertion_error():
    assert issubclass(ScratchDQNError, ValueError) and issubclass(ScratchDQNError, AssertionError)
    with pytest.raises(AssertionError):
        ScratchDQN("MlpPolicy", make_chain(), gamma=2.0)


@pytest.mark.parametrize(
    "policy_kwargs, name",
    [
        (dict(net_arch=[64, -1]), "net_arch"),
        (dict(dueling=True, dueling_net_arch=dict(value=[0])), "dueling_net_arch"),
        (dict(dueling=True, dueling_net_arch=dict(values=[8])), "dueling_net_arch"),
        (dict(noisy=True, noisy_std_init=-1.0), "noisy_std_init"),
        (dict(n_atoms=1), "n_atoms"),
        (dict(n_atoms=51, v_min=5.0, v_max=-5.0), "v_min"),
    ],
)
def test_bad_policy_kwargs(policy_kwargs, name):
    with pytest.raises(ScratchDQNError, match=name):
        ScratchDQN("MlpPolicy", make_chain(), policy_kwargs=policy_kwargs)


@pytest.mark.parametrize(
    "kwargs, name", [(dict(alpha=1.5), "alpha"), (dict(beta=-0.1), "beta"), (dict(epsilon=0.0), "epsilon")]
)
def test_bad_prioritized_replay_kwargs(kwargs, name):
    with pytest.raises(ScratchDQNError, match=name):
        ScratchDQN("MlpPolicy", make_chain(), replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=kwargs)


def test_accepts_every_value_sb3_and_zoo_use():
    ScratchDQN("MlpPolicy", make_chain(), tau=0.0, learning_starts=0, gradient_steps=-1, exploration_fraction=0.0)
    ScratchDQN("MlpPolicy", make_chain(), exploration_final_eps=0.0, train_freq=(2, "episode"), gradient_steps=0)
    from stable_baselines3.common.vec_env import DummyVecEnv

    with pytest.warns(UserWarning, match="target network"):
        ScratchDQN("MlpPolicy", DummyVecEnv([make_chain] * 2), target_update_interval=1)


@pytest.mark.parametrize("action_space", [spaces.Box(-1, 1, (2,)), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3)])
def test_non_discrete_action_space_rejected(action_space):
    class Env(gym.Env):
        observation_space = spaces.Box(-1, 1, (3,))

        def __init__(self):
            self.action_space = action_space

        def reset(self, *, seed=None, options=None):
            return np.zeros(3, dtype=np.float32), {}

        def step(self, action):
            return np.zeros(3, dtype=np.float32), 0.0, False, False, {}

    with pytest.raises(ScratchDQNError, match="action_space"):
        ScratchDQN("MlpPolicy", Env())


def test_optimize_memory_usage_needs_timeouts_off():
    with pytest.raises(ScratchDQNError, match="optimize_memory_usage"):
        ScratchDQN("MlpPolicy", make_chain(), optimize_memory_usage=True)
    ScratchDQN(
        "MlpPolicy",
        make_chain(),
        optimize_memory_usage=True,
        replay_buffer_kwargs=dict(handle_timeout_termination=False),
    )


def test_nan_reward_stops_with_step():
    class NanReward(gym.Wrapper):
        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, float("nan") if self.env.unwrapped.state == 3 else reward, terminated, truncated, info

    model = ScratchDQN("MlpPolicy", NanReward(make_chain()), learning_starts=0, seed=0)
    with pytest.raises(DivergenceError, match="timestep"):
        model.learn(500)


def test_diverging_loss_stops_with_step():
    class HugeReward(gym.Wrapper):
        def step(self, action):
            obs, _, terminated, truncated, info = self.env.step(action)
            return obs, 3e38, terminated, truncated, info

    model = ScratchDQN("MlpPolicy", HugeReward(make_chain()), learning_starts=10, gamma=1.0, seed=0)
    with pytest.raises(DivergenceError, match="gradient step"):
        model.learn(2000)


def test_sb3_buffer_class_still_works_and_warns_for_n_steps():
    with pytest.warns(UserWarning, match="n_steps=3"):
        model = ScratchDQN(
            "MlpPolicy", make_chain(), replay_buffer_class=SB3ReplayBuffer, n_steps=3, learning_starts=10
        )
    model.learn(100)
    assert type(model.replay_buffer) is SB3ReplayBuffer
