"""Replay buffers: SB3's layout, n-step returns by hand, prioritized sampling and importance weights."""

import pickle

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from scipy import stats

from sb3_dqn_ext import PrioritizedReplayBuffer, ReplayBuffer, ScratchDQNError

OBS = spaces.Box(-100, 100, (1,), np.float32)
ACT = spaces.Discrete(3)


def _add(buffer, obs, next_obs, reward, done, truncated):
    """Add one step for every env (each argument is a per-env list)."""
    infos = [{"TimeLimit.truncated": t} for t in truncated]
    buffer.add(
        np.array(obs, dtype=np.float32).reshape(-1, 1),
        np.array(next_obs, dtype=np.float32).reshape(-1, 1),
        np.zeros(len(obs), dtype=np.int64),
        np.array(reward, dtype=np.float32),
        np.array(done, dtype=np.float32),
        infos,
    )


def _n_step_buffer(buffer_class=ReplayBuffer, **kwargs):
    """
    Two envs, 6 steps, n = 3, γ = 0.5. Observations are the step index (+10 for env 1).
    env 0: terminates at step 2 (obs 2 -> 2.5 terminal), new episode from step 3.
    env 1: truncated (time limit) at step 1 (obs 11 -> 11.5 terminal observation), new episode from step 2.
    """
    buffer = buffer_class(100, OBS, ACT, device="cpu", n_envs=2, n_steps=3, gamma=0.5, **kwargs)
    rewards = [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]
    for t in range(6):
        obs = [t, 10 + t]
        next_obs = [t + 1 if t != 2 else 2.5, 10 + t + 1 if t != 1 else 11.5]
        done = [t == 2, t == 1]
        truncated = [False, t == 1]
        _add(buffer, obs, next_obs, rewards[t], done, truncated)
    return buffer


# expected (return, discount, next_obs, done) per (start step, env), computed by hand with γ = 0.5
N_STEP_EXPECTED = {
    (0, 0): (1 + 0.5 * 2 + 0.25 * 3, 0.125, 2.5, 1.0),  # window 0,1,2 ends with the termination: no bootstrap
    (1, 0): (2 + 0.5 * 3, 0.25, 2.5, 1.0),  # cut by the termination at step 2
    (2, 0): (3.0, 0.5, 2.5, 1.0),
    (3, 0): (4 + 0.5 * 5 + 0.25 * 6, 0.125, 6.0, 0.0),  # full window, bootstrap from s_6
    (4, 0): (5 + 0.5 * 6, 0.25, 6.0, 0.0),  # the newest row cuts the window: bootstrap from s_6
    (5, 0): (6.0, 0.5, 6.0, 0.0),
    (0, 1): (10 + 0.5 * 20, 0.25, 11.5, 0.0),  # truncation at step 1: cut, bootstrap from the truncated state
    (1, 1): (20.0, 0.5, 11.5, 0.0),
    (2, 1): (30 + 0.5 * 40 + 0.25 * 50, 0.125, 15.0, 0.0),
    (3, 1): (40 + 0.5 * 50 + 0.25 * 60, 0.125, 16.0, 0.0),
    (5, 1): (60.0, 0.5, 16.0, 0.0),
}


