"""
Reliability: a killed run resumes with nothing lost, a resumed run is the uninterrupted run bitwise, one seed gives one
result, bad input gets one clear error, and memory stays flat once the buffer is full.

The kill and new-process tests run this file as a script (``python test_reliability.py MODE ...``, see ``_child``).
"""

import copy
import gc
import io
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from envs import ChainMDP, DictChain, make_chain
from gymnasium import spaces
from gymnasium.utils import EzPickle
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_dqn_ext import DivergenceError, PrioritizedReplayBuffer, RainbowDQN, ReplayBuffer, ScratchDQN, ScratchDQNError
from sb3_dqn_ext.checkpoints import (
    ResumableCheckpointCallback,
    checkpoint_timesteps,
    latest_checkpoint,
    learn_remaining,
    resume_from_checkpoint,
    save_checkpoint,
)
from sb3_dqn_ext.validation import (
    check_finite_transition,
    check_model_file,
    check_replay_buffer,
    check_replay_buffer_setup,
    check_spaces,
    load_replay_buffer_file,
    replay_buffer_nbytes,
)

HERE = Path(__file__).resolve().parent
# the buffer wraps around before TOTAL / 2; with train_freq=4, checkpoints fall exactly on multiples of SAVE_FREQ
SMALL = dict(buffer_size=100, learning_starts=40, batch_size=16, target_update_interval=30, train_freq=4, seed=1)
TOTAL = 240
SAVE_FREQ = 24


def ckpt(step: int) -> str:
    return f"ckpt-{step:012d}"


def make_model(kind: str, env=None):
    """``plain``: DQN; ``extensions``: ε-greedy with PER, 3-step, double, dueling; ``rainbow``: every component."""
    env = make_chain() if env is None else env
    if kind == "plain":
        return ScratchDQN("MlpPolicy", env, exploration_fraction=0.9, **SMALL)
    if kind == "extensions":
        return ScratchDQN(
            "MlpPolicy",
            env,
            exploration_fraction=0.9,
            double_q=True,
            n_steps=3,
            replay_buffer_class=PrioritizedReplayBuffer,
            policy_kwargs=dict(dueling=True, net_arch=[32]),
            **SMALL,
        )
    if kind == "rainbow":
        return RainbowDQN("MlpPolicy", env, policy_kwargs=dict(n_atoms=11, net_arch=[32]), **SMALL)
    raise ValueError(kind)


KINDS = ["plain", "extensions", "rainbow"]


def snapshot(model) -> dict:
    """Everything a resumed run must get back: weights (target and noise included), optimizer, counters, buffer."""
    buffer = model.replay_buffer
    state = {
        "counters": (model.num_timesteps, model._total_timesteps, model._n_calls, model._n_updates, model._episode_num),
        "exploration_rate": model.exploration_rate,
        "progress_remaining": model._current_progress_remaining,
        "last_obs": copy.deepcopy(model._last_obs),
        "episode_returns": [(info["r"], info["l"]) for info in model.ep_info_buffer],
        "policy": {key: value.clone() for key, value in model.policy.state_dict().items()},
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "buffer": {
            key: copy.deepcopy(getattr(buffer, key))
            for key in ("pos", "full", "observations", "next_observations", "actions", "rewards", "dones", "timeouts")
        },
    }
    if isinstance(buffer, PrioritizedReplayBuffer):
        leaves = np.arange(buffer.buffer_size * buffer.n_envs)
        state["priorities"] = (buffer.tree.get(leaves), buffer.max_priority, buffer._pending_rows, buffer.beta)
    return state


