"""benchmarks/numpy_rainbow.py: the hand-written NumPy Rainbow step against autograd on the same weights and noise."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from numpy_rainbow import NumpyRainbowStep  # noqa: E402

OBS, ARCH, ACTIONS, ATOMS, V_MIN, V_MAX, GAMMA_N = 4, [16, 8], 3, 11, -5.0, 5.0, 0.9


def make_step(max_grad_norm: float) -> tuple[NumpyRainbowStep, np.ndarray, np.ndarray]:
    step = NumpyRainbowStep(OBS, ARCH, ACTIONS, ATOMS, V_MIN, V_MAX, GAMMA_N, 1e-3, max_grad_norm, seed=3)
    rng = np.random.default_rng(7)
    # a target network that differs from the online one
    step.target_theta += rng.normal(0, 0.05, step.target_theta.shape).astype(np.float32)
    eps = rng.standard_normal((2, step.noise_size)).astype(np.float32)
    eps = np.copysign(np.sqrt(np.abs(eps)), eps)
    step.set_noise(eps[0], eps[1])
    return step, eps[0], eps[1]


def batch() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(11)
    n = 6
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    next_obs = rng.normal(size=(n, OBS)).astype(np.float32)
    actions = np.array([0, 2, 1, 1, 0, 2])
    # a terminal reward on an atom (l = u), one clipped above v_max, one below v_min, others in between
    rewards = np.array([1.0, 7.0, -9.0, 0.3, -0.45, 2.2], dtype=np.float32)
    dones = np.array([1, 0, 0, 0, 1, 0], dtype=np.float32)
    weights = rng.uniform(0.2, 1.0, n).astype(np.float32)
    return obs, actions, rewards, next_obs, dones, weights


def torch_network(step: NumpyRainbowStep, flat: np.ndarray, eps: np.ndarray, grad: bool):
    """Per-layer (μ_w, σ_w, μ_b, σ_b, ε_in, ε_out) as torch tensors, the heads as two separate layers."""
    layers = step._views(flat.copy())
    parts = np.split(eps, step.noise_splits)
    out = []
    for k, (w_mu, w_sigma, b_mu, b_sigma) in enumerate(layers[:-1]):
        out.append([th.tensor(a, requires_grad=grad) for a in (w_mu, w_sigma, b_mu, b_sigma)])
        out[-1] += [th.tensor(parts[2 * k]), th.tensor(parts[2 * k + 1])]
    w_mu, w_sigma, b_mu, b_sigma = layers[-1]
    value_noise, advantage_noise = (parts[-4], parts[-2]), (parts[-3], parts[-1])  # ε_in, ε_in, ε_out, ε_out
    for rows, (e_in, e_out) in ((slice(0, ATOMS), value_noise), (slice(ATOMS, None), advantage_noise)):
        out.append([th.tensor(a[rows], requires_grad=grad) for a in (w_mu, w_sigma, b_mu, b_sigma)])
        out[-1] += [th.tensor(e_in), th.tensor(e_out)]
    return out


def torch_logits(layers, x: th.Tensor) -> th.Tensor:
    def noisy(layer, h):
        w_mu, w_sigma, b_mu, b_sigma, e_in, e_out = layer
        return th.nn.functional.linear(h, w_mu + w_sigma * th.outer(e_out, e_in), b_mu + b_sigma * e_out)

    h = x
    for layer in layers[:-2]:
        h = noisy(layer, h).relu()
    value = noisy(layers[-2], h).view(-1, 1, ATOMS)
    advantage = noisy(layers[-1], h).view(-1, ACTIONS, ATOMS)
    return value + advantage - advantage.mean(1, keepdim=True)


def projection_by_hand(next_probs: np.ndarray, rewards, dones) -> np.ndarray:
    """C51's projection, one atom at a time."""
    support = np.linspace(V_MIN, V_MAX, ATOMS)
    dz = (V_MAX - V_MIN) / (ATOMS - 1)
    m = np.zeros_like(next_probs, dtype=np.float64)
    for i in range(len(rewards)):
        for j in range(ATOMS):
            tz = min(max(rewards[i] + (1 - dones[i]) * GAMMA_N * support[j], V_MIN), V_MAX)
            b = (tz - V_MIN) / dz
            lo, up = int(np.floor(b)), int(np.ceil(b))
            if lo == up:
                m[i, lo] += next_probs[i, j]
            else:
                m[i, lo] += next_probs[i, j] * (up - b)
                m[i, up] += next_probs[i, j] * (b - lo)
    return m


