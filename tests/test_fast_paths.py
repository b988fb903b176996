"""
The speed paths compute exactly what the plain module calls compute: the per-layer fast path of the Q-network
(checked against the same network run through ``nn.Module.__call__``, forced by a hook), the multi-tensor Adam
default, the direct gradient clipping, the soft target update and the minibatches (and TD targets) of several
gradient steps gathered at once (checked bitwise against SB3's DQN, which uses PyTorch's per-tensor Adam on CPU,
``clip_grad_norm_`` and ``polyak_update`` and samples once per gradient step, or against our own per-step path).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from torch import nn

from sb3_dqn_ext import ReplayBuffer, ScratchDQN
from sb3_dqn_ext import dqn as dqn_module

POLICY_KWARGS = {
    "plain": dict(net_arch=[32, 32]),
    "tanh": dict(net_arch=[16], activation_fn=nn.Tanh),
    "dueling": dict(net_arch=[32], dueling=True),
    "noisy_c51_dueling": dict(net_arch=[32], dueling=True, noisy=True, n_atoms=11, v_min=0.0, v_max=10.0),
    "leaky": dict(net_arch=[8, 8], activation_fn=nn.LeakyReLU),
}


@pytest.mark.parametrize("name", sorted(POLICY_KWARGS))
def test_fast_path_equals_module_calls(name):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=POLICY_KWARGS[name], seed=0)
    q_net = model.q_net
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(7, 4)), dtype=th.float32)
    fast = q_net._head(obs)
    calls = []
    # a global hook makes every layer go through nn.Module.__call__ (the reference)
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m)))
    try:
        reference = q_net._head(obs)
    finally:
        handle.remove()
    assert nn.Linear in calls or name == "noisy_c51_dueling"
    assert th.equal(fast, reference)
    # gradients flow through the fast path as through the modules
    fast.sum().backward()
    assert all(p.grad is not None for p in q_net.parameters())


def test_layer_hooks_still_run():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", seed=0)
    seen = []
    first = model.q_net.q_net[0]
    handle = first.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.predict(np.zeros(4, dtype=np.float32))
    handle.remove()
    model.predict(np.zeros(4, dtype=np.float32))
    assert seen == [th.Size([1, 64])]


def test_replaced_mlp_is_used():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", seed=0)
    obs = th.zeros(1, 4)
    model.q_net(obs)  # builds the fast path for the original layers
    model.q_net.q_net = nn.Sequential(nn.Linear(4, 2))
    nn.init.zeros_(model.q_net.q_net[0].weight)
    nn.init.constant_(model.q_net.q_net[0].bias, 3.0)
    assert th.equal(model.q_net(obs), th.full((1, 2), 3.0))


def test_fast_path_of_a_copy_uses_the_copy_s_layers():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", seed=0)
    obs = th.ones(1, 4)
    before = model.q_net(obs)  # builds the fast path
    copied = copy.deepcopy(model.q_net)
    restored = pickle.loads(pickle.dumps(model.q_net))
    for net in (copied, restored):
        nn.init.zeros_(net.q_net[-1].weight)
        nn.init.constant_(net.q_net[-1].bias, 2.0)
        assert th.equal(net(obs), th.full((1, 2), 2.0))
    assert th.equal(model.q_net(obs), before)
    # a replaced parameter, and a forward set on a layer instance, are seen
    model.q_net.q_net[-1].bias = nn.Parameter(th.full((2,), 5.0))
    nn.init.zeros_(model.q_net.q_net[-1].weight)
    assert th.equal(model.q_net(obs), th.full((1, 2), 5.0))
    model.q_net.q_net[-1].forward = lambda x: th.full((x.shape[0], 2), -1.0)
    assert th.equal(model.q_net(obs), th.full((1, 2), -1.0))


def test_adam_defaults_to_multi_tensor_and_keeps_user_choices():
    model = ScratchDQN("MlpPolicy", "CartPole-v1")
    assert model.policy.optimizer.defaults["foreach"] is True
    assert model.policy.optimizer_kwargs == {}  # what is saved with the model is still the user's
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(optimizer_kwargs=dict(foreach=False)))
    assert model.policy.optimizer.defaults["foreach"] is False
    model = ScratchDQN(
        "MlpPolicy", "CartPole-v1", policy_kwargs=dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5))
    )
    assert isinstance(model.policy.optimizer, RMSpropTFLike)
    assert "foreach" not in model.policy.optimizer.defaults


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gradient_steps=3, policy_kwargs=dict(net_arch=[128, 128])),
        dict(tau=0.5),
        dict(max_grad_norm=0.05),  # clipping active at every step
        dict(gradient_steps=8, tau=0.7),  # minibatches and TD targets of 8 gradient steps gathered at once
    ],
)
def test_fast_paths_keep_sb3_numbers_bitwise(kwargs):
    common = dict(learning_starts=64, train_freq=8, target_update_interval=40, batch_size=32, seed=5, **kwargs)
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **common).learn(700)
    theirs = DQN("MlpPolicy", "CartPole-v1", **common).learn(700)
    for a, b in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert th.equal(a, b)


def test_gradient_clipping_scales_to_max_norm():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", max_grad_norm=0.5, seed=0)
    for p in model.q_net.parameters():
        p.grad = th.full_like(p, 3.0)
    norm_before = th.sqrt(sum((p.grad**2).sum() for p in model.q_net.parameters()))
    model._clip_grad_norm()
    norm_after = th.sqrt(sum((p.grad**2).sum() for p in model.q_net.parameters()))
    assert norm_before > 0.5
    assert abs(norm_after.item() - 0.5) < 1e-5
    for p in model.q_net.parameters():
        p.grad = th.full_like(p, 1e-4)  # below the limit: unchanged
    model._clip_grad_norm()
    assert all(th.equal(p.grad, th.full_like(p, 1e-4)) for p in model.q_net.parameters())


def test_copies_use_their_own_layers():
    import copy
    import pickle

    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(dueling=True), seed=0)
    obs = th.randn(3, 4)
    q_values = model.q_net(obs).detach()  # the fast path exists before the copies
    copied = copy.deepcopy(model.policy)
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)  # changing the original must not change the copies
    unpickled = pickle.loads(pickle.dumps(copied))
    for policy in (copied, unpickled):
        assert th.equal(policy.q_net(obs), q_values)
        assert policy.q_net._fast_path[0].seq is policy.q_net.q_net


def test_replaced_layer_and_compiled_layer_are_honoured():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", seed=0)
    obs = th.randn(2, 4)
    model.q_net(obs)
    model.q_net.q_net[4] = nn.Linear(64, 2)  # replace the output layer inside the Sequential
    nn.init.zeros_(model.q_net.q_net[4].weight)
    nn.init.constant_(model.q_net.q_net[4].bias, -1.0)
    assert th.equal(model.q_net(obs), th.full((2, 2), -1.0))
    calls = []
    model.q_net.q_net[0]._compiled_call_impl = lambda *args, **kwargs: calls.append(1) or th.zeros(2, 64)
    model.q_net(obs)  # a compiled layer goes through nn.Module.__call__ (which runs the compiled version)
    assert calls == [1]


def test_differentiable_adam_keeps_the_per_tensor_step():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(optimizer_kwargs=dict(differentiable=True)))
    # (the multi-tensor Adam step raises "_foreach ops don't support autograd" with differentiable=True)
    assert not model.policy.optimizer.defaults["foreach"]


def test_replaced_dueling_stream_is_used():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8], dueling=True), seed=0)
    obs = th.randn(2, 4)
    model.q_net(obs)
    model.q_net.value_stream = nn.Sequential(nn.Linear(8, 1))
    nn.init.zeros_(model.q_net.value_stream[0].weight)
    nn.init.constant_(model.q_net.value_stream[0].bias, 100.0)
    # Q = V + A − mean(A): with V = 100 the mean over actions of Q is exactly 100
    assert th.allclose(model.q_net(obs).mean(dim=1), th.full((2,), 100.0))


def test_minibatches_gathered_at_once_with_two_envs_are_sb3s():
    # two envs: rows and env indices are drawn per minibatch, interleaved, as SB3 draws them
    common = dict(learning_starts=64, train_freq=4, gradient_steps=5, target_update_interval=40, batch_size=16, seed=3)
    ours = ScratchDQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=3), **common).learn(600)
    theirs = DQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=3), **common).learn(600)
    assert ours._n_updates == theirs._n_updates > 0
    for a, b in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert th.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(double_q=True, n_steps=3),  # minibatches at once, TD targets per step (the online net changes)
        dict(policy_kwargs=dict(net_arch=[16], noisy=True)),  # ... (the target's noise changes)
        dict(policy_kwargs=dict(net_arch=[16], dueling=True, noisy=True, n_atoms=11, v_min=0.0, v_max=50.0)),
        dict(policy_kwargs=dict(net_arch=[16], dueling=True), tau=0.5),
    ],
)
def test_minibatches_gathered_at_once_equal_one_per_step(monkeypatch, kwargs):
    # _PREFETCH_BYTES = 1: one minibatch per gather, i.e. one sample() and one target forward per gradient step;
    # 3 * 4 * 32 bytes: 3 minibatches of 4 CartPole transitions (16 bytes per observation, s and s') at a time,
    # then the rest
    common = dict(learning_starts=64, train_freq=8, gradient_steps=7, target_update_interval=40, batch_size=4, seed=4)
    common["learning_rate"] = 0.05  # large steps: the online network's greedy actions change within one call
    results = []
    for limit in (1, 3 * 4 * 32, 10**9):
        monkeypatch.setattr(dqn_module, "_PREFETCH_BYTES", limit)
        results.append(ScratchDQN("MlpPolicy", "CartPole-v1", **common, **kwargs).learn(500))
    for model in results[1:]:
        assert model._n_updates == results[0]._n_updates > 0
        for a, b in zip(model.policy.parameters(), results[0].policy.parameters(), strict=True):
            assert th.equal(a, b)


def test_other_replay_buffers_are_sampled_once_per_gradient_step():
    calls = []

    class CountingBuffer(ReplayBuffer):
        def sample(self, batch_size, env=None):
            calls.append(batch_size)
            return super().sample(batch_size, env=env)

    model = ScratchDQN(
        "MlpPolicy",
        "CartPole-v1",
        replay_buffer_class=CountingBuffer,
        learning_starts=50,
        train_freq=10,
        gradient_steps=3,
        batch_size=8,
    ).learn(200)
    assert len(calls) == model._n_updates == 45 and set(calls) == {8}
