"""
The DQN gradient step without autograd, for the plain MLP Q-network with Adam on CPU.

For ``Q(s) = W_L σ(… σ(W_1 s + b_1) …) + b_L`` one gradient step is

1. the forward pass, keeping each layer's output;
2. the Huber loss ``L = mean_i huber(Q(s_i, a_i) − y_i)`` (``mean_i w_i huber(…)`` with prioritized replay's
   importance weights ``w_i``);
3. the backward pass written out, with the kernels autograd itself calls for these ops:
   ``smooth_l1_loss_backward`` (the loss; times ``w_i / n`` with weights), ``scatter_add_`` into zeros
   (``gather``), ``∂L/∂W = gᵀ x`` and ``∂L/∂b = Σ_i g_i`` (``linear``), ``g W`` for the layer's input,
   ``threshold_backward`` / ``tanh_backward`` / ``sigmoid_backward`` (the activations);
4. gradient clipping, ``clip_grad_norm_``'s ops;
5. Adam with ``torch.optim.Adam``'s multi-tensor op sequence (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``,
   ``div_``, ``add_``, ``addcdiv_``), applied once to flat buffers that every parameter, gradient and moment is a
   view of, instead of once per tensor (``sqrt`` of ``max(v, 1e-37)`` where that provably leaves the denominator
   ``√v / √(1 − β₂ᵗ) + ε`` bitwise unchanged: see :meth:`FlatAdam._sqrt`); with ``fused=True`` in the optimizer's
   settings, the fused kernel that ``torch.optim.Adam(fused=True)`` calls, in one call over the per-tensor views of
   the flat buffers.

Every step is the same op on the same numbers as autograd followed by ``torch.optim.Adam`` (``foreach=True``, or
``fused=True``), so the weights, the optimizer state and the loss are bitwise those of the autograd path
(``tests/test_fast_update.py`` checks this against SB3's DQN). What is saved is bookkeeping: building and walking
the autograd graph, ``nn.Module.__call__``, ``Optimizer.step``'s hooks and grouping, and one kernel per tensor per
Adam op; and MKL's slow path for zeros in Adam's square root.

:class:`FlatMLPAdam` takes over only where all of this holds (else ScratchDQN runs its autograd path, which is
always correct): parameters on CPU in float32; a :class:`~sb3_dqn_ext.policies.QNetwork` without dueling, noisy or
C51 heads, whose features extractor has no parameters and whose MLP is ``nn.Linear`` layers (with bias) and ReLU,
Tanh or Sigmoid activations; an exact ``torch.optim.Adam`` with one parameter group over exactly those parameters,
no weight decay, no AMSGrad, not maximizing, ``foreach=True`` or ``fused=True``, a float learning rate and no AMP
gradient scaler; and, checked before every
step, no hook anywhere (module, parameter or optimizer hooks, global ones too) and no layer, parameter or
optimizer state replaced since the last step. Set ``sb3_dqn_ext.fast_update.ENABLED = False`` to always use
autograd, ``clip_grad_norm_``'s ops and ``optimizer.step()``.

``ScratchDQN(mlp_backend="numpy")`` (opt-in) goes one step further for the same plain MLP: :class:`NumpyMLPAdam`
computes the same gradient step in NumPy on zero-copy views of the same flat buffers, and :class:`NumpyMLP` the
forward passes of the TD targets and of the rollout actions, on the networks' own weights. For a small network most
of PyTorch's time per op is dispatch, not arithmetic; NumPy's per-op cost is a few times smaller. The mathematics
is the same, the kernels are not (NumPy's BLAS, Adam's moments as ``β m + (1 − β) g``), so the low-order bits differ
from the PyTorch path (``tests/test_numpy_backend.py`` pins them to it within float32 rounding, and to Q* on a small
MDP); a run stays deterministic for its seed.

For a C51 network of such layers (``nn.Linear`` or factorised-noise ``NoisyLinear``, with a plain or a dueling head:
Rainbow's network), ``mlp_backend="numpy"`` computes the whole C51 step in NumPy with :class:`NumpyC51Adam` (TD
target with the projection, cross-entropy, backward pass through the dueling head and the noisy weights, clipping,
Adam), on the noise the layers hold; the forward passes run on :class:`NumpyC51`, views of the networks' storage.

For every other Q-network (dueling, noisy, C51 heads, CNN or Dict features), :class:`FlatAdam` keeps the second half:
autograd's backward pass accumulates into the flat gradient buffer, then clipping and Adam run once on the flat
buffers, under the same conditions on the parameters and the optimizer (CPU, float32, the same Adam settings, no
optimizer or parameter hook).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn
from torch.nn import functional as F
from torch.optim import optimizer as _optimizer_hooks

from sb3_dqn_ext.policies import _FUNCTIONAL_ACTIVATIONS, NoisyLinear, QNetwork, _global_hooks, _has_hooks

ENABLED = True

_aten = th.ops.aten
# d activation / d input from the activation's output, as autograd computes it
_ACTIVATION_BACKWARD: dict[type, Callable[[th.Tensor, th.Tensor], th.Tensor]] = {
    nn.ReLU: lambda grad, out: _aten.threshold_backward(grad, out, 0),
    nn.Tanh: _aten.tanh_backward,
    nn.Sigmoid: _aten.sigmoid_backward,
}
_NONE, _MEAN = 0, 1  # at::Reduction
_ALIGN = 16  # floats: 64 bytes, the alignment of a tensor allocated on its own
# Adam's second moments below this are raised to it before the square root (see FlatAdam._denominator): a normal
# float32 whose square root MKL takes on its fast path, and small enough that √v / √(1 − β₂ᵗ) + ε rounds to ε
_SQRT_FLOOR = 1e-37
_SQRT_FLOOR_ROOT = math.sqrt(_SQRT_FLOOR) * (1 + 2**-10)  # (a margin over the root's and the division's rounding)
_ADAM_DEFAULTS = dict(
    weight_decay=0, amsgrad=False, maximize=False, foreach=True, capturable=False, differentiable=False
)


def _group_supported(group: dict[str, Any]) -> bool:
    """An Adam parameter group whose step is one this module replays: the multi-tensor one, or the fused one."""
    expected = dict(_ADAM_DEFAULTS)
    if group.get("fused"):
        if group.get("foreach"):  # (torch.optim.Adam refuses the two together)
            return False
        del expected["foreach"]  # (None or False: the fused step does not read it)
    if any(group.get(key, value) != value for key, value in expected.items()):
        return False
    if group.get("decoupled_weight_decay", False):
        return False
    # (a Python float or a subclass, e.g. the np.float64 a learning-rate schedule may return: the same double)
    return all(isinstance(x, float) for x in (group["lr"], group["eps"], *group["betas"]))


def _layers_supported(modules: tuple[nn.Module, ...]) -> bool:
    if not modules or type(modules[0]) is not nn.Linear or type(modules[-1]) is not nn.Linear:
        return False
    for module in modules:
        if type(module) is nn.Linear:
            if module.bias is None:
                return False
        elif type(module) not in _ACTIVATION_BACKWARD or getattr(module, "inplace", False):
            return False
    return True


def _fused_adam(
    params: list[th.Tensor],
    grads: list[th.Tensor],
    exp_avgs: list[th.Tensor],
    exp_avg_sqs: list[th.Tensor],
    steps: list[th.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """PyTorch's fused Adam kernel (``Adam(fused=True)``'s) on these tensors; ``steps`` already hold ``t``."""
    th._fused_adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=0.0,
        eps=eps,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def _dense(tensor: th.Tensor) -> bool:
    """Whether ``tensor``'s elements fill ``numel()`` consecutive slots (any order of dimensions: contiguous,
    channels-last, transposed), so that ``as_strided`` with its strides over a flat slice holds it."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(tensor.shape, tensor.stride(), strict=True) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class FlatAdam:
    """
    Gradient clipping and ``torch.optim.Adam``'s multi-tensor step (or its fused kernel, with ``fused=True``),
    applied once to flat buffers that every parameter, gradient and Adam moment is a view of, instead of once per
    tensor (on CPU, PyTorch's multi-tensor ops loop over the tensors). Use it around autograd's backward pass:
    :meth:`zero_grad`, ``loss.backward()`` (which accumulates into the flat gradient buffer), :meth:`clip_grad_norm`,
    :meth:`adam_step`. Build it with :meth:`for_network`, which returns ``None`` where it does not apply, and call
    :meth:`ready` before each step.

    Building it makes the network's parameters views of one flat buffer (same values); the optimizer keeps the
    same parameters, and its state stays what ``torch.optim.Adam`` keeps (per-parameter ``step``, ``exp_avg``,
    ``exp_avg_sq``), as views of flat buffers, so saving, loading and the autograd path see the usual state.

    :param q_net: the online Q-network
    :param optimizer: its ``torch.optim.Adam``
    """

    def __init__(self, q_net: QNetwork, optimizer: th.optim.Optimizer) -> None:
        self.q_net = q_net
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        self.params = list(q_net.parameters())
        # Each tensor starts on a 64-byte boundary of the flat buffers, as a tensor of its own would: CPU kernels
        # (MKL's GEMMs among them) can round differently at other alignments. The padding stays 0 (zero gradient,
        # zero moments, so a zero Adam update).
        self._offsets = []
        end = 0
        for param in self.params:
            self._offsets.append(end)
            end += -(-param.numel() // _ALIGN) * _ALIGN
        self._length = end
        self.flat_params = self._flat([p.detach() for p in self.params])
        self.flat_grads = th.zeros_like(self.flat_params)
        self._param_views = self._views(self.flat_params)  # (plain tensors: the fused kernel writes into them)
        with th.no_grad():
            for param, view in zip(self.params, self._param_views, strict=True):
                param.data = view
        self._grad_views = self._views(self.flat_grads)
        self._data_ptrs = [p.data_ptr() for p in self.params]
        self._state_views: list[tuple[th.Tensor, th.Tensor, th.Tensor]] = []
        self._state_lists: tuple[list[th.Tensor], ...] = ()  # the steps, exp_avgs and exp_avg_sqs of _state_views
        self._one = th.tensor(1.0, dtype=th.float32)
        self._sqrt_buffer = th.empty_like(self.flat_params)  # Adam's √v (reused: one buffer, no allocation per step)
        self._half_ulps: dict[float, float] = {}  # ε → half a float32 ulp of ε
        # Adam by the fused kernel even where the optimizer asks for the multi-tensor step (the same update, other
        # rounding): set by ScratchDQN for the opt-ins that already give up SB3's bits (channels_last)
        self.fused_kernel = False

    def _flat(self, tensors: list[th.Tensor]) -> th.Tensor:
        """A zero-padded flat float32 buffer holding ``tensors`` at the parameters' offsets."""
        flat = th.zeros(self._length, dtype=th.float32)
        for view, tensor in zip(self._views(flat), tensors, strict=True):
            view.copy_(tensor.reshape(view.shape))  # (copy_ follows each one's strides)
        return flat

    def _views(self, flat: th.Tensor) -> list[th.Tensor]:
        # each view with its parameter's strides (e.g. a channels-last convolution weight), over the same elements
        return [
            flat.as_strided(p.shape, p.stride(), offset) for offset, p in zip(self._offsets, self.params, strict=True)
        ]

    @classmethod
    def for_network(cls, q_net: QNetwork, optimizer: th.optim.Optimizer) -> FlatAdam | None:
        """
        :param q_net: the online Q-network
        :param optimizer: the optimizer over its parameters
        :return: Adam on flat buffers for them, or ``None`` where it does not apply (``optimizer.step`` is used)
        """
        if not ENABLED or type(optimizer) is not th.optim.Adam:
            return None
        params = list(q_net.parameters())
        if not params or any(
            p.device.type != "cpu"
            or p.dtype != th.float32
            or not p.requires_grad
            or type(p) is not nn.Parameter
            or not _dense(p)  # (a strided view of numel() consecutive elements can stand for it)
            for p in params
        ):
            return None
        if len(optimizer.param_groups) != 1 or {id(p) for p in optimizer.param_groups[0]["params"]} != {
            id(p) for p in params
        }:
            return None
        if not _group_supported(optimizer.param_groups[0]):
            return None
        return cls(q_net, optimizer)

    def stale(self, q_net: nn.Module, optimizer: th.optim.Optimizer) -> bool:
        """
        Whether this step no longer belongs to ``q_net`` and ``optimizer`` (another network or optimizer, or
        parameters moved to new storage, e.g. by a deep copy or ``.to()``): build a new one.
        """
        return (
            q_net is not self.q_net
            or optimizer is not self.optimizer
            or any(p.data_ptr() != pointer for p, pointer in zip(self.params, self._data_ptrs, strict=True))
        )

    def ready(self) -> bool:
        """
        Whether clipping and Adam on the flat buffers compute what ``clip_grad_norm_`` and ``optimizer.step()``
        would: no optimizer or parameter hook, the same parameters in the same storage, a supported parameter group
        (the optimizer's state is re-linked to the flat buffers after, e.g., ``optimizer.load_state_dict``).
        """
        if _optimizer_hooks._global_optimizer_pre_hooks or _optimizer_hooks._global_optimizer_post_hooks:
            return False
        optimizer = self.optimizer
        if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or "step" in vars(optimizer):
            return False
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return False  # set by an AMP GradScaler: the fused step would unscale and skip on inf
        groups = optimizer.param_groups
        if len(groups) != 1:
            return False
        if groups[0] is not self.group:  # e.g. after optimizer.load_state_dict: adopt the new group if it fits
            if {id(p) for p in groups[0]["params"]} != {id(p) for p in self.params}:
                return False
            self.group = groups[0]
        if not _group_supported(self.group):
            return False
        params = list(self.q_net.parameters())  # the same Parameter objects, in the same storage, all trained
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params, strict=True)):
            return False
        for param, pointer in zip(self.params, self._data_ptrs, strict=True):
            if (
                param.data_ptr() != pointer
                or not param.requires_grad
                or param._backward_hooks
                or param._post_accumulate_grad_hooks
            ):
                return False
        return self._state_linked() or self._link_state()

    def _state_linked(self) -> bool:
        if not self._state_views:
            return False
        state = self.optimizer.state
        for param, (step, exp_avg, exp_avg_sq) in zip(self.params, self._state_views, strict=True):
            entry = state.get(param)
            if (
                entry is None
                or entry.get("step") is not step
                or entry.get("exp_avg") is not exp_avg
                or entry.get("exp_avg_sq") is not exp_avg_sq
            ):
                return False
        return True

    def _link_state(self) -> bool:
        """Make Adam's per-parameter state views of flat buffers (zeros before the first step, as Adam starts)."""
        state = self.optimizer.state
        entries = [state.get(p) for p in self.params]
        if all(not entry for entry in entries):
            steps = th.zeros(len(self.params), dtype=th.float32)
            exp_avg = th.zeros_like(self.flat_params)
            exp_avg_sq = th.zeros_like(self.flat_params)
        elif all(entry and {"step", "exp_avg", "exp_avg_sq"} <= entry.keys() for entry in entries):
            tensors = [(e["step"], e["exp_avg"], e["exp_avg_sq"]) for e in entries]  # type: ignore[index]
            if any(
                s.numel() != 1
                or s.dtype != th.float32
                or s.device.type != "cpu"
                or m.dtype != th.float32
                or m.device.type != "cpu"
                or v.dtype != th.float32
                or v.device.type != "cpu"
                or m.numel() != p.numel()
                or v.numel() != p.numel()
                for (s, m, v), p in zip(tensors, self.params, strict=True)
            ):
                return False
            steps = th.stack([s.reshape(()) for s, _, _ in tensors])
            if not bool((steps == steps[0]).all()):  # one step count for all, as the autograd path keeps it
                return False
            exp_avg = self._flat([m for _, m, _ in tensors])
            exp_avg_sq = self._flat([v for _, _, v in tensors])
        else:
            return False
        self.flat_steps, self.flat_exp_avg, self.flat_exp_avg_sq = steps, exp_avg, exp_avg_sq
        self._state_views = []
        for i, (param, m, v) in enumerate(zip(self.params, self._views(exp_avg), self._views(exp_avg_sq), strict=True)):
            step = steps[i]
            state[param] = {"step": step, "exp_avg": m, "exp_avg_sq": v}
            self._state_views.append((step, m, v))
        self._state_lists = tuple(list(views) for views in zip(*self._state_views, strict=True))
        return True

    def zero_grad(self) -> None:
        """Zero the flat gradient buffer and make every ``param.grad`` its view, for backward to accumulate into."""
        self.flat_grads.zero_()
        self._link_grads()

    def _link_grads(self) -> None:
        for param, view in zip(self.params, self._grad_views, strict=True):
            if param.grad is not view:
                param.grad = view

    def clip_grad_norm(self, max_grad_norm: float) -> None:
        """
        ``clip_grad_norm_``'s ops on the flat gradient buffer: ``g ← g · min(c / (‖g‖₂ + 1e-6), 1)``.

        :param max_grad_norm: the largest L2 norm ``c`` of all gradients together
        """
        self._adopt_grads()
        self._clip(max_grad_norm)

    def _adopt_grads(self) -> None:
        """Gradients set since :meth:`zero_grad` as tensors of their own (not accumulated into the flat buffer, e.g.
        after ``param.grad = None``) are copied into it; ``None`` counts as zero."""
        for param, view in zip(self.params, self._grad_views, strict=True):
            grad = param.grad
            if grad is not view:
                if grad is None:
                    view.zero_()
                else:
                    view.copy_(grad)
                param.grad = view

    def _clip(self, max_grad_norm: float) -> None:
        total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(self._grad_views, 2.0)), 2.0)
        coef = th.clamp(float(max_grad_norm) / (total_norm + 1e-6), max=1.0)
        if not coef.item() >= 1.0:  # (g · 1 = g bitwise: only a coefficient below 1, or NaN, changes anything)
            self.flat_grads.mul_(coef)

    @th.no_grad()
    def adam_step(self) -> None:
        """``optimizer.step()``: ``torch.optim.Adam``'s multi-tensor sequence (or its fused kernel) on the flat
        buffers."""
        self._adam()

    def _adam(self) -> None:
        group = self.group
        lr, beta1, beta2, eps = (
            float(group["lr"]),
            float(group["betas"][0]),
            float(group["betas"][1]),
            float(group["eps"]),
        )
        self.flat_steps.add_(self._one, alpha=1.0)
        if group.get("fused") or (self.fused_kernel and _FUSED_ADAM_CPU):
            # torch.optim.Adam(fused=True): one call of the same fused kernel over the same per-tensor views (over
            # one flat tensor instead, a tensor's last few elements would take the kernel's vector path instead of
            # its scalar one, and round differently)
            steps, exp_avgs, exp_avg_sqs = self._state_lists
            _fused_adam(self._param_views, self._grad_views, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps)
            return
        g, m, v = self.flat_grads, self.flat_exp_avg, self.flat_exp_avg_sq
        t = self.flat_steps[0].item()
        m.lerp_(g, 1 - beta1)  # m ← β₁ m + (1 − β₁) g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v ← β₂ v + (1 − β₂) g²
        step_size = (lr / (1 - beta1**t)) * -1
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        denom = self._sqrt(v, bias_correction2_sqrt, eps).div_(bias_correction2_sqrt).add_(eps)  # √(v/(1 − β₂ᵗ)) + ε
        self.flat_params.addcdiv_(m, denom, value=step_size)  # θ ← θ − lr / (1 − β₁ᵗ) · m / denom

    def _sqrt(self, v: th.Tensor, bias_correction2_sqrt: float, eps: float) -> th.Tensor:
        """
        ``√v`` as Adam's denominator ``√v / √(1 − β₂ᵗ) + ε`` needs it: ``v.sqrt()``, or, where it changes no bit of
        that denominator, ``max(v, 1e-37).sqrt()``.

        On CPU, float32 ``sqrt`` is MKL's ``vsSqrt``, which takes a slow path (several times slower) on every vector
        of elements holding a zero or a subnormal; Adam's ``v`` holds many zeros (every weight of a dead ReLU unit,
        a fifth of the zoo CartPole network's after a few thousand steps). Every ``v < 1e-37`` gives the denominator
        ``ε`` exactly, whether ``√v`` or ``√1e-37`` goes into it, as long as ``√1e-37 / √(1 − β₂ᵗ)`` is below half
        a float32 ulp of ``ε`` (then ``fl(x + ε) = ε``): checked here on every step from ``β₂ᵗ`` and ``ε``
        (with Adam's defaults it holds from the first step on); where it does not hold, plain ``v.sqrt()``.
        """
        half_ulp = self._half_ulps.get(eps)
        if half_ulp is None:
            eps32 = th.tensor(eps, dtype=th.float32).item()  # ε as the float32 the add rounds it to
            mantissa, exponent = math.frexp(eps32)
            # half a float32 ulp of a normal ε (2⁻²⁵ · 2^exponent for ε in [2^(exponent−1), 2^exponent)); 0 disables
            half_ulp = math.ldexp(1.0, exponent - 25) if eps32 >= 2**-126 and math.isfinite(eps32) else 0.0
            self._half_ulps[eps] = half_ulp
        if _SQRT_FLOOR_ROOT >= half_ulp * bias_correction2_sqrt:
            return v.sqrt()
        return th.clamp_min(v, _SQRT_FLOOR, out=self._sqrt_buffer).sqrt_()


