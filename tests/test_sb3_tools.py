"""SB3's tools work with ScratchDQN: callbacks, evaluation, save/load, VecEnvs, Dict and image observations."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from envs import DictChain, make_chain
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_dqn_ext import ReplayBuffer, ScratchDQN
from sb3_dqn_ext.policies import QNetwork

SMALL = dict(learning_starts=50, buffer_size=1000, batch_size=16, target_update_interval=50, seed=0)


def test_callbacks_eval_checkpoint_and_custom(tmp_path):
    class CountSteps(BaseCallback):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.saw_locals = False

        def _on_step(self) -> bool:
            self.calls += 1
            self.saw_locals = {"actions", "new_obs", "rewards", "dones", "infos"} <= set(self.locals)
            return True

    custom = CountSteps()
    eval_cb = EvalCallback(gym.make("CartPole-v1"), eval_freq=100, n_eval_episodes=2, log_path=str(tmp_path))
    ckpt = CheckpointCallback(save_freq=150, save_path=str(tmp_path / "ckpt"), save_replay_buffer=True)
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(300, callback=[custom, eval_cb, ckpt])
    assert custom.calls == 300 and custom.saw_locals
    assert np.load(tmp_path / "evaluations.npz")["timesteps"].tolist() == [100, 200, 300]
    saved = sorted(os.listdir(tmp_path / "ckpt"))
    assert "rl_model_150_steps.zip" in saved and "rl_model_replay_buffer_300_steps.pkl" in saved
    restored = ScratchDQN.load(tmp_path / "ckpt" / "rl_model_300_steps.zip")
    assert restored.num_timesteps == 300


def test_callback_can_stop_training():
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.num_timesteps < 120

    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL).learn(1000, callback=StopAt())
    assert model.num_timesteps == 120


def test_evaluate_policy_and_save_load_round_trip(tmp_path):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL).learn(400)
    obs = np.stack([model.observation_space.sample() for _ in range(32)])
    actions, _ = model.predict(obs, deterministic=True)
    q_values = model.q_net(th.as_tensor(obs)).detach()
    model.save(tmp_path / "model.zip")
    loaded = ScratchDQN.load(tmp_path / "model.zip", env=gym.make("CartPole-v1"))
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    assert th.equal(loaded.q_net(th.as_tensor(obs)).detach(), q_values)
    for a, b in zip(model.q_net_target.parameters(), loaded.q_net_target.parameters(), strict=True):
        assert th.equal(a, b)
    assert loaded.exploration_rate == model.exploration_rate
    assert loaded.num_timesteps == 400
    mean, _ = evaluate_policy(loaded, loaded.get_env(), n_eval_episodes=3)
    assert mean > 0
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 500


def test_q_net_is_a_policy_that_saves_and_loads(tmp_path):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL)
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    actions, _ = model.q_net.predict(obs, deterministic=True)
    model.q_net.save(tmp_path / "q_net.pkl")
    q_net = QNetwork.load(tmp_path / "q_net.pkl")
    assert np.array_equal(q_net.predict(obs, deterministic=True)[0], actions)


def test_set_env_and_continue():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL).learn(100)
    model.set_env(DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    model.learn(100, reset_num_timesteps=False)
    assert model.num_timesteps == 200


def test_replay_buffer_save_load(tmp_path):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL).learn(200)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL)
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert isinstance(other.replay_buffer, ReplayBuffer)
    assert other.replay_buffer.size() == 200
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(other.replay_buffer, name), getattr(model.replay_buffer, name))
    other.learn(100)


def test_two_envs_fill_buffer_layout():
    env = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)
    model = ScratchDQN("MlpPolicy", env, **SMALL).learn(200)
    assert model.replay_buffer.observations.shape == (500, 2, 4)
    assert model.replay_buffer.pos == 100 and model._n_calls == 100
    mean, _ = evaluate_policy(model, env, n_eval_episodes=4)
    assert mean > 0


def test_dict_observations():
    model = ScratchDQN("MultiInputPolicy", DictChain(make_chain()), **SMALL).learn(300)
    assert set(model.replay_buffer.observations) == {"onehot", "index"}
    batch = model.replay_buffer.sample(8)
    assert batch.observations["onehot"].shape == (8, 5)
    obs = model.env.reset()
    assert model.predict(obs, deterministic=True)[0].shape == (1,)


def test_cnn_policy_on_small_images():
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)
    model = ScratchDQN("CnnPolicy", env, learning_starts=20, buffer_size=200, batch_size=8, seed=0).learn(60)
    assert model.replay_buffer.observations.dtype == np.uint8
    assert model.q_net.features_extractor.__class__.__name__ == "NatureCNN"


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")
    model = ScratchDQN("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), verbose=0, **SMALL)
    model.learn(300, log_interval=1)
    runs = os.listdir(tmp_path)
    assert runs == ["ScratchDQN_1"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / runs[0]))


def test_logger_keys():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL)
    seen = {}

    class Grab(BaseCallback):
        def _on_rollout_end(self) -> None:
            seen.update(self.logger.name_to_value)

        def _on_step(self) -> bool:
            return True

    model.learn(200, callback=Grab())
    assert {"rollout/exploration_rate", "train/loss", "train/learning_rate", "train/n_updates"} <= set(seen)


def test_progress_bar():
    pytest.importorskip("tqdm")
    pytest.importorskip("rich")
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **SMALL).learn(100, progress_bar=True)
    assert model.num_timesteps == 100


def test_vec_normalize_env_samples_normalized():
    env = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]), norm_reward=True)
    model = ScratchDQN("MlpPolicy", env, **SMALL).learn(200)
    # the buffer stores raw observations; samples come normalised through the VecNormalize env
    raw = model.replay_buffer.observations[: model.replay_buffer.pos, 0]
    np.random.seed(0)
    batch = model.replay_buffer.sample(64, env=env)
    assert np.abs(batch.observations.numpy()).max() <= env.clip_obs
    assert not np.allclose(np.abs(raw).max(axis=0), np.abs(batch.observations.numpy()).max(axis=0))
