"""
The autograd-free MLP + Adam step (:mod:`sb3_dqn_ext.fast_update`) computes bitwise what autograd and
``torch.optim.Adam`` compute, takes over only where it applies, and hands back to autograd whenever anything it
does not replay is present (hooks, other optimizers or settings, other heads).
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

import sb3_dqn_ext.fast_update as fast_update
from sb3_dqn_ext import PrioritizedReplayBuffer, ScratchDQN
from sb3_dqn_ext.fast_update import FlatAdam, FlatMLPAdam
from sb3_dqn_ext.policies import DQNPolicy, QNetwork

COMMON = dict(learning_starts=64, train_freq=8, target_update_interval=40, batch_size=32, seed=3)


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the gradient steps taken by the fast path."""
    calls = []
    step = FlatMLPAdam.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(FlatMLPAdam, "step", counted)
    return calls


@pytest.fixture
def flat_adam_calls(monkeypatch):
    """Counts the Adam steps taken on flat buffers after autograd's backward pass."""
    calls = []
    adam_step = FlatAdam.adam_step

    def counted(self):
        calls.append(1)
        return adam_step(self)

    monkeypatch.setattr(FlatAdam, "adam_step", counted)
    return calls


def autograd_run(monkeypatch, *args, steps: int, **kwargs) -> ScratchDQN:
    monkeypatch.setattr(fast_update, "ENABLED", False)
    try:
        return ScratchDQN(*args, **kwargs).learn(steps)
    finally:
        monkeypatch.setattr(fast_update, "ENABLED", True)


def assert_same_training_state(a: ScratchDQN, b: ScratchDQN) -> None:
    for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert th.equal(p, q)
    state_a, state_b = a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict()
    # (our Adam default is foreach=True, which is what SB3's Adam chooses on CUDA; on CPU it leaves it None)
    groups_a, groups_b = ([{**g, "foreach": None} for g in s["param_groups"]] for s in (state_a, state_b))
    assert groups_a == groups_b
    for key, entry in state_a["state"].items():
        for name, value in entry.items():
            assert th.equal(value, state_b["state"][key][name]), name
    # (SB3 logs the float64 mean of the losses' .item(), ScratchDQN the float32 mean of the loss tensors)
    assert a.logger.name_to_value["train/loss"] == pytest.approx(b.logger.name_to_value["train/loss"], rel=1e-6)
    if isinstance(a.replay_buffer, PrioritizedReplayBuffer):  # priorities written back from |δ|, same bits
        leaves = np.arange(a.replay_buffer.buffer_size * a.replay_buffer.n_envs)
        np.testing.assert_array_equal(a.replay_buffer.tree.get(leaves), b.replay_buffer.tree.get(leaves))
        for key in ("train/td_error_mean", "train/is_weight_mean"):
            assert a.logger.name_to_value[key] == b.logger.name_to_value[key]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(policy_kwargs=dict(net_arch=[128, 128]), gradient_steps=3),
        dict(max_grad_norm=0.05),  # clipping active at every step
        dict(policy_kwargs=dict(net_arch=[16, 8], activation_fn=nn.Tanh), tau=0.3),
        dict(policy_kwargs=dict(net_arch=[16], activation_fn=nn.Sigmoid), learning_rate=lambda p: 1e-3 * p),
        dict(learning_rate=lambda p: np.float64(1e-3) * p),  # a schedule returning np.float64 (a float subclass)
        dict(policy_kwargs=dict(net_arch=[]), gamma=0.9),  # a single linear layer
        # widths that are not multiples of 16: each tensor must keep a 64-byte-aligned start in the flat buffers,
        # as MKL rounds differently at other alignments
        dict(policy_kwargs=dict(net_arch=[7, 5], activation_fn=nn.Tanh), train_freq=4),
        dict(policy_kwargs=dict(net_arch=[13, 3]), train_freq=2),
    ],
)
def test_fast_step_is_sb3_dqn_bitwise(kwargs, fast_calls):
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs}).learn(1500)
    theirs = DQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs}).learn(1500)
    assert len(fast_calls) == ours._n_updates > 0
    assert_same_training_state(ours, theirs)


