"""
Q-networks and policies of ScratchDQN.

A :class:`QNetwork` maps an observation to one value per action: features extractor (SB3's ``FlattenExtractor``,
``NatureCNN`` or ``CombinedExtractor``), an MLP trunk (``net_arch``) and a head. The head is one of

- plain: ``Q(s, ·) = W h + b`` (SB3's DQN, the default);
- dueling (Wang et al. 2016): ``Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a')``;
- distributional C51 (Bellemare et al. 2017): per action a categorical distribution ``p(s, a, ·)`` over ``n_atoms``
  support points ``z_i`` in ``[v_min, v_max]``; ``Q(s, a) = Σ_i z_i p_i(s, a)``. Combined with dueling, the streams
  produce logits: ``logits(s, a, ·) = V(s, ·) + A(s, a, ·) − mean_a' A(s, a', ·)``.

With ``noisy=True`` every linear layer after the features extractor is a factorised-Gaussian :class:`NoisyLinear`
(Fortunato et al. 2018). Noise is resampled only by :meth:`QNetwork.reset_noise`, never by ``module.training``,
and ``predict(deterministic=True)`` uses the mean weights.

:class:`DQNPolicy` holds the online network ``q_net``, the target network ``q_net_target`` and the optimizer, as
SB3's ``DQNPolicy`` does; ``MlpPolicy``, ``CnnPolicy`` and ``MultiInputPolicy`` are its aliases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as _module_hooks

from sb3_dqn_ext.errors import ScratchDQNError

# Activations whose module call is replaced by the same functional op on the fast path (same kernel, same numbers)
_FUNCTIONAL_ACTIVATIONS = {nn.ReLU: th.relu, nn.Tanh: th.tanh, nn.Sigmoid: th.sigmoid}


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module.forward`` directly would skip something ``module(x)`` does (hooks, a compile)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or getattr(module, "_compiled_call_impl", None) is not None
    )


def _global_hooks() -> bool:
    return bool(
        _module_hooks._global_forward_hooks
        or _module_hooks._global_forward_pre_hooks
        or _module_hooks._global_backward_hooks
        or _module_hooks._global_backward_pre_hooks
    )


def _channels_last(obs: PyTorchObs) -> PyTorchObs:
    """``obs`` with its 4-D tensors (image batches ``(N, C, H, W)``) in channels-last memory format (same values)."""
    if isinstance(obs, th.Tensor):
        return obs.contiguous(memory_format=th.channels_last) if obs.dim() == 4 else obs
    if isinstance(obs, dict):
        return {key: _channels_last(value) for key, value in obs.items()}  # type: ignore[misc]
    return obs


def _to_channels_last(module: nn.Module) -> None:
    """Put ``module``'s 4-D parameters and buffers (convolution weights) in channels-last memory format, in place."""
    with th.no_grad():
        for sub in module.modules():
            for param in sub._parameters.values():
                if param is not None and param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=th.channels_last)
            for name, buffer in sub._buffers.items():
                if buffer is not None and buffer.dim() == 4:
                    sub._buffers[name] = buffer.contiguous(memory_format=th.channels_last)


class _LayoutVectors(BasePolicy):
    """
    SB3's ``parameters_to_vector`` and ``load_from_vector`` for a policy whose ``channels_last`` may hold
    channels-last weights: the same order and values, without ``view(-1)`` (which needs NCHW) and copying into the
    parameters in place (which keeps their layout); with ``channels_last`` off, SB3's own methods.
    """

    channels_last: bool

    def parameters_to_vector(self) -> np.ndarray:
        """
        Convert the parameters to a 1D vector.

        :return: the parameters, flattened one after the other (each in its logical order)
        """
        if not self.channels_last:
            return super().parameters_to_vector()
        return th.cat([p.detach().reshape(-1) for p in self.parameters()]).cpu().numpy()

    def load_from_vector(self, vector: np.ndarray) -> None:
        """
        Load parameters from a 1D vector.

        :param vector: the parameters, flattened one after the other
        """
        if not self.channels_last:
            super().load_from_vector(vector)
            return
        flat = th.as_tensor(vector, dtype=th.float)
        offset = 0
        with th.no_grad():
            for param in self.parameters():
                param.copy_(flat[offset : offset + param.numel()].view(param.shape))
                offset += param.numel()


