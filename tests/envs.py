"""Small environments with known optimal Q-values, shared by the tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ChainMDP(gym.Env):
    """
    A 5-state chain: action 1 moves right, action 0 moves left. Moving right from the last state terminates with
    reward 1; moving left from state 0 stays there with reward 0.2; every other step gives 0. Episodes start in a
    uniformly random state and are truncated by a time limit (applied with ``gymnasium.wrappers.TimeLimit``), so the
    optimal Q-values are those of the infinite-horizon MDP when truncation bootstraps.
    """

    n_states = 5

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(self.n_states)
        self.action_space = spaces.Discrete(2)
        self.state = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = int(self.np_random.integers(self.n_states))
        return self.state, {}

    def step(self, action: int):
        if action == 1:
            if self.state == self.n_states - 1:
                return self.state, 1.0, True, False, {}
            self.state += 1
            return self.state, 0.0, False, False, {}
        if self.state == 0:
            return self.state, 0.2, False, False, {}
        self.state -= 1
        return self.state, 0.0, False, False, {}

    @classmethod
    def optimal_q(cls, gamma: float, iterations: int = 2000) -> np.ndarray:
        """Q* by value iteration on the same dynamics (terminal transitions do not bootstrap)."""
        env = cls()
        q = np.zeros((cls.n_states, 2))
        for _ in range(iterations):
            new_q = np.zeros_like(q)
            for s in range(cls.n_states):
                for a in range(2):
                    env.state = s
                    s2, r, terminated, _, _ = env.step(a)
                    new_q[s, a] = r + (0.0 if terminated else gamma * q[s2].max())
            q = new_q
        return q


def make_chain(max_episode_steps: int = 10) -> gym.Env:
    return gym.wrappers.TimeLimit(ChainMDP(), max_episode_steps=max_episode_steps)


class DictChain(gym.Wrapper):
    """ChainMDP with a Dict observation: a one-hot vector and the state index."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict(
            {"onehot": spaces.Box(0.0, 1.0, (ChainMDP.n_states,), np.float32), "index": spaces.Discrete(5)}
        )

    def _obs(self, state: int) -> dict:
        onehot = np.zeros(ChainMDP.n_states, dtype=np.float32)
        onehot[state] = 1.0
        return {"onehot": onehot, "index": state}

    def reset(self, **kwargs):
        state, info = self.env.reset(**kwargs)
        return self._obs(state), info

    def step(self, action):
        state, reward, terminated, truncated, info = self.env.step(action)
        return self._obs(state), reward, terminated, truncated, info