FUSED = dict(optimizer_kwargs=dict(fused=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(policy_kwargs=FUSED),
        dict(policy_kwargs=dict(net_arch=[13, 3], **FUSED), max_grad_norm=0.05, gradient_steps=2),
    ],
)
def test_fast_step_with_fused_adam_is_sb3_dqn_with_fused_adam_bitwise(kwargs, fast_calls):
    # fused=True (low-order bits differ from the default Adam): one fused kernel over the flat buffers computes what
    # torch.optim.Adam(fused=True) computes tensor by tensor in SB3's DQN
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs}).learn(1500)
    theirs = DQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs}).learn(1500)
    assert len(fast_calls) == ours._n_updates > 0
    assert ours.policy.optimizer.param_groups[0]["fused"] is True
    assert_same_training_state(ours, theirs)
    default = ScratchDQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs, "policy_kwargs": {}}).learn(1500)
    assert not all(th.equal(p, q) for p, q in zip(ours.policy.parameters(), default.policy.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(double_q=True, n_steps=3),
        dict(exploration_schedule="exponential", gradient_steps=2, train_freq=16),
        dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(alpha=0.6, beta=0.4)),
        dict(replay_buffer_class=PrioritizedReplayBuffer, n_steps=3, double_q=True, max_grad_norm=0.1),
    ],
)
def test_fast_step_equals_autograd_with_extensions_and_two_envs(kwargs, fast_calls, monkeypatch):
    def env():
        return DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)

    ours = ScratchDQN("MlpPolicy", env(), **{**COMMON, **kwargs}).learn(800)
    assert len(fast_calls) == ours._n_updates > 0
    assert_same_training_state(ours, autograd_run(monkeypatch, "MlpPolicy", env(), steps=800, **{**COMMON, **kwargs}))


def test_parameters_and_state_are_views_of_flat_buffers_and_a_loaded_model_relinks(tmp_path, fast_calls, monkeypatch):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON).learn(400)
    fast = model._fast_update
    assert all(p.untyped_storage().data_ptr() == fast.flat_params.untyped_storage().data_ptr() for p in fast.params)
    model.save(tmp_path / "m.zip")
    model.save_replay_buffer(tmp_path / "b.pkl")

    def resumed(enabled: bool) -> ScratchDQN:
        monkeypatch.setattr(fast_update, "ENABLED", enabled)
        loaded = ScratchDQN.load(tmp_path / "m.zip", env=make_vec_env("CartPole-v1", seed=1))
        loaded.load_replay_buffer(tmp_path / "b.pkl")
        loaded.set_random_seed(7)
        return loaded.learn(400)

    calls = len(fast_calls)
    fast_run = resumed(True)
    assert len(fast_calls) > calls
    # the loaded model's optimizer state (Adam's step and moments from the file) is re-linked to its flat buffers
    assert fast_run._fast_update._state_linked()
    assert_same_training_state(fast_run, resumed(False))