class _SequentialPlan:
    """
    ``nn.Sequential`` run without ``nn.Module.__call__`` for each layer: each layer's ``forward`` (for an exact
    ``nn.Linear``, the ``F.linear`` call its ``forward`` makes, on its current parameters; for ReLU/Tanh/Sigmoid,
    the same functional op) is called directly. Same ops, same order, same numbers; only the per-module dispatch
    (hooks, tracing checks, attribute lookups) is skipped, which for a small MLP costs as much as its matrix
    products. Falls back to ``seq(x)`` as soon as any layer (or the global registry) has a hook or a layer's
    ``forward`` is replaced on the instance.
    """

    def __init__(self, seq: nn.Sequential) -> None:
        self.seq = seq
        self._build()

    def _build(self) -> None:
        self.modules = tuple(self.seq._modules.values())
        self.ops = [self._op(m) for m in self.modules]
        # the layers run as F.linear: rebuilt when one changes class (e.g. a parametrization) or gets a `forward`
        self._linears = [m for m in self.modules if type(m) is nn.Linear and "forward" not in vars(m)]

    @staticmethod
    def _op(module: nn.Module) -> tuple[Any, dict[str, Any] | None]:
        """``(function, None)``, or ``(None, parameters)`` for ``F.linear`` on the layer's parameter dict (read at
        each call, so a replaced weight is seen; a dict and bound methods, so deep copies and pickles follow)."""
        if type(module) in _FUNCTIONAL_ACTIVATIONS and not getattr(module, "inplace", False):
            return _FUNCTIONAL_ACTIVATIONS[type(module)], None
        if type(module) is nn.Linear and "forward" not in vars(module):
            return None, module._parameters
        return module.forward, None

    def __call__(self, x: th.Tensor) -> th.Tensor:
        if tuple(self.seq._modules.values()) != self.modules or any(
            type(m) is not nn.Linear or "forward" in m.__dict__ for m in self._linears
        ):  # a layer was replaced (quantization, fusion, ...), changed class or got a forward of its own
            self._build()
        if _has_hooks(self.seq) or any(_has_hooks(m) for m in self.modules) or _global_hooks():
            return self.seq(x)
        for fn, params in self.ops:
            x = fn(x) if params is None else F.linear(x, params["weight"], params["bias"])  # (nn.Linear.forward)
        return x


#: Inputs of at least this many rows go through :class:`NoisyLinear`'s built noisy weights: building them costs
#: ``3 · in · out`` operations and saves ``rows · in · out`` multiply-adds in the forward pass and twice that in
#: the backward pass.
NOISY_MATERIALISE_ROWS = 4


