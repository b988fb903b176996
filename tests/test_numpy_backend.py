"""
``ScratchDQN(mlp_backend="numpy")``: the plain MLP's gradient step, TD targets and rollout actions in NumPy. Same
mathematics as the PyTorch path (which is bitwise SB3's DQN), other kernels: pinned here against the PyTorch step
within float32 rounding, against Q* on a small MDP, deterministic for a seed, and handing back to PyTorch wherever it
does not apply.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import threadpoolctl
import torch as th
from envs import ChainMDP, make_chain
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import FakeImageEnv
from test_dqn_core import CHAIN_Q_STAR_KWARGS, CHAIN_Q_STAR_STEPS, CHAIN_Q_STAR_TOLERANCE
from torch import nn

import sb3_dqn_ext.fast_update as fast_update
from sb3_dqn_ext import PrioritizedReplayBuffer, ScratchDQN
from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.fast_update import FlatAdam, FlatMLPAdam, NumpyC51Adam, NumpyMLP, NumpyMLPAdam
from sb3_dqn_ext.policies import DQNPolicy

COMMON = dict(learning_starts=64, train_freq=8, target_update_interval=40, batch_size=32, seed=3)


def _pair(activation: type[nn.Module], net_arch: list[int]) -> tuple[FlatMLPAdam, NumpyMLPAdam]:
    """The PyTorch step and the NumPy step on two copies of the same network and optimizer."""
    steps = []
    for backend, step_class in (("torch", FlatMLPAdam), ("numpy", NumpyMLPAdam)):
        model = ScratchDQN(
            "MlpPolicy",
            "CartPole-v1",
            mlp_backend=backend,
            learning_rate=3e-3,
            policy_kwargs=dict(net_arch=net_arch, activation_fn=activation),
            seed=0,
        )
        step = step_class.for_network(model.q_net, model.policy.optimizer)
        assert type(step) is step_class and step.ready() and step.mlp_ready()
        steps.append(step)
    return steps[0], steps[1]


@pytest.fixture(params=[True, False], ids=["fused-adam-kernel", "numpy-adam"])
def adam_kernel(request, monkeypatch):
    """Adam by PyTorch's fused CPU kernel (the default where this PyTorch has one) and by the NumPy sequence."""
    if request.param and not fast_update._fused_adam_cpu():
        pytest.skip("this PyTorch has no fused Adam kernel for CPU tensors")
    monkeypatch.setattr(fast_update, "_FUSED_ADAM_CPU", request.param)
    return request.param


def test_the_fused_adam_kernel_is_found_on_this_pytorch():
    assert fast_update._FUSED_ADAM_CPU is (tuple(int(x) for x in th.__version__.split(".")[:2]) >= (2, 4))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.Sigmoid])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_grad_norm", [10.0, 0.05])  # 0.05: the clipping scales every step
