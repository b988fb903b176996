"""Invalid-action masking with sb3-contrib's convention (ActionMasker / action_masks())."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy as maskable_evaluate_policy
from sb3_contrib.common.wrappers import ActionMasker
from scipy import stats
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_dqn_ext import ScratchDQN, ScratchDQNError


class MaskedChain(gym.Env):
    """
    5-state chain with state-dependent legal actions. Actions: 0 left, 1 right, 2 jump (terminates, reward 0.5).
    Left is illegal in state 0, jump is legal only in states 1 and 3, right from state 4 terminates with reward 1.
    Taking an illegal action pays a huge reward (so an agent that ignores the masks learns to take them).
    """

    n_states, n_actions = 5, 3

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(self.n_states)
        self.action_space = spaces.Discrete(self.n_actions)
        self.state = 0
        self.illegal_taken = 0

    @classmethod
    def legal(cls, state: int) -> np.ndarray:
        return np.array([state != 0, True, state in (1, 3)])

    def action_masks(self) -> np.ndarray:
        return self.legal(self.state)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = int(self.np_random.integers(self.n_states))
        return self.state, {}

    def step(self, action):
        action = int(action)
        if not self.legal(self.state)[action]:
            self.illegal_taken += 1
            return self.state, 100.0, False, False, {}
        if action == 2:
            return self.state, 0.5, True, False, {}
        if action == 1:
            if self.state == self.n_states - 1:
                return self.state, 1.0, True, False, {}
            self.state += 1
            return self.state, 0.0, False, False, {}
        self.state -= 1
        return self.state, 0.0, False, False, {}

    @classmethod
    def optimal_q(cls, gamma: float) -> np.ndarray:
        """Q* over legal actions by value iteration (illegal entries are nan)."""
        env, q = cls(), np.zeros((cls.n_states, cls.n_actions))
        for _ in range(1000):
            new_q = np.full_like(q, np.nan)
            for s in range(cls.n_states):
                for a in np.flatnonzero(cls.legal(s)):
                    env.state = s
                    s2, r, terminated, _, _ = env.step(a)
                    new_q[s, a] = r + (0.0 if terminated else gamma * np.nanmax(q[s2]))
            q = np.nan_to_num(new_q, nan=-np.inf)
        return np.where(np.isinf(q), np.nan, q)


def masked_env(max_steps: int = 10) -> gym.Env:
    return ActionMasker(
        gym.wrappers.TimeLimit(MaskedChain(), max_episode_steps=max_steps), lambda env: env.unwrapped.action_masks()
    )


def illegal_count(model) -> int:
    return sum(env.unwrapped.illegal_taken for env in model.get_env().envs)


def test_masked_training_and_predict_never_pick_illegal_actions():
    model = ScratchDQN("MlpPolicy", masked_env(), learning_starts=200, exploration_fraction=0.5, seed=0)
    model.learn(3000)
    assert illegal_count(model) == 0
    env = MaskedChain()
    for state in range(5):
        env.state = state
        for deterministic in (True, False):
            actions = [model.predict(state, deterministic=deterministic, action_masks=env.action_masks())[0]]
            assert all(MaskedChain.legal(state)[a] for a in actions)
    # without masking the same agent takes illegal moves (they pay the most)
    unmasked = ScratchDQN("MlpPolicy", masked_env(), learning_starts=200, seed=0).learn(1000, use_masking=False)
    assert illegal_count(unmasked) > 0


def test_masked_predict_greedy_over_legal_actions_for_many_envs():
    model = ScratchDQN("MlpPolicy", masked_env())
    obs = np.arange(5)
    masks = np.stack([MaskedChain.legal(s) for s in obs])
    with th.no_grad():
        q = model.q_net(th.as_tensor(obs).reshape(-1, 1)).numpy()
    expected = np.where(masks, q, -np.inf).argmax(1)
    assert np.array_equal(model.predict(obs, deterministic=True, action_masks=masks)[0], expected)


def test_epsilon_greedy_is_uniform_over_legal_actions():
    model = ScratchDQN("MlpPolicy", masked_env())
    model.exploration_rate = 1.0
    mask = np.array([True, False, True])
    np.random.seed(0)
    actions = [int(model.predict(np.array(1), action_masks=mask)[0]) for _ in range(3000)]
    counts = np.bincount(actions, minlength=3)
    assert counts[1] == 0
    assert stats.chisquare(counts[[0, 2]]).pvalue > 1e-3


def test_no_legal_action_is_an_error_naming_the_step():
    class NoLegal(MaskedChain):
        def action_masks(self):
            return np.zeros(3, dtype=bool) if self.state == 2 else super().action_masks()

    model = ScratchDQN("MlpPolicy", ActionMasker(NoLegal(), lambda env: env.unwrapped.action_masks()), seed=0)
    with pytest.raises(ScratchDQNError, match="no legal action at timestep"):
        model.learn(500)


def _one_transition(double_q=False, n_steps=1):
    model = ScratchDQN(
        "MlpPolicy",
        masked_env(),
        learning_starts=0,
        batch_size=4,
        gamma=0.9,
        double_q=double_q,
        n_steps=n_steps,
        learning_rate=1e-9,
        policy_kwargs=dict(optimizer_class=th.optim.SGD),
    )
    model.replay_buffer.enable_action_masks(3)
    for net, bias in ((model.q_net, [0.1, 0.2, 0.9]), (model.q_net_target, [5.0, 1.0, 2.0])):
        with th.no_grad():
            net.q_net[-1].weight.zero_()
            net.q_net[-1].bias.copy_(th.tensor(bias))
    model.set_logger(configure(None, []))
    return model


def _huber(x):
    return 0.5 * x**2 if abs(x) < 1 else abs(x) - 0.5


def _add(model, reward, next_mask, done=False):
    model.replay_buffer.add(
        np.array([1]), np.array([2]), np.array([1]), np.array([reward]), np.array([done]), [{}], np.array([next_mask])
    )


@pytest.mark.parametrize(
    "double_q, expected_bootstrap",
    [
        # legal next actions {1, 2}: max Q_target over them = 2.0 (the illegal action 0 has Q_target 5.0)
        (False, 2.0),
        # double: online argmax over legal {1, 2} is 2 (0.9), valued by the target at 2.0
        (True, 2.0),
    ],
)
def test_masked_td_target_by_hand(double_q, expected_bootstrap):
    model = _one_transition(double_q=double_q)
    _add(model, 0.5, [False, True, True])
    model.train(1, 4)
    target = 0.5 + 0.9 * expected_bootstrap
    assert model.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - target), rel=1e-6)


def test_masked_td_target_double_differs_from_vanilla_by_hand():
    # legal next actions {0, 1}: vanilla max_target = 5.0 (action 0); online argmax over {0, 1} = 1 → target 1.0
    vanilla, double = _one_transition(False), _one_transition(True)
    for model in (vanilla, double):
        _add(model, 0.0, [True, True, False])
        model.train(1, 4)
    assert vanilla.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - 0.9 * 5.0), rel=1e-6)
    assert double.logger.name_to_value["train/loss"] == pytest.approx(_huber(0.2 - 0.9 * 1.0), rel=1e-6)


def test_masked_n_step_target_uses_mask_of_bootstrap_state():
    model = _one_transition(n_steps=2)
    _add(model, 1.0, [True, True, True])  # window start: this mask is not used
    _add(model, 2.0, [False, True, False])  # the window's last next state: only action 1 legal (Q_target 1.0)
    np.random.seed(0)
    batch = model.replay_buffer._get_samples(np.array([0]), env_indices=np.array([0]))
    assert batch.next_action_masks.tolist() == [[False, True, False]]
    assert batch.rewards.item() == pytest.approx(1.0 + 0.9 * 2.0)
    assert batch.discounts.item() == pytest.approx(0.81)


def test_q_star_with_state_dependent_legal_actions():
    model = ScratchDQN(
        "MlpPolicy",
        masked_env(),
        learning_rate=2e-3,
        learning_starts=300,
        batch_size=64,
        gamma=0.9,
        train_freq=4,
        gradient_steps=4,
        target_update_interval=40,
        exploration_fraction=0.5,
        exploration_final_eps=0.1,
        seed=1,
    )
    model.learn(4000)
    q_star = MaskedChain.optimal_q(0.9)
    with th.no_grad():
        learned = model.q_net(th.arange(5).reshape(-1, 1)).numpy()
    legal = ~np.isnan(q_star)
    error = np.abs(learned[legal] - q_star[legal]).max()
    print(f"max |Q - Q*| over legal actions = {error:.4f}")
    assert error < 0.1
    assert illegal_count(model) == 0


def test_masks_survive_save_load_and_two_envs(tmp_path):
    env = DummyVecEnv([lambda: masked_env()] * 2)
    model = ScratchDQN("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0).learn(300)
    buffer = model.replay_buffer
    assert buffer.next_action_masks.dtype == np.bool_ and buffer.next_action_masks.shape == (500, 2, 3)
    rows = buffer.next_action_masks[: buffer.pos]
    assert not rows.all()  # real masks were stored
    model.save(tmp_path / "m.zip")
    model.save_replay_buffer(tmp_path / "b.pkl")
    loaded = ScratchDQN.load(tmp_path / "m.zip", env=env)
    loaded.load_replay_buffer(tmp_path / "b.pkl")
    np.testing.assert_array_equal(loaded.replay_buffer.next_action_masks, buffer.next_action_masks)
    loaded.learn(100, reset_num_timesteps=False)
    assert illegal_count(loaded) == 0


def test_truncated_step_stores_the_final_state_mask():
    # every episode is truncated after 1 step: the stored next mask must be the final state's, not the reset state's
    model = ScratchDQN("MlpPolicy", masked_env(max_steps=1), learning_starts=1000, buffer_size=100, seed=0)
    model.learn(50)
    buffer = model.replay_buffer
    next_states = buffer.next_observations[:50, 0, 0].astype(int)
    expected = np.stack([MaskedChain.legal(s) for s in next_states])
    np.testing.assert_array_equal(buffer.next_action_masks[:50, 0], expected)


def test_maskable_evaluation_tools():
    model = ScratchDQN("MlpPolicy", masked_env(), learning_starts=100, seed=0)
    callback = MaskableEvalCallback(masked_env(), eval_freq=200, n_eval_episodes=3)
    model.learn(400, callback=callback)
    assert callback.last_mean_reward < 50  # no illegal (+100) move in evaluation
    mean, _ = maskable_evaluate_policy(model, masked_env(), n_eval_episodes=5)
    assert mean <= 1.0