class NoisyLinear(nn.Module):
    """
    Linear layer with factorised Gaussian noise (Fortunato et al. 2018, "Noisy Networks for Exploration").

    ``y = (μ_w + σ_w ⊙ ε_w) x + μ_b + σ_b ⊙ ε_b`` with ``ε_w = f(ε_out) f(ε_in)ᵀ``, ``ε_b = f(ε_out)``,
    ``f(x) = sign(x) √|x|`` and ``ε_in, ε_out ~ N(0, 1)``. Initialisation: ``μ ~ U(−1/√p, 1/√p)`` and
    ``σ = σ₀ / √p`` with ``p`` the number of inputs.

    For a batch (at least :data:`NOISY_MATERIALISE_ROWS` rows) the noisy weights are built once per call, so the
    forward pass is one matrix product and the backward pass two. For one or a few rows (action selection) they are
    not built: because the noise factorises, ``(σ_w ⊙ ε_out ε_inᵀ) x = ε_out ⊙ (σ_w (ε_in ⊙ x))``, two matrix
    products of the rows, cheaper than the ``3 · in · out`` operations that building the matrix takes. Both compute
    the same function (up to rounding). The noise is a buffer: it changes only when :meth:`reset_noise` is called,
    whatever ``self.training`` is.
    With ``noise_enabled = False`` the layer is ``nn.Linear`` on the mean weights.

    :param in_features: number of inputs
    :param out_features: number of outputs
    :param std_init: σ₀, the initial noise scale
    """

    def __init__(self, in_features: int, out_features: int, std_init: float = 0.5) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.std_init = std_init
        self.noise_enabled = True
        self.weight_mu = nn.Parameter(th.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(th.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(th.empty(out_features))
        self.bias_sigma = nn.Parameter(th.empty(out_features))
        self.register_buffer("epsilon_in", th.zeros(in_features))
        self.register_buffer("epsilon_out", th.zeros(out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, std_init / math.sqrt(in_features))
        nn.init.constant_(self.bias_sigma, std_init / math.sqrt(in_features))
        self.reset_noise()

    @th.no_grad()
    def reset_noise(self) -> None:
        """Draw new factorised noise ``f(ε_in)``, ``f(ε_out)`` from torch's global generator."""
        eps = th.randn(self.in_features + self.out_features, device=self.weight_mu.device)
        eps = eps.sign() * eps.abs().sqrt()
        self.epsilon_in.copy_(eps[: self.in_features])
        self.epsilon_out.copy_(eps[self.in_features :])

    @property
    def weight(self) -> th.Tensor:
        """The current noisy weight ``μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ``."""
        return th.addcmul(self.weight_mu, self.weight_sigma, th.outer(self.epsilon_out, self.epsilon_in))

    @property
    def bias(self) -> th.Tensor:
        """The current noisy bias ``μ_b + σ_b ⊙ f(ε_out)``."""
        return th.addcmul(self.bias_mu, self.bias_sigma, self.epsilon_out)

    def forward(self, x: th.Tensor) -> th.Tensor:
        if not self.noise_enabled:
            return F.linear(x, self.weight_mu, self.bias_mu)
        if x.numel() >= NOISY_MATERIALISE_ROWS * self.in_features:
            return F.linear(x, self.weight, self.bias)  # y = (μ_w + σ_w ⊙ ε_w) x + μ_b + σ_b ⊙ ε_b
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        return mean + (F.linear(x * self.epsilon_in, self.weight_sigma) + self.bias_sigma) * self.epsilon_out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, std_init={self.std_init}"


def make_mlp(
    input_dim: int,
    output_dim: int,
    net_arch: list[int],
    activation_fn: type[nn.Module],
    noisy: bool = False,
    noisy_std_init: float = 0.5,
) -> list[nn.Module]:
    """
    Layers of an MLP ``input_dim -> net_arch... -> output_dim`` (no activation after the output layer).

    With ``noisy=False`` this builds the same layers, in the same order (so the same initial weights for a seed),
    as SB3's ``create_mlp``. ``output_dim <= 0`` gives the hidden layers only.
    """
    linear = (lambda i, o: NoisyLinear(i, o, noisy_std_init)) if noisy else nn.Linear
    layers: list[nn.Module] = []
    last = input_dim
    for width in net_arch:
        layers += [linear(last, width), activation_fn()]
        last = width
    if output_dim > 0:
        layers.append(linear(last, output_dim))
    return layers


class QNetwork(_LayoutVectors):
    """
    Action-value network ``Q(s, ·)``: features extractor, MLP, and a plain, dueling and/or distributional head.

    :param observation_space: Observation space
    :param action_space: Action space (``Discrete``)
    :param features_extractor: the features extractor (owned by this network)
    :param features_dim: number of features it outputs
    :param net_arch: hidden layer widths of the MLP between the features and the head (``[64, 64]`` by default)
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0 (True by default)
    :param dueling: use a dueling head ``Q = V + A − mean(A)``
    :param dueling_net_arch: hidden layers of each dueling stream after the shared MLP, as
        ``dict(value=[...], advantage=[...])``; by default each stream is one linear layer
    :param noisy: use :class:`NoisyLinear` layers in the MLP and the head
    :param noisy_std_init: σ₀ of the noisy layers
    :param n_atoms: number of support atoms of the C51 distributional head (``None``: not distributional)
    :param v_min: lowest support point of C51
    :param v_max: highest support point of C51
    :param channels_last: keep the convolution weights, and image batches on their way in, in channels-last
        (NHWC) memory format (see :class:`DQNPolicy`)
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        dueling: bool = False,
        dueling_net_arch: dict[str, list[int]] | None = None,
        noisy: bool = False,
        noisy_std_init: float = 0.5,
        n_atoms: int | None = None,
        v_min: float = -10.0,
        v_max: float = 10.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        if net_arch is None:
            net_arch = [64, 64]
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.features_dim = features_dim
        self.dueling = dueling
        self.dueling_net_arch = dueling_net_arch
        self.noisy = noisy
        self.noisy_std_init = noisy_std_init
        self.n_atoms = n_atoms
        self.v_min = v_min
        self.v_max = v_max
        self.n_actions = int(self.action_space.n)
        self.distributional = n_atoms is not None
        atoms = n_atoms if n_atoms is not None else 1

        mlp = dict(activation_fn=activation_fn, noisy=noisy, noisy_std_init=noisy_std_init)
        if not dueling:
            self.q_net = nn.Sequential(*make_mlp(features_dim, self.n_actions * atoms, net_arch, **mlp))
        else:
            streams = dueling_net_arch or {}
            self.q_net = nn.Sequential(*make_mlp(features_dim, 0, net_arch, **mlp))
            trunk_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
            self.value_stream = nn.Sequential(*make_mlp(trunk_dim, atoms, streams.get("value", []), **mlp))
            self.advantage_stream = nn.Sequential(
                *make_mlp(trunk_dim, self.n_actions * atoms, streams.get("advantage", []), **mlp)
            )
        if self.distributional:
            self.register_buffer("support", th.linspace(v_min, v_max, atoms))
        self.channels_last = channels_last
        if channels_last:
            _to_channels_last(self)
        self._noisy_layers = [m for m in self.modules() if isinstance(m, NoisyLinear)]
        self._noise_sizes = [n for m in self._noisy_layers for n in (m.in_features, m.out_features)]
        self._noise_size = sum(self._noise_sizes)
        self._fast_path: tuple[_SequentialPlan, ...] = ()
        # (observation space, whether it is a Box that preprocess_obs only converts to float, i.e. not an image)
        self._float_box: tuple[spaces.Space, bool] | None = None

    def _features(self, obs: PyTorchObs) -> th.Tensor:
        """``extract_features``; SB3's ``FlattenExtractor`` is applied as the ``flatten(1)`` it is."""
        extractor = self._modules["features_extractor"]  # (dict lookups: nn.Module.__getattr__ costs more)
        flatten = extractor._modules.get("flatten") if type(extractor) is FlattenExtractor else None
        if type(flatten) is nn.Flatten and not (_has_hooks(extractor) or _has_hooks(flatten) or _global_hooks()):
            space, known = self.observation_space, self._float_box
            if known is None or known[0] is not space:
                known = self._float_box = (space, isinstance(space, spaces.Box) and not is_image_space(space))
            if known[1]:
                preprocessed = obs.float()  # type: ignore[union-attr]  # what preprocess_obs does for this Box
            else:
                preprocessed = preprocess_obs(obs, space, normalize_images=self.normalize_images)
            return preprocessed.flatten(flatten.start_dim, flatten.end_dim)  # type: ignore[union-attr]
        if self.channels_last:
            obs = _channels_last(obs)  # (before preprocess_obs: a uint8 copy is the cheapest)
        return self.extract_features(obs, extractor)  # type: ignore[return-value]

    def _head(self, obs: PyTorchObs) -> th.Tensor:
        """Raw head output: Q-values ``(batch, n_actions)`` or logits ``(batch, n_actions, n_atoms)``."""
        plans = self._fast_path
        modules = self._modules
        if (
            not plans
            or plans[0].seq is not modules["q_net"]
            or (
                self.dueling
                and (plans[1].seq is not modules["value_stream"] or plans[2].seq is not modules["advantage_stream"])
            )
        ):
            seqs = (self.q_net, self.value_stream, self.advantage_stream) if self.dueling else (self.q_net,)
            self._fast_path = tuple(_SequentialPlan(seq) for seq in seqs)  # first call, or a stream was replaced
        hidden = self._fast_path[0](self._features(obs))
        if not self.dueling:
            return hidden.view(-1, self.n_actions, self.n_atoms) if self.distributional else hidden
        value = self._fast_path[1](hidden)
        advantage = self._fast_path[2](hidden)
        if self.distributional:
            value = value.view(-1, 1, self.n_atoms)
            advantage = advantage.view(-1, self.n_actions, self.n_atoms)
        # Q = V + A − mean_a A  (per atom for C51)
        return value + advantage - advantage.mean(dim=1, keepdim=True)

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        """
        Predict the Q-values (the expected values of the return distribution for C51).

        :param obs: Observation
        :return: The estimated Q-Value for each action, shape ``(batch, n_actions)``.
        """
        if not self.distributional:
            return self._head(obs)
        return (self._head(obs).softmax(dim=-1) * self.support).sum(dim=-1)

    def log_probs(self, obs: PyTorchObs) -> th.Tensor:
        """
        Log-probabilities of the C51 return distribution.

        :param obs: Observation
        :return: ``log p(s, a, z_i)``, shape ``(batch, n_actions, n_atoms)``
        """
        if not self.distributional:
            raise ScratchDQNError("log_probs() needs a distributional network (set n_atoms in policy_kwargs)")
        return self._head(obs).log_softmax(dim=-1)

    def reset_noise(self) -> None:
        """
        Resample the noise of every noisy layer (no-op without noisy layers): what each layer's
        :meth:`NoisyLinear.reset_noise` does, with one draw of ``N(0, 1)`` for the whole network.
        """
        layers = self._noisy_layers
        if not layers:
            return
        if any(type(layer) is not NoisyLinear for layer in layers):  # a subclass may draw its noise otherwise
            for layer in layers:
                layer.reset_noise()
            return
        buffers = [layer._buffers[name] for layer in layers for name in ("epsilon_in", "epsilon_out")]
        with th.no_grad():
            eps = th.randn(self._noise_size, device=buffers[0].device)
            eps = eps.sign() * eps.abs().sqrt()  # f(ε) = sign(ε) √|ε|
            th._foreach_copy_(buffers, eps.split(self._noise_sizes))  # type: ignore[arg-type]

    @contextmanager
    def mean_weights(self) -> Iterator[None]:
        """Within this context, noisy layers use their mean weights ``μ`` only."""
        for layer in self._noisy_layers:
            layer.noise_enabled = False
        try:
            yield
        finally:
            for layer in self._noisy_layers:
                layer.noise_enabled = True

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        if deterministic and self.noisy:
            with self.mean_weights():
                q_values = self(observation)
        else:
            q_values = self(observation)
        # Greedy action
        return q_values.argmax(dim=1).reshape(-1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
                dueling=self.dueling,
                dueling_net_arch=self.dueling_net_arch,
                noisy=self.noisy,
                noisy_std_init=self.noisy_std_init,
                n_atoms=self.n_atoms,
                v_min=self.v_min,
                v_max=self.v_max,
                channels_last=self.channels_last,
            )
        )
        return data


class DQNPolicy(_LayoutVectors):
    """
    Policy class with the online Q-network ``q_net``, the target network ``q_net_target`` and the optimizer.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: The specification of the Q-network's hidden layers.
    :param activation_fn: Activation function
    :param features_extractor_class: Features extractor to use.
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor.
    :param normalize_images: Whether to normalize images or not, dividing by 255.0 (True by default)
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, to pass to the optimizer
    :param dueling: use a dueling head ``Q = V + A − mean(A)``
    :param dueling_net_arch: hidden layers of each dueling stream, ``dict(value=[...], advantage=[...])``
    :param noisy: use factorised-Gaussian noisy linear layers (NoisyNet exploration)
    :param noisy_std_init: σ₀ of the noisy layers
    :param n_atoms: number of atoms of the C51 distributional head (``None``: expected-value DQN)
    :param v_min: lowest support point of C51
    :param v_max: highest support point of C51
    :param channels_last: keep the convolution weights of both networks, and the image batches on their way into
        them, in channels-last (NHWC) memory format (``torch.channels_last``), which oneDNN's CPU convolutions run
        faster than the default NCHW. With it, ScratchDQN also runs Adam's step (``torch.optim.Adam`` on CPU, on its
        flat buffers) as PyTorch's fused kernel, ``Adam(fused=True)``'s: the same update in one pass over the weights
        instead of several. The mathematics is the same, the low-order bits are not (other kernels), so it
        is off by default (off: the numbers of SB3's DQN, bitwise). Only 4-D tensors are affected (not, e.g.,
        ``Conv3d`` weights): it changes nothing for MLP features. A custom features extractor must then flatten
        with ``nn.Flatten`` or ``reshape`` (as SB3's do), not ``view``, which needs NCHW-contiguous activations.
    """

    q_net: QNetwork
    q_net_target: QNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        dueling: bool = False,
        dueling_net_arch: dict[str, list[int]] | None = None,
        noisy: bool = False,
        noisy_std_init: float = 0.5,
        n_atoms: int | None = None,
        v_min: float = -10.0,
        v_max: float = 10.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )
        if net_arch is None:
            net_arch = [] if features_extractor_class == NatureCNN else [64, 64]
        _check_policy_kwargs(net_arch, dueling_net_arch, noisy_std_init, n_atoms, v_min, v_max)
        if not isinstance(channels_last, bool):
            raise ScratchDQNError(f"channels_last must be True or False, got {channels_last!r}")

        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.channels_last = channels_last
        self.net_args = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "net_arch": self.net_arch,
            "activation_fn": self.activation_fn,
            "normalize_images": normalize_images,
            "dueling": dueling,
            "dueling_net_arch": dueling_net_arch,
            "noisy": noisy,
            "noisy_std_init": noisy_std_init,
            "n_atoms": n_atoms,
            "v_min": v_min,
            "v_max": v_max,
            "channels_last": channels_last,
        }
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        """
        Create the online and target networks (the target starts as a copy, in evaluation mode) and the optimizer.

        :param lr_schedule: Learning rate schedule; ``lr_schedule(1)`` is the initial learning rate
        """
        self.q_net = self.make_q_net()
        self.q_net_target = self.make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.q_net.parameters(),
            lr=lr_schedule(1),
            **_multi_tensor_default(self.optimizer_class, self.optimizer_kwargs),
        )
        # modules whose `training` flag set_training_mode toggles: a flat list, unless one overrides `train()`
        modules = list(self.q_net.modules())
        plain = all(type(m).train is nn.Module.train for m in modules)
        self._train_mode_modules = modules if plain else None

    def make_q_net(self) -> QNetwork:
        # Each network gets its own features extractor
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return QNetwork(**net_args).to(self.device)

    def forward(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self.q_net._predict(obs, deterministic=deterministic)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_args["net_arch"],
                activation_fn=self.net_args["activation_fn"],
                lr_schedule=self._dummy_schedule,  # not needed for loading the policy alone
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                dueling=self.net_args["dueling"],
                dueling_net_arch=self.net_args["dueling_net_arch"],
                noisy=self.net_args["noisy"],
                noisy_std_init=self.net_args["noisy_std_init"],
                n_atoms=self.net_args["n_atoms"],
                v_min=self.net_args["v_min"],
                v_max=self.net_args["v_max"],
                channels_last=self.net_args["channels_last"],
            )
        )
        return data

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the online network in training or evaluation mode (batch norm, dropout); the target stays in eval mode.

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        if self._train_mode_modules is None:
            self.q_net.set_training_mode(mode)
        else:
            # the flag nn.Module.train() sets, written without nn.Module.__setattr__'s dispatch
            for module in self._train_mode_modules:
                module.__dict__["training"] = mode
        self.training = mode