def test_numpy_step_is_the_torch_step_within_float32_rounding(activation, weighted, max_grad_norm, adam_kernel):
    torch_step, numpy_step = _pair(activation, [32, 16])
    rng = np.random.default_rng(0)
    for _ in range(25):
        obs = th.as_tensor(rng.normal(size=(32, 4)), dtype=th.float32)
        actions = th.as_tensor(rng.integers(2, size=(32, 1)))
        td_target = th.as_tensor(rng.normal(scale=2.0, size=(32, 1)), dtype=th.float32)  # |δ| on both sides of 1
        weights = th.as_tensor(rng.uniform(0.1, 1.0, size=32), dtype=th.float32) if weighted else None
        loss_t, q_t = torch_step.step(torch_step.q_net._features(obs), actions, td_target, max_grad_norm, weights)
        loss_n, q_n = numpy_step.step(obs, actions, td_target, max_grad_norm, weights)
        assert float(loss_n) == pytest.approx(float(loss_t), rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(q_n.numpy(), q_t.numpy(), rtol=1e-5, atol=1e-6)
    for p, q in zip(torch_step.q_net.parameters(), numpy_step.q_net.parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-5)
        assert not th.equal(p, q.new_zeros(q.shape))
    # Adam's state is torch.optim.Adam's, as its own step leaves it: 25 steps, the same moments
    for p, q in zip(torch_step.params, numpy_step.params, strict=True):
        state_t, state_n = torch_step.optimizer.state[p], numpy_step.optimizer.state[q]
        assert float(state_n["step"]) == float(state_t["step"]) == 25.0
        np.testing.assert_allclose(state_n["exp_avg"].numpy(), state_t["exp_avg"].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state_n["exp_avg_sq"].numpy(), state_t["exp_avg_sq"].numpy(), rtol=1e-4, atol=1e-9)


def test_numpy_step_loss_and_adam_by_hand(adam_kernel):
    """One step on a 1-layer network, computed by hand: Huber loss, its gradient, and Adam's first update."""
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=dict(net_arch=[]), seed=0)
    step = NumpyMLPAdam.for_network(model.q_net, model.policy.optimizer)
    assert step is not None and step.ready()
    layer = model.q_net.q_net[0]
    w, b = layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()
    obs = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    actions = np.array([0, 1])
    q = obs @ w.T + b
    td_target = np.array([q[0, 0] + 0.5, q[1, 1] - 3.0], dtype=np.float32)  # δ = −0.5 (quadratic), +3 (linear)
    loss, q_values = step.step(
        th.as_tensor(obs), th.as_tensor(actions).reshape(-1, 1), th.as_tensor(td_target).reshape(-1, 1), 10.0
    )
    assert float(loss) == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2, rel=1e-6)
    np.testing.assert_allclose(q_values.numpy().reshape(-1), [q[0, 0], q[1, 1]], rtol=1e-6)
    # ∂L/∂Q = clip(δ, −1, 1) / n: −0.25 for sample 0 (action 0), +0.5 for sample 1 (action 1)
    grad_w = np.zeros_like(w)
    grad_w[0] = -0.25 * obs[0]
    grad_w[1] = 0.5 * obs[1]
    grad_b = np.array([-0.25, 0.5], dtype=np.float32)
    # Adam's first step: m̂ = g, v̂ = g², θ ← θ − lr · g / (|g| + ε)
    lr, eps = model.policy.optimizer.param_groups[0]["lr"], 1e-8
    np.testing.assert_allclose(layer.weight.detach().numpy(), w - lr * grad_w / (np.abs(grad_w) + eps), atol=1e-7)
    np.testing.assert_allclose(layer.bias.detach().numpy(), b - lr * grad_b / (np.abs(grad_b) + eps), atol=1e-7)


@pytest.mark.parametrize("n_steps", [1, 3])
def test_numpy_td_target_is_the_torch_one(n_steps):
    """y = r + γ^n (1 − done) Q_target(s', a*), with a* from the target network or (double_q) the online one."""
    models = {
        backend: ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend=backend, n_steps=n_steps, **COMMON)
        for backend in ("torch", "numpy")
    }
    for model in models.values():
        model.learn(300)  # (the same transitions in both buffers, nearly the same networks)
    models["numpy"].policy.load_state_dict(models["torch"].policy.state_dict())
    for model in models.values():
        with th.no_grad():  # a target network different from the online one
            for p in model.q_net_target.parameters():
                p.mul_(1.1)
    data = models["torch"].replay_buffer.sample(64)
    for double_q in (False, True):
        for model in models.values():
            model.double_q = double_q
        assert models["numpy"]._numpy_target_mlps() is not None and models["torch"]._numpy_target_mlps() is None
        expected, got = models["torch"]._td_target(data), models["numpy"]._td_target(data)
        assert got.dtype == expected.dtype == th.float32 and got.shape == expected.shape == (64, 1)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        terminal = data.dones.numpy() == 1
        assert terminal.any()  # terminal transitions: y = r exactly
        np.testing.assert_array_equal(got.numpy()[terminal], data.rewards.numpy()[terminal])


def test_numpy_forward_follows_replaced_parameters_and_layers():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", seed=1)
    obs = th.randn(8, 4)
    mlp = model._numpy_mlp("q_net")
    model.q_net.q_net[0].weight = nn.Parameter(th.randn_like(model.q_net.q_net[0].weight))
    assert mlp.stale() and not mlp.ready()
    rebuilt = model._numpy_mlp("q_net")
    assert rebuilt is not mlp
    with th.no_grad():
        np.testing.assert_allclose(rebuilt(obs.numpy()), model.q_net(obs).numpy(), rtol=1e-5, atol=1e-6)
    model.q_net.q_net[1] = nn.ELU()  # not a supported activation: PyTorch computes it
    assert model._numpy_mlp("q_net") is None


def _q_values_on_one_hot_states(model, n_states=5):
    with th.no_grad():
        return model.q_net(th.eye(n_states)).numpy()


