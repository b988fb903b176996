"""SmallCNN (MinAtar's network) and the explicit registration of MinAtar's environments."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from sb3_dqn_ext import RainbowDQN, ScratchDQN
from sb3_dqn_ext.torch_layers import SmallCNN, register_minatar_envs


def test_small_cnn_computes_conv_relu_linear_relu_by_hand():
    space = gym.spaces.Box(0, 1, (2, 4, 5), np.float32)  # (C, H, W)
    net = SmallCNN(space, features_dim=3, n_filters=2)
    obs = th.rand(6, 2, 4, 5)
    conv, linear = net.cnn[0], net.linear[0]
    # the 3x3 "valid" convolution written as a sum over the kernel's offsets
    expected_conv = th.zeros(6, 2, 2, 3)
    for dy in range(3):
        for dx in range(3):
            patch = obs[:, :, dy : dy + 2, dx : dx + 3]  # (batch, C, 2, 3)
            expected_conv += th.einsum("bchw,fc->bfhw", patch, conv.weight[:, :, dy, dx])
    expected_conv += conv.bias[None, :, None, None]
    expected = th.relu(th.relu(expected_conv).flatten(1) @ linear.weight.T + linear.bias)
    assert net.features_dim == 3
    assert th.allclose(net(obs), expected, atol=1e-5)


def test_channels_last_equals_channels_first_on_the_transposed_frame():
    th.manual_seed(0)
    first = SmallCNN(gym.spaces.Box(0, 1, (4, 10, 10), np.float32))
    last = SmallCNN(gym.spaces.Box(0, 1, (10, 10, 4), np.float32), channels_last=True)
    last.load_state_dict(first.state_dict())
    obs = th.rand(5, 10, 10, 4)
    assert th.allclose(last(obs), first(obs.permute(0, 3, 1, 2)))
    assert last(obs).shape == (5, 128)


@pytest.mark.parametrize("space", [gym.spaces.Box(0, 1, (4, 10), np.float32), gym.spaces.Box(0, 1, (2, 2, 4))])
def test_small_cnn_rejects_non_images(space):
    with pytest.raises(ValueError, match="SmallCNN needs"):
        SmallCNN(space, channels_last=space.shape[-1] == 4 and len(space.shape) == 3)


def test_minatar_envs_registered_explicitly_and_learnable_with_cnn_policy(tmp_path):
    pytest.importorskip("minatar")
    ids = register_minatar_envs()
    assert register_minatar_envs() == ids  # twice is a no-op
    assert {"MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v0"} <= set(ids) <= set(gym.registry)
    env = gym.make("MinAtar/Breakout-v1")
    assert env.observation_space.shape == (10, 10, 4) and env.observation_space.dtype == bool
    policy_kwargs = dict(
        features_extractor_class=SmallCNN, features_extractor_kwargs=dict(channels_last=True), net_arch=[]
    )
    for cls in (ScratchDQN, RainbowDQN):
        model = cls("CnnPolicy", env, policy_kwargs=policy_kwargs, learning_starts=50, buffer_size=500, seed=0)
        model.learn(200)
        assert isinstance(model.q_net.features_extractor, SmallCNN)
        obs, _ = env.reset(seed=1)
        action, _ = model.predict(obs, deterministic=True)
        assert 0 <= int(action) < env.action_space.n
        model.save(tmp_path / cls.__name__)
        loaded = cls.load(tmp_path / cls.__name__, env=env)
        assert loaded.predict(obs, deterministic=True)[0] == action
