"""
A bare Rainbow gradient step written by hand in NumPy: a floor for configuration 4 of ``throughput.py``.

It computes what ``throughput.rainbow_floor``'s eager PyTorch step computes (and ScratchDQN's Rainbow update, less
the replay buffer), without autograd, for an MLP of factorised-noise layers with ReLU, dueling C51 heads:

1. noise ``f(ε) = sign(ε) √|ε|`` drawn for both networks, the noisy weights ``W = μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ``
   and biases ``b = μ_b + σ_b ⊙ f(ε_out)`` built once per step (the value and advantage heads are stacked into one
   layer of ``n_atoms · (1 + n_actions)`` outputs, each head with its own noise);
2. the online network on the observations and the next observations (one pass over the stacked rows), the target
   network on the next observations; logits ``V + A − mean_a A`` per atom;
3. double Q-learning's next action ``argmax_a Σ_i z_i p_online(s', a, z_i)``, the target distribution
   ``p_target(s', a*)`` projected onto the support: ``Tz = clip(r + γⁿ (1 − done) z, v_min, v_max)``,
   ``b = (Tz − v_min) / Δz``, mass ``p (u − b)`` to ``l = ⌊b⌋`` and ``p (b − l)`` to ``u = ⌈b⌉`` (all of ``p``
   to ``l`` where ``l = u``);
4. the loss ``L = mean_i w_i H(m_i, p(s_i, a_i))`` with importance weights ``w_i``, ``H`` the cross-entropy;
   the new priorities ``H(m_i, p(s_i, a_i))``;
5. the backward pass by hand: ``∂L/∂logits(s_i, a_i) = (w_i / n) (softmax · Σ m_i − m_i)``, through the dueling
   combination (``∂V = g``, ``∂A_a = [a = a_i] g − g / |A|``), the stacked heads and the ReLU layers (two GEMMs
   per layer, none for the input of the first), and the noisy parameters: ``∂μ_w = ∂W``,
   ``∂σ_w = ∂W ⊙ f(ε_out) f(ε_in)ᵀ``, ``∂μ_b = ∂b``, ``∂σ_b = ∂b ⊙ f(ε_out)``;
6. gradient clipping by the global norm (``clip_grad_norm_``'s ``max / (‖g‖ + 1e-6)``, at most 1), and Adam as
   PyTorch's fused CPU kernel (``Adam(fused=True)``'s) over one flat buffer of every parameter.

Every parameter, gradient and moment lives in one flat float32 buffer, so clipping is one dot product and Adam one
kernel call. ``tests/test_numpy_rainbow.py`` checks the loss, priorities and gradients against autograd on the same
weights and noise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch as th
from threadpoolctl import threadpool_limits


class NumpyRainbowStep:
    """
    Online and target noisy dueling C51 MLPs and their Rainbow gradient step in NumPy.

    :param obs_dim: size of an observation
    :param net_arch: widths of the hidden layers (ReLU after each)
    :param n_actions: number of actions
    :param n_atoms: number of support atoms
    :param v_min: lowest support point
    :param v_max: highest support point
    :param gamma_n: discount of the n-step return, ``γⁿ``
    :param learning_rate: Adam's learning rate
    :param max_grad_norm: clipping threshold of the gradients' global norm
    :param std_init: σ₀ of the noisy layers
    :param seed: seed of the initial weights and of the noise
    """

    def __init__(
        self,
        obs_dim: int,
        net_arch: list[int],
        n_actions: int,
        n_atoms: int,
        v_min: float,
        v_max: float,
        gamma_n: float,
        learning_rate: float = 1e-4,
        max_grad_norm: float = 10.0,
        std_init: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.n_actions, self.n_atoms = n_actions, n_atoms
        self.v_min, self.v_max, self.gamma_n = v_min, v_max, gamma_n
        self.delta_z = (v_max - v_min) / (n_atoms - 1)
        self.support = np.linspace(v_min, v_max, n_atoms, dtype=np.float32)
        self.learning_rate, self.max_grad_norm = learning_rate, max_grad_norm
        self.rng = np.random.default_rng(seed)
        ins = [obs_dim, *net_arch]
        # (n_in, n_out) of every layer; the last is the stacked value and advantage heads
        self.dims = [(i, o) for i, o in zip(ins[:-1], net_arch, strict=True)]
        self.dims.append((ins[-1], n_atoms * (1 + n_actions)))
        # each network's noise vector: (ε_in, ε_out) of each hidden layer, then the heads' ε_in (value, advantage)
        # and their ε_out (value, advantage: together the stacked layer's ε_out)
        sizes = [n for i, o in self.dims[:-1] for n in (i, o)]
        sizes += [ins[-1], ins[-1], n_atoms, n_atoms * n_actions]
        self.noise_splits = np.cumsum(sizes)[:-1]
        self.noise_size = int(sum(sizes))
        self.generator = th.Generator().manual_seed(seed)
        self.eps = np.empty(2 * self.noise_size, dtype=np.float32)  # f(ε): the online network's, the target's
        self._eps_t = th.from_numpy(self.eps)
        self._eps_abs = np.empty_like(self.eps)

        # one flat buffer per quantity; per layer: w_mu, w_sigma, b_mu, b_sigma
        n_params = sum(2 * (i * o + o) for i, o in self.dims)
        self.theta = np.empty(n_params, dtype=np.float32)
        self.grad = np.zeros(n_params, dtype=np.float32)
        self.target_theta = np.empty(n_params, dtype=np.float32)
        self.layers = self._views(self.theta)
        self.grads = self._views(self.grad)
        self.target_layers = self._views(self.target_theta)
        for (w_mu, w_sigma, b_mu, b_sigma), (i, _) in zip(self.layers, self.dims, strict=True):
            bound = 1.0 / np.sqrt(i)
            w_mu[...] = self.rng.uniform(-bound, bound, w_mu.shape)
            b_mu[...] = self.rng.uniform(-bound, bound, b_mu.shape)
            w_sigma.fill(std_init * bound)
            b_sigma.fill(std_init * bound)
        self.target_theta[:] = self.theta
        # per network: the noise vectors f(ε_in) of each layer (two for the heads) and f(ε_out), views of self.eps;
        # the noise matrices f(ε_out) f(ε_in)ᵀ and the noisy weights and biases, rebuilt at every step
        self.noise_in: list[list[th.Tensor]] = []
        self.noise_in_np: list[list[np.ndarray]] = []
        self.noise_out: list[list[np.ndarray]] = []
        for net in range(2):
            parts = np.split(self.eps[net * self.noise_size : (net + 1) * self.noise_size], self.noise_splits)
            self.noise_in_np.append([*parts[:-4:2], parts[-4], parts[-3]])
            self.noise_in.append([th.from_numpy(x) for x in self.noise_in_np[-1]])
            head_out = self.eps[(net + 1) * self.noise_size - n_atoms * (1 + n_actions) : (net + 1) * self.noise_size]
            self.noise_out.append([*parts[1:-4:2], head_out])
        self.noise = [[np.empty((o, i), dtype=np.float32) for i, o in self.dims] for _ in range(2)]
        self.weights = [[np.empty((o, i), dtype=np.float32) for i, o in self.dims] for _ in range(2)]
        self.biases = [[np.empty(o, dtype=np.float32) for _, o in self.dims] for _ in range(2)]
        as_tensors = lambda arrays: [[th.from_numpy(x) for x in net] for net in arrays]  # noqa: E731
        self._noise_t, self._weights_t, self._biases_t = map(as_tensors, (self.noise, self.weights, self.biases))
        self._noise_out_t = as_tensors(self.noise_out)
        self._layers_t = [
            [tuple(map(th.from_numpy, layer)) for layer in net] for net in (self.layers, self.target_layers)
        ]
        # Adam's state, as tensors that share the flat buffers
        self._theta_t = [th.from_numpy(self.theta)]
        self._grad_t = [th.from_numpy(self.grad)]
        self._exp_avg = [th.zeros(n_params)]
        self._exp_avg_sq = [th.zeros(n_params)]
        self._steps = [th.zeros(())]
        self.draw_noise()

    def _views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        views, start = [], 0
        for i, o in self.dims:
            parts = []
            for shape in ((o, i), (o, i), (o,), (o,)):
                size = int(np.prod(shape))
                parts.append(flat[start : start + size].reshape(shape))
                start += size
            views.append(tuple(parts))
        return views  # type: ignore[return-value]

    def draw_noise(self) -> None:
        """New factorised noise ``f(ε) = sign(ε) √|ε|`` for both networks, one draw of ``N(0, 1)`` for the two."""
        th.randn(self.eps.shape, generator=self.generator, out=self._eps_t)
        np.sqrt(np.abs(self.eps, out=self._eps_abs), out=self._eps_abs)
        np.copysign(self._eps_abs, self.eps, out=self.eps)

    def set_noise(self, eps: np.ndarray, target_eps: np.ndarray) -> None:
        """Use this noise (``f(ε)`` already applied, one vector of ``noise_size`` per network) for the next step."""
        self.eps[: self.noise_size] = eps
        self.eps[self.noise_size :] = target_eps

    def _build(self, net: int) -> None:
        """
        Network ``net``'s (0: online, 1: target) noise matrices and noisy weights ``μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ``
        and biases ``μ_b + σ_b ⊙ f(ε_out)``, by PyTorch's kernels on the NumPy buffers (NumPy's outer product took
        about three times as long as PyTorch's here).
        """
        noise, eps_in, eps_out = self._noise_t[net], self.noise_in[net], self._noise_out_t[net]
        for k in range(len(self.dims) - 1):
            th.outer(eps_out[k], eps_in[k], out=noise[k])
        n_value = self.n_atoms
        th.outer(eps_out[-1][:n_value], eps_in[-2], out=noise[-1][:n_value])
        th.outer(eps_out[-1][n_value:], eps_in[-1], out=noise[-1][n_value:])
        for (w_mu, w_sigma, b_mu, b_sigma), e, e_out, w, b in zip(
            self._layers_t[net], noise, eps_out, self._weights_t[net], self._biases_t[net], strict=True
        ):
            th.addcmul(w_mu, w_sigma, e, out=w)
            th.addcmul(b_mu, b_sigma, e_out, out=b)

    def _forward(self, x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray]) -> list[np.ndarray]:
        """Every layer's output: the hidden activations, then the logits ``(rows, n_actions, n_atoms)``."""
        outputs = []
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            x = x @ w.T
            x += b
            np.maximum(x, 0, out=x)
            outputs.append(x)
        head = x @ weights[-1].T
        head += biases[-1]
        value = head[:, None, : self.n_atoms]
        advantage = head[:, self.n_atoms :].reshape(len(head), self.n_actions, self.n_atoms)
        logits = advantage - advantage.mean(axis=1, keepdims=True)
        logits += value
        outputs.append(logits)
        return outputs

    @staticmethod
    def _softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return e

    def step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        dones: np.ndarray,
        weights: np.ndarray,
        draw_noise: bool = True,
    ) -> tuple[float, np.ndarray]:
        """
        One gradient step on a minibatch; returns the loss and the new priorities.

        :param obs: observations ``(n, obs_dim)``, float32
        :param actions: actions ``(n,)``, integers
        :param rewards: n-step rewards ``(n,)``, float32
        :param next_obs: next observations ``(n, obs_dim)``, float32
        :param dones: 1.0 where the n-step window ended an episode ``(n,)``, float32
        :param weights: importance weights ``(n,)``, float32
        :param draw_noise: draw new noise for both networks first (else the noise of :meth:`set_noise`)
        """
        if draw_noise:
            self.draw_noise()
        self._build(0)
        self._build(1)
        online, target_logits = self._forwards(obs, next_obs)
        m = self._td_target(online[-1][len(obs) :], target_logits, rewards, dones)
        loss, per_sample = self._loss_and_backward(online, obs, actions, m, weights)
        self._clip_and_adam()
        return loss, np.abs(per_sample)

    def _forwards(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The online network's outputs on the observations and next observations (stacked), the target network's
        logits on the next observations."""
        online = self._forward(np.concatenate((obs, next_obs)), self.weights[0], self.biases[0])
        return online, self._forward(next_obs, self.weights[1], self.biases[1])[-1]

    def _td_target(
        self, next_logits: np.ndarray, target_logits: np.ndarray, rewards: np.ndarray, dones: np.ndarray
    ) -> np.ndarray:
        """The TD target ``m``: double Q-learning's ``a*``, then ``p_target(s', a*)`` projected onto the support."""
        n, k = len(rewards), self.n_atoms
        rows = np.arange(n)
        next_actions = (self._softmax(next_logits) @ self.support).argmax(axis=1)
        next_probs = self._softmax(target_logits[rows, next_actions])
        tz = np.clip(rewards[:, None] + (self.gamma_n * (1.0 - dones))[:, None] * self.support, self.v_min, self.v_max)
        b = (tz - self.v_min) / self.delta_z
        lower, upper = np.floor(b), np.ceil(b)
        offsets = (rows * k)[:, None]
        index = np.concatenate(((offsets + lower).ravel(), (offsets + upper).ravel())).astype(np.intp)
        to_lower = next_probs * (upper - b + (lower == upper))  # (all of p to l where l = u)
        mass = np.concatenate((to_lower.ravel(), (next_probs * (b - lower)).ravel()))
        return np.bincount(index, weights=mass, minlength=n * k).reshape(n, k).astype(np.float32)

    def _loss_and_backward(
        self, online: list[np.ndarray], obs: np.ndarray, actions: np.ndarray, m: np.ndarray, weights: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The importance-weighted cross-entropy of ``m`` against ``p(s, a)``, and its gradient into ``self.grad``."""
        n, k = len(obs), self.n_atoms
        rows = np.arange(n)
        chosen = online[-1][rows, actions]
        shifted = chosen - chosen.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        log_p = shifted - np.log(total)
        per_sample = -(m * log_p).sum(axis=1)
        loss = float((weights * per_sample).mean())

        # backward: the chosen logits, the dueling heads, the layers
        g = exp / total * m.sum(axis=1, keepdims=True) - m
        g *= (weights / n)[:, None]
        d_head = np.empty((n, k * (1 + self.n_actions)), dtype=np.float32)
        d_head[:, :k] = g  # ∂V = Σ_a ∂logits_a = g
        d_adv = d_head[:, k:].reshape(n, self.n_actions, k)
        d_adv[...] = (g / -self.n_actions)[:, None, :]  # ∂A_a = [a = a_i] g − g / |A|
        d_adv[rows, actions] += g
        inputs = [obs, *(h[:n] for h in online[:-1])]  # each layer's input: the observations, then activations
        d_out = d_head
        for layer in range(len(self.dims) - 1, -1, -1):
            gw_mu, gw_sigma, gb_mu, gb_sigma = self.grads[layer]
            layer_in = inputs[layer]
            np.matmul(d_out.T, layer_in, out=gw_mu)
            np.multiply(gw_mu, self.noise[0][layer], out=gw_sigma)
            np.sum(d_out, axis=0, out=gb_mu)
            np.multiply(gb_mu, self.noise_out[0][layer], out=gb_sigma)
            if layer > 0:
                d_in = d_out @ self.weights[0][layer]
                d_in *= layer_in > 0  # ReLU: its output was this layer's input
                d_out = d_in
        return loss, per_sample

    def _clip_and_adam(self) -> None:
        """Clip the gradient by its global norm, then Adam's step, on the flat buffers."""
        norm = float(np.sqrt(np.dot(self.grad, self.grad)))
        coef = self.max_grad_norm / (norm + 1e-6)
        if coef < 1.0:
            self.grad *= coef
        self._steps[0] += 1
        th._fused_adam_(
            self._theta_t,
            self._grad_t,
            self._exp_avg,
            self._exp_avg_sq,
            [],
            self._steps,
            amsgrad=False,
            lr=self.learning_rate,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def act(self, obs: np.ndarray, draw_noise: bool = True) -> int:
        """
        The greedy action of the noisy online network for one observation: ``argmax_a Σ_i z_i p(s, a, z_i)``.

        New noise for the online network is drawn first (unless ``draw_noise`` is False), and the noisy weights are
        not built: per layer ``y = μ_w x + μ_b + (σ_w (f(ε_in) ⊙ x) + σ_b) ⊙ f(ε_out)``, two matrix-vector products.

        :param obs: one observation ``(obs_dim,)``, float32
        :param draw_noise: draw new noise for the online network first
        """
        if draw_noise:
            eps = self.eps[: self.noise_size]
            th.randn(eps.shape, generator=self.generator, out=self._eps_t[: self.noise_size])
            np.copysign(np.sqrt(np.abs(eps)), eps, out=eps)
        eps_in, eps_out = self.noise_in_np[0], self.noise_out[0]
        x = obs
        for k, (w_mu, w_sigma, b_mu, b_sigma) in enumerate(self.layers):
            if k < len(self.dims) - 1:
                noise = w_sigma @ (eps_in[k] * x)
            else:  # the heads: each with its own f(ε_in)
                noise = np.concatenate(
                    (w_sigma[: self.n_atoms] @ (eps_in[-2] * x), w_sigma[self.n_atoms :] @ (eps_in[-1] * x))
                )
            noise += b_sigma
            noise *= eps_out[k]
            y = w_mu @ x
            y += b_mu
            y += noise
            x = np.maximum(y, 0, out=y) if k < len(self.dims) - 1 else y
        advantage = x[self.n_atoms :].reshape(self.n_actions, self.n_atoms)
        logits = advantage - advantage.mean(axis=0)
        logits += x[: self.n_atoms]
        return int((self._softmax(logits) @ self.support).argmax())

    def update_target(self) -> None:
        """Hard target update ``θ⁻ ← θ``."""
        self.target_theta[:] = self.theta


def profile(step: NumpyRainbowStep, batch: int, reps: int = 300) -> dict[str, float]:
    """
    Seconds per call of each part of :meth:`NumpyRainbowStep.step`, timed apart (best of 5 timings of ``reps``
    calls, on one random minibatch), and of the whole step.
    """
    rng = np.random.default_rng(0)
    obs_dim = step.dims[0][0]
    obs, next_obs = rng.normal(size=(2, batch, obs_dim)).astype(np.float32)
    actions = rng.integers(step.n_actions, size=batch)
    rewards, weights = rng.random((2, batch)).astype(np.float32)
    dones = (rng.random(batch) < 0.05).astype(np.float32)
    step._build(0)
    step._build(1)
    online, target_logits = step._forwards(obs, next_obs)
    m = step._td_target(online[-1][batch:], target_logits, rewards, dones)
    parts: dict[str, Callable[[], object]] = {
        "noise draw (both networks)": step.draw_noise,
        "noisy weights built (both networks)": lambda: (step._build(0), step._build(1)),
        "forward passes (online on 2 x batch rows, target on batch rows)": lambda: step._forwards(obs, next_obs),
        "TD target (double Q next action, C51 projection)": lambda: step._td_target(
            online[-1][batch:], target_logits, rewards, dones
        ),
        "loss and backward pass": lambda: step._loss_and_backward(online, obs, actions, m, weights),
        "clipping and Adam": step._clip_and_adam,
        "whole step": lambda: step.step(obs, actions, rewards, next_obs, dones, weights),
    }
    state = [x.clone() for x in (*step._theta_t, *step._exp_avg, *step._exp_avg_sq, *step._steps)]
    seconds = {}
    for name, fn in parts.items():
        # every part starts from the same weights and Adam state (the parts are called out of order)
        for x, saved in zip((*step._theta_t, *step._exp_avg, *step._exp_avg_sq, *step._steps), state, strict=True):
            x.copy_(saved)
        for _ in range(20):
            fn()
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            timings.append((time.perf_counter() - start) / reps)
        seconds[name] = min(timings)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description="Time each part of the NumPy Rainbow step (configuration 4's network)")
    parser.add_argument("--net-arch", default="256,256")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    th.set_num_threads(1)
    net_arch = [int(width) for width in args.net_arch.split(",")]
    # configuration 4 of throughput.py: CartPole (4 inputs, 2 actions), 51 atoms on [0, 100], 3-step returns
    step = NumpyRainbowStep(4, net_arch, 2, 51, 0.0, 100.0, 0.99**3)
    with threadpool_limits(limits=1, user_api="blas"):
        seconds = profile(step, args.batch, args.reps)
    print(f"net_arch {net_arch}, batch {args.batch}, {step.theta.size} parameters, one thread")
    print("\n| part | µs per step |\n|---|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value * 1e6:.1f} |")


if __name__ == "__main__":
    main()