def _multi_tensor_default(optimizer_class: type[th.optim.Optimizer], kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    ``foreach=True`` for ``th.optim.Adam`` unless the user set ``foreach``, ``fused`` or ``differentiable``: PyTorch
    picks the per-tensor loop on CPU, the multi-tensor one computes the same numbers (bitwise, tested against SB3's
    DQN) in fewer kernel calls. Any other optimizer gets exactly the user's keyword arguments.
    """
    if (
        optimizer_class is th.optim.Adam
        and "foreach" not in kwargs
        and not kwargs.get("fused")
        and not kwargs.get("differentiable")  # the multi-tensor step does not support autograd
    ):
        return {**kwargs, "foreach": True}
    return kwargs


def _check_policy_kwargs(
    net_arch: Any,
    dueling_net_arch: Any,
    noisy_std_init: float,
    n_atoms: int | None,
    v_min: float,
    v_max: float,
) -> None:
    def widths_ok(arch: Any) -> bool:
        return isinstance(arch, (list, tuple)) and all(isinstance(w, int) and w > 0 for w in arch)

    if not widths_ok(net_arch):
        raise ScratchDQNError(f"net_arch must be a list of positive layer widths, got {net_arch!r}")
    if dueling_net_arch is not None:
        if not isinstance(dueling_net_arch, dict) or not set(dueling_net_arch) <= {"value", "advantage"}:
            raise ScratchDQNError(
                f"dueling_net_arch must be dict(value=[...], advantage=[...]), got {dueling_net_arch!r}"
            )
        for stream, arch in dueling_net_arch.items():
            if not widths_ok(arch):
                raise ScratchDQNError(f"dueling_net_arch[{stream!r}] must be a list of positive widths, got {arch!r}")
    if not (math.isfinite(noisy_std_init) and noisy_std_init >= 0):
        raise ScratchDQNError(f"noisy_std_init must be a finite number >= 0, got {noisy_std_init}")
    if n_atoms is not None:
        if isinstance(n_atoms, bool) or not isinstance(n_atoms, int) or n_atoms < 2:
            raise ScratchDQNError(f"n_atoms must be an integer >= 2 (or None), got {n_atoms!r}")
        if not (math.isfinite(v_min) and math.isfinite(v_max) and v_min < v_max):
            raise ScratchDQNError(f"v_min must be < v_max (both finite), got v_min={v_min}, v_max={v_max}")


MlpPolicy = DQNPolicy


class CnnPolicy(DQNPolicy):
    """
    Policy class for ScratchDQN when using images as input (SB3's ``NatureCNN`` features by default).

    Same parameters as :class:`DQNPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            **kwargs,
        )


class MultiInputPolicy(DQNPolicy):
    """
    Policy class for ScratchDQN when using dict observations as input (SB3's ``CombinedExtractor`` by default).

    Same parameters as :class:`DQNPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            **kwargs,
        )