def assert_same(actual, expected, path="state"):
    """Bitwise equality of nested snapshots."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(expected, th.Tensor):
        assert th.equal(actual, expected), path
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(actual, expected), path
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


class SnapshotAtCheckpoints(BaseCallback):
    """Take a snapshot where ResumableCheckpointCallback saves (rollout starts at multiples of SAVE_FREQ)."""

    def __init__(self):
        super().__init__()
        self.snapshots = {}

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps % SAVE_FREQ == 0:
            self.snapshots[self.model.num_timesteps] = snapshot(self.model)

    def _on_step(self) -> bool:
        return True


class StopAfter(BaseCallback):
    """Stop ``learn`` at the first step past ``timesteps``."""

    def __init__(self, timesteps: int):
        super().__init__()
        self.timesteps = timesteps

    def _on_step(self) -> bool:
        return self.num_timesteps <= self.timesteps


class PrintProgress(BaseCallback):
    def _on_rollout_start(self) -> None:
        print(f"step {self.model.num_timesteps}", flush=True)

    def _on_step(self) -> bool:
        return True


# ----------------------------------------------------------------------------------------------------- child processes
def _child(argv: list[str]) -> None:
    """
    ``resume DIR OUT``: for each kind, resume from ``DIR/kind``, finish the run, pickle the snapshots into ``OUT``.
    ``train DIR PAUSE``: ``learn(TOTAL)`` of the ``extensions`` kind with checkpoints into ``DIR``, printing progress;
    ``PAUSE`` = ``files`` or ``pointer`` stops (sleeps) inside the third save, while writing its files or before
    pointing ``latest`` to it, so that the parent kills it there.
    """
    th.set_num_threads(1)
    mode, directory = argv[0], Path(argv[1])
    if mode == "resume":
        snapshots = {}
        for kind in KINDS:
            model = resume_from_checkpoint(directory / kind)
            snapshots[kind] = {"resumed": snapshot(model)}
            snapshots[kind]["final"] = snapshot(learn_remaining(model))
        with open(argv[2], "wb") as file:
            pickle.dump(snapshots, file)
    elif mode == "train":
        pause, saves = argv[2], []

        def pause_here(stage: str) -> None:
            if pause == stage and len(saves) == 3:
                print(f"paused in save {len(saves)}", flush=True)
                time.sleep(120)

        save_buffer, replace = ScratchDQN.save_replay_buffer, os.replace

        def save_replay_buffer(self, path):
            saves.append(path)
            save_buffer(self, path)
            pause_here("files")

        def replace_then_maybe_pause(src, dst):
            if Path(dst).name == "latest":
                pause_here("pointer")
            replace(src, dst)

        ScratchDQN.save_replay_buffer = save_replay_buffer
        os.replace = replace_then_maybe_pause
        make_model("extensions").learn(
            TOTAL, callback=[ResumableCheckpointCallback(SAVE_FREQ, directory), PrintProgress()]
        )
        print("done", flush=True)
        time.sleep(120)  # a parent slower than the whole run still kills a running process


def _spawn(*args: str, **popen_kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env, **popen_kwargs)


@pytest.fixture(scope="module")
def reference_runs():
    """The uninterrupted run of a kind, with a snapshot at every checkpoint step and at the end (computed once)."""
    runs = {}

    def run(kind: str) -> dict:
        if kind not in runs:
            snapshots = SnapshotAtCheckpoints()
            model = make_model(kind).learn(TOTAL, callback=snapshots)
            runs[kind] = {**snapshots.snapshots, TOTAL: snapshot(model)}
        return runs[kind]

    return run


# ----------------------------------------------------------------------------------------------------- resume
def test_stopped_at_half_and_resumed_in_a_new_process_is_bitwise_the_uninterrupted_run(tmp_path, request):
    """learn(N) stopped at N/2 by a callback, resumed in another process to N == learn(N): weights, Adam, buffer."""
    for kind in KINDS:
        callback = [ResumableCheckpointCallback(SAVE_FREQ, tmp_path / kind), StopAfter(TOTAL // 2)]
        assert make_model(kind).learn(TOTAL, callback=callback).num_timesteps == TOTAL // 2 + 1
        assert latest_checkpoint(tmp_path / kind).name == ckpt(TOTAL // 2)  # not saved at the stop: mid-step
    resume = _spawn("resume", str(tmp_path), str(tmp_path / "snapshots.pkl"))
    reference = {kind: request.getfixturevalue("reference_runs")(kind) for kind in KINDS}  # while the child runs
    assert resume.wait(timeout=120) == 0
    with open(tmp_path / "snapshots.pkl", "rb") as file:
        resumed = pickle.load(file)
    for kind in KINDS:
        assert resumed[kind]["resumed"]["counters"][:2] == (TOTAL // 2, TOTAL)
        assert_same(resumed[kind]["resumed"], reference[kind][TOTAL // 2], path=f"{kind} at resume")
        assert_same(resumed[kind]["final"], reference[kind][TOTAL], path=f"{kind} at the end")


@pytest.mark.parametrize("kill_point", ["random", "while writing files", "before the latest pointer"])
def test_killed_run_resumes_from_last_checkpoint_with_nothing_lost(tmp_path, reference_runs, kill_point):
    """SIGKILL at a random step or inside a save; the last checkpoint resumes the exact run and finishes it."""
    rng = random.Random()
    kill_at = rng.randrange(2 * SAVE_FREQ, TOTAL - SAVE_FREQ)
    pause = {"random": "none", "while writing files": "files", "before the latest pointer": "pointer"}[kill_point]
    child = _spawn("train", str(tmp_path), pause, stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            at_kill_step = pause == "none" and line.startswith("step") and int(line.split()[1]) >= kill_at
            if line.startswith(("paused", "done")) or at_kill_step:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child ended before it was killed (kill_at={kill_at})"
    reference = reference_runs("extensions")

    names = sorted(entry.name for entry in tmp_path.iterdir())
    checkpoint = latest_checkpoint(tmp_path)
    step = checkpoint_timesteps(checkpoint)
    if pause == "files":  # killed with the third checkpoint half written: the second is the latest
        assert step == 2 * SAVE_FREQ and any(name.startswith(f".tmp-{ckpt(3 * SAVE_FREQ)}") for name in names), names
    elif pause == "pointer":  # the third is complete, but `latest` was not replaced yet
        assert step == 2 * SAVE_FREQ and ckpt(3 * SAVE_FREQ) in names, names

    model = resume_from_checkpoint(tmp_path)
    assert_same(snapshot(model), reference[step], path=f"resumed at {step} (kill_at={kill_at})")
    learn_remaining(model, callback=ResumableCheckpointCallback(SAVE_FREQ, tmp_path))
    assert_same(snapshot(model), reference[TOTAL], path=f"finished (kill_at={kill_at})")
    names = sorted(entry.name for entry in tmp_path.iterdir())
    assert names == [ckpt(TOTAL - SAVE_FREQ), ckpt(TOTAL), "latest"]  # the end of learn is saved too


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_bitwise_identical_runs(kind):
    first = snapshot(make_model(kind).learn(TOTAL))
    assert_same(snapshot(make_model(kind).learn(TOTAL)), first, path=kind)


@pytest.mark.parametrize(
    "policy, env_fn",
    [("MultiInputPolicy", lambda: DictChain(make_chain())), ("MlpPolicy", lambda: gym.make("CartPole-v1"))],
    ids=["dict", "box"],
)
def test_same_seed_identical_with_two_envs_and_every_extension(policy, env_fn):
    def run():
        kwargs = dict(SMALL, policy_kwargs=dict(n_atoms=11, net_arch=[16]))
        return snapshot(RainbowDQN(policy, DummyVecEnv([env_fn] * 2), **kwargs).learn(300))

    assert_same(run(), run())


def test_checkpoint_layout_pruning_and_manifest(tmp_path):
    model = make_model("extensions")
    model.learn(500, callback=ResumableCheckpointCallback(100, tmp_path, keep_last=2))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["ckpt-000000000400", "ckpt-000000000500", "latest"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000000000500"
    files = sorted(entry.name for entry in (tmp_path / "ckpt-000000000500").iterdir())
    assert files == ["manifest.json", "model.zip", "replay_buffer.pkl", "state.pkl"]
    resumed = resume_from_checkpoint(tmp_path)
    assert (resumed.num_timesteps, resumed._total_timesteps) == (500, 500)
    assert learn_remaining(resumed) is resumed and resumed.num_timesteps == 500  # saved at the end: nothing left
    resumed = resume_from_checkpoint(tmp_path / "ckpt-000000000400")
    assert resumed.exploration_rate == pytest.approx(1.0 - 0.95 * (400 / 500) / 0.9)  # ε over the original total


def test_save_checkpoint_between_learn_calls_and_keep_all(tmp_path):
    model = make_model("plain").learn(200)
    first = save_checkpoint(model, tmp_path, keep_last=None)
    model.learn(100, reset_num_timesteps=False)
    second = save_checkpoint(model, tmp_path, keep_last=None)
    assert first.exists() and second.exists() and latest_checkpoint(tmp_path) == second
    assert resume_from_checkpoint(first).num_timesteps == 200
    # a second save at the same step never replaces the folder `latest` may name
    again = save_checkpoint(model, tmp_path, keep_last=2)
    assert again.name == ckpt(300) + ".1" and latest_checkpoint(tmp_path) == again
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [ckpt(300), ckpt(300) + ".1", "latest"]


def test_a_new_run_into_a_folder_of_another_run_is_refused(tmp_path):
    make_model("plain").learn(200, callback=ResumableCheckpointCallback(100, tmp_path))
    with pytest.raises(ScratchDQNError, match="save_path .* holds a checkpoint of another run at 200 timesteps"):
        make_model("plain").learn(200, callback=ResumableCheckpointCallback(100, tmp_path))


def test_resume_on_another_env_restarts_its_episodes(tmp_path):
    """Another env's state is not the saved one: its episodes restart, and n-step windows stop at the cut."""
    model = make_model("extensions").learn(204)
    path = save_checkpoint(model, tmp_path)
    resumed = resume_from_checkpoint(path, env=make_chain())
    last = (resumed.replay_buffer.pos - 1) % resumed.replay_buffer.buffer_size
    assert resumed._last_obs is None
    assert resumed.replay_buffer.dones[last, 0] == 1.0 and resumed.replay_buffer.timeouts[last, 0] == 1.0
    learn_remaining(resumed)
    assert resumed.num_timesteps == 204 and resumed._total_timesteps == 204
    resumed.learn(100, reset_num_timesteps=False)
    assert resumed.num_timesteps == 304