class FlatMLPAdam(FlatAdam):
    """
    One DQN gradient step (forward, Huber loss, backward, clipping, Adam) without autograd: see the module
    docstring for what it computes and when it applies. Build it with :meth:`for_network`, which returns ``None``
    where it does not apply; before each :meth:`step` call :meth:`ready` (and, for :meth:`step`,
    :meth:`mlp_ready`: where only the latter fails, autograd's backward pass plus the flat Adam of
    :class:`FlatAdam` still apply).

    :param q_net: the online Q-network
    :param optimizer: its ``torch.optim.Adam``
    """

    def __init__(self, q_net: QNetwork, optimizer: th.optim.Optimizer) -> None:
        super().__init__(q_net, optimizer)
        self.seq = q_net.q_net
        self.modules = tuple(self.seq._modules.values())
        # forward ops (same as the Q-network's fast path) and, per module, what the backward pass does
        self.activations = [
            (_FUNCTIONAL_ACTIVATIONS[type(m)], _ACTIVATION_BACKWARD[type(m)])
            for m in self.modules
            if type(m) is not nn.Linear
        ]

    @classmethod
    def for_network(cls, q_net: QNetwork, optimizer: th.optim.Optimizer) -> FlatMLPAdam | None:
        """
        :param q_net: the online Q-network
        :param optimizer: the optimizer over its parameters
        :return: the fast step for them, or ``None`` where it does not apply (the autograd path is used)
        """
        # (a QNetwork subclass may compute something else in forward: autograd runs it)
        if not ENABLED or type(q_net) is not QNetwork or type(optimizer) is not th.optim.Adam:
            return None
        if q_net.dueling or q_net.noisy or q_net.distributional or not isinstance(q_net.q_net, nn.Sequential):
            return None
        params = list(q_net.parameters())
        seq_params = list(q_net.q_net.parameters())
        if (
            not params
            or len(params) != len(seq_params)
            or any(a is not b for a, b in zip(params, seq_params, strict=True))
            or len(q_net.features_extractor.state_dict()) > 0
            or not _layers_supported(tuple(q_net.q_net._modules.values()))
        ):
            return None
        return super().for_network(q_net, optimizer)  # type: ignore[return-value]  # (built as cls)

    def mlp_ready(self) -> bool:
        """
        Whether :meth:`step` computes what autograd would: no module hook (global ones too), no layer replaced
        or patched since the last step.
        """
        if _global_hooks():
            return False
        q_net = self.q_net
        if q_net.q_net is not self.seq or tuple(self.seq._modules.values()) != self.modules:
            return False
        # layers changed in place (e.g. a parametrization changes a layer's class) or patched on the instance
        if not _layers_supported(self.modules) or any("forward" in vars(m) for m in self.modules):
            return False
        return not (_has_hooks(q_net) or _has_hooks(self.seq) or any(_has_hooks(m) for m in self.modules))

    @th.no_grad()
    def step(
        self,
        features: th.Tensor,
        actions: th.Tensor,
        td_target: th.Tensor,
        max_grad_norm: float,
        weights: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        One gradient step on ``L = mean_i huber(Q(s_i, a_i) − y_i)``, or ``mean_i w_i huber(Q(s_i, a_i) − y_i)``
        with importance weights.

        :param features: the Q-network's input (its features extractor's output), ``(batch, features_dim)``
        :param actions: ``a_i``, int64, ``(batch, 1)``
        :param td_target: ``y_i``, ``(batch, 1)``
        :param max_grad_norm: clip the gradient to this L2 norm
        :param weights: importance-sampling weights ``w_i``, ``(batch,)`` (prioritized replay), or ``None``
        :return: the loss and ``Q(s_i, a_i)``, both before the step
        """
        # forward, keeping every layer's output
        outputs = [features]
        h = features
        activations = iter(self.activations)
        for module in self.modules:
            if type(module) is nn.Linear:
                params = module._parameters  # (module.weight without nn.Module.__getattr__'s lookups)
                h = F.linear(h, params["weight"], params["bias"])
            else:
                h = next(activations)[0](h)
            outputs.append(h)
        q_values = h.gather(1, actions)  # Q(s, a; θ)
        if weights is None:
            loss = F.smooth_l1_loss(q_values, td_target)
            # backward: ∂L/∂Q(s, a), scattered back to the chosen actions, then layer by layer
            grad = _aten.smooth_l1_loss_backward(self._one, q_values, td_target, _MEAN, 1.0)
        else:
            per_sample = F.smooth_l1_loss(q_values, td_target, reduction="none").reshape(-1)
            loss = (weights * per_sample).mean()
            n = per_sample.shape[0]
            grad = (self._one.expand(n) / n * weights).reshape(q_values.shape)  # ∂L/∂huber_i = w_i / n
            grad = _aten.smooth_l1_loss_backward(grad, q_values, td_target, _NONE, 1.0)
        grad = th.zeros_like(h).scatter_add_(1, actions, grad)
        grads = iter(reversed(self._grad_views))
        backward = iter(reversed(self.activations))
        for index in range(len(self.modules) - 1, -1, -1):
            module = self.modules[index]
            if type(module) is nn.Linear:
                grad_bias, grad_weight = next(grads), next(grads)
                th.mm(grad.t(), outputs[index], out=grad_weight)  # ∂L/∂W = gᵀ x
                th.sum(grad, 0, out=grad_bias)  # ∂L/∂b = Σ_i g_i
                if index > 0:
                    grad = grad.mm(module._parameters["weight"])  # ∂L/∂x = g W
            else:
                grad = next(backward)[1](grad, outputs[index + 1])
        self._link_grads()
        self._clip(max_grad_norm)  # clip_grad_norm_: g ← g · min(c / (‖g‖₂ + 1e-6), 1)
        self._adam()  # Adam: torch.optim.Adam's multi-tensor sequence (or fused kernel) on the flat buffers
        return loss, q_values


# ------------------------------------------------------------------------------------------------ NumPy backend
def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    """``σ(x) = (tanh(x / 2) + 1) / 2`` in place (no overflow for large ``|x|``)."""
    np.multiply(x, 0.5, out=x)
    np.tanh(x, out=x)
    np.add(x, 1.0, out=x)
    return np.multiply(x, 0.5, out=x)


def _np_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _np_tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _np_relu_backward(grad: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(grad, out > 0, out=grad)  # σ'(x) = [x > 0], read from the output as autograd does


def _np_tanh_backward(grad: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(grad, 1.0 - out * out, out=grad)  # tanh' = 1 − tanh²


def _np_sigmoid_backward(grad: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(grad, out * (1.0 - out), out=grad)  # σ' = σ (1 − σ)


# activation class → (forward in place, backward in place from the activation's output)
_NUMPY_ACTIVATIONS: dict[type, tuple[Callable[[np.ndarray], np.ndarray], Callable[..., np.ndarray]]] = {
    nn.ReLU: (_np_relu, _np_relu_backward),
    nn.Tanh: (_np_tanh, _np_tanh_backward),
    nn.Sigmoid: (_np_sigmoid, _np_sigmoid_backward),
}


def _plain_flatten(q_net: QNetwork) -> bool:
    """Whether the Q-network's features are its float observations flattened (SB3's ``FlattenExtractor`` on a
    non-image ``Box``, no hook): what :class:`NumpyMLP` reads directly from the observations."""
    extractor = q_net.features_extractor
    if type(extractor) is not FlattenExtractor or _has_hooks(extractor) or _has_hooks(extractor.flatten):
        return False
    space = q_net.observation_space
    return isinstance(space, spaces.Box) and not is_image_space(space)


class _NumpyNetwork:
    """What the NumPy forward passes share: the Q-network's modules as they were built, and the check that nothing
    changed since (subclasses define :meth:`stale`)."""

    def __init__(self, q_net: QNetwork) -> None:
        self.q_net = q_net
        self.seq = q_net.q_net
        self.modules = tuple(self.seq._modules.values())
        self.types = tuple(type(m) for m in self.modules)
        self.extractor = q_net.features_extractor

    def stale(self) -> bool:
        raise NotImplementedError

    def _untouched(self, modules: tuple[nn.Module, ...], types: tuple[type, ...], methods: tuple[str, ...]) -> bool:
        """The same features extractor, layers and storage (not :meth:`stale`), no ``methods`` of the network and
        no ``forward`` of ``modules`` patched on the instance, the same module classes (a parametrization changes a
        layer's class), no hook (global ones too)."""
        q_net, extractor = self.q_net, self.extractor
        if q_net.features_extractor is not extractor or _global_hooks() or self.stale():
            return False
        if any(name in q_net.__dict__ for name in methods) or "forward" in self.seq.__dict__:
            return False
        for module, module_type in zip(modules, types, strict=True):
            if type(module) is not module_type or "forward" in module.__dict__ or _has_hooks(module):
                return False
        return not (_has_hooks(q_net) or _has_hooks(self.seq) or _has_hooks(extractor) or _has_hooks(extractor.flatten))


class NumpyMLP(_NumpyNetwork):
    """
    The forward pass of a :class:`~sb3_dqn_ext.policies.QNetwork`'s plain MLP (``nn.Linear`` layers with ReLU, Tanh
    or Sigmoid), computed by NumPy on the layers' own storage: the weights are zero-copy NumPy views of the
    parameters, so they are always the network's current values. Used by ``mlp_backend="numpy"`` to act and to
    compute TD targets without PyTorch's per-op dispatch. Build it with :meth:`for_network` (``None`` where it does
    not apply) and call :meth:`ready` before using it: it is false as soon as a layer, parameter storage or the
    features extractor changed, or a hook was registered (then the PyTorch module runs, with its hooks).

    :param q_net: the Q-network
    """

    def __init__(self, q_net: QNetwork) -> None:
        super().__init__(q_net)
        self.linears = [(m, m.weight, m.bias) for m in self.modules if type(m) is nn.Linear]
        self._data_ptrs = [(w.data_ptr(), b.data_ptr()) for _, w, b in self.linears]
        # per module: (W, b) views for a linear layer, or the activation's (forward, backward)
        self.layers: list[tuple[Any, Any]] = [
            (m.weight.detach().numpy(), m.bias.detach().numpy())
            if type(m) is nn.Linear
            else _NUMPY_ACTIVATIONS[type(m)]
            for m in self.modules
        ]
        self.is_linear = [type(m) is nn.Linear for m in self.modules]

    @classmethod
    def for_network(cls, q_net: QNetwork) -> NumpyMLP | None:
        """
        :param q_net: a Q-network
        :return: its NumPy forward pass, or ``None`` where it does not apply (dueling, noisy or C51 heads, a
            features extractor other than flattening a float ``Box``, other layers, not CPU float32)
        """
        if type(q_net) is not QNetwork or q_net.dueling or q_net.noisy or q_net.distributional:
            return None
        if not isinstance(q_net.q_net, nn.Sequential) or not _plain_flatten(q_net):
            return None
        modules = tuple(q_net.q_net._modules.values())
        if not _layers_supported(modules) or any(
            type(m) is not nn.Linear and type(m) not in _NUMPY_ACTIVATIONS for m in modules
        ):
            return None
        # (activations run in place on the previous layer's output: two in a row would overwrite what the first
        # one's backward pass reads)
        activation = [type(m) is not nn.Linear for m in modules]
        if any(activation[i] and activation[i + 1] for i in range(len(modules) - 1)):
            return None
        params = list(q_net.parameters())
        if len(params) != len(list(q_net.q_net.parameters())) or any(
            p.device.type != "cpu" or p.dtype != th.float32 for p in params
        ):
            return None
        return cls(q_net)

    def stale(self) -> bool:
        """Whether the network's layers, their parameters or the parameters' storage changed (e.g. ``.to()``, a deep
        copy, a parameter replaced, the flat buffers of :class:`FlatAdam`): build a new one."""
        if self.q_net.q_net is not self.seq or tuple(self.seq._modules.values()) != self.modules:
            return True
        for (module, weight, bias), (weight_ptr, bias_ptr) in zip(self.linears, self._data_ptrs, strict=True):
            params = module._parameters  # (module.weight would go through nn.Module.__getattr__)
            if params.get("weight") is not weight or params.get("bias") is not bias:
                return True
            if weight.data_ptr() != weight_ptr or bias.data_ptr() != bias_ptr:
                return True
        return False

    def ready(self) -> bool:
        """Whether :meth:`__call__` computes what ``q_net(obs)`` would: the same layers and parameters in the same
        storage, nothing patched, no hook (global ones too)."""
        return self._untouched(self.modules, self.types, ("forward", "_predict"))

    @staticmethod
    def features(obs: np.ndarray) -> np.ndarray:
        """The network's input for a batch of observations: flattened, as float32."""
        if obs.dtype == np.float32 and obs.ndim == 2:
            return obs
        return np.asarray(obs, dtype=np.float32).reshape(obs.shape[0], math.prod(obs.shape[1:]))

    def __call__(self, x: np.ndarray, outputs: list[np.ndarray] | None = None) -> np.ndarray:
        """
        :param x: the features, ``(batch, features_dim)`` float32
        :param outputs: when given, every layer's output is appended to it (for the backward pass)
        :return: ``Q(s, ·)``, ``(batch, n_actions)``
        """
        h = x
        for linear, layer in zip(self.is_linear, self.layers, strict=True):
            if linear:
                h = h @ layer[0].T  # x Wᵀ + b
                h += layer[1]
            else:
                h = layer[0](h)  # in place (the backward pass reads activations' outputs, not their inputs)
            if outputs is not None:
                outputs.append(h)
        return h


def _fused_adam_cpu() -> bool:
    """Whether this PyTorch has the fused Adam kernel for CPU tensors (``Adam(fused=True)`` on CPU, PyTorch ≥ 2.4)."""
    try:
        _fused_adam([th.zeros(2)], [th.zeros(2)], [th.zeros(2)], [th.zeros(2)], [th.ones(())], 1e-3, 0.9, 0.999, 1e-8)
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):
        return False
    return True


