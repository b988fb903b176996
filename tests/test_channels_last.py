"""
``policy_kwargs=dict(channels_last=True)``: the convolution weights and the image batches in channels-last memory
format compute what the default NCHW layout computes (to float32 rounding), the flat Adam step keeps working on them
bitwise, and the setting survives saving and loading.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv

import sb3_dqn_ext.fast_update as fast_update
from sb3_dqn_ext import ScratchDQN
from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.fast_update import FlatAdam
from sb3_dqn_ext.policies import _to_channels_last

KWARGS = dict(learning_starts=60, buffer_size=200, batch_size=8, train_freq=4, target_update_interval=30, seed=0)


def image_env() -> FakeImageEnv:
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=3, discrete=True)
    env.observation_space.seed(0)  # (its observations are draws from the space)
    return env


def filled(channels_last: bool) -> ScratchDQN:
    """A model whose buffer holds 60 transitions of random actions (the same for every layout), before any update."""
    model = ScratchDQN("CnnPolicy", image_env(), policy_kwargs=dict(channels_last=channels_last), **KWARGS)
    return model.learn(60)


def conv_weights(model: ScratchDQN) -> list[th.Tensor]:
    return [p for net in (model.q_net, model.q_net_target) for p in net.parameters() if p.dim() == 4]


def train(model: ScratchDQN, steps: int) -> ScratchDQN:
    np.random.seed(1)  # the buffer samples with numpy's global generator
    model.train(gradient_steps=steps, batch_size=8)
    return model


def test_channels_last_equals_nchw_to_rounding_and_flat_adam_is_bitwise(monkeypatch):
    nchw, nhwc = filled(False), filled(True)
    weights = conv_weights(nhwc)
    assert len(weights) == 6  # NatureCNN's three convolutions, online and target
    assert all(w.is_contiguous(memory_format=th.channels_last) and not w.is_contiguous() for w in weights)
    assert all(w.is_contiguous() for w in conv_weights(nchw))
    for p, q in zip(nchw.policy.parameters(), nhwc.policy.parameters(), strict=True):
        assert th.equal(p, q)  # same initial values, other layout

    obs = th.as_tensor(nchw.replay_buffer.observations[:16, 0])
    layouts = []  # the first convolution's input: channels-last with the option (converted on the way in)
    for model in (nchw, nhwc):
        conv = model.q_net.features_extractor.cnn[0]
        hook = conv.register_forward_pre_hook(
            lambda _, args: layouts.append(args[0].is_contiguous(memory_format=th.channels_last))
        )
        with th.no_grad():
            model.q_net(obs)
        hook.remove()
    assert layouts == [False, True]
    with th.no_grad():
        q_nchw, q_nhwc = nchw.q_net(obs), nhwc.q_net(obs)
    np.testing.assert_allclose(q_nhwc.numpy(), q_nchw.numpy(), rtol=1e-5, atol=1e-6)

    adam_steps = []
    adam_step = FlatAdam.adam_step
    monkeypatch.setattr(FlatAdam, "adam_step", lambda self: (adam_steps.append(1), adam_step(self))[1])
    train(nchw, 10)
    train(nhwc, 10)
    assert len(adam_steps) == 20
    assert all(w.is_contiguous(memory_format=th.channels_last) for w in conv_weights(nhwc))
    flat = nhwc._fast_update
    assert all(p.untyped_storage().data_ptr() == flat.flat_params.untyped_storage().data_ptr() for p in flat.params)
    moved = 0.0
    initial = filled(False).q_net.parameters()
    for p, q, p0 in zip(nchw.q_net.parameters(), nhwc.q_net.parameters(), initial, strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-6)
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-4  # (the 10 steps changed the weights by far more than the tolerance)

    # the flat-buffer Adam on channels-last parameters is bitwise torch's fused Adam on them (channels_last runs
    # Adam by the fused kernel)
    assert nhwc._fast_update.fused_kernel and not nchw._fast_update.fused_kernel
    monkeypatch.setattr(fast_update, "ENABLED", False)
    reference = ScratchDQN(
        "CnnPolicy",
        image_env(),
        policy_kwargs=dict(channels_last=True, optimizer_kwargs=dict(fused=True)),
        **KWARGS,
    ).learn(60)
    train(reference, 10)
    for p, q in zip(reference.policy.parameters(), nhwc.policy.parameters(), strict=True):
        assert th.equal(p, q)


def test_channels_last_is_kept_by_save_and_load(tmp_path):
    model = filled(True).learn(40)
    model.save(tmp_path / "m.zip")
    loaded = ScratchDQN.load(tmp_path / "m.zip", env=image_env())
    assert loaded.policy.q_net.channels_last and loaded.policy_kwargs["channels_last"]
    assert all(w.is_contiguous(memory_format=th.channels_last) for w in conv_weights(loaded))
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(p, q)
    obs = model.replay_buffer.observations[:5, 0]
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_channels_last_with_dict_observations():
    env = SimpleMultiObsEnv(random_start=False)
    assert isinstance(env.observation_space, spaces.Dict)
    models = [
        ScratchDQN("MultiInputPolicy", env, policy_kwargs=dict(channels_last=cl), **KWARGS) for cl in (False, True)
    ]
    space = models[0].observation_space  # (the image transposed to channels-first by SB3's VecTransposeImage)
    obs = {key: th.as_tensor(np.stack([sub.sample() for _ in range(4)])) for key, sub in space.items()}
    with th.no_grad():
        a, b = (m.q_net(obs) for m in models)
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    models[1].learn(100)  # trains with the flat Adam on the mixed-layout parameters


@pytest.mark.parametrize("value", [1, "yes", None])
def test_channels_last_must_be_a_bool(value):
    with pytest.raises(ScratchDQNError, match="channels_last"):
        ScratchDQN("CnnPolicy", image_env(), policy_kwargs=dict(channels_last=value), **KWARGS)


def test_parameters_to_vector_and_back_keep_sb3s_order_and_the_layout():
    nchw, nhwc = filled(False), filled(True)
    for a, b in ((nchw.policy, nhwc.policy), (nchw.q_net, nhwc.q_net)):
        vector = a.parameters_to_vector()
        np.testing.assert_array_equal(b.parameters_to_vector(), vector)  # same values, same (logical) order
        rng = np.random.default_rng(0)
        new = rng.normal(size=vector.shape).astype(np.float32)
        a.load_from_vector(new)
        b.load_from_vector(new)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert th.equal(p, q)
        np.testing.assert_array_equal(b.parameters_to_vector(), new)
    assert all(w.is_contiguous(memory_format=th.channels_last) for w in conv_weights(nhwc))


def test_only_4d_tensors_change_layout():
    module = th.nn.Sequential(th.nn.Conv3d(2, 3, 2), th.nn.Conv2d(2, 3, 2), th.nn.Linear(4, 2))
    _to_channels_last(module)
    conv3d, conv2d, linear = module
    assert conv3d.weight.is_contiguous()  # (5-D: untouched; channels_last would raise on it)
    assert conv2d.weight.is_contiguous(memory_format=th.channels_last) and not conv2d.weight.is_contiguous()
    assert linear.weight.is_contiguous()


def test_flat_adam_takes_any_dense_layout_and_refuses_gaps():
    def module_with(weight: th.Tensor) -> th.nn.Module:
        module = th.nn.Linear(4, 3)
        module.weight = th.nn.Parameter(weight)
        return module

    transposed = th.randn(4, 3).t()  # shape (3, 4), strides (1, 3): dense, not contiguous
    module = module_with(transposed.clone(memory_format=th.preserve_format))
    flat = FlatAdam.for_network(module, th.optim.Adam(module.parameters(), lr=1e-3, foreach=True))
    assert flat is not None
    assert module.weight.stride() == (1, 3) and th.equal(module.weight, transposed)
    assert module.weight.untyped_storage().data_ptr() == flat.flat_params.untyped_storage().data_ptr()
    gappy = th.randn(3, 8)[:, :4]  # every other block of 4 skipped: no flat slice holds it
    module = module_with(gappy)
    assert FlatAdam.for_network(module, th.optim.Adam(module.parameters(), lr=1e-3, foreach=True)) is None


def test_channels_last_without_convolutions_keeps_adams_bits():
    kwargs = dict(learning_starts=50, train_freq=4, target_update_interval=30, batch_size=16, seed=0)
    models = [
        ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(channels_last=flag), **kwargs).learn(200)
        for flag in (False, True)
    ]
    assert not models[1]._fast_update.fused_kernel
    for p, q in zip(models[0].policy.parameters(), models[1].policy.parameters(), strict=True):
        assert th.equal(p, q)