@pytest.mark.parametrize(
    "step_class, policy_kwargs",
    [("NumpyMLPAdam", None), ("NumpyC51Adam", dict(net_arch=[64, 64], n_atoms=51, v_min=0.0, v_max=2.0))],
    ids=["mlp", "c51"],
)
def test_numpy_backend_learns_q_star_on_the_chain_mdp(step_class, policy_kwargs, monkeypatch):
    calls = []
    cls = getattr(fast_update, step_class)
    step = cls.step
    monkeypatch.setattr(cls, "step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    env = gym.wrappers.FlattenObservation(make_chain(max_episode_steps=10))  # one-hot Box observations
    kwargs = dict(CHAIN_Q_STAR_KWARGS, **({} if policy_kwargs is None else dict(policy_kwargs=policy_kwargs)))
    model = ScratchDQN("MlpPolicy", env, mlp_backend="numpy", **kwargs).learn(CHAIN_Q_STAR_STEPS)
    # every gradient step in NumPy
    assert (
        len(calls)
        == kwargs["gradient_steps"] * (CHAIN_Q_STAR_STEPS - kwargs["learning_starts"]) // kwargs["train_freq"]
    )
    q_star = ChainMDP.optimal_q(gamma=0.9)
    learned = _q_values_on_one_hot_states(model)
    assert np.abs(learned - q_star).max() < CHAIN_Q_STAR_TOLERANCE  # as for the PyTorch path
    assert (learned.argmax(1) == q_star.argmax(1)).all()


def test_numpy_backend_is_deterministic_per_seed_and_differs_from_torch_only_in_low_bits():
    kwargs = dict(COMMON, policy_kwargs=dict(net_arch=[32, 32]))
    runs = [ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend=b, **kwargs).learn(600) for b in ("numpy", "numpy")]
    assert isinstance(runs[0]._fast_update, NumpyMLPAdam)
    for p, q in zip(runs[0].policy.parameters(), runs[1].policy.parameters(), strict=True):
        assert th.equal(p, q)
    torch_run = ScratchDQN("MlpPolicy", "CartPole-v1", **kwargs).learn(600)
    assert torch_run.mlp_backend == "torch" and type(torch_run._fast_update) is FlatMLPAdam
    for p, q in zip(runs[0].policy.parameters(), torch_run.policy.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "args",
    [
        dict(policy_kwargs=dict(dueling=True)),
        dict(policy_kwargs=dict(noisy=True)),
        dict(policy_kwargs=dict(optimizer_class=th.optim.SGD)),
        dict(policy="CnnPolicy", env=FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)),
    ],
    ids=["dueling", "noisy", "sgd", "cnn"],
)
def test_numpy_backend_falls_back_to_torch_where_it_does_not_apply(args):
    args = dict(args)
    policy, env = args.pop("policy", "MlpPolicy"), args.pop("env", "CartPole-v1")
    model = ScratchDQN(policy, env, mlp_backend="numpy", buffer_size=2000, **COMMON, **args).learn(200)
    assert not isinstance(model._fast_update, NumpyMLPAdam)
    # the forward pass (actions, TD targets) does not depend on the optimizer: SGD keeps it in NumPy
    forward_in_numpy = args.get("policy_kwargs", {}).get("optimizer_class") is th.optim.SGD
    assert (model._numpy_mlp("q_net") is not None) == forward_in_numpy
    assert (model._numpy_mlp("q_net_target") is not None) == forward_in_numpy


def test_a_hook_sends_the_numpy_backend_back_to_torch():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", **COMMON).learn(100)
    assert model._numpy_mlp("q_net_target") is not None and model._fast_update.mlp_ready()
    seen = []
    model.q_net.q_net[0].register_forward_hook(lambda module, inputs, output: seen.append(1))
    assert model._numpy_mlp("q_net") is None and not model._fast_update.mlp_ready()
    model.learn(100, reset_num_timesteps=False)
    assert seen  # the hook ran: actions and gradient steps went through the module


def test_invalid_mlp_backend_is_named():
    with pytest.raises(ScratchDQNError, match="mlp_backend"):
        ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="jax")


