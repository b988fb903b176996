"""
Property-based fuzzing of the hyperparameters: any set either trains or raises our error naming a parameter.

Each example draws a full set of valid hyperparameters (every extension may be on) and, half of the time, replaces
one of them by an invalid value. A valid set must train for ``FUZZ_STEPS`` steps or be rejected by
:class:`ScratchDQNError` naming one of its parameters (some combinations are invalid together); a set with an invalid
value must be rejected by :class:`ScratchDQNError` (or ``TypeError``) naming that parameter. Never a bare
``AssertionError``, a ``RuntimeError`` from torch, or a hang (each example runs under an alarm).

The search is derandomised so that CI is reproducible; ``SB3_DQN_EXT_FUZZ_EXAMPLES=500`` searches longer.
"""

import os
import signal
from contextlib import contextmanager

import pytest
from envs import DictChain, make_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sb3_dqn_ext import PrioritizedReplayBuffer, RainbowDQN, ScratchDQN, ScratchDQNError

FUZZ_EXAMPLES = int(os.environ.get("SB3_DQN_EXT_FUZZ_EXAMPLES", "30"))
FUZZ_STEPS = 200
EXAMPLE_TIMEOUT_S = 60

NAN, INF = float("nan"), float("inf")
unit = st.floats(0.0, 1.0)
widths = st.lists(st.integers(1, 16), min_size=0, max_size=2)

# name -> (valid values, invalid values); the name is what the error message must contain
HYPERPARAMETERS = {
    "learning_rate": (st.floats(1e-5, 1e-2), [0.0, -1e-3, NAN, INF]),
    "buffer_size": (st.integers(1, 400), [0, -5, 10.5, True]),
    "learning_starts": (st.integers(0, 100), [-1, 2.5]),
    "batch_size": (st.integers(1, 48), [0, -3, 32.0]),
    "tau": (unit, [-0.1, 1.5, NAN]),
    "gamma": (unit, [-0.5, 1.01, NAN]),
    "train_freq": (
        st.integers(1, 8) | st.tuples(st.integers(1, 3), st.sampled_from(["step", "episode"])),
        [0, (4, "epoch"), (0, "step"), 2.5],
    ),
    "gradient_steps": (st.integers(-1, 3), [-2, 1.5]),
    "n_steps": (st.integers(1, 5), [0, -1, 2.5]),
    "target_update_interval": (st.integers(1, 300), [0, -10]),
    "exploration_fraction": (unit, [1.5, -0.1]),
    "exploration_initial_eps": (unit, [-0.1, 2.0]),
    "exploration_final_eps": (unit, [1.2, NAN]),
    "max_grad_norm": (st.floats(0.1, 100.0), [0.0, -1.0, NAN]),
    "stats_window_size": (st.integers(1, 50), [0]),
    "double_q": (st.booleans(), ["yes", 1]),
    "exploration_schedule": (st.sampled_from(["linear", "exponential"]), ["cosine", 3]),
}
REPLAY_KWARGS = {
    "alpha": (unit, [-0.1, 1.5, NAN]),
    "beta": (unit, [-0.1, 1.5]),
    "final_beta": (unit, [2.0]),
    "epsilon": (st.floats(1e-8, 0.5), [0.0, 1.0]),
}
POLICY_KWARGS = {
    "net_arch": (widths, [[0], [16, -1], "64", [2.5]]),
    "dueling": (st.booleans(), []),
    "dueling_net_arch": (
        st.fixed_dictionaries({"value": widths, "advantage": widths}),
        [dict(value=[0]), dict(values=[8]), [8]],
    ),
    "noisy": (st.booleans(), []),
    "noisy_std_init": (st.floats(0.0, 1.0), [-1.0, NAN]),
    "n_atoms": (st.none() | st.integers(2, 11), [1, 0, 2.5]),
}


