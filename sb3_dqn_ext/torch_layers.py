"""
Feature extractors for small images, and the MinAtar environments.

SB3's ``NatureCNN`` (8x8 stride 4, 4x4 stride 2, 3x3 stride 1) needs frames of at least 36x36 pixels; MinAtar's
10x10xC frames (Young & Tian, 2019) are far smaller. :class:`SmallCNN` is the network of the MinAtar paper: one 3x3
convolution with 16 filters, stride 1, then a fully connected layer (128 units there)::

    features = ReLU(W_fc · flatten(ReLU(conv3x3(obs))))

MinAtar's frames are channels-last booleans (``Box(0, 1, (10, 10, C), bool)``), which SB3 does not treat as images
(no ``VecTransposeImage``, no division by 255): :class:`SmallCNN` moves the channels first itself when
``channels_last=True``.
"""

from __future__ import annotations

import gymnasium as gym
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


class SmallCNN(BaseFeaturesExtractor):
    """
    One 3x3 convolution and a linear layer, for frames too small for ``NatureCNN`` (e.g. MinAtar's 10x10).

    :param observation_space: a 3-D ``Box`` (image)
    :param features_dim: units of the linear layer (the features' size)
    :param n_filters: filters of the convolution
    :param channels_last: the observations are ``(H, W, C)`` (MinAtar) rather than ``(C, H, W)`` (SB3's images)
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        features_dim: int = 128,
        n_filters: int = 16,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"SmallCNN needs a 3-D Box observation space (an image), got {observation_space}")
        super().__init__(observation_space, features_dim)
        self.channels_last = channels_last
        if channels_last:
            height, width, channels = observation_space.shape
        else:
            channels, height, width = observation_space.shape
        if height < 3 or width < 3:
            raise ValueError(f"SmallCNN needs frames of at least 3x3, got {height}x{width}")
        self.cnn = nn.Sequential(nn.Conv2d(channels, n_filters, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(n_filters * (height - 2) * (width - 2), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        if self.channels_last:
            observations = observations.permute(0, 3, 1, 2)
        return self.linear(self.cnn(observations))


def register_minatar_envs() -> list[str]:
    """
    Register MinAtar's gymnasium environments (gymnasium 1.x does not load plugin environments by itself).

    ``MinAtar/<Game>-v0`` use the full action set (6 actions), ``-v1`` each game's minimal one. Registering twice is
    a no-op.

    :return: the registered env ids
    :raises ImportError: ``minatar`` is not installed (``pip install minatar``, or the ``envs`` extra)
    """
    ids = [f"MinAtar/{game}-v{version}" for game in MINATAR_GAMES for version in (0, 1)]
    if all(env_id in gym.registry for env_id in ids):
        return ids
    from minatar.gym import register_envs

    register_envs()
    return ids