def test_replaced_optimizer_state_and_deep_copy_are_relinked(fast_calls, monkeypatch):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON).learn(300)
    reference = copy.deepcopy(model)  # (env and all) parameters in new storage
    rng = np.random.get_state(), th.get_rng_state()  # the global generators both runs draw from
    monkeypatch.setattr(fast_update, "ENABLED", False)
    reference.learn(300, reset_num_timesteps=False)  # autograd
    monkeypatch.setattr(fast_update, "ENABLED", True)
    np.random.set_state(rng[0])
    th.set_rng_state(rng[1])
    # replace the optimizer state with an equal copy (as optimizer.load_state_dict does)
    model.policy.optimizer.load_state_dict(copy.deepcopy(model.policy.optimizer.state_dict()))
    calls_before = len(fast_calls)
    model.learn(300, reset_num_timesteps=False)
    assert len(fast_calls) > calls_before
    assert_same_training_state(model, reference)
    copied = copy.deepcopy(model)
    copied.learn(100, reset_num_timesteps=False)
    assert copied._fast_update is not model._fast_update and copied._fast_update.q_net is copied.q_net


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(policy_kwargs=dict(optimizer_class=RMSpropTFLike)),
        dict(policy_kwargs=dict(optimizer_kwargs=dict(weight_decay=1e-4))),
        dict(policy_kwargs=dict(optimizer_kwargs=dict(amsgrad=True))),
        dict(policy_kwargs=dict(optimizer_kwargs=dict(foreach=False))),
        dict(policy_kwargs=dict(dueling=True)),
        dict(policy_kwargs=dict(noisy=True)),
        dict(policy_kwargs=dict(n_atoms=11, v_min=0.0, v_max=10.0)),
        dict(policy_kwargs=dict(activation_fn=nn.LeakyReLU)),
    ],
)
def test_autograd_path_where_the_fast_step_does_not_apply(kwargs, fast_calls):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON, **kwargs).learn(300)
    assert model._n_updates > 0 and fast_calls == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(policy_kwargs=dict(dueling=True)),
        dict(policy_kwargs=dict(noisy=True), max_grad_norm=0.05),  # clipping active at every step
        dict(policy_kwargs=dict(n_atoms=11, v_min=0.0, v_max=10.0)),
        dict(policy_kwargs=dict(activation_fn=nn.LeakyReLU, net_arch=[13, 7])),  # odd widths: aligned views
        dict(
            policy_kwargs=dict(dueling=True, noisy=True, n_atoms=11, v_min=0.0, v_max=10.0),
            double_q=True,
            n_steps=3,
            replay_buffer_class=PrioritizedReplayBuffer,
            gradient_steps=2,
        ),
        dict(policy_kwargs=dict(dueling=True, noisy=True, n_atoms=11, v_min=0.0, v_max=10.0, **FUSED)),
    ],
)
def test_flat_adam_after_backward_equals_torch_adam(kwargs, fast_calls, flat_adam_calls, monkeypatch):
    # heads the autograd-free step does not cover: autograd's backward, then clipping and Adam on flat buffers,
    # bitwise what clip_grad_norm_ and torch.optim.Adam compute
    ours = ScratchDQN("MlpPolicy", "CartPole-v1", **{**COMMON, **kwargs}).learn(700)
    assert fast_calls == [] and len(flat_adam_calls) == ours._n_updates > 0
    flat = ours._fast_update
    assert type(flat) is FlatAdam and flat._state_linked()
    # parameters, gradients and Adam's moments are views of the flat buffers
    state = ours.policy.optimizer.state
    for param, grad_view in zip(flat.params, flat._grad_views, strict=True):
        assert param.grad is grad_view
        assert param.untyped_storage().data_ptr() == flat.flat_params.untyped_storage().data_ptr()
        assert state[param]["exp_avg"].untyped_storage().data_ptr() == flat.flat_exp_avg.untyped_storage().data_ptr()
    theirs = autograd_run(monkeypatch, "MlpPolicy", "CartPole-v1", steps=700, **{**COMMON, **kwargs})
    assert_same_training_state(ours, theirs)


def test_flat_adam_adopts_gradients_not_accumulated_into_its_buffer():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(dueling=True), **COMMON).learn(100)
    flat = model._flat_adam()
    assert type(flat) is FlatAdam
    flat.zero_grad()
    first, second = flat.params[0], flat.params[1]
    first.grad = th.full_like(first, 0.5)  # a tensor of its own, as backward stores into a grad set to None
    second.grad = None
    flat.clip_grad_norm(1e9)  # (no clipping at this norm)
    assert first.grad is flat._grad_views[0] and second.grad is flat._grad_views[1]
    assert th.equal(first.grad, th.full_like(first, 0.5)) and not second.grad.any()
    offset = flat._offsets[0]
    assert th.equal(flat.flat_grads[offset : offset + first.numel()], th.full((first.numel(),), 0.5))