def test_env_that_does_not_pickle_needs_env_to_resume(tmp_path):
    class Locked(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.lock = threading.Lock()

    model = ScratchDQN("MlpPolicy", Locked(make_chain()), **SMALL).learn(100)
    with pytest.warns(UserWarning, match="does not hold the env"):
        save_checkpoint(model, tmp_path)
    with pytest.raises(ScratchDQNError, match="env="):
        resume_from_checkpoint(tmp_path)
    assert resume_from_checkpoint(tmp_path, env=Locked(make_chain())).num_timesteps == 100


def test_env_that_pickles_only_its_constructor_arguments_needs_env_to_resume(tmp_path):
    """gymnasium's EzPickle envs (Box2D, Atari) would unpickle new and not reset: not saved as if they held state."""

    class EzChain(ChainMDP, EzPickle):
        def __init__(self):
            ChainMDP.__init__(self)
            EzPickle.__init__(self)

    model = ScratchDQN("MlpPolicy", gym.wrappers.TimeLimit(EzChain(), 20), **SMALL).learn(100)
    with pytest.warns(UserWarning, match="EzChain pickles only its constructor arguments"):
        save_checkpoint(model, tmp_path)
    with pytest.raises(ScratchDQNError, match="env="):
        resume_from_checkpoint(tmp_path)
    assert resume_from_checkpoint(tmp_path, env=make_chain()).num_timesteps == 100


# ----------------------------------------------------------------------------------------------------- bad checkpoints
def test_bad_checkpoints_name_the_problem(tmp_path):
    with pytest.raises(ScratchDQNError, match="holds no checkpoint"):
        resume_from_checkpoint(tmp_path)
    model = make_model("plain").learn(100)
    folder = save_checkpoint(model, tmp_path / "run")
    with pytest.raises(ScratchDQNError, match="observation_space"):
        resume_from_checkpoint(folder, env=gym.make("CartPole-v1"))
    with pytest.raises(ScratchDQNError, match="n_envs"):
        resume_from_checkpoint(folder, env=DummyVecEnv([make_chain] * 2))
    data = bytearray((folder / "replay_buffer.pkl").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "replay_buffer.pkl").write_bytes(bytes(data))
    with pytest.raises(ScratchDQNError, match="replay_buffer.pkl is missing or corrupt"):
        resume_from_checkpoint(folder)
    for name, value in (("save_freq", 0), ("keep_last", 0), ("save_freq", 10.0)):
        kwargs = dict(save_freq=100, save_path=tmp_path, keep_last=2) | {name: value}
        with pytest.raises(ScratchDQNError, match=name):
            ResumableCheckpointCallback(**kwargs)


def test_latest_pointer_lost_falls_back_to_newest_complete_folder(tmp_path):
    model = make_model("plain")
    model.learn(300, callback=ResumableCheckpointCallback(100, tmp_path, keep_last=None))
    (tmp_path / "latest").unlink()
    (tmp_path / "ckpt-000000000400").mkdir()  # a folder without a manifest is not a checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000000000300"


# ----------------------------------------------------------------------------------------------------- bad input
def test_every_bad_hyperparameter_raises_exactly_our_error_naming_it():
    from test_validation import BAD_HYPERPARAMETERS

    for name, value in BAD_HYPERPARAMETERS:
        with pytest.raises(ScratchDQNError, match=name) as error:
            ScratchDQN("MlpPolicy", make_chain(), **{name: value})
        assert error.type is ScratchDQNError, (name, value)


EXTENSION_BAD_INPUTS = [
    (dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(alpha=-0.5)), "alpha"),
    (dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(beta=1.5)), "beta"),
    (dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(final_beta=-1.0)), "final_beta"),
    (dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(epsilon=2.0)), "epsilon"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=1.5), "n_steps"),
    (dict(policy_kwargs=dict(dueling=True, dueling_net_arch=dict(value=[-4], advantage=[8]))), "dueling_net_arch"),
    (dict(policy_kwargs=dict(dueling=True, dueling_net_arch=[8])), "dueling_net_arch"),
    (dict(policy_kwargs=dict(net_arch=[16, 0])), "net_arch"),
    (dict(policy_kwargs=dict(noisy=True, noisy_std_init=float("nan"))), "noisy_std_init"),
    (dict(policy_kwargs=dict(n_atoms=2.5)), "n_atoms"),
    (dict(policy_kwargs=dict(n_atoms=11, v_min=1.0, v_max=1.0)), "v_min"),
]