def test_save_load_and_switching_backend_continue_the_run(tmp_path):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", **COMMON).learn(300)
    n_steps = float(next(iter(model.policy.optimizer.state.values()))["step"])
    model.save(tmp_path / "model.zip")
    loaded = ScratchDQN.load(tmp_path / "model.zip", env=gym.make("CartPole-v1"))
    assert loaded.mlp_backend == "numpy"
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(p, q)
    loaded.learn(80, reset_num_timesteps=False)
    assert isinstance(loaded._fast_update, NumpyMLPAdam)
    # 10 more train() calls of one gradient step: Adam's step count continues from the saved state
    assert float(next(iter(loaded.policy.optimizer.state.values()))["step"]) == n_steps + 10
    loaded.mlp_backend = "torch"
    loaded.learn(80, reset_num_timesteps=False)
    assert type(loaded._fast_update) is FlatMLPAdam
    assert float(next(iter(loaded.policy.optimizer.state.values()))["step"]) == n_steps + 20


class _BlasThreads(BaseCallback):
    def _on_step(self) -> bool:
        self.threads = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
        return True


def test_blas_is_limited_to_one_thread_during_learn_only():
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    callback = _BlasThreads()
    ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", **COMMON).learn(10, callback=callback)
    assert callback.threads <= {1}
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before


def test_flat_adam_still_used_with_numpy_backend_for_other_heads():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=dict(dueling=True), **COMMON)
    model.learn(200)
    assert type(model._fast_update) is FlatAdam


def test_numpy_predict_is_policy_predict():
    """Greedy actions, their shapes and dtype, and SB3's error for a wrong shape, as ``policy.predict`` gives them."""
    from stable_baselines3.common.env_util import make_vec_env

    model = ScratchDQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), mlp_backend="numpy", seed=0)
    assert model._numpy_mlp("q_net") is not None
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(256, 4)).astype(np.float32)
    expected, _ = model.policy.predict(batch, deterministic=True)
    got, state = model.predict(batch, deterministic=True)
    assert state is None and got.dtype == expected.dtype and got.shape == expected.shape == (256,)
    np.testing.assert_array_equal(got, expected)
    single = batch[0].astype(np.float64)  # (another dtype: converted as SB3 converts it)
    expected, _ = model.policy.predict(single, deterministic=True)
    got, _ = model.predict(single, deterministic=True)
    assert got.shape == expected.shape == () and got == expected
    model.policy.set_training_mode(True)
    model.predict(single, deterministic=True)
    assert not model.policy.training  # (as policy.predict leaves it)
    with pytest.raises(ValueError, match="Error: Unexpected observation shape"):
        model.predict(np.zeros((3, 5), np.float32), deterministic=True)


# ------------------------------------------------------------------- cases found in review (each failed before its fix)
def test_integer_gamma_with_the_numpy_td_target():
    """``gamma=1`` (an int, accepted by the validation) reaches the NumPy TD target as a Python int."""
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", gamma=1, **COMMON).learn(200)
    assert isinstance(model._fast_update, NumpyMLPAdam)
    data = model.replay_buffer.sample(16)
    with th.no_grad():
        expected = data.rewards + (1 - data.dones) * model.q_net_target(data.next_observations).max(1, keepdim=True)[0]
    np.testing.assert_allclose(model._td_target(data).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


class _AlwaysOne(DQNPolicy):
    def _predict(self, obs, deterministic=True):
        return th.ones(obs.shape[0], dtype=th.long)


def test_predict_goes_through_a_customised_policy():
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    model = ScratchDQN(_AlwaysOne, "CartPole-v1", mlp_backend="numpy", seed=0)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], np.ones(6))
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", seed=0)
    replaced = copy.deepcopy(model.policy.q_net)
    with th.no_grad():
        for p in replaced.parameters():
            p.zero_()
        replaced.q_net[-1].bias.copy_(th.tensor([0.0, 1.0]))
    model.policy.q_net = replaced  # (no longer model.q_net)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], np.ones(6))


def test_predict_after_an_exception_in_train_and_in_a_deep_copy_checks_again():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", double_q=True, **COMMON).learn(100)
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)

    def fail(*args, **kwargs):
        raise RuntimeError("sampling failed")

    model.replay_buffer._sample_batches = fail
    with pytest.raises(RuntimeError, match="sampling failed"):
        model.train(1, 32)
    seen = []
    model.q_net.register_forward_hook(lambda module, inputs, output: seen.append(1))
    model.predict(obs, deterministic=True)
    assert seen  # the hook ran: predict did not reuse the check of the failed train() call
    # a deep copy taken in the middle of a rollout (e.g. by a callback) builds its own NumPy forward passes
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", **COMMON).learn(100)
    model._check_numpy_mlps("q_net")
    snapshot = copy.deepcopy(model)
    with th.no_grad():
        for p in snapshot.q_net.parameters():
            p.zero_()
        snapshot.q_net.q_net[-1].bias.copy_(th.tensor([0.0, 1.0]))
    np.testing.assert_array_equal(snapshot.predict(obs, deterministic=True)[0], np.ones(3))
    assert snapshot._numpy_mlp("q_net")(obs).argmax(1).tolist() == [1, 1, 1]