@pytest.mark.parametrize(
    "betas, eps, floored",
    [
        ((0.9, 0.999), 1e-8, True),  # Adam's defaults: √v is taken of max(v, 1e-37) from the first step on
        ((0.9, 0.99999), 1e-8, True),
        ((0.5, 1 - 1e-9), 1e-8, False),  # √(1 − β₂ᵗ) so small at first that 1e-37 could show: plain √v
        ((0.9, 0.999), 1e-30, False),  # an ε whose half ulp is below √1e-37
    ],
)
def test_flat_adam_with_zero_and_subnormal_second_moments_equals_torch_adam(betas, eps, floored):
    # Adam's v holds exact zeros (dead units), subnormals and values around the 1e-37 floor under the square
    # root: the denominator, hence every parameter, must stay bitwise torch.optim.Adam's at every step
    model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[32]), **COMMON)
    reference = copy.deepcopy(model.q_net)
    params = list(reference.parameters())
    adam = dict(lr=1e-3, betas=betas, eps=eps, foreach=True)
    model.policy.optimizer = th.optim.Adam(model.q_net.parameters(), **adam)
    torch_adam = th.optim.Adam(params, **adam)
    flat = FlatAdam.for_network(model.q_net, model.policy.optimizer)
    assert flat is not None and flat.ready()
    returned = []  # what each step's square root returned
    original = flat._sqrt

    def sqrt(v, bias_correction2_sqrt, eps):
        root = original(v, bias_correction2_sqrt, eps)
        returned.append(root)
        # Adam's denominator √v / √(1 − β₂ᵗ) + ε, as torch.optim.Adam computes it, bitwise (the parameters alone
        # would not show a changed denominator where m is tiny or 0)
        expected = v.sqrt().div_(bias_correction2_sqrt).add_(eps)
        assert th.equal(root.div(bias_correction2_sqrt).add_(eps).view(th.int32), expected.view(th.int32))
        return root

    flat._sqrt = sqrt
    generator = th.Generator().manual_seed(0)
    # fixed positions get the same tiny gradient at every step, so that v = (1 − β₂ᵗ) g² stays an exact 0, a
    # subnormal, or a value around the floor; the others a random gradient, a fifth of it exactly 0
    squares = th.tensor([0.0, 1e-45, 1e-42, 1e-40, 1e-38, 1e-37, 1e-36, 1e-35, 1e-34, 1e-32, 1e-30, 1e-28, 1e-26])
    fixed = [th.rand(p.shape, generator=generator) < 0.3 for p in params]
    values = [squares.sqrt()[th.randint(len(squares), p.shape, generator=generator)] for p in params]
    for step in range(12):
        grads = []
        for param, where, value in zip(params, fixed, values, strict=True):
            grad = th.randn(param.shape, generator=generator) * 1e-3
            grad[th.rand(param.shape, generator=generator) < 0.2] = 0.0
            grads.append(th.where(where, value, grad))
        torch_adam.zero_grad()
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        torch_adam.step()
        flat.zero_grad()
        for view, grad in zip(flat._grad_views, grads, strict=True):
            view.copy_(grad)
        flat.adam_step()
        for ours, theirs in zip(model.q_net.parameters(), params, strict=True):
            assert th.equal(ours.view(th.int32), theirs.view(th.int32)), f"step {step + 1}"
    v = flat.flat_exp_avg_sq
    assert (v == 0).any() and ((v > 0) & (v < 1.1754944e-38)).any() and ((v > 1e-38) & (v < 1e-36)).any()
    assert all((r is flat._sqrt_buffer) is floored for r in returned)


def test_cnn_policy_with_flat_adam_is_sb3_dqn_bitwise(flat_adam_calls):
    def env():
        image_env = FakeImageEnv(screen_height=36, screen_width=36, discrete=True)
        image_env.observation_space.seed(0)  # (its observations are draws from the space)
        return image_env

    kwargs = dict(learning_starts=20, buffer_size=200, batch_size=8, train_freq=4, target_update_interval=30, seed=0)
    ours = ScratchDQN("CnnPolicy", env(), **kwargs).learn(100)
    theirs = DQN("CnnPolicy", env(), **kwargs).learn(100)
    assert len(flat_adam_calls) == ours._n_updates > 0
    assert_same_training_state(ours, theirs)