@pytest.mark.parametrize("buffer_class", [ReplayBuffer, PrioritizedReplayBuffer])
def test_n_step_returns_by_hand(buffer_class):
    buffer = _n_step_buffer(buffer_class)
    starts = np.array([k[0] for k in N_STEP_EXPECTED])
    envs = np.array([k[1] for k in N_STEP_EXPECTED])
    batch = ReplayBuffer._get_samples(buffer, starts, env_indices=envs)
    expected = np.array(list(N_STEP_EXPECTED.values()), dtype=np.float32)
    np.testing.assert_allclose(batch.rewards.numpy().ravel(), expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(batch.discounts.numpy().ravel(), expected[:, 1], rtol=1e-6)
    np.testing.assert_allclose(batch.next_observations.numpy().ravel(), expected[:, 2])
    np.testing.assert_allclose(batch.dones.numpy().ravel(), expected[:, 3])
    np.testing.assert_allclose(batch.observations.numpy().ravel(), starts + 10 * envs)


def test_n_step_with_optimize_memory_usage():
    buffer = ReplayBuffer(
        10, OBS, ACT, device="cpu", n_steps=2, gamma=0.5, optimize_memory_usage=True, handle_timeout_termination=False
    )
    for t in range(4):
        _add(buffer, [t], [t + 1], [t + 1.0], [False], [False])
    batch = buffer._get_samples(np.array([0, 1, 2, 3]), env_indices=np.zeros(4, dtype=int))
    np.testing.assert_allclose(batch.rewards.numpy().ravel(), [1 + 0.5 * 2, 2 + 0.5 * 3, 3 + 0.5 * 4, 4])
    np.testing.assert_allclose(batch.next_observations.numpy().ravel(), [2, 3, 4, 4])
    np.testing.assert_allclose(batch.discounts.numpy().ravel(), [0.25, 0.25, 0.25, 0.5])


@pytest.mark.parametrize("n_envs", [1, 2])
def test_one_step_sample_matches_sb3_layout_and_draws(n_envs):
    from stable_baselines3.common.buffers import ReplayBuffer as SB3ReplayBuffer

    ours = ReplayBuffer(50, OBS, ACT, device="cpu", n_envs=n_envs)
    theirs = SB3ReplayBuffer(50, OBS, ACT, device="cpu", n_envs=n_envs)
    rng = np.random.default_rng(0)
    for _ in range(40):
        obs, nxt = rng.normal(size=n_envs), rng.normal(size=n_envs)
        reward, done = rng.normal(size=n_envs), rng.random(n_envs) < 0.2
        truncated = done & (rng.random(n_envs) < 0.5)
        for buffer in (ours, theirs):
            _add(buffer, obs, nxt, reward, done, truncated)
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    assert (ours.pos, ours.full, ours.size()) == (theirs.pos, theirs.full, theirs.size())
    np.random.seed(3)
    a = ours.sample(32)
    after_ours = np.random.rand()
    np.random.seed(3)
    b = theirs.sample(32)
    # the same transitions, and numpy's global generator left where SB3 leaves it
    assert np.random.rand() == after_ours
    for x, y in zip(a, b, strict=True):
        if x is not None:
            assert th.equal(x, y)


def _per_buffer(priorities, alpha=0.7, beta=0.5, n_envs=1):
    buffer = PrioritizedReplayBuffer(len(priorities), OBS, ACT, device="cpu", n_envs=n_envs, alpha=alpha, beta=beta)
    for i in range(len(priorities) // n_envs):
        _add(buffer, [i] * n_envs, [i + 1] * n_envs, [0.0] * n_envs, [False] * n_envs, [False] * n_envs)
    buffer.sample(1)  # flushes the max priority of new transitions
    leaves = np.arange(len(priorities))
    # priorities are written as (|δ| + ε)^α: pass |δ| so that p_i^α = priorities[i]
    buffer.update_priorities(leaves, np.asarray(priorities) ** (1 / alpha) - buffer.epsilon)
    return buffer


def test_new_transitions_get_max_priority():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", alpha=1.0)
    for i in range(3):
        _add(buffer, [i], [i + 1], [0.0], [False], [False])
    batch = buffer.sample(4)
    buffer.update_priorities(batch.indices, np.full(4, 5.0))
    _add(buffer, [3], [4], [0.0], [False], [False])
    buffer.sample(1)
    assert buffer.tree.get(3) == pytest.approx(5.0 + buffer.epsilon)
    assert buffer.max_priority == pytest.approx(5.0 + buffer.epsilon)


def test_prioritized_sampling_frequencies_chi_square():
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 6.0, 0.25, 8.0])
    buffer = _per_buffer(priorities, alpha=0.7)
    np.random.seed(0)
    counts = np.zeros(len(priorities))
    for _ in range(500):
        counts += np.bincount(buffer.sample(64).indices, minlength=len(priorities))
    expected = priorities / priorities.sum() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_importance_weights_formula():
    priorities = np.array([1.0, 2.0, 4.0, 8.0])
    beta = 0.5
    buffer = _per_buffer(priorities, beta=beta, n_envs=2)
    batch = buffer.sample(16)
    probs = priorities / priorities.sum()
    n = len(priorities)
    weights = (n * probs[batch.indices]) ** -beta / ((n * probs.min()) ** -beta)
    np.testing.assert_allclose(batch.weights.numpy().ravel(), weights, rtol=1e-5)
    rows, envs = np.divmod(batch.indices, 2)
    np.testing.assert_allclose(batch.observations.numpy().ravel(), rows)  # obs of row i is i in both envs
    assert set(envs) <= {0, 1}


def test_beta_anneals_to_final_beta():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, beta=0.4, final_beta=1.0)
    buffer.set_progress(1.0)
    assert buffer.beta == pytest.approx(0.4)
    buffer.set_progress(0.25)
    assert buffer.beta == pytest.approx(0.4 + 0.75 * 0.6)
    buffer.set_progress(0.0)
    assert buffer.beta == pytest.approx(1.0)


def test_prioritized_buffer_pickles_with_priorities():
    buffer = _per_buffer(np.array([1.0, 2.0, 3.0, 4.0]))
    restored = pickle.loads(pickle.dumps(buffer))
    np.testing.assert_array_equal(restored.tree.get(np.arange(4)), buffer.tree.get(np.arange(4)))
    assert restored.max_priority == buffer.max_priority