_FUSED_ADAM_CPU = _fused_adam_cpu()


class _NumpyFlatAdam(FlatAdam):
    """
    Clipping and Adam for the NumPy steps, on :class:`FlatAdam`'s flat buffers through zero-copy NumPy views: Adam
    by one call of PyTorch's fused CPU kernel (``Adam(fused=True)``'s) over the flat buffers, or in NumPy where this
    PyTorch has no such kernel. Call :meth:`_numpy_views` once the parameters are views of the flat buffer.
    """

    def _numpy_views(self) -> None:
        self._np_params = self.flat_params.numpy()
        self._np_grads = self.flat_grads.numpy()
        self._np_grad_views = [g.numpy() for g in self._grad_views]
        self._tmp = np.empty_like(self._np_params)
        self._tmp2 = np.empty_like(self._np_params)
        self._ones: dict[int, np.ndarray] = {}  # batch size → a row of ones (Σ_i as a product)

    def _row_of_ones(self, n: int) -> np.ndarray:
        ones = self._ones.get(n)
        if ones is None:
            ones = self._ones[n] = np.ones(n, dtype=np.float32)
        return ones

    def _link_state(self) -> bool:
        if not super()._link_state():
            return False
        self._np_steps = self.flat_steps.numpy()
        # the fused kernel's tensor lists, built once (every parameter's step is the same count: one of them)
        flat = (self.flat_params, self.flat_grads, self.flat_exp_avg, self.flat_exp_avg_sq, self.flat_steps[:1])
        self._fused_lists = tuple([tensor] for tensor in flat)
        self._np_exp_avg = self.flat_exp_avg.numpy()
        self._np_exp_avg_sq = self.flat_exp_avg_sq.numpy()
        return True

    def _np_clip_and_adam(self, max_grad_norm: float) -> None:
        """``clip_grad_norm_`` (``g ← g · min(c / (‖g‖₂ + 1e-6), 1)``) and Adam on the flat buffers."""
        self._link_grads()
        g = self._np_grads
        scale = float(max_grad_norm) / (math.sqrt(float(np.dot(g, g))) + 1e-6)
        if not scale >= 1.0:  # (NaN too: it propagates, as with clip_grad_norm_)
            np.multiply(g, scale, out=g)
        self._np_adam()

    def _np_adam(self) -> None:
        """
        Adam (Kingma & Ba), as ``torch.optim.Adam`` computes it, on the flat buffers: one call of PyTorch's fused CPU
        kernel (``Adam(fused=True)``'s, one pass over the buffers where NumPy needs twelve), or, where this PyTorch
        has none, the same update in NumPy.
        """
        group = self.group
        lr, eps = float(group["lr"]), float(group["eps"])
        beta1, beta2 = float(group["betas"][0]), float(group["betas"][1])
        self._np_steps += 1.0
        if _FUSED_ADAM_CPU:
            _fused_adam(*self._fused_lists, lr, beta1, beta2, eps)  # (t already counted)
            return
        g, m, v, tmp, tmp2 = self._np_grads, self._np_exp_avg, self._np_exp_avg_sq, self._tmp, self._tmp2
        t = float(self._np_steps[0])
        np.multiply(m, beta1, out=m)
        np.multiply(g, 1.0 - beta1, out=tmp)
        np.add(m, tmp, out=m)  # m ← β₁ m + (1 − β₁) g
        np.multiply(v, beta2, out=v)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, 1.0 - beta2, out=tmp)
        np.add(v, tmp, out=v)  # v ← β₂ v + (1 − β₂) g²
        # θ ← θ − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε), with √(1 − β₂ᵗ) moved to the numerator
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        np.sqrt(v, out=tmp)
        np.add(tmp, eps * bias_correction2_sqrt, out=tmp)
        np.divide(m, tmp, out=tmp2)
        np.multiply(tmp2, -lr * bias_correction2_sqrt / (1.0 - beta1**t), out=tmp2)
        np.add(self._np_params, tmp2, out=self._np_params)