def reference(step: NumpyRainbowStep, eps: np.ndarray, target_eps: np.ndarray):
    """Loss, priorities and flat gradient (the NumPy layout) by autograd, the projection by hand."""
    obs, actions, rewards, next_obs, dones, weights = batch()
    online = torch_network(step, step.theta, eps, grad=True)
    target = torch_network(step, step.target_theta, target_eps, grad=False)
    support = th.linspace(V_MIN, V_MAX, ATOMS)
    rows = th.arange(len(obs))
    with th.no_grad():
        next_q = (torch_logits(online, th.tensor(next_obs)).softmax(-1) * support).sum(-1)
        next_probs = torch_logits(target, th.tensor(next_obs)).softmax(-1)[rows, next_q.argmax(1)]
    m = th.tensor(projection_by_hand(next_probs.double().numpy(), rewards, dones), dtype=th.float32)
    log_p = torch_logits(online, th.tensor(obs)).log_softmax(-1)[rows, th.tensor(actions)]
    per_sample = -(m * log_p).sum(-1)
    loss = (th.tensor(weights) * per_sample).mean()
    loss.backward()
    # back to the NumPy layout: per layer w_mu, w_sigma, b_mu, b_sigma, the heads stacked
    grads = []
    for layer in online[:-2]:
        grads += [p.grad.numpy().ravel() for p in layer[:4]]
    for k in range(4):
        grads.append(np.concatenate((online[-2][k].grad.numpy(), online[-1][k].grad.numpy())).ravel())
    return loss.item(), per_sample.detach().numpy(), np.concatenate(grads)


def test_loss_priorities_and_gradients_match_autograd():
    step, eps, target_eps = make_step(max_grad_norm=1e9)
    loss, priorities, grad = reference(step, eps, target_eps)
    got_loss, got_priorities = step.step(*batch(), draw_noise=False)
    assert got_loss == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(got_priorities, priorities, rtol=1e-5)
    np.testing.assert_allclose(step.grad, grad, rtol=1e-4, atol=1e-7)
    assert np.abs(grad).max() > 1e-3  # (every layer gets gradient: nothing vanished by construction)


def test_clipping_and_first_adam_step():
    step, eps, target_eps = make_step(max_grad_norm=0.05)
    _, _, grad = reference(step, eps, target_eps)
    assert np.linalg.norm(grad) > 0.05
    theta = step.theta.copy()
    step.step(*batch(), draw_noise=False)
    clipped = grad * 0.05 / (np.linalg.norm(grad) + 1e-6)
    np.testing.assert_allclose(step.grad, clipped, rtol=1e-4, atol=1e-8)
    # Adam's first step: m̂ = g, v̂ = g², so θ ← θ − lr g / (|g| + ε)
    np.testing.assert_allclose(step.theta, theta - 1e-3 * clipped / (np.abs(clipped) + 1e-8), rtol=1e-5, atol=1e-7)


def test_noise_is_redrawn_and_the_target_update_copies():
    step, _, _ = make_step(max_grad_norm=10.0)
    step.step(*batch(), draw_noise=False)
    before = [n.copy() for net in step.noise for n in net]
    step.step(*batch())
    after = [n for net in step.noise for n in net]
    assert not any(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    # a factorised noise matrix f(ε_out) f(ε_in)ᵀ is rank one, the two networks' noise differs
    assert np.linalg.matrix_rank(step.noise[0][0]) == 1
    assert not np.array_equal(step.noise[0][0], step.noise[1][0])
    # f(ε) = sign(ε) √|ε| of standard normal draws: E[f(ε)²] = E|ε| = √(2/π)
    assert np.mean(step.eps**2) == pytest.approx(np.sqrt(2 / np.pi), abs=0.05)
    assert not np.array_equal(step.target_theta, step.theta)
    step.update_target()
    np.testing.assert_array_equal(step.target_theta, step.theta)


def test_action_is_the_noisy_networks_greedy_action():
    step, eps, _ = make_step(max_grad_norm=10.0)
    online = torch_network(step, step.theta, eps, grad=False)
    support = th.linspace(V_MIN, V_MAX, ATOMS)
    observations = np.random.default_rng(5).normal(0, 3, size=(40, OBS)).astype(np.float32)
    with th.no_grad():
        q = (torch_logits(online, th.tensor(observations)).softmax(-1) * support).sum(-1)
    expected = q.argmax(1).numpy()
    assert len(set(expected)) > 1  # (the observations tell the actions apart)
    assert [step.act(o, draw_noise=False) for o in observations] == list(expected)
    # fresh noise (the step's own generator, seeded) changes the network: some greedy actions change with it
    assert [step.act(o) for o in observations] != list(expected)
