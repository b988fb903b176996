"""The core algorithm: TD target, target network, ε schedules, Q* on a small MDP, SB3 parity."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from envs import ChainMDP, make_chain
from stable_baselines3 import DQN
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_dqn_ext import ExponentialSchedule, LinearSchedule, ScratchDQN


def _set_head(q_net, bias):
    """Make Q(s, ·) = bias for every s: zero the last layer's weights."""
    last = q_net.q_net[-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.copy_(th.tensor(bias))


def _one_transition_model(terminated: bool, truncated: bool, double_q: bool = False, q_target=(1.0, 3.0)):
    model = ScratchDQN(
        "MlpPolicy",
        make_chain(),
        learning_starts=0,
        batch_size=8,
        gamma=0.9,
        double_q=double_q,
        policy_kwargs=dict(optimizer_class=th.optim.SGD),
        learning_rate=1e-9,
    )
    _set_head(model.q_net, [0.5, 0.2])
    _set_head(model.q_net_target, list(q_target))
    # one stored transition: s=2, a=1, r=0.7, s'=3
    done = terminated or truncated
    model.replay_buffer.add(
        np.array([2]),
        np.array([3]),
        np.array([1]),
        np.array([0.7]),
        np.array([done]),
        [{"TimeLimit.truncated": truncated}],
    )
    model.set_logger(configure(None, []))
    return model


def _huber(x):
    return 0.5 * x**2 if abs(x) < 1 else abs(x) - 0.5


@pytest.mark.parametrize(
    "terminated, truncated, expected_target",
    [
        (False, False, 0.7 + 0.9 * 3.0),  # bootstraps: r + γ max_a' Q_target(s', a')
        (True, False, 0.7),  # termination: no bootstrap
        (False, True, 0.7 + 0.9 * 3.0),  # time-limit truncation is not a terminal state
    ],
)
def test_td_target_by_hand(terminated, truncated, expected_target):
    model = _one_transition_model(terminated, truncated)
    model.train(gradient_steps=1, batch_size=8)
    # Q(s, a=1) = 0.2; the logged loss is the Huber loss of (Q - y) for every (identical) sample
    assert model.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - expected_target), rel=1e-6)


def test_double_q_target_uses_online_argmax():
    # the online net prefers action 0 (0.5 > 0.2), the target net values action 0 at 1.0 and action 1 at 3.0
    vanilla = _one_transition_model(False, False, double_q=False)
    double = _one_transition_model(False, False, double_q=True)
    vanilla.train(1, 8)
    double.train(1, 8)
    assert vanilla.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - (0.7 + 0.9 * 3.0)), rel=1e-6)
    # double: a* = argmax_a Q(s', a) = 0, y = r + γ Q_target(s', 0)
    assert double.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - (0.7 + 0.9 * 1.0)), rel=1e-6)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("n_envs, interval, expected_every", [(1, 5, 5), (2, 5, 2), (4, 2, 1)])
def test_hard_target_copy_every_interval(n_envs, interval, expected_every):
    env = DummyVecEnv([make_chain for _ in range(n_envs)])
    model = ScratchDQN("MlpPolicy", env, learning_starts=0, train_freq=1, target_update_interval=interval, seed=0)
    calls = []
    original = model.update_target_network

    def spy():
        original()
        calls.append(model._n_calls)
        assert all(th.equal(a, b) for a, b in zip(_params(model.q_net), _params(model.q_net_target), strict=True))

    model.update_target_network = spy
    model.learn(60)
    n_calls = 60 // n_envs
    assert calls == list(range(expected_every, n_calls + 1, expected_every))


def test_target_differs_between_copies():
    model = ScratchDQN("MlpPolicy", make_chain(), learning_starts=0, train_freq=1, target_update_interval=1000, seed=0)
    before = _params(model.q_net_target)
    model.learn(50)
    assert all(th.equal(a, b) for a, b in zip(before, _params(model.q_net_target), strict=True))
    assert not all(th.equal(a, b) for a, b in zip(before, _params(model.q_net), strict=True))


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0])
def test_soft_update_is_polyak(tau):
    model = ScratchDQN("MlpPolicy", make_chain(), tau=tau, seed=0)
    with th.no_grad():
        for p in model.q_net.parameters():
            p.add_(th.randn_like(p))
    online, target = _params(model.q_net), _params(model.q_net_target)
    model.update_target_network()
    for o, t, new in zip(online, target, _params(model.q_net_target), strict=True):
        th.testing.assert_close(new, tau * o + (1 - tau) * t, rtol=1e-6, atol=1e-7)