def test_two_activations_in_a_row_stay_on_pytorch():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", seed=0)
    model.q_net.q_net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Sigmoid(), nn.Linear(8, 2))
    assert NumpyMLP.for_network(model.q_net) is None


def test_a_network_supported_again_returns_to_numpy_and_empty_batches_predict():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", seed=0)
    model.q_net_target.double()
    assert model._numpy_mlp("q_net_target") is None
    model.q_net_target.float()
    assert model._numpy_mlp("q_net_target") is not None
    for dtype in (np.float32, np.float64):
        empty = np.zeros((0, 4), dtype)
        expected = model.policy.predict(empty, deterministic=True)[0]
        got = model.predict(empty, deterministic=True)[0]
        assert got.shape == expected.shape == (0,)


def test_blas_is_not_limited_where_the_numpy_backend_does_not_apply():
    callback = _BlasThreads()
    before = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=dict(dueling=True), **COMMON)
    model.learn(10, callback=callback)
    assert callback.threads == before


# ------------------------------------------------------------------------------------------------ C51 (Rainbow)
RAINBOW_NET = dict(net_arch=[32, 32], noisy=True, dueling=True, n_atoms=51, v_min=0.0, v_max=100.0)
C51_CASES = {
    "rainbow": dict(double_q=True, n_steps=3, replay_buffer_class=PrioritizedReplayBuffer, policy_kwargs=RAINBOW_NET),
    "c51": dict(policy_kwargs=dict(net_arch=[32], n_atoms=11, v_min=0.0, v_max=50.0)),
    "dueling_c51_tanh_double": dict(
        double_q=True, policy_kwargs=dict(net_arch=[16], activation_fn=nn.Tanh, dueling=True, n_atoms=21)
    ),
    "noisy_c51_no_hidden": dict(policy_kwargs=dict(net_arch=[], noisy=True, n_atoms=11, v_min=0.0, v_max=20.0)),
}


def _twin_c51_models(kwargs):
    """A PyTorch-backend model with a filled buffer, and a NumPy-backend twin with the same weights and buffer."""
    common = dict(learning_starts=10_000, buffer_size=5000, batch_size=32, seed=1, **kwargs)
    torch_model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="torch", **common).learn(600)
    numpy_model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", **common).learn(1)
    numpy_model.set_parameters(torch_model.get_parameters())
    numpy_model.replay_buffer = copy.deepcopy(torch_model.replay_buffer)
    return torch_model, numpy_model


@pytest.mark.parametrize("case", list(C51_CASES))
def test_numpy_c51_step_is_the_torch_step_within_float32_rounding(case, monkeypatch):
    torch_model, numpy_model = _twin_c51_models(C51_CASES[case])
    before = [p.detach().clone() for p in numpy_model.policy.parameters()]
    losses = {}
    for name, model in (("torch", torch_model), ("numpy", numpy_model)):
        if name == "numpy":  # (the NumPy model must not compute its loss by autograd)
            monkeypatch.setattr(ScratchDQN, "_categorical_loss", lambda *a, **k: pytest.fail("autograd path"))
        th.manual_seed(5)  # the same noise draws and the same minibatches for both
        np.random.seed(5)
        model._current_progress_remaining = 0.5
        model.train(gradient_steps=6, batch_size=32)
        losses[name] = model.logger.name_to_value["train/loss"]
    assert type(torch_model._fast_update) is FlatAdam
    assert isinstance(numpy_model._fast_update, NumpyC51Adam)
    assert losses["numpy"] == pytest.approx(losses["torch"], rel=1e-5)
    for p, q in zip(torch_model.policy.parameters(), numpy_model.policy.parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
    # (and the step moved the weights: Adam's first steps move each one by up to about the learning rate)
    moved = max(
        float((p.detach() - q).abs().max()) for p, q in zip(numpy_model.policy.parameters(), before, strict=True)
    )
    assert moved > 3 * numpy_model.learning_rate
    if isinstance(torch_model.replay_buffer, PrioritizedReplayBuffer):  # the priorities: H(m, p(s, a)) per sample
        np.testing.assert_allclose(
            numpy_model.replay_buffer.tree._sums[0], torch_model.replay_buffer.tree._sums[0], rtol=1e-5
        )
    # Adam's state stays torch.optim.Adam's: the step counts of both runs agree
    steps = [float(next(iter(m.policy.optimizer.state.values()))["step"]) for m in (torch_model, numpy_model)]
    assert steps[0] == steps[1] == 6


def test_a_hook_or_mean_weights_send_the_numpy_c51_step_back_to_torch():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=RAINBOW_NET, **COMMON).learn(100)
    assert isinstance(model._fast_update, NumpyC51Adam) and model._fast_update.c51_ready()
    assert model._numpy_c51_target() is not None
    with model.q_net.mean_weights():
        assert not model._fast_update.c51_ready()
    seen = []
    model.q_net.advantage_stream[0].register_forward_hook(lambda module, inputs, output: seen.append(1))
    assert not model._fast_update.c51_ready()
    model.learn(100, reset_num_timesteps=False)
    assert seen  # the hook ran: the gradient steps went through the module
    # a replaced target network gets its own NumPy forward pass
    model.q_net_target = copy.deepcopy(model.q_net_target)
    assert model._numpy_c51_target().q_net is model.q_net_target