@pytest.mark.parametrize("hook", ["module", "parameter", "optimizer", "global_optimizer"])
def test_hooks_send_the_step_back_to_autograd(hook, fast_calls):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON).learn(200)
    assert fast_calls
    seen = []
    if hook == "module":
        handle = model.q_net.q_net[0].register_forward_hook(lambda m, i, o: seen.append(1))
    elif hook == "parameter":
        handle = model.q_net.q_net[0].weight.register_hook(lambda g: seen.append(1))
    elif hook == "optimizer":
        handle = model.policy.optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(1))
    else:
        handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(1))
    calls = len(fast_calls)
    updates = model._n_updates
    try:
        model.learn(200, reset_num_timesteps=False)
    finally:
        handle.remove()
    assert len(fast_calls) == calls and model._n_updates > updates and seen


def test_autograd_path_on_another_dtype():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON)
    model.policy.double()
    assert FlatMLPAdam.for_network(model.q_net, model.policy.optimizer) is None


def test_loss_is_the_huber_loss_by_hand():
    delta = np.array([0.5, -2.0, 0.0, 3.0, -0.25])
    huber = np.where(np.abs(delta) < 1, 0.5 * delta**2, np.abs(delta) - 0.5)
    weights = np.array([1.0, 0.5, 0.25, 0.1, 2.0])
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(5, 4)), dtype=th.float32)
    actions = th.tensor([[0], [1], [1], [0], [1]])
    for w, expected in ((None, huber.mean()), (weights, (weights * huber).mean())):
        model = ScratchDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0)
        fast = FlatMLPAdam.for_network(model.q_net, model.policy.optimizer)
        assert fast is not None and fast.ready()
        with th.no_grad():
            q = model.q_net(obs).gather(1, actions)
        target = q + th.as_tensor(delta, dtype=th.float32).reshape(-1, 1)
        w_tensor = None if w is None else th.as_tensor(w, dtype=th.float32)
        loss, q_out = fast.step(obs, actions, target, 10.0, w_tensor)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert th.equal(q_out, q)  # Q(s, a) before the step
        with th.no_grad():
            assert not th.equal(model.q_net(obs).gather(1, actions), q)  # the step moved the weights


class HalvedQNetwork(QNetwork):
    def forward(self, obs):
        return 0.5 * super().forward(obs)


class HalvedPolicy(DQNPolicy):
    def make_q_net(self) -> QNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return HalvedQNetwork(**net_args).to(self.device)


def test_q_network_subclass_goes_through_autograd(fast_calls):
    model = ScratchDQN(HalvedPolicy, "CartPole-v1", **COMMON).learn(300)
    assert model._n_updates > 0 and fast_calls == []


def _frozen_first_layer(model):
    model.q_net.q_net[0].requires_grad_(False)


def _parametrized_second_layer(model):
    parametrize.register_parametrization(model.q_net.q_net[2], "weight", Doubled())


def _hook_on_q_network(model):
    model.q_net.register_forward_hook(lambda module, inputs, output: output * 2.0)


def _replaced_parameter(model):
    layer = model.q_net.q_net[0]
    layer.weight = nn.Parameter(layer.weight.detach().clone() * 0.5)


class Doubled(nn.Module):
    def forward(self, weight):
        return 2.0 * weight


@pytest.mark.parametrize(
    "change", [_frozen_first_layer, _parametrized_second_layer, _hook_on_q_network, _replaced_parameter]
)
def test_changes_between_learn_calls_send_the_step_to_autograd(change, fast_calls, monkeypatch):
    """Whatever changes between two learn() calls, the second call computes what autograd computes."""
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(fast_update, "ENABLED", enabled)
        model = ScratchDQN("MlpPolicy", "CartPole-v1", **COMMON).learn(300)
        change(model)
        frozen = model.q_net.q_net[0].weight.detach().clone()
        calls = len(fast_calls)
        model.learn(300, reset_num_timesteps=False)
        if enabled:
            assert len(fast_calls) == calls  # the fast step did not run after the change
        runs.append(model)
        if change is _frozen_first_layer:
            assert th.equal(model.q_net.q_net[0].weight, frozen)
    fast, autograd = runs
    for p, q in zip(fast.policy.parameters(), autograd.policy.parameters(), strict=True):
        assert th.equal(p, q)