@pytest.mark.parametrize("algorithm", [ScratchDQN, RainbowDQN])
@pytest.mark.parametrize("kwargs, name", EXTENSION_BAD_INPUTS)
def test_bad_extension_hyperparameters_name_themselves(algorithm, kwargs, name):
    with pytest.raises(ScratchDQNError, match=name) as error:
        algorithm("MlpPolicy", make_chain(), buffer_size=100, **kwargs)
    assert error.type is ScratchDQNError


@pytest.mark.parametrize("name, value", [("seed", -1), ("seed", 2**40), ("seed", 1.5), ("device", "tpu9")])
def test_bad_seed_and_device_name_themselves(name, value):
    with pytest.raises(ScratchDQNError, match=name):
        ScratchDQN("MlpPolicy", make_chain(), buffer_size=100, **{name: value})


def test_check_hyperparameters_covers_seed_and_device():
    """The checks the hook above turns on, called directly."""
    from sb3_dqn_ext.validation import check_hyperparameters

    valid = dict(
        learning_rate=1e-4, buffer_size=100, learning_starts=0, batch_size=32, tau=1.0, gamma=0.99, train_freq=4,
        gradient_steps=1, replay_buffer_class=None, replay_buffer_kwargs=None, n_steps=1, target_update_interval=10,
        exploration_fraction=0.1, exploration_initial_eps=1.0, exploration_final_eps=0.05, max_grad_norm=10,
        stats_window_size=100, policy_kwargs=None, double_q=False, exploration_schedule="linear",
        seed=None, device="auto",
    )  # fmt: skip
    check_hyperparameters(**valid)
    for name, value in (("seed", -1), ("seed", 2**40), ("seed", 1.5), ("device", "tpu9")):
        with pytest.raises(ScratchDQNError, match=name):
            check_hyperparameters(**(valid | {name: value}))
    with pytest.raises(TypeError, match="device"):
        check_hyperparameters(**(valid | {"device": 3.5}))