class NumpyMLPAdam(FlatMLPAdam, _NumpyFlatAdam):
    """
    :class:`FlatMLPAdam`'s gradient step (forward, Huber loss, backward, clipping, Adam) computed by NumPy on the same
    flat buffers (zero-copy views), for ``ScratchDQN(mlp_backend="numpy")``. The same mathematics as
    ``torch.optim.Adam`` after autograd, but other kernels (NumPy's BLAS instead of PyTorch's; Adam by PyTorch's
    fused CPU kernel, ``Adam(fused=True)``'s, in one call over the flat buffers, or in NumPy where this PyTorch has
    no such kernel), so only the low-order bits differ from the PyTorch path; it is
    deterministic for a seed. It saves PyTorch's per-op dispatch, which for a small MLP costs more than the
    arithmetic. The optimizer's state stays ``torch.optim.Adam``'s (views of the flat buffers), so saving, loading
    and switching back to the PyTorch path continue the same run.

    :param q_net: the online Q-network
    :param optimizer: its ``torch.optim.Adam``
    """

    def __init__(self, q_net: QNetwork, optimizer: th.optim.Optimizer) -> None:
        super().__init__(q_net, optimizer)
        self.forward = NumpyMLP(q_net)  # (after FlatAdam made the parameters views of the flat buffer)
        self._numpy_views()

    @classmethod
    def for_network(cls, q_net: QNetwork, optimizer: th.optim.Optimizer) -> NumpyMLPAdam | None:
        """
        :param q_net: the online Q-network
        :param optimizer: the optimizer over its parameters
        :return: the NumPy step for them, or ``None`` where it does not apply
        """
        if NumpyMLP.for_network(q_net) is None:
            return None
        return super().for_network(q_net, optimizer)  # type: ignore[return-value]  # (built as cls)

    def mlp_ready(self) -> bool:
        return super().mlp_ready() and self.forward.ready()

    def step(
        self,
        features: th.Tensor,
        actions: th.Tensor,
        td_target: th.Tensor,
        max_grad_norm: float,
        weights: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        One gradient step on ``L = mean_i (w_i) huber(Q(s_i, a_i) − y_i)``, as :meth:`FlatMLPAdam.step`.

        :param features: the Q-network's input, ``(batch, features_dim)``, or the observations it flattens into it
        :param actions: ``a_i``, int64, ``(batch, 1)``
        :param td_target: ``y_i``, ``(batch, 1)``
        :param max_grad_norm: clip the gradient to this L2 norm
        :param weights: importance-sampling weights ``w_i``, ``(batch,)`` (prioritized replay), or ``None``
        :return: the loss and ``Q(s_i, a_i)``, both before the step
        """
        x = NumpyMLP.features(features.numpy())  # (the observations, or the features: flattened float32)
        outputs = [x]
        q_all = self.forward(x, outputs)
        n = x.shape[0]
        rows = np.arange(n)
        chosen = actions.numpy().reshape(-1)
        q_values = q_all[rows, chosen]  # Q(s, a; θ)
        delta = q_values - td_target.numpy().reshape(-1)
        abs_delta = np.abs(delta)
        clipped = np.minimum(abs_delta, 1.0)
        per_sample = clipped * (abs_delta - 0.5 * clipped)  # huber(δ): δ²/2 where |δ| < 1, |δ| − 1/2 elsewhere
        grad_q = np.maximum(np.minimum(delta, 1.0), -1.0)  # ∂huber/∂δ = clip(δ, −1, 1)
        if weights is None:
            loss = per_sample.sum() / n
            grad_q /= n
        else:
            w = weights.numpy().reshape(-1)
            loss = np.dot(w, per_sample) / n
            grad_q *= w / n
        # backward: ∂L/∂Q(s, a) into the chosen actions' column, then layer by layer
        grad = np.zeros_like(q_all)
        grad[rows, chosen] = grad_q
        ones = self._row_of_ones(n)
        grads = iter(reversed(self._np_grad_views))
        layers = self.forward.layers
        for index in range(len(layers) - 1, -1, -1):
            layer = layers[index]
            if self.forward.is_linear[index]:
                grad_bias, grad_weight = next(grads), next(grads)
                np.matmul(grad.T, outputs[index], out=grad_weight)  # ∂L/∂W = gᵀ x
                np.dot(ones, grad, out=grad_bias)  # ∂L/∂b = Σ_i g_i
                if index > 0:
                    grad = grad @ layer[0]  # ∂L/∂x = g W
            else:
                grad = layer[1](grad, outputs[index + 1])
        self._np_clip_and_adam(max_grad_norm)
        return th.from_numpy(np.asarray(loss, dtype=np.float32)), th.from_numpy(q_values.reshape(-1, 1))


# ------------------------------------------------------------------------------------------------ NumPy C51 step
class _NumpyLinear:
    """
    An ``nn.Linear`` or :class:`~sb3_dqn_ext.policies.NoisyLinear` layer as NumPy sees it: zero-copy views of its
    parameters and noise, and, for a noisy layer, its noise matrix ``f(ε_out) f(ε_in)ᵀ`` and noisy weights
    ``μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ``, ``μ_b + σ_b ⊙ f(ε_out)``, built by :meth:`build` with the ops of
    ``NoisyLinear.weight`` and ``NoisyLinear.bias`` (so the same numbers).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.noisy = type(module) is NoisyLinear
        params = module._parameters
        if self.noisy:
            names = ("weight_mu", "weight_sigma", "bias_mu", "bias_sigma")
            self.eps_in_t, self.eps_out_t = module._buffers["epsilon_in"], module._buffers["epsilon_out"]
            self.eps_out = self.eps_out_t.numpy()
            shape = params["weight_mu"].shape
            self.noise_t, self.weight_t, self.bias_t = th.empty(shape), th.empty(shape), th.empty(shape[0])
            self.noise, self.weight, self.bias = self.noise_t.numpy(), self.weight_t.numpy(), self.bias_t.numpy()
            # (for the action of one or a few rows: the factorised form, without building the weights)
            self.eps_in = self.eps_in_t.numpy()
            self.w_mu, self.w_sigma, self.b_mu, self.b_sigma = (params[n].detach().numpy() for n in names)
            self.tensors: tuple[th.Tensor, ...] = (*(params[n] for n in names), self.eps_in_t, self.eps_out_t)
        else:
            names = ("weight", "bias")
            self.weight, self.bias = params["weight"].detach().numpy(), params["bias"].detach().numpy()
            self.tensors = tuple(params[n] for n in names)
        self.params = tuple(params[n] for n in names)
        self._ptrs = [t.data_ptr() for t in self.tensors]

    @staticmethod
    def supported(module: nn.Module) -> bool:
        if type(module) is NoisyLinear:
            return all(
                t.device.type == "cpu" and t.dtype == th.float32 and t.is_contiguous()
                for t in (*module._parameters.values(), *module._buffers.values())
            )
        return type(module) is nn.Linear and module.bias is not None

    def stale(self) -> bool:
        """Whether a parameter or noise buffer was replaced or moved to other storage."""
        module = self.module
        current = (*module._parameters.values(), *(module._buffers.values() if self.noisy else ()))
        return len(current) != len(self.tensors) or any(
            a is not b or a.data_ptr() != ptr for a, b, ptr in zip(current, self.tensors, self._ptrs, strict=True)
        )

    def build(self) -> None:
        if self.noisy:
            w_mu, w_sigma, b_mu, b_sigma = self.params
            with th.no_grad():
                th.outer(self.eps_out_t, self.eps_in_t, out=self.noise_t)
                th.addcmul(w_mu, w_sigma, self.noise_t, out=self.weight_t)  # μ_w + σ_w ⊙ f(ε_out) f(ε_in)ᵀ
                th.addcmul(b_mu, b_sigma, self.eps_out_t, out=self.bias_t)  # μ_b + σ_b ⊙ f(ε_out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = x @ self.weight.T  # x Wᵀ + b
        h += self.bias
        return h

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The layer's output for a few rows without building the noisy weights, as ``NoisyLinear`` computes it:
        ``μ_w x + μ_b + (σ_w (f(ε_in) ⊙ x) + σ_b) ⊙ f(ε_out)``."""
        if not self.noisy:
            return self(x)
        h = x @ self.w_mu.T
        h += self.b_mu
        noise = (x * self.eps_in) @ self.w_sigma.T
        noise += self.b_sigma
        noise *= self.eps_out
        h += noise
        return h

    def backward(self, grad: np.ndarray, x: np.ndarray, grads: tuple[np.ndarray, ...], ones: np.ndarray) -> None:
        """The gradients of the parameters from ``∂L/∂y`` and the layer's input, into ``grads`` (the parameters'
        order): ``∂L/∂W = gᵀ x``, ``∂L/∂b = Σ_i g_i``; for a noisy layer ``∂L/∂σ_w = ∂L/∂W ⊙ f(ε_out) f(ε_in)ᵀ``
        and ``∂L/∂σ_b = ∂L/∂b ⊙ f(ε_out)``."""
        if not self.noisy:
            np.matmul(grad.T, x, out=grads[0])  # ∂L/∂W
            np.dot(ones, grad, out=grads[1])  # ∂L/∂b
            return
        grad_w_mu, grad_w_sigma, grad_b_mu, grad_b_sigma = grads
        np.matmul(grad.T, x, out=grad_w_mu)
        np.dot(ones, grad, out=grad_b_mu)
        np.multiply(grad_w_mu, self.noise, out=grad_w_sigma)
        np.multiply(grad_b_mu, self.eps_out, out=grad_b_sigma)


class NumpyC51(_NumpyNetwork):
    """
    The forward pass of a distributional (C51) :class:`~sb3_dqn_ext.policies.QNetwork` on flattened ``Box``
    observations, computed by NumPy on the network's own storage: an MLP of ``nn.Linear`` or
    :class:`~sb3_dqn_ext.policies.NoisyLinear` layers with ReLU, Tanh or Sigmoid, and a C51 head, plain or dueling
    (one layer per stream), with noisy layers or not: Rainbow's network. Used by ``mlp_backend="numpy"`` for the C51
    gradient step (:class:`NumpyC51Adam`) and its TD target. Build it with :meth:`for_network` (``None`` where it does
    not apply) and call :meth:`ready` before each use.

    :param q_net: the Q-network
    """

    def __init__(self, q_net: QNetwork) -> None:
        super().__init__(q_net)
        self.trunk: list[tuple[bool, Any]] = [
            (True, _NumpyLinear(m)) if type(m) in (nn.Linear, NoisyLinear) else (False, _NUMPY_ACTIVATIONS[type(m)])
            for m in self.modules
        ]
        self.streams: tuple[nn.Sequential, ...] = ()
        self.heads: list[_NumpyLinear] = []
        if q_net.dueling:
            self.streams = (q_net.value_stream, q_net.advantage_stream)
            self.heads = [_NumpyLinear(stream[0]) for stream in self.streams]  # value, advantage
        self.linears = [layer for is_linear, layer in self.trunk if is_linear] + self.heads
        self.n_actions, self.n_atoms = q_net.n_actions, int(q_net.n_atoms)  # type: ignore[arg-type]
        self._support_t = q_net.support
        self.support = self._support_t.numpy()

    @classmethod
    def for_network(cls, q_net: QNetwork) -> NumpyC51 | None:
        """
        :param q_net: a Q-network
        :return: its NumPy forward pass, or ``None`` where it does not apply (not C51, features other than a
            flattened float ``Box``, other layers, several layers per dueling stream, not CPU float32)
        """
        if type(q_net) is not QNetwork or not q_net.distributional or not isinstance(q_net.q_net, nn.Sequential):
            return None
        if not _plain_flatten(q_net) or q_net.support.device.type != "cpu":
            return None
        modules = tuple(q_net.q_net._modules.values())
        linear = [type(m) in (nn.Linear, NoisyLinear) for m in modules]
        if modules and not linear[0]:
            return None  # (activations run in place: never on the observations themselves)
        for i, m in enumerate(modules):
            if linear[i] and not _NumpyLinear.supported(m):
                return None
            if not linear[i] and (type(m) not in _NUMPY_ACTIVATIONS or getattr(m, "inplace", False)):
                return None
            if i > 0 and not linear[i] and not linear[i - 1]:
                return None  # (activations run in place: see NumpyMLP)
        heads: list[nn.Module] = []
        if q_net.dueling:
            streams = (q_net.value_stream, q_net.advantage_stream)
            if any(not isinstance(s, nn.Sequential) or len(s) != 1 for s in streams):
                return None
            heads = [s[0] for s in streams]
            if any(type(h) not in (nn.Linear, NoisyLinear) or not _NumpyLinear.supported(h) for h in heads):
                return None
        elif not modules or not linear[-1]:
            return None
        owned = [p for m in (*modules, *heads) for p in m.parameters()]
        params = list(q_net.parameters())
        if len(params) != len(owned) or {id(p) for p in params} != {id(p) for p in owned}:
            return None
        if any(p.device.type != "cpu" or p.dtype != th.float32 for p in params):
            return None
        return cls(q_net)

    def stale(self) -> bool:
        """Whether a layer, parameter, noise buffer or their storage changed: build a new one."""
        q_net = self.q_net
        if q_net.q_net is not self.seq or tuple(self.seq._modules.values()) != self.modules:
            return True
        if self.streams and (
            q_net.value_stream is not self.streams[0] or q_net.advantage_stream is not self.streams[1]
        ):
            return True
        if q_net._buffers.get("support") is not self._support_t:
            return True
        if any(tuple(s._modules.values()) != (h.module,) for s, h in zip(self.streams, self.heads, strict=True)):
            return True
        return any(layer.stale() for layer in self.linears)

    def ready(self) -> bool:
        """Whether :meth:`__call__` computes what the network would: the same layers and storage, nothing patched,
        no hook (global ones too), the noisy layers' noise on."""
        modules = (*self.modules, *(h.module for h in self.heads))
        types = (*self.types, *(type(h.module) for h in self.heads))
        if not self._untouched(modules, types, ("forward", "_head", "log_probs", "_predict")):
            return False
        if any(type(m) is NoisyLinear and not m.noise_enabled for m in modules):
            return False
        return not any(_has_hooks(s) or "forward" in s.__dict__ for s in self.streams)

    def build(self) -> None:
        """Build the noisy layers' weights from their current noise (call after every ``reset_noise``)."""
        for layer in self.linears:
            layer.build()

    def __call__(self, x: np.ndarray, outputs: list[np.ndarray] | None = None) -> np.ndarray:
        """
        :param x: the features, ``(batch, features_dim)`` float32
        :param outputs: when given, every trunk module's output is appended to it (for the backward pass)
        :return: the logits ``(batch, n_actions, n_atoms)``: ``V + A − mean_a A`` per atom with a dueling head
        """
        h = x
        for is_linear, layer in self.trunk:
            h = layer(h) if is_linear else layer[0](h)  # (activations in place)
            if outputs is not None:
                outputs.append(h)
        if not self.heads:
            return h.reshape(len(h), self.n_actions, self.n_atoms)
        value = self.heads[0](h).reshape(len(h), 1, self.n_atoms)
        advantage = self.heads[1](h).reshape(len(h), self.n_actions, self.n_atoms)
        logits = value + advantage  # Q = V + A − mean_a A, per atom
        logits -= advantage.mean(axis=1, keepdims=True)
        return logits

    def q_values(self, x: np.ndarray) -> np.ndarray:
        """
        ``Q(s, a) = Σ_i z_i p(s, a, z_i)`` for a few rows (the rollout's actions), on the noise the layers hold now,
        without building the noisy weights (see :meth:`_NumpyLinear.rows`).

        :param x: the features, ``(batch, features_dim)`` float32
        :return: ``(batch, n_actions)``
        """
        h = x
        for is_linear, layer in self.trunk:
            h = layer.rows(h) if is_linear else layer[0](h)
        if not self.heads:
            logits = h.reshape(len(h), self.n_actions, self.n_atoms)
        else:
            value = self.heads[0].rows(h).reshape(len(h), 1, self.n_atoms)
            advantage = self.heads[1].rows(h).reshape(len(h), self.n_actions, self.n_atoms)
            logits = value + advantage
            logits -= advantage.mean(axis=1, keepdims=True)
        return self.softmax(logits) @ self.support

    @staticmethod
    def softmax(logits: np.ndarray) -> np.ndarray:
        """``p = softmax(logits)`` over the atoms."""
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return p