@contextmanager
def alarm(seconds: int):
    """Turn a hang into a failure (SIGALRM, main thread only)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"the example ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def hyperparameter_sets(draw):
    """A valid set of every hyperparameter, then at most one invalid value: ``(kwargs, invalid name or None)``."""
    kwargs = {name: draw(valid) for name, (valid, _) in HYPERPARAMETERS.items()}
    policy_kwargs = {}
    for name, (valid, _) in POLICY_KWARGS.items():
        if draw(st.booleans()):
            policy_kwargs[name] = draw(valid)
    if policy_kwargs.get("n_atoms") is not None:
        v_min = draw(st.floats(-20.0, 0.0))
        policy_kwargs.update(v_min=v_min, v_max=v_min + draw(st.floats(0.5, 40.0)))
    replay_kwargs = {}
    if draw(st.booleans()):
        kwargs["replay_buffer_class"] = PrioritizedReplayBuffer
        replay_kwargs = {name: draw(valid) for name, (valid, _) in REPLAY_KWARGS.items() if draw(st.booleans())}
    if draw(st.booleans()):
        kwargs["optimize_memory_usage"] = True
        replay_kwargs["handle_timeout_termination"] = False
        kwargs["buffer_size"] = max(kwargs["buffer_size"], 2)  # (the memory-efficient buffer needs two rows)

    invalid = None
    if draw(st.booleans()):
        scopes = [(kwargs, HYPERPARAMETERS), (policy_kwargs, POLICY_KWARGS)]
        if kwargs.get("replay_buffer_class") is PrioritizedReplayBuffer:
            scopes.append((replay_kwargs, REPLAY_KWARGS))
        candidates = [(scope, table, name) for scope, table in scopes for name, (_, bad) in table.items() if bad]
        scope, table, invalid = draw(st.sampled_from(candidates))
        scope[invalid] = draw(st.sampled_from(table[invalid][1]))
        if invalid == "dueling_net_arch":
            policy_kwargs["dueling"] = True
    kwargs["policy_kwargs"] = policy_kwargs
    kwargs["replay_buffer_kwargs"] = replay_kwargs
    return kwargs, invalid


def _names_in(kwargs: dict) -> list[str]:
    names = [name for name in kwargs if name not in ("policy_kwargs", "replay_buffer_kwargs")]
    names += list(kwargs["policy_kwargs"]) + list(kwargs["replay_buffer_kwargs"]) + ["v_min", "v_max"]
    return names


def _check(algorithm, env_fn, policy, kwargs, invalid):
    try:
        with alarm(EXAMPLE_TIMEOUT_S):
            model = algorithm(policy, env_fn(), seed=0, **kwargs)
            model.learn(FUZZ_STEPS)
    except (ScratchDQNError, TypeError) as error:
        message = str(error)
        if invalid is not None:
            assert invalid in message, f"the error does not name {invalid}: {message}"
        else:
            assert type(error) is not TypeError, f"a valid set raised {error!r}"
            assert any(name in message for name in _names_in(kwargs)), f"the error names no parameter: {message}"
        return
    assert invalid is None, f"the invalid {invalid}={_value(kwargs, invalid)!r} was accepted"
    assert model.num_timesteps >= FUZZ_STEPS  # a rollout (train_freq) may end past the total


def _value(kwargs: dict, name: str):
    for scope in (kwargs, kwargs["policy_kwargs"], kwargs["replay_buffer_kwargs"]):
        if name in scope:
            return scope[name]
    return None


FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(hyperparameter_sets())
def test_random_hyperparameters_train_or_name_the_bad_one(params):
    kwargs, invalid = params
    _check(ScratchDQN, make_chain, "MlpPolicy", kwargs, invalid)


@settings(FUZZ_SETTINGS, max_examples=max(FUZZ_EXAMPLES // 3, 5))
@given(hyperparameter_sets())
def test_random_hyperparameters_rainbow_dict_observations(params):
    kwargs, invalid = params
    if kwargs.get("optimize_memory_usage"):  # not available with Dict observations, tested on Box above
        kwargs.pop("optimize_memory_usage")
        kwargs["replay_buffer_kwargs"].pop("handle_timeout_termination")
    _check(RainbowDQN, lambda: DictChain(make_chain()), "MultiInputPolicy", kwargs, invalid)


def test_alarm_turns_a_hang_into_an_error():
    """The hang guard itself works (a guard that cannot fire guards nothing)."""
    with pytest.raises(TimeoutError), alarm(1):
        while True:
            pass