class _Space(gym.Env):
    def __init__(self, observation_space):
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    "observation_space",
    [
        spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))),
        spaces.Text(5),
        spaces.Sequence(spaces.Discrete(2)),
        spaces.Dict({"inner": spaces.Dict({"x": spaces.Discrete(2)})}),
    ],
    ids=["tuple", "text", "sequence", "nested-dict"],
)
def test_unsupported_observation_space_names_observation_space(observation_space):
    with pytest.raises(ScratchDQNError, match="observation_space") as error:
        ScratchDQN("MlpPolicy", _Space(observation_space), buffer_size=10)
    assert error.type is ScratchDQNError


def test_check_spaces_rejects_text_sequence_and_nested_dict():
    """What the hook above turns on, called directly: check_spaces rejects them before SB3 wraps the env."""
    for space in (spaces.Text(5), spaces.Sequence(spaces.Discrete(2)), spaces.Dict({"a": spaces.Dict({})})):
        with pytest.raises(ScratchDQNError, match="observation_space"):
            check_spaces(space, spaces.Discrete(2))


class _Poisoned(gym.Wrapper):
    """Returns a NaN/inf observation (or reward) at the third step."""

    def __init__(self, env, what, value):
        super().__init__(env)
        self.what, self.value, self.steps = what, value, 0
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return np.array([obs], np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        obs = np.array([obs], np.float32)
        if self.steps == 3:
            if self.what == "reward":
                reward = self.value
            else:
                obs[0] = self.value
                terminated = self.what == "terminal observation"
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize(
    "what",
    ["reward", "observation", "terminal observation"],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_env_output_stops_naming_it(what, value):
    model = ScratchDQN("MlpPolicy", _Poisoned(make_chain(), what, value), buffer_size=100, learning_starts=0)
    with pytest.raises(DivergenceError, match=f"non-finite (next )?{what} .*at timestep 3") as error:
        model.learn(50)
    assert error.type is DivergenceError


def test_check_finite_transition_names_what_is_not_finite():
    good = np.zeros((2, 3), np.float32)
    check_finite_transition(good, good, np.zeros(2), [{}, {}], 7)
    check_finite_transition(np.full((1, 2), 255, np.uint8), {"x": good}, np.zeros(1), [{}], 7)
    # finite values whose float32 sum overflows are finite (the one-pass sum check hands them to the exact one)
    huge = np.full((2, 3), 3e38, np.float32)
    assert not np.isfinite(huge.sum())
    check_finite_transition(None, huge, np.full(2, 3e38, np.float32), [{}, {}], 7)
    terminal_nan = [{}, {"terminal_observation": np.array([np.nan])}]
    cases = [
        ((good, good, np.array([0.0, np.inf]), [{}, {}]), "reward"),
        ((None, good, np.array([np.inf, -np.inf]), [{}, {}]), "reward"),  # (a NaN sum)
        ((None, np.array([[np.inf, -np.inf, 0.0]]), np.zeros(1), [{}]), "next observation"),
        ((good, {"x": np.array([np.nan])}, np.zeros(2), [{}, {}]), "next observation"),
        ((np.array([[-np.inf]]), good, np.zeros(2), [{}, {}]), "observation"),
        ((good, good, np.zeros(2), terminal_nan), r"terminal observation .*\(env 1\)"),
    ]
    for args, match in cases:
        with pytest.raises(DivergenceError, match=f"non-finite {match}"):
            check_finite_transition(*args, timestep=7)


# ----------------------------------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.zip"
    make_model("plain").learn(60).save(path)
    return path


def _bad_model_files(model_file: Path, folder: Path) -> list[tuple[Path, str]]:
    data = model_file.read_bytes()
    text = folder / "notes.zip"
    text.write_text("not a model")
    truncated = folder / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = folder / "corrupt.zip"
    with zipfile.ZipFile(model_file) as archive:
        info = archive.getinfo("policy.pth")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    corrupt.write_bytes(data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :])
    empty = folder / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "hello")
    ppo = folder / "ppo.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32).save(ppo)
    return [
        (text, "not a zip archive"),
        (truncated, "truncated"),
        (corrupt, "corrupt: its entry 'policy.pth' fails its CRC check"),
        (empty, "no 'data' entry"),
        (ppo, "was not saved by ScratchDQN: its policy_class is ActorCriticPolicy"),
    ]