class NumpyC51Adam(_NumpyFlatAdam):
    """
    The C51 gradient step of ``ScratchDQN`` (TD target, cross-entropy loss, backward, clipping, Adam) computed by
    NumPy for ``mlp_backend="numpy"``, on the flat buffers of :class:`FlatAdam`, for the networks
    :class:`NumpyC51` supports (Rainbow's noisy dueling C51 MLP among them):

    1. the TD target: ``a* = argmax_a Σ_i z_i p(s', a, z_i)`` by the online network (``double_q``) or the target
       one, ``Tz = r + γ^n (1 − done) z``, and ``m = Φ(Tz, p_target(s', a*))``, C51's projection, summed with one
       ``bincount``;
    2. the loss ``L = mean_i (w_i) H(m_i, p(s_i, a_i))``, ``H`` the cross-entropy; ``H`` per sample is the
       priority;
    3. the backward pass: ``∂L/∂logits(s_i, a_i) = (w_i / n) (softmax · Σ_j m_ij − m_i)`` (zero for the other
       actions), through the dueling combination (``∂V = g``, ``∂A_a = [a = a_i] g − g / |A|``) and the layers;
    4. clipping and Adam as :class:`NumpyMLPAdam`.

    The online network runs once on the observations and next observations together. The same mathematics as
    the PyTorch path with other kernels: the low-order bits differ (``tests/test_numpy_backend.py`` pins it to the
    PyTorch step within float32 rounding).

    :param q_net: the online Q-network
    :param optimizer: its ``torch.optim.Adam``
    """

    def __init__(self, q_net: QNetwork, optimizer: th.optim.Optimizer) -> None:
        super().__init__(q_net, optimizer)
        self.net = NumpyC51(q_net)  # (after FlatAdam made the parameters views of the flat buffer)
        self._numpy_views()
        grad_of = {id(p): g for p, g in zip(self.params, self._np_grad_views, strict=True)}
        self.layer_grads = [tuple(grad_of[id(p)] for p in layer.params) for layer in self.net.linears]

    @classmethod
    def for_network(cls, q_net: QNetwork, optimizer: th.optim.Optimizer) -> NumpyC51Adam | None:
        """
        :param q_net: the online Q-network
        :param optimizer: the optimizer over its parameters
        :return: the NumPy C51 step for them, or ``None`` where it does not apply
        """
        if not ENABLED or NumpyC51.for_network(q_net) is None:
            return None
        return super().for_network(q_net, optimizer)  # type: ignore[return-value]  # (built as cls)

    def stale(self, q_net: nn.Module, optimizer: th.optim.Optimizer) -> bool:
        """:meth:`FlatAdam.stale`, or a layer, noise buffer or support of the network replaced: build a new one."""
        return super().stale(q_net, optimizer) or self.net.stale()

    def c51_ready(self) -> bool:
        """Whether :meth:`step` computes what the PyTorch path would (see :meth:`NumpyC51.ready`)."""
        return self.net.ready()

    def step(
        self,
        target: NumpyC51,
        data: Any,
        discounts: th.Tensor | float,
        max_grad_norm: float,
        weights: th.Tensor | None,
        double_q: bool,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        One C51 gradient step on a minibatch, with the noise the networks hold now.

        :param target: the target network's NumPy forward pass
        :param data: the minibatch (observations, actions, next observations, rewards, dones)
        :param discounts: ``γ^n`` per sample (n-step returns) or ``γ``
        :param max_grad_norm: clip the gradient to this L2 norm
        :param weights: importance-sampling weights ``w_i``, ``(batch,)`` (prioritized replay), or ``None``
        :param double_q: the online network picks ``a*``
        :return: the loss and the per-sample cross-entropy (the priorities), both before the step
        """
        online = self.net
        obs = NumpyMLP.features(data.observations.numpy())
        next_obs = NumpyMLP.features(data.next_observations.numpy())
        n, k = obs.shape[0], online.n_atoms
        rows = np.arange(n)
        online.build()
        target.build()
        outputs = [np.concatenate((obs, next_obs)) if double_q else obs]
        logits = online(outputs[0], outputs)
        next_probs = NumpyC51.softmax(target(next_obs))  # p_target(s', ·)
        support = online.support

        # TD target: a*, then m = Φ(r + γ^n (1 − done) z, p_target(s', a*))
        next_q = (NumpyC51.softmax(logits[n:]) if double_q else next_probs) @ support  # Σ_i z_i p(s', a, z_i)
        next_probs = next_probs[rows, next_q.argmax(axis=1)]
        gamma = discounts.numpy() if isinstance(discounts, th.Tensor) else np.float32(discounts)
        atoms = data.rewards.numpy() + gamma * (1 - data.dones.numpy()) * support  # Tz, (batch, atoms)
        v_min, v_max = support[0], support[-1]
        b = (np.clip(atoms, v_min, v_max) - v_min) / ((v_max - v_min) / (k - 1))
        lower, upper = np.floor(b), np.ceil(b)
        offsets = (rows * k)[:, None]
        index = np.concatenate(
            (np.clip(lower, 0, k - 1) + offsets, np.clip(upper, 0, k - 1) + offsets), axis=None
        ).astype(np.intp)
        mass = np.concatenate((next_probs * (upper - b + (lower == upper)), next_probs * (b - lower)), axis=None)
        m = np.bincount(index, weights=mass, minlength=n * k).reshape(n, k).astype(np.float32)

        # loss: (w ·) cross-entropy of m against p(s, a)
        actions = data.actions.numpy().reshape(-1)
        chosen = logits[rows, actions]
        shifted = chosen - chosen.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        per_sample = -(m * (shifted - np.log(total))).sum(axis=1)  # H(m, p(s, a))
        g = exp / total * m.sum(axis=1, keepdims=True) - m  # ∂H/∂logits(s, a)
        if weights is None:
            loss = per_sample.sum() / n
            g /= n
        else:
            w = weights.numpy().reshape(-1)
            loss = np.dot(w, per_sample) / n
            g *= (w / n)[:, None]

        # backward: the chosen logits into the head's output, then layer by layer
        ones = self._row_of_ones(n)
        grads = iter(reversed(self.layer_grads))
        trunk_out = outputs[-1][:n]
        if online.heads:
            d_value = g  # ∂V = Σ_a ∂logits_a = g
            d_advantage = np.repeat((g / -online.n_actions)[:, None, :], online.n_actions, axis=1)
            d_advantage[rows, actions] += g  # ∂A_a = [a = a_i] g − g / |A|
            d_advantage = d_advantage.reshape(n, -1)
            value, advantage = online.heads
            advantage.backward(d_advantage, trunk_out, next(grads), ones)
            value.backward(d_value, trunk_out, next(grads), ones)
            if online.trunk:
                grad = d_value @ value.weight  # ∂L/∂h = ∂V W_V + ∂A W_A
                grad += d_advantage @ advantage.weight
        else:
            grad = np.zeros((n, online.n_actions * k), dtype=np.float32)
            grad.reshape(n, online.n_actions, k)[rows, actions] = g
        for index in range(len(online.trunk) - 1, -1, -1):
            is_linear, layer = online.trunk[index]
            if is_linear:
                layer.backward(grad, outputs[index][:n], next(grads), ones)
                if index > 0:
                    grad = grad @ layer.weight  # ∂L/∂x = g W
            else:
                grad = layer[1](grad, outputs[index + 1][:n])
        self._np_clip_and_adam(max_grad_norm)
        return th.from_numpy(np.asarray(loss, dtype=np.float32)), th.from_numpy(per_sample)