@pytest.mark.parametrize(
    "policy_kwargs",
    [dict(n_atoms=11, dueling=True, dueling_net_arch=dict(value=[8], advantage=[8])), dict(n_atoms=11, net_arch=[])],
    ids=["two-layer streams", "no hidden layer, no dueling"],
)
def test_numpy_c51_supports_only_what_it_computes(policy_kwargs):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=policy_kwargs, **COMMON)
    model.learn(100)
    supported = policy_kwargs.get("net_arch") == []  # (a single linear layer: the head)
    assert isinstance(model._fast_update, NumpyC51Adam) == supported
    if not supported:
        assert type(model._fast_update) is FlatAdam


def test_numpy_c51_save_load_continue_the_run(tmp_path):
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=RAINBOW_NET, **COMMON)
    model.learn(300)
    n_steps = float(next(iter(model.policy.optimizer.state.values()))["step"])
    model.save(tmp_path / "model.zip")
    loaded = ScratchDQN.load(tmp_path / "model.zip", env=gym.make("CartPole-v1"))
    loaded.learn(80, reset_num_timesteps=False)
    assert isinstance(loaded._fast_update, NumpyC51Adam)
    assert float(next(iter(loaded.policy.optimizer.state.values()))["step"]) == n_steps + 10


@pytest.mark.parametrize("case", ["rainbow", "c51"])
def test_numpy_c51_actions_are_the_networks_greedy_actions(case, monkeypatch):
    policy_kwargs = C51_CASES[case]["policy_kwargs"]
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=policy_kwargs, **COMMON)
    model.learn(200)
    numpy_c51 = model._numpy_c51("q_net")
    obs = np.random.default_rng(0).normal(0, 2, size=(7, 4)).astype(np.float32)
    model.q_net.reset_noise()
    with th.no_grad():
        expected = model.q_net(th.from_numpy(obs)).numpy()  # (noisy: the noise just drawn, as in rollouts)
    np.testing.assert_allclose(numpy_c51.q_values(obs), expected, rtol=1e-5, atol=1e-5)
    # the rollouts' greedy actions come from NumPy: PyTorch's forward pass is never called for them
    monkeypatch.setattr(type(model.q_net), "_predict", lambda *a, **k: pytest.fail("PyTorch action"))
    model.exploration_rate = 0.0
    model.learn(100, reset_num_timesteps=False)


def test_numpy_c51_follows_replaced_noise_buffers_and_a_network_supported_again():
    model = ScratchDQN("MlpPolicy", "CartPole-v1", mlp_backend="numpy", policy_kwargs=RAINBOW_NET, **COMMON).learn(100)
    layer = model.q_net.q_net[0]
    layer.epsilon_in = layer.epsilon_in.clone()  # a new noise buffer: the NumPy views must follow it
    model.learn(100, reset_num_timesteps=False)
    assert isinstance(model._fast_update, NumpyC51Adam) and model._fast_update.c51_ready()
    assert model._fast_update.net.linears[0].eps_in_t is layer.epsilon_in
    # a network the NumPy path does not support, then supports again: checked again, not remembered as unsupported
    relu = model.q_net.q_net[1]
    model.q_net.q_net[1] = nn.ELU()
    assert model._numpy_c51("q_net") is None
    model.q_net.q_net[1] = relu
    assert model._numpy_c51("q_net") is not None