def test_check_model_file_names_what_is_wrong(model_file, tmp_path):
    check_model_file(model_file, env=make_chain(), algorithm=ScratchDQN)
    check_model_file(str(model_file)[: -len(".zip")], algorithm=RainbowDQN)  # SB3 adds .zip too
    with open(model_file, "rb") as file:
        file.read(10)
        check_model_file(file, algorithm=ScratchDQN)
        assert file.tell() == 10  # an open file is left where it was
    check_model_file(io.BytesIO(model_file.read_bytes()), algorithm=ScratchDQN)
    for path, match in _bad_model_files(model_file, tmp_path):
        with pytest.raises(ScratchDQNError, match=match) as error:
            check_model_file(path, algorithm=ScratchDQN)
        assert error.type is ScratchDQNError
    with pytest.raises(ScratchDQNError, match="observation_space"):
        check_model_file(model_file, env=gym.make("CartPole-v1"))
    with pytest.raises(FileNotFoundError):
        check_model_file(tmp_path / "missing.zip")


def test_load_rejects_bad_model_files_with_our_error(model_file, tmp_path):
    for path, match in _bad_model_files(model_file, tmp_path):
        with pytest.raises(ScratchDQNError, match=match):
            ScratchDQN.load(path)
    with pytest.raises(ScratchDQNError, match="observation_space"):
        ScratchDQN.load(model_file, env=gym.make("CartPole-v1"))