def test_prioritized_dict_observations():
    obs_space = spaces.Dict({"a": spaces.Box(-1, 1, (2,), np.float32), "b": spaces.Discrete(4)})
    buffer = PrioritizedReplayBuffer(10, obs_space, ACT, device="cpu", n_envs=2)
    for i in range(5):
        obs = {"a": np.full((2, 2), i, dtype=np.float32), "b": np.array([i % 4, (i + 1) % 4])}
        buffer.add(obs, obs, np.zeros(2), np.zeros(2), np.zeros(2), [{}, {}])
    batch = buffer.sample(6)
    assert batch.observations["a"].shape == (6, 2) and batch.weights.shape == (6, 1)


def test_optimize_memory_usage_never_samples_the_overwritten_row():
    buffer = PrioritizedReplayBuffer(
        4, OBS, ACT, device="cpu", optimize_memory_usage=True, handle_timeout_termination=False
    )
    for i in range(6):
        _add(buffer, [i], [i + 1], [0.0], [False], [False])
    np.random.seed(0)
    seen = np.concatenate([buffer.sample(32).indices for _ in range(20)])
    assert buffer.pos not in set(seen) and len(set(seen)) == 3


def test_empty_buffer_sample_is_our_error():
    with pytest.raises(ScratchDQNError, match="empty"):
        ReplayBuffer(10, OBS, ACT).sample(4)
    with pytest.raises(ScratchDQNError, match="empty"):
        PrioritizedReplayBuffer(10, OBS, ACT).sample(4)


def test_to_torch_shares_memory_on_cpu_and_copies_what_from_numpy_cannot_take():
    buffer = ReplayBuffer(10, OBS, ACT, device="cpu")
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    shared = buffer.to_torch(array, copy=False)
    assert shared.dtype == th.float32 and np.shares_memory(shared.numpy(), array)
    copied = buffer.to_torch(array, copy=True)
    assert not np.shares_memory(copied.numpy(), array)
    # a read-only array goes through th.as_tensor (which warns that it shares it), with the same values
    read_only = array.copy()
    read_only.flags.writeable = False
    with pytest.warns(UserWarning, match="not writable"):
        assert th.equal(buffer.to_torch(read_only, copy=False), th.tensor(array))
    for dtype in (np.bool_, np.uint8, np.int64, np.float64):
        assert buffer.to_torch(np.zeros(2, dtype=dtype), copy=False).numpy().dtype == dtype


@pytest.mark.parametrize(
    "n_envs, kwargs",
    [
        (1, {}),
        (2, {}),
        (2, dict(n_steps=3, gamma=0.9)),
        (1, dict(optimize_memory_usage=True, handle_timeout_termination=False)),
    ],
)
def test_batches_gathered_at_once_are_the_per_step_samples(n_envs, kwargs):
    # ScratchDQN.train() gathers the minibatches of several gradient steps at once: the k-th block must be the
    # k-th of as many sample() calls, and numpy's generator must end where those calls leave it
    buffer = ReplayBuffer(30, OBS, ACT, device="cpu", n_envs=n_envs, **kwargs)
    buffer.enable_action_masks(ACT.n)
    rng = np.random.default_rng(1)
    for _ in range(50):  # wraps around: full buffer
        done = rng.random(n_envs) < 0.2
        _add(buffer, rng.normal(size=n_envs), rng.normal(size=n_envs), rng.normal(size=n_envs), done, [False] * n_envs)
    buffer.next_action_masks[...] = rng.random(buffer.next_action_masks.shape) < 0.5
    np.random.seed(7)
    per_step = [buffer.sample(8) for _ in range(5)]
    after = np.random.rand()
    np.random.seed(7)
    at_once = buffer._sample_batches(5, 8)
    assert np.random.rand() == after
    for k, batch in enumerate(per_step):
        for name, field in batch._asdict().items():
            whole = getattr(at_once, name)
            if field is None:
                assert whole is None, name
            else:
                assert th.equal(whole[8 * k : 8 * (k + 1)], field), name


def test_batches_gathered_at_once_with_dict_observations():
    space = spaces.Dict({"a": spaces.Box(-1, 1, (2,), np.float32), "b": spaces.Discrete(4)})
    buffer = ReplayBuffer(20, space, ACT, device="cpu")
    assert buffer._observation_row_nbytes() == 2 * 4 + 8  # float32 pair + int64
    for i in range(12):
        obs = {"a": np.full((1, 2), i, dtype=np.float32), "b": np.array([i % 4])}
        buffer.add(obs, obs, np.zeros(1), np.zeros(1), np.zeros(1), [{}])
    np.random.seed(2)
    per_step = [buffer.sample(4) for _ in range(3)]
    np.random.seed(2)
    at_once = buffer._sample_batches(3, 4)
    for k, batch in enumerate(per_step):
        for key in ("a", "b"):
            assert th.equal(at_once.observations[key][4 * k : 4 * (k + 1)], batch.observations[key])