def test_batch_norm_running_stats_always_copied():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class BNExtractor(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, features_dim=5)
            self.batch_norm = th.nn.BatchNorm1d(5)

        def forward(self, obs):
            return self.batch_norm(obs.flatten(1))

    model = ScratchDQN(
        "MlpPolicy",
        make_chain(),
        tau=0.0,
        learning_starts=0,
        train_freq=1,
        target_update_interval=10,
        policy_kwargs=dict(features_extractor_class=BNExtractor),
        seed=0,
    )
    bn, bn_target = model.q_net.features_extractor.batch_norm, model.q_net_target.features_extractor.batch_norm
    original, checked = model.update_target_network, []

    def spy():
        original()
        th.testing.assert_close(bn.running_mean, bn_target.running_mean, rtol=0, atol=0)
        th.testing.assert_close(bn.running_var, bn_target.running_var, rtol=0, atol=0)
        checked.append(bn_target.running_mean.abs().sum().item())

    model.update_target_network = spy
    model.learn(40)
    assert len(checked) == 4 and checked[-1] > 0  # the statistics moved and were copied at every update
    # tau = 0: the learnable BN parameters stay at their initial values in the target
    assert th.equal(bn_target.weight, th.ones(5))
    assert not th.equal(bn.weight, th.ones(5))


@pytest.mark.parametrize(
    "progress_remaining, expected",
    [(1.0, 1.0), (0.95, 1.0 + 0.05 / 0.1 * (0.05 - 1.0)), (0.9, 0.05), (0.5, 0.05), (0.0, 0.05)],
)
def test_linear_schedule_values(progress_remaining, expected):
    assert LinearSchedule(1.0, 0.05, 0.1)(progress_remaining) == pytest.approx(expected)


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.25, 1.0])
def test_exponential_schedule_values(progress):
    schedule = ExponentialSchedule(1.0, 0.05, 0.1)
    assert schedule(1.0 - progress) == pytest.approx(0.05 + 0.95 * np.exp(-progress / 0.1))
    assert ExponentialSchedule(1.0, 0.05, 0.0)(1.0 - progress) == 0.05


def test_exploration_rate_follows_schedule_during_learning():
    for kind, schedule in [
        ("linear", LinearSchedule(1.0, 0.1, 0.5)),
        ("exponential", ExponentialSchedule(1.0, 0.1, 0.5)),
    ]:
        model = ScratchDQN(
            "MlpPolicy",
            make_chain(),
            exploration_schedule=kind,
            exploration_fraction=0.5,
            exploration_final_eps=0.1,
            learning_starts=0,
            seed=0,
        )
        model.learn(400)
        # after the last step, progress_remaining = 0
        assert model.exploration_rate == pytest.approx(schedule(0.0))
    callable_model = ScratchDQN("MlpPolicy", make_chain(), exploration_schedule=lambda p: 0.3 * p)
    callable_model.learn(100)
    assert callable_model.exploration_rate == pytest.approx(0.0)


def _learned_q(model, n_states=5):
    with th.no_grad():
        obs = th.arange(n_states).reshape(-1, 1)
        return model.q_net(obs).numpy()


CHAIN_Q_STAR_KWARGS = dict(
    learning_rate=2e-3,
    buffer_size=20_000,
    learning_starts=500,
    batch_size=64,
    gamma=0.9,
    train_freq=4,
    gradient_steps=4,
    target_update_interval=40,
    exploration_fraction=0.5,
    exploration_final_eps=0.1,
    policy_kwargs=dict(net_arch=[64, 64]),
    seed=1,
)
CHAIN_Q_STAR_STEPS = 4000
# Q* ranges over [0.66, 2]: a tolerance of 5% of max |Q*|
CHAIN_Q_STAR_TOLERANCE = 0.1


def test_q_star_on_chain_mdp_with_time_limit():
    model = ScratchDQN("MlpPolicy", make_chain(max_episode_steps=10), **CHAIN_Q_STAR_KWARGS)
    model.learn(CHAIN_Q_STAR_STEPS)
    q_star = ChainMDP.optimal_q(gamma=0.9)
    error = np.abs(_learned_q(model) - q_star).max()
    print(f"max |Q - Q*| = {error:.4f}")
    assert error < CHAIN_Q_STAR_TOLERANCE
    # greedy policy is optimal everywhere
    assert (_learned_q(model).argmax(1) == q_star.argmax(1)).all()


def test_same_seed_matches_sb3_dqn():
    """With every extension off, ScratchDQN draws the same random numbers as SB3's DQN and learns the same."""
    kwargs = dict(learning_starts=100, train_freq=4, target_update_interval=50, batch_size=16, seed=3)
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **kwargs).learn(1500)
    theirs = DQN("MlpPolicy", "CartPole-v1", **kwargs).learn(1500)
    for a, b in zip(ours.q_net.parameters(), theirs.q_net.parameters(), strict=True):
        assert th.equal(a, b)
    for a, b in zip(ours.q_net_target.parameters(), theirs.q_net_target.parameters(), strict=True):
        assert th.equal(a, b)
    assert ours.exploration_rate == theirs.exploration_rate
    assert ours._n_updates == theirs._n_updates


def test_cartpole_learns():
    env_id = "CartPole-v1"
    model = ScratchDQN(
        "MlpPolicy",
        env_id,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=50_000,
        learning_starts=1000,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=64,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[128, 128]),
        seed=0,
    )
    model.learn(20_000)
    from stable_baselines3.common.evaluation import evaluate_policy

    mean, _ = evaluate_policy(model, gym.make(env_id), n_eval_episodes=10, deterministic=True)
    # a uniformly random policy averages about 22 on CartPole-v1
    assert mean > 150, mean
