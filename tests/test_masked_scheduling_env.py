"""The scheduling env of the masking benchmark (benchmarks/masked_scheduling.py): masks, optimum, penalty mode."""

import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from masked_scheduling import MaskedSchedulingEnv, weighted_completion_time, wspt_order  # noqa: E402

# 4 jobs; w/p = 1, 4, 0.25, 1.5 -> WSPT order 1, 3, 0, 2
P = np.array([3, 1, 4, 2])
W = np.array([3, 4, 1, 3])
# completion times in WSPT order: job 1 at 1, job 3 at 3, job 0 at 6, job 2 at 10
OPT = 4 * 1 + 3 * 3 + 3 * 6 + 1 * 10  # = 41


def fixed(mode: str = "penalty", **kwargs) -> tuple[MaskedSchedulingEnv, np.ndarray]:
    env = MaskedSchedulingEnv(n_jobs=4, mode=mode, **kwargs)
    obs, _ = env.reset(options={"processing_times": P, "weights": W})
    return env, obs


def test_wspt_is_the_optimum_and_its_return_is_minus_one():
    assert wspt_order(P, W).tolist() == [1, 3, 0, 2]
    assert weighted_completion_time(P, W, wspt_order(P, W)) == OPT
    env, _ = fixed()
    assert env.optimum == OPT
    rewards, info = [], {}
    for job in [1, 3, 0, 2]:
        _, reward, terminated, truncated, info = env.step(job)
        rewards.append(reward)
    assert terminated and not truncated
    np.testing.assert_allclose(np.array(rewards) * OPT, [-4, -9, -18, -10])
    assert sum(rewards) == pytest.approx(-1.0)
    assert info == {
        "completed": True,
        "optimality_ratio": 1.0,
        "illegal_moves": 0,
        "weighted_completion_time": OPT,
        "optimum": OPT,
    }
    # WSPT beats every other order (brute force over the 24 permutations)
    assert min(weighted_completion_time(P, W, np.array(o)) for o in permutations(range(4))) == OPT


def test_masks_are_the_unscheduled_jobs_and_obs_layout():
    env, obs = fixed(mode="masked")
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs[:-1].reshape(4, 3), np.stack([P / 10, W / 10, np.zeros(4)], axis=1), rtol=1e-6)
    assert env.action_masks().tolist() == [True] * 4
    order = [2, 0, 3, 1]
    for k, job in enumerate(order):
        obs, *_ = env.step(job)
        expected = np.ones(4, dtype=bool)
        expected[order[: k + 1]] = False
        assert env.action_masks().tolist() == expected.tolist()
        assert obs.reshape(-1)[:-1].reshape(4, 3)[:, 2].tolist() == (~expected).astype(float).tolist()
    # masked mode refuses an illegal action
    env, _ = fixed(mode="masked")
    env.step(1)
    with pytest.raises(ValueError, match="illegal"):
        env.step(1)


def test_penalty_mode_leaves_the_schedule_unchanged_and_time_limit_completes_worst_order():
    env, _ = fixed(penalty=-0.5)
    assert env.max_steps == 12
    obs, reward, terminated, truncated, _ = env.step(1)
    scheduled, time_, cost = env.scheduled.copy(), env.time, env.cost
    obs2, reward2, terminated2, truncated2, info = env.step(1)  # illegal
    assert reward2 == -0.5 and not terminated2 and not truncated2 and info == {}
    assert env.scheduled.tolist() == scheduled.tolist() and env.time == time_ and env.cost == cost
    np.testing.assert_array_equal(obs2[:-1], obs[:-1])  # only the step counter moves
    assert obs2[-1] > obs[-1]
    assert env.illegal_moves == 1
    # stall until the step limit: the remaining jobs 0, 2, 3 run in the worst order (ascending w/p: 2, 0, 3)
    total = reward + reward2
    for _ in range(10):
        _, reward, terminated, _, info = env.step(1)
        total += reward
    assert terminated and env.steps == 12 and env.order == [1, 2, 0, 3]
    worst_cost = weighted_completion_time(P, W, np.array([1, 2, 0, 3]))
    assert info["completed"] is False and info["illegal_moves"] == 11
    assert info["optimality_ratio"] == pytest.approx(OPT / worst_cost)
    assert total == pytest.approx(-11 * 0.5 - worst_cost / OPT)


def test_default_penalty_limit_and_random_instances():
    env = MaskedSchedulingEnv()
    assert env.penalty == -1 / 8 and env.max_steps == 24 and env.action_space.n == 8
    obs1, _ = env.reset(seed=3)
    p1 = env.processing_times.copy()
    obs2, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs1, obs2)
    assert env.processing_times.min() >= 1 and env.weights.max() <= 10 and np.array_equal(p1, env.processing_times)