# ----------------------------------------------------------------------------------------------------- replay buffers
@pytest.fixture(scope="module")
def buffer_files(tmp_path_factory):
    """Saved buffers that do not fit ``make_model("extensions")``, named after what differs, and broken files."""
    folder = tmp_path_factory.mktemp("buffers")
    ext = dict(SMALL, n_steps=3, replay_buffer_class=PrioritizedReplayBuffer)
    variants = {
        "fits": make_model("extensions"),
        "observation_space": ScratchDQN("MlpPolicy", "CartPole-v1", **ext),
        "replay_buffer_class": ScratchDQN("MlpPolicy", make_chain(), **(ext | dict(replay_buffer_class=None))),
        "n_steps": ScratchDQN("MlpPolicy", make_chain(), **(ext | dict(n_steps=2))),
        "gamma": ScratchDQN("MlpPolicy", make_chain(), gamma=0.5, **ext),
        "n_envs": ScratchDQN("MlpPolicy", DummyVecEnv([make_chain] * 2), **ext),
    }
    paths = {}
    for name, model in variants.items():
        model.learn(20)
        paths[name] = folder / f"{name}.pkl"
        model.save_replay_buffer(paths[name])
    truncated = folder / "truncated.pkl"
    truncated.write_bytes(paths["fits"].read_bytes()[:200])
    not_a_buffer = folder / "list.pkl"
    not_a_buffer.write_bytes(pickle.dumps([1, 2, 3]))
    return paths, truncated, not_a_buffer


def test_replay_buffer_that_does_not_fit_names_what_differs(buffer_files):
    paths, truncated, not_a_buffer = buffer_files
    model = make_model("extensions")
    check_replay_buffer(model, load_replay_buffer_file(paths["fits"]))
    for name, path in paths.items():
        if name != "fits":
            with pytest.raises(ScratchDQNError, match=name) as error:
                check_replay_buffer(model, load_replay_buffer_file(path))
            assert error.type is ScratchDQNError
    with pytest.raises(ScratchDQNError, match="truncated or corrupt"):
        load_replay_buffer_file(truncated)
    with pytest.raises(ScratchDQNError, match="does not hold a replay buffer"):
        load_replay_buffer_file(not_a_buffer)


def test_load_replay_buffer_rejects_a_buffer_that_does_not_fit(buffer_files):
    paths, truncated, _ = buffer_files
    model = make_model("extensions")
    for name, path in [*paths.items(), ("truncated or corrupt", truncated)]:
        if name != "fits":
            with pytest.raises(ScratchDQNError, match=name):
                model.load_replay_buffer(path)


# ----------------------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize(
    "observation_space, n_envs, optimize_memory_usage, prioritized",
    [
        (spaces.Box(-1, 1, (4,), np.float32), 1, False, False),
        (spaces.Box(0, 255, (3, 8, 8), np.uint8), 2, True, True),
        (spaces.Dict({"a": spaces.Box(0, 1, (5,), np.float32), "b": spaces.Discrete(5)}), 3, False, True),
    ],
)
def test_replay_buffer_nbytes_is_what_the_buffer_allocates(
    observation_space, n_envs, optimize_memory_usage, prioritized
):
    action_space = spaces.Discrete(3)
    buffer_class = PrioritizedReplayBuffer if prioritized else ReplayBuffer
    buffer = buffer_class(
        999, observation_space, action_space, n_envs=n_envs, optimize_memory_usage=optimize_memory_usage,
        handle_timeout_termination=not optimize_memory_usage,
    )  # fmt: skip
    arrays = [buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    for store in (buffer.observations, getattr(buffer, "next_observations", None)):
        arrays += list(store.values()) if isinstance(store, dict) else [] if store is None else [store]
    if prioritized:
        arrays += [*buffer.tree._sums, *buffer.tree._prefix, *buffer.tree._mins]
    expected = sum(array.nbytes for array in arrays)
    assert replay_buffer_nbytes(999, observation_space, action_space, n_envs, optimize_memory_usage, prioritized) == (
        expected
    )


def test_check_replay_buffer_setup_rejects_what_cannot_work():
    box = spaces.Box(-1, 1, (84, 84), np.float32)
    assert check_replay_buffer_setup(1000, box, spaces.Discrete(2)) == replay_buffer_nbytes(
        1000, box, spaces.Discrete(2)
    )
    with pytest.raises(ScratchDQNError, match=r"buffer_size=10000000000 needs about 564\d\d\d\.\d GB") as error:
        check_replay_buffer_setup(10**10, box, spaces.Discrete(2))
    assert error.type is ScratchDQNError
    with pytest.raises(ScratchDQNError, match="buffer_size=3 is too small for optimize_memory_usage"):
        check_replay_buffer_setup(3, box, spaces.Discrete(2), n_envs=2, optimize_memory_usage=True)


@pytest.mark.parametrize("buffer_size, optimize_memory_usage", [(10**12, False), (1, True)])
def test_buffer_that_cannot_work_is_rejected_before_allocating(buffer_size, optimize_memory_usage):
    with pytest.raises(ScratchDQNError, match="buffer_size"):
        ScratchDQN(
            "MlpPolicy", make_chain(), buffer_size=buffer_size, optimize_memory_usage=optimize_memory_usage,
            replay_buffer_kwargs=dict(handle_timeout_termination=False),
        )  # fmt: skip


def test_memory_stays_flat_once_the_buffer_is_full():
    """tracemalloc (Python and numpy allocations) and RSS over a long window after the buffer filled up."""
    model = make_model("extensions")
    model.learn(300)  # the buffer is full, every lazy allocation done
    gc.collect()
    # SB3's Monitor keeps every episode's return, length and time in lists: 3 floats per episode, by design
    ignore = [
        tracemalloc.Filter(False, "*stable_baselines3/common/monitor.py"),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]
    samples, rss = [], []
    tracemalloc.start()
    try:
        for _ in range(4):
            model.learn(150, reset_num_timesteps=False)
            gc.collect()
            samples.append(tracemalloc.take_snapshot().filter_traces(ignore))
            rss.append(_rss())
    finally:
        tracemalloc.stop()
    # measured: 10-30 KiB, which torch's tensor creation reaches and stays at (a cache, not growth per step);
    # a leak of 220 bytes per step would add 64 KiB over the 300 steps compared
    growth = sum(stat.size_diff for stat in samples[-1].compare_to(samples[1], "filename"))
    assert growth < 64 * 1024, [str(stat) for stat in samples[-1].compare_to(samples[1], "lineno")[:5]]
    if rss[0] is not None:
        assert rss[-1] - rss[1] < 8 * 2**20, rss


def _rss() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


if __name__ == "__main__":
    _child(sys.argv[1:])
