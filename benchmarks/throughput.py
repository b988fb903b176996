"""
Throughput: ScratchDQN vs SB3's DQN (and SBX's DQN when ``sbx-rl`` is installed) at identical settings.

    python benchmarks/throughput.py [--configs 1,2,3,4] [--repeats 3] [--scale 1.0] [--device cpu] [--out FILE.md]
        [--breakdown] [--profile-ops] [--compile-floor] [--numpy-backend] [--channels-last]

For each configuration the algorithms run alternately (A, B, A, B, ...) with the same seed, one torch thread, and
each keeps its best wall time over ``--repeats``. The table also gives the paired ratios: in each repeat, SB3's wall
time over the other algorithm's, from runs adjacent in time (median, and the range over the repeats), which a
machine whose speed drifts between repeats moves less than the ratio of the bests. ScratchDQN's run is
instrumented: time inside ``env.step`` and inside gradient steps is measured, the rest is per-env-step overhead.
The same run measures the floors for the same network and batch:

- the bare eager DQN update (forward, Huber loss, backward, grad clipping, fused Adam) written directly in PyTorch;
- the matrix multiplies alone (the forward and backward GEMMs of the same layers);
- a bare forward + argmax for one observation (the greedy action);
- for configuration 4, a bare eager Rainbow step (noisy dueling C51 heads, double Q-learning, fused Adam), its
  GEMMs alone and a bare noisy C51 action for one observation; when configuration 1 ran before it in the same run,
  configuration 4's time over configuration 1's, and what it would be at those floors;
- for configuration 3, the bare eager step and forward+argmax of SB3's NatureCNN (no GEMMs-alone floor).

``--compile-floor`` adds the bare step under ``torch.compile`` (its compile time, caches off, and its time per step).
From the floors it also reports a ceiling per configuration: SB3's best wall time over that of a run that spends only
ScratchDQN's ``env.step`` time, one forward+argmax per env step and one floor per gradient step (the most any DQN
with these floors could gain over SB3 here; see :func:`floor_wall`).

``--device cuda`` runs every algorithm and every floor on the GPU (both algorithms get the same ``device=``); the
floors then wait for the GPU (``torch.cuda.synchronize``) before each timing is read, and the forward+argmax floor
includes copying the observation to the GPU and the action back, as an env step must.

Configurations:
1. rl-zoo3 CartPole-v1: train_freq 256, gradient_steps 128, 256x256, batch 64 (update-heavy);
2. step-heavy CartPole-v1: train_freq 4, gradient_steps 1, 64x64, batch 64;
3. CNN: Breakout through ale-py (NoFrameskip-v4, SB3's Atari wrappers, 4 stacked frames), small budget;
4. Rainbow: configuration 1 with every component on (double, dueling, PER, n_steps=3, noisy nets, C51).

``--numpy-backend`` adds a column ``ScratchDQN numpy``: ScratchDQN with ``mlp_backend="numpy"`` (the plain MLP's
gradient step, TD targets and actions in NumPy, BLAS on one thread) in the MLP configurations 1, 2, ``1f``, ``2f``
(in 3 and 4 it would fall back to the PyTorch path), alternated with the others like any algorithm.

``--channels-last`` adds a column ``ScratchDQN channels_last`` in the CNN configurations 3 and ``3f``: ScratchDQN with
``policy_kwargs=dict(channels_last=True)`` (convolution weights and image batches in NHWC memory format), alternated
with the others; it gets the same floors and ceiling rows as ScratchDQN.

Optional (not in the default ``--configs``): ``1f``, ``2f`` and ``3f``, configurations 1, 2 and 3 with
``optimizer_kwargs=dict(fused=True)`` for every algorithm: the optimizer of the bare eager fused step, which
rounds differently from Adam's default (so not the default of SB3's DQN or of ScratchDQN).

SBX's DQN (``pip install -e ".[bench]"``) gets the same keyword arguments; it differs in ways the settings do not
cover: no gradient clipping (SB3's ``max_grad_norm=10`` has no SBX counterpart), optax's Adam, and its gradient steps
of one ``train()`` call run in one jitted loop over a batch sampled at once (JIT compilation time counts in its wall
time). XLA is asked for one thread (``XLA_FLAGS``, unless already set), as torch is; it has no column in the
configurations whose settings it lacks (3, 4, ``1f``, ``2f``, ``3f``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from numpy_rainbow import NumpyRainbowStep
from stable_baselines3 import DQN
from stable_baselines3.common.vec_env import VecEnv
from threadpoolctl import threadpool_limits

from sb3_dqn_ext import PrioritizedReplayBuffer, ScratchDQN
from sb3_dqn_ext.fast_update import FlatAdam, FlatMLPAdam, NumpyMLPAdam

th.set_num_threads(1)
# SBX's XLA on one thread too (read when JAX starts, so set before sbx is imported)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


@dataclass
class Config:
    name: str
    env: Callable[[], Any]
    kwargs: dict[str, Any]
    timesteps: int
    policy: str = "MlpPolicy"
    scratch_only_kwargs: dict[str, Any] = field(default_factory=dict)


def cartpole() -> Any:
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env("CartPole-v1", n_envs=1, seed=0)


def breakout() -> Any:
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)


ZOO_CARTPOLE = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)


def fused(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with PyTorch's fused Adam (``optimizer_kwargs=dict(fused=True)``)."""
    return dict(kwargs, policy_kwargs=dict(kwargs.get("policy_kwargs", {}), optimizer_kwargs=dict(fused=True)))


def configs(scale: float) -> dict[str, Config]:
    step_heavy = dict(ZOO_CARTPOLE, train_freq=4, gradient_steps=1, policy_kwargs=dict(net_arch=[64, 64]))
    atari = dict(buffer_size=10_000, learning_starts=500, batch_size=32, train_freq=4, target_update_interval=1000)
    return {
        "1": Config("1 zoo CartPole (update-heavy)", cartpole, ZOO_CARTPOLE, int(20_000 * scale)),
        "2": Config("2 step-heavy CartPole", cartpole, step_heavy, int(20_000 * scale)),
        "1f": Config("1f zoo CartPole, fused Adam", cartpole, fused(ZOO_CARTPOLE), int(20_000 * scale)),
        "2f": Config("2f step-heavy CartPole, fused Adam", cartpole, fused(step_heavy), int(20_000 * scale)),
        "3": Config("3 CNN Breakout", breakout, atari, int(2_500 * scale), policy="CnnPolicy"),
        "3f": Config("3f CNN Breakout, fused Adam", breakout, fused(atari), int(2_500 * scale), policy="CnnPolicy"),
        "4": Config(
            "4 Rainbow (config 1, all on)",
            cartpole,
            ZOO_CARTPOLE,
            int(20_000 * scale),
            scratch_only_kwargs=dict(
                double_q=True,
                n_steps=3,
                replay_buffer_class=PrioritizedReplayBuffer,
                replay_buffer_kwargs=dict(alpha=0.5, beta=0.4),
                policy_kwargs=dict(net_arch=[256, 256], dueling=True, noisy=True, n_atoms=51, v_min=0.0, v_max=100.0),
            ),
        ),
    }


class Timers:
    """Accumulates time spent in env.step and in train() of an algorithm."""

    def __init__(self) -> None:
        self.env = 0.0
        self.train = 0.0


def instrument(model: Any, env: VecEnv, timers: Timers) -> None:
    step_wait = env.step_wait

    def timed_step_wait():
        start = time.perf_counter()
        out = step_wait()
        timers.env += time.perf_counter() - start
        return out

    env.step_wait = timed_step_wait
    train = model.train

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        train(*args, **kwargs)
        timers.train += time.perf_counter() - start

    model.train = timed_train


def run_once(algo: type, config: Config, extra: dict[str, Any], device: str = "cpu") -> dict[str, float]:
    env = config.env()
    kwargs = {**config.kwargs, **extra}
    timers = Timers()
    model = algo(config.policy, env, seed=0, verbose=0, device=device, **kwargs)
    instrument(model, model.get_env(), timers)
    start = time.perf_counter()
    model.learn(config.timesteps)
    wall = time.perf_counter() - start
    env.close()
    n_updates = model._n_updates if hasattr(model, "_n_updates") else 0
    return dict(wall=wall, env=timers.env, train=timers.train, steps=model.num_timesteps, updates=n_updates)


class Breakdown:
    """
    Where one run's time goes, for any DQN built on SB3's ``OffPolicyAlgorithm`` (ScratchDQN and SB3's DQN alike):
    wall-clock time inside the VecEnv's ``step_wait``, ``_sample_action``, ``_store_transition``, ``train`` and,
    inside ``train``, replay sampling (with ScratchDQN's uniform buffer, the gathers of several minibatches at once,
    per gradient step), ``backward``, gradient clipping and the optimizer step, and ScratchDQN's
    autograd-free step (:class:`~sb3_dqn_ext.fast_update.FlatMLPAdam`, forward to Adam in one call) where it runs;
    :class:`~sb3_dqn_ext.fast_update.FlatAdam`'s clipping and Adam step count as clipping and the optimizer step.
    Each probe is a pair of ``perf_counter`` calls around the function (about 0.2 µs each); the optimizer's and the
    fast step's are wrapped on their classes, since ScratchDQN hands a patched ``optimizer.step`` on the instance to
    autograd.
    """

    PARTS = ("env", "action", "store", "train", "sample", "backward", "clip", "optimizer", "fast step")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    def probe(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[part] += time.perf_counter() - start
            return out

        return timed

    def run(self, algo: type, config: Config, extra: dict[str, Any]) -> dict[str, float]:
        env = config.env()
        model = algo(config.policy, env, seed=0, verbose=0, **{**config.kwargs, **extra})
        vec_env = model.get_env()
        vec_env.step_wait = self.probe("env", vec_env.step_wait)
        model._sample_action = self.probe("action", model._sample_action)
        model._store_transition = self.probe("store", model._store_transition)
        model.train = self.probe("train", model.train)
        model.replay_buffer.sample = self.probe("sample", model.replay_buffer.sample)
        if hasattr(model.replay_buffer, "_sample_batches"):  # ScratchDQN's minibatches of one train() call at once
            model.replay_buffer._sample_batches = self.probe("sample", model.replay_buffer._sample_batches)
        if hasattr(model, "_clip_grad_norm"):  # ScratchDQN clips without going through clip_grad_norm_
            model._clip_grad_norm = self.probe("clip", model._clip_grad_norm)
        optimizer_class = type(model.policy.optimizer)
        backward, clip = th.Tensor.backward, th.nn.utils.clip_grad_norm_
        optimizer_step, fast_step, numpy_step = optimizer_class.step, FlatMLPAdam.step, NumpyMLPAdam.step
        flat_clip, flat_adam = FlatAdam.clip_grad_norm, FlatAdam.adam_step
        th.Tensor.backward = self.probe("backward", backward)  # type: ignore[method-assign]
        th.nn.utils.clip_grad_norm_ = self.probe("clip", clip)
        optimizer_class.step = self.probe("optimizer", optimizer_step)  # type: ignore[method-assign]
        FlatMLPAdam.step = self.probe("fast step", fast_step)  # type: ignore[method-assign]
        NumpyMLPAdam.step = self.probe("fast step", numpy_step)  # type: ignore[method-assign]
        # clipping and Adam on flat buffers after autograd's backward (heads the autograd-free step does not cover)
        FlatAdam.clip_grad_norm = self.probe("clip", flat_clip)  # type: ignore[method-assign]
        FlatAdam.adam_step = self.probe("optimizer", flat_adam)  # type: ignore[method-assign]
        try:
            start = time.perf_counter()
            model.learn(config.timesteps)
            wall = time.perf_counter() - start
        finally:
            th.Tensor.backward, th.nn.utils.clip_grad_norm_ = backward, clip  # type: ignore[method-assign]
            optimizer_class.step, FlatMLPAdam.step = optimizer_step, fast_step  # type: ignore[method-assign]
            NumpyMLPAdam.step = numpy_step  # type: ignore[method-assign]
            FlatAdam.clip_grad_norm, FlatAdam.adam_step = flat_clip, flat_adam  # type: ignore[method-assign]
            env.close()
        steps, updates = model.num_timesteps, max(model._n_updates, 1)
        t = self.seconds
        inner = t["sample"] + t["backward"] + t["clip"] + t["optimizer"] + t["fast step"]
        return {
            "wall s": wall,
            "env.step µs/step": t["env"] / steps * 1e6,
            "action µs/step": t["action"] / steps * 1e6,
            "store µs/step": t["store"] / steps * 1e6,
            "other loop µs/step": (wall - t["train"] - t["env"] - t["action"] - t["store"]) / steps * 1e6,
            "sample µs/update": t["sample"] / updates * 1e6,
            "forward+loss+rest µs/update": (t["train"] - inner) / updates * 1e6,
            "backward µs/update": t["backward"] / updates * 1e6,
            "clip µs/update": t["clip"] / updates * 1e6,
            "optimizer µs/update": t["optimizer"] / updates * 1e6,
            "fast step (forward to Adam) µs/update": t["fast step"] / updates * 1e6,
        }


NUMPY = "ScratchDQN numpy"
CHANNELS_LAST = "ScratchDQN channels_last"


def per_update_and_overhead(run: dict[str, float]) -> tuple[float, float]:
    """Seconds per gradient step, and per env step outside ``env.step`` and ``train()`` (the loop's overhead)."""
    return run["train"] / max(run["updates"], 1), (run["wall"] - run["train"] - run["env"]) / run["steps"]


def floor_rows(
    config_name: str,
    best: dict[str, dict[str, float]],
    labels: dict[str, str],
    f: dict[str, float],
    sb3_wall: float | None,
    detail: list[str],
    ceilings: list[str],
) -> None:
    """
    Append, for each column of ``labels`` (name → label suffix) that ran, its row against the floors ``f`` to
    ``detail`` and, with SB3's time, its row of ceilings to ``ceilings`` (no GEMMs-alone floor: ``-``).
    """
    for name, suffix in labels.items():
        if name not in best:
            continue
        run, label = best[name], config_name + suffix
        per_update, overhead = per_update_and_overhead(run)
        gemms = f"{f['gemms'] * 1e3:.3f} ms ({per_update / f['gemms']:.2f}x)" if "gemms" in f else "-"
        detail.append(
            f"| {label} | {per_update * 1e3:.3f} ms | {f['eager_step'] * 1e3:.3f} ms "
            f"({per_update / f['eager_step']:.2f}x) | {gemms} | {overhead * 1e6:.1f} µs | {f['act'] * 1e6:.1f} µs "
            f"({overhead / f['act']:.2f}x) |"
        )
        if sb3_wall:
            at_gemms = f"{sb3_wall / floor_wall(run, f['gemms'], f['act']):.2f}x" if "gemms" in f else "-"
            ceilings.append(
                f"| {label} | {sb3_wall / run['wall']:.2f}x | "
                f"{sb3_wall / floor_wall(run, f['eager_step'], f['act']):.2f}x | {at_gemms} |"
            )


def algo_kwargs(name: str, config: Config) -> dict[str, Any]:
    """The keyword arguments that column ``name`` adds to the configuration's."""
    if name == "ScratchDQN":
        return config.scratch_only_kwargs
    if name == CHANNELS_LAST:
        policy_kwargs = {**config.kwargs, **config.scratch_only_kwargs}.get("policy_kwargs", {})
        return {**config.scratch_only_kwargs, "policy_kwargs": {**policy_kwargs, "channels_last": True}}
    return {**config.scratch_only_kwargs, "mlp_backend": "numpy"} if name == NUMPY else {}


def breakdown_table(config: Config, algos: dict[str, type]) -> list[str]:
    """Markdown rows: one per part, one column per algorithm, measured in consecutive runs of ``config``."""
    results = {}
    for name, algo in algos.items():
        if name == "SBX DQN":
            continue  # SBX's JAX step does not go through these functions
        results[name] = Breakdown().run(algo, config, algo_kwargs(name, config))
    names = list(results)
    rows = [f"| {config.name} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for part in next(iter(results.values())):
        rows.append(f"| {part} | " + " | ".join(f"{results[n][part]:.1f}" for n in names) + " |")
    return rows


def op_profile(config: Config, top: int = 15) -> list[str]:
    """
    Markdown rows: the torch ops where the last quarter of one ScratchDQN run of ``config`` spends its time
    (``torch.profiler``, CPU, self time: a composite op such as ``aten::linear`` counts only its own dispatch, the
    ``aten::addmm`` it calls counts apart), the ``top`` largest, all ops together, and what is left of the wall time
    outside any torch op (Python, the environment, NumPy). The profiler adds its own cost to every op, so the shares
    are approximate and the wall time is longer than an unprofiled run's.
    """
    from torch.profiler import ProfilerActivity, profile

    env = config.env()
    model = ScratchDQN(config.policy, env, seed=0, verbose=0, **{**config.kwargs, **config.scratch_only_kwargs})
    # the profiler keeps every op's event: a whole Rainbow run ran out of 24 GB, so only the run's last quarter is
    # profiled (after the first three quarters, unprofiled: updates under way, as in the rest of the run)
    model.learn(config.timesteps - config.timesteps // 4)
    steps_before, updates_before = model.num_timesteps, model._n_updates
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.learn(config.timesteps // 4, reset_num_timesteps=False)
        wall = time.perf_counter() - start
    env.close()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    del prof
    total = sum(e.self_cpu_time_total for e in events) / 1e6  # (µs → s)
    updates = max(model._n_updates - updates_before, 1)
    rows = [
        f"| {config.name}: torch op (self time) | calls / gradient step | µs / call | ms total | % of wall |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in events[:top]:
        rows.append(
            f"| `{e.key}` | {e.count / updates:.2f} | {e.self_cpu_time_total / e.count:.1f} | "
            f"{e.self_cpu_time_total / 1e3:.0f} | {100 * e.self_cpu_time_total / 1e6 / wall:.1f}% |"
        )
    rows.append(f"| all {len(events)} torch ops | | | {total * 1e3:.0f} | {100 * total / wall:.1f}% |")
    rows.append(
        f"| outside torch ops (Python, env, NumPy) | | | {(wall - total) * 1e3:.0f} | "
        f"{100 * (wall - total) / wall:.1f}% |"
    )
    rows.append(
        f"| profiled wall (the last {model.num_timesteps - steps_before} env steps, {updates} gradient steps) | | | "
        f"{wall * 1e3:.0f} | 100% |"
    )
    return rows


def sbx_class() -> type | None:
    try:
        from sbx import DQN as SBXDQN  # type: ignore[import-not-found]
    except ImportError:
        return None
    return SBXDQN


def best_seconds(fn: Callable[[], None], reps: int, warmup: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per call of ``fn``: the best of 5 timings of ``reps`` calls, after ``warmup`` calls (``sync`` waits
    for a GPU before each timing is read)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        times.append((time.perf_counter() - start) / reps)
    return min(times)


def floors(
    net_arch: list[int],
    obs_dim: int,
    n_actions: int,
    batch: int,
    reps: int = 300,
    device: str = "cpu",
    compiled: bool = False,
) -> dict[str, float]:
    """
    Bare eager fused-Adam DQN step, the GEMMs alone, and forward + argmax for one observation (seconds); with
    ``compiled``, also the same step under ``torch.compile`` (``compiled_step``) and the seconds its first two calls
    took (``compile``: tracing and code generation, with inductor's caches off, as on a first run).
    """
    th.manual_seed(0)
    on_gpu = th.device(device).type == "cuda"

    def mlp() -> th.nn.Sequential:
        layers, last = [], obs_dim
        for width in net_arch:
            layers += [th.nn.Linear(last, width), th.nn.ReLU()]
            last = width
        return th.nn.Sequential(*layers, th.nn.Linear(last, n_actions)).to(device)

    online, target = mlp(), mlp()
    params = list(online.parameters())
    optimizer = th.optim.Adam(params, lr=1e-4, fused=True)
    obs, next_obs = th.randn(batch, obs_dim, device=device), th.randn(batch, obs_dim, device=device)
    actions = th.randint(n_actions, (batch, 1), device=device)
    rewards, dones = th.randn(batch, 1, device=device), th.zeros(batch, 1, device=device)

    def step() -> None:
        with th.no_grad():
            target_q = rewards + 0.99 * (1 - dones) * target(next_obs).max(1, keepdim=True).values
        q = online(obs).gather(1, actions)
        loss = th.nn.functional.smooth_l1_loss(q, target_q)
        optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    dims = [obs_dim, *net_arch, n_actions]
    mats = [
        (th.randn(batch, i, device=device), th.randn(o, i, device=device), th.randn(batch, o, device=device))
        for i, o in zip(dims[:-1], dims[1:], strict=True)
    ]

    def gemms() -> None:
        for x, w, g in mats:
            x @ w.t()  # forward (online)
            x @ w.t()  # forward (target)
            g @ w  # grad input
            g.t() @ x  # grad weight

    one = th.randn(1, obs_dim)

    def act() -> None:
        with th.inference_mode():
            if on_gpu:  # the observation goes to the GPU and the action comes back, as in an env step
                online(one.to(device)).argmax(1).cpu()
            else:
                online(one).argmax(1)

    sync = th.cuda.synchronize if on_gpu else (lambda: None)

    def best(fn: Callable[[], None]) -> float:
        return best_seconds(fn, reps, warmup=20, sync=sync)

    result = dict(eager_step=best(step), gemms=best(gemms), act=best(act))
    if compiled:
        import torch._inductor.config as inductor_config

        compiled_step = th.compile(step)
        start = time.perf_counter()
        with inductor_config.patch(force_disable_caches=True):  # a first run's compile, not one from the disk cache
            compiled_step()
            compiled_step()
        sync()
        result["compile"] = time.perf_counter() - start
        result["compiled_step"] = best(compiled_step)
    return result


def floor_wall(run: dict[str, float], per_update: float, per_step: float) -> float:
    """
    The wall time of a run that spent only its env.step time, ``per_step`` seconds per env step (a bare
    forward+argmax) and ``per_update`` seconds per gradient step (a floor): a lower bound for any DQN with the same
    env steps and gradient steps, since it leaves out replay sampling, storing transitions, the loop and callbacks.

    :param run: one run's ``env`` seconds, env ``steps`` and gradient ``updates`` (from :func:`run_once`)
    :param per_update: seconds per gradient step
    :param per_step: seconds per env step outside ``env.step``
    """
    return run["env"] + run["steps"] * per_step + run["updates"] * per_update


def cnn_floors(
    obs_shape: tuple[int, ...], n_actions: int, batch: int, reps: int = 20, channels_last: bool = False
) -> dict[str, float]:
    """
    Seconds per bare eager DQN step (fused Adam) and per forward+argmax of one observation, on CPU, for SB3's
    ``NatureCNN`` and linear head written directly in PyTorch; observations are uint8 frames, channels first as SB3's
    ``VecTransposeImage`` (part of ``env.step``) hands them over, converted as SB3 converts them (float, ``/ 255``).
    With ``channels_last`` the networks' weights are in channels-last (NHWC) memory format and each batch is copied
    to it as uint8 before the conversion, as ``policy_kwargs=dict(channels_last=True)`` does.
    """
    th.manual_seed(0)
    height, width, channels = obs_shape

    def net() -> th.nn.Sequential:
        return th.nn.Sequential(
            th.nn.Conv2d(channels, 32, 8, stride=4),
            th.nn.ReLU(),
            th.nn.Conv2d(32, 64, 4, stride=2),
            th.nn.ReLU(),
            th.nn.Conv2d(64, 64, 3, stride=1),
            th.nn.ReLU(),
            th.nn.Flatten(),
            th.nn.LazyLinear(512),
            th.nn.ReLU(),
            th.nn.Linear(512, n_actions),
        )

    frames = th.randint(0, 256, (batch, channels, height, width), dtype=th.uint8)
    next_frames = th.randint(0, 256, (batch, channels, height, width), dtype=th.uint8)
    online, target = net(), net()
    online(frames[:1].float())  # (materialises the lazy layer)
    target(frames[:1].float())
    if channels_last:
        online, target = online.to(memory_format=th.channels_last), target.to(memory_format=th.channels_last)
    params = list(online.parameters())
    optimizer = th.optim.Adam(params, lr=1e-4, fused=True)
    actions = th.randint(n_actions, (batch, 1))
    rewards, dones = th.randn(batch, 1), th.zeros(batch, 1)

    def prep(x: th.Tensor) -> th.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=th.channels_last)
        return x.float() / 255.0

    def step() -> None:
        with th.no_grad():
            target_q = rewards + 0.99 * (1 - dones) * target(prep(next_frames)).max(1, keepdim=True).values
        q = online(prep(frames)).gather(1, actions)
        loss = th.nn.functional.smooth_l1_loss(q, target_q)
        optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    one = frames[:1]

    def act() -> None:
        with th.inference_mode():
            online(prep(one)).argmax(1)

    return dict(eager_step=best_seconds(step, reps, warmup=3), act=best_seconds(act, 10 * reps, warmup=3))


def rainbow_floor(
    net_arch: list[int],
    obs_dim: int,
    n_actions: int,
    batch: int,
    n_atoms: int,
    v_min: float,
    v_max: float,
    gamma_n: float,
    reps: int = 100,
    buffer_size: int = 100_000,
    filled: int = 10_000,
) -> dict[str, float]:
    """
    Floors of a Rainbow gradient step and action on CPU, in seconds (no replay buffer but in ``per_sample``):

    - ``eager_step``: a bare eager Rainbow gradient step: factorised-noise layers (noise resampled for both networks,
      weights ``μ + σ ⊙ ε`` built at each forward), dueling C51 heads, double Q-learning's next action by the online
      network's expected values, the projection of ``r + γ^n (1 − done) z``, the cross-entropy weighted by
      importance weights, priorities from the per-sample loss, gradient clipping and fused Adam, written directly in
      PyTorch the way a from-scratch implementation would;
    - ``gemms``: the matrix multiplies of that step alone, for every layer: the online network's forward pass on
      the observations and the next observations (double Q-learning), the target network's on the next
      observations, and the two backward GEMMs (input and weight gradients) of the observations' rows;
    - ``numpy_step``: the same step written by hand in NumPy, without autograd (``numpy_rainbow.py``: one flat
      buffer for every parameter, gradient clipping as one dot product, Adam as PyTorch's fused kernel on it; BLAS on
      one thread);
    - ``numpy_act``: ``act`` in NumPy: one noise draw for the online network, the factorised noisy forward pass
      for one observation, the expected values and the argmax;
    - ``per_sample``: ScratchDQN's own prioritized replay for it (:class:`~sb3_dqn_ext.PrioritizedReplayBuffer`
      with n-step returns, ``buffer_size`` rows of which ``filled`` hold CartPole-sized transitions): one
      ``sample`` of ``batch`` transitions and one ``update_priorities``;
    - ``act``: the action of a noisy C51 network for one observation: one noise draw for the network, the forward
      pass with the factorised noise (two matrix-vector products per layer), the expected values and the argmax.
    """
    th.manual_seed(0)

    class Noisy(th.nn.Module):
        def __init__(self, n_in: int, n_out: int) -> None:
            super().__init__()
            bound = n_in**-0.5
            self.w_mu = th.nn.Parameter(th.empty(n_out, n_in).uniform_(-bound, bound))
            self.w_sigma = th.nn.Parameter(th.full((n_out, n_in), 0.5 * bound))
            self.b_mu = th.nn.Parameter(th.empty(n_out).uniform_(-bound, bound))
            self.b_sigma = th.nn.Parameter(th.full((n_out,), 0.5 * bound))
            self.eps_in, self.eps_out = th.zeros(n_in), th.zeros(n_out)

        def reset_noise(self) -> None:
            eps = th.randn(self.eps_in.numel() + self.eps_out.numel())
            eps = eps.sign() * eps.abs().sqrt()
            self.eps_in, self.eps_out = eps[: self.eps_in.numel()], eps[self.eps_in.numel() :]

        def forward(self, x: th.Tensor) -> th.Tensor:
            weight = self.w_mu + self.w_sigma * th.outer(self.eps_out, self.eps_in)
            return th.nn.functional.linear(x, weight, self.b_mu + self.b_sigma * self.eps_out)

    class Net(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, last = [], obs_dim
            for width in net_arch:
                layers += [Noisy(last, width), th.nn.ReLU()]
                last = width
            self.trunk = th.nn.Sequential(*layers)
            self.value, self.advantage = Noisy(last, n_atoms), Noisy(last, n_actions * n_atoms)
            self.noisy = [m for m in self.modules() if isinstance(m, Noisy)]

        def log_probs(self, x: th.Tensor) -> th.Tensor:
            h = self.trunk(x)
            value = self.value(h).view(-1, 1, n_atoms)
            advantage = self.advantage(h).view(-1, n_actions, n_atoms)
            return (value + advantage - advantage.mean(1, keepdim=True)).log_softmax(-1)

    online, target = Net(), Net()
    params = list(online.parameters())
    optimizer = th.optim.Adam(params, lr=1e-4, fused=True)
    support = th.linspace(v_min, v_max, n_atoms)
    delta_z = (v_max - v_min) / (n_atoms - 1)
    obs, next_obs = th.randn(batch, obs_dim), th.randn(batch, obs_dim)
    actions = th.randint(n_actions, (batch,))
    rewards, dones, weights = th.rand(batch, 1), th.zeros(batch, 1), th.rand(batch)
    rows = th.arange(batch)

    def step() -> None:
        for m in online.noisy + target.noisy:
            m.reset_noise()
        with th.no_grad():
            next_probs = target.log_probs(next_obs).exp()
            next_actions = (online.log_probs(next_obs).exp() * support).sum(-1).argmax(1)
            b = ((rewards + gamma_n * (1 - dones) * support).clamp(v_min, v_max) - v_min) / delta_z
            lower, upper = b.floor(), b.ceil()
            p = next_probs[rows, next_actions]
            projected = th.zeros_like(p)
            projected.scatter_add_(1, lower.long(), p * (upper - b + (lower == upper).float()))
            projected.scatter_add_(1, upper.long(), p * (b - lower))
        per_sample = -(projected * online.log_probs(obs)[rows, actions]).sum(-1)
        loss = (weights * per_sample).mean()
        per_sample.detach().abs()  # the new priorities
        optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    dims = [(i, o) for i, o in zip([obs_dim, *net_arch[:-1]], net_arch, strict=True)]
    dims += [(net_arch[-1], n_atoms), (net_arch[-1], n_actions * n_atoms)]  # value and advantage heads
    mats = [(th.randn(2 * batch, i), th.randn(o, i), th.randn(batch, o)) for i, o in dims]

    def gemms() -> None:
        for x, w, g in mats:
            x @ w.t()  # forward (online: observations and next observations)
            x[:batch] @ w.t()  # forward (target: next observations)
            g @ w  # grad input
            g.t() @ x[:batch]  # grad weight

    one = th.randn(1, obs_dim)
    layers = [m for m in online.trunk if isinstance(m, Noisy)]

    def noisy_row(layer: Noisy, x: th.Tensor) -> th.Tensor:
        mean = th.nn.functional.linear(x, layer.w_mu, layer.b_mu)
        return mean + (th.nn.functional.linear(x * layer.eps_in, layer.w_sigma) + layer.b_sigma) * layer.eps_out

    def act() -> None:
        with th.inference_mode():
            eps = th.randn(sum(m.eps_in.numel() + m.eps_out.numel() for m in online.noisy))
            eps = eps.sign() * eps.abs().sqrt()  # (one draw for the network, as QNetwork.reset_noise)
            h = one
            for layer in layers:
                h = noisy_row(layer, h).relu()
            value = noisy_row(online.value, h).view(-1, 1, n_atoms)
            advantage = noisy_row(online.advantage, h).view(-1, n_actions, n_atoms)
            logits = value + advantage - advantage.mean(1, keepdim=True)
            (logits.softmax(-1) * support).sum(-1).argmax(1)

    np_step = NumpyRainbowStep(obs_dim, net_arch, n_actions, n_atoms, v_min, v_max, gamma_n)
    np_batch = (
        obs.numpy(),
        actions.numpy(),
        rewards.numpy().ravel(),
        next_obs.numpy(),
        dones.numpy().ravel(),
        weights.numpy(),
    )

    def numpy_step() -> None:
        np_step.step(*np_batch)

    n_steps = max(1, round(math.log(gamma_n) / math.log(0.99))) if 0 < gamma_n < 1 else 1
    buffer = PrioritizedReplayBuffer(
        buffer_size,
        gym.spaces.Box(-1, 1, (obs_dim,)),
        gym.spaces.Discrete(n_actions),
        device="cpu",
        n_steps=n_steps,
        gamma=0.99,
        alpha=0.5,
        beta=0.4,
    )
    rng = np.random.default_rng(0)
    for t in range(filled):
        row = rng.standard_normal((2, 1, obs_dim)).astype(np.float32)
        buffer.add(row[0], row[1], rng.integers(n_actions, size=(1, 1)), np.ones(1), np.array([t % 50 == 49]), [{}])
    errors = rng.random(batch)

    def per_sample() -> None:
        buffer.update_priorities(buffer.sample(batch).indices, errors)

    one_np = one.numpy()[0]

    def numpy_act() -> None:
        np_step.act(one_np)

    with threadpool_limits(limits=1, user_api="blas"):
        numpy_seconds = best_seconds(numpy_step, reps, warmup=10)
        numpy_act_seconds = best_seconds(numpy_act, 10 * reps, warmup=20)
    return dict(
        eager_step=best_seconds(step, reps, warmup=10),
        gemms=best_seconds(gemms, 3 * reps, warmup=20),
        act=best_seconds(act, 10 * reps, warmup=20),
        numpy_step=numpy_seconds,
        numpy_act=numpy_act_seconds,
        per_sample=best_seconds(per_sample, reps, warmup=10),
    )


def device_name(device: str) -> str:
    """``"cpu"`` or the GPU's name, e.g. ``"cuda (NVIDIA H100 80GB HBM3)"``."""
    if th.device(device).type == "cuda":
        return f"{device} ({th.cuda.get_device_name(th.device(device))})"
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1,2,3,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every budget")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--device", default="cpu", help="device of every model and floor: cpu (default) or cuda")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time where each run's time goes (one extra run per algo)"
    )
    parser.add_argument(
        "--profile-ops",
        action="store_true",
        help="also profile the last quarter of one ScratchDQN run per configuration with torch.profiler (top ops by "
        "self time)",
    )
    parser.add_argument(
        "--compile-floor",
        action="store_true",
        help="also time the bare step under torch.compile (its compile time and time per step) for the MLP configs",
    )
    parser.add_argument(
        "--numpy-backend",
        action="store_true",
        help='also run ScratchDQN with mlp_backend="numpy" in the MLP configurations 1, 2, 1f, 2f and 4',
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="also run ScratchDQN with policy_kwargs=dict(channels_last=True) in the CNN configurations 3, 3f",
    )
    args = parser.parse_args()
    if (args.breakdown or args.profile_ops) and th.device(args.device).type != "cpu":
        parser.error("--breakdown and --profile-ops time asynchronous GPU work at launch: use --device cpu")

    table = configs(args.scale)
    algos: dict[str, type] = {"ScratchDQN": ScratchDQN, "SB3 DQN": DQN}
    if args.numpy_backend:
        algos[NUMPY] = ScratchDQN
    if args.channels_last:
        algos[CHANNELS_LAST] = ScratchDQN
    if sbx_class() is not None:
        algos["SBX DQN"] = sbx_class()  # type: ignore[assignment]
    lines = [
        f"torch {th.__version__}, {th.get_num_threads()} thread, {platform.processor() or platform.machine()}, "
        f"device {device_name(args.device)}, best of {args.repeats}, alternating runs",
        "",
        "| config | algo | steps | wall s | env steps/s | grad steps/s | speed-up vs SB3 | paired: median [range] |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    detail: list[str] = []
    ceilings: list[str] = []
    compiled_rows: list[str] = []
    rainbow_rows: list[str] = []
    rainbow_ceilings: list[str] = []
    plain_wall: float | None = None  # configuration 1's ScratchDQN wall time, when it ran in this run
    plain_numpy_wall: float | None = None  # and with the NumPy backend, when that ran too
    numpy_rows: list[str] = []
    breakdowns: list[str] = []
    profiles: list[str] = []
    for key in args.configs.split(","):
        config = table[key]
        best: dict[str, dict[str, float]] = {}
        walls: dict[str, list[float]] = {}  # every repeat's wall time, in order
        for _ in range(args.repeats):
            for name, algo in algos.items():
                if key == "4" and name not in ("ScratchDQN", NUMPY):
                    continue
                if name == NUMPY and key not in ("1", "2", "1f", "2f", "4"):
                    continue
                if name == CHANNELS_LAST and key not in ("3", "3f"):
                    continue
                # (SBX: no Atari CNN; optax has no torch Adam flags)
                if name == "SBX DQN" and key in ("3", "1f", "2f", "3f"):
                    continue
                result = run_once(algo, config, algo_kwargs(name, config), args.device)
                walls.setdefault(name, []).append(result["wall"])
                if name not in best or result["wall"] < best[name]["wall"]:
                    best[name] = result
        sb3_wall = best.get("SB3 DQN", {}).get("wall")
        for name, r in best.items():
            ratio = f"{sb3_wall / r['wall']:.2f}x" if sb3_wall and name != "SB3 DQN" else "1.00x" if sb3_wall else "-"
            paired = "-"
            if sb3_wall and name != "SB3 DQN":
                ratios = sorted(a / b for a, b in zip(walls["SB3 DQN"], walls[name], strict=True))
                paired = f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}, {ratios[-1]:.2f}]"
            lines.append(
                f"| {config.name} | {name} | {r['steps']} | {r['wall']:.2f} | {r['steps'] / r['wall']:.0f} | "
                f"{r['updates'] / r['wall']:.0f} | {ratio} | {paired} |"
            )
        ours = best["ScratchDQN"]
        if key == "1":
            plain_wall = ours["wall"]
            plain_numpy_wall = best[NUMPY]["wall"] if NUMPY in best else None
        if config.policy == "MlpPolicy":
            kw = {**config.kwargs, **config.scratch_only_kwargs}
            f = floors(
                kw["policy_kwargs"]["net_arch"], 4, 2, kw["batch_size"], device=args.device, compiled=args.compile_floor
            )
            pk = kw["policy_kwargs"]
            if pk.get("n_atoms") and pk.get("noisy") and pk.get("dueling") and th.device(args.device).type == "cpu":
                rf = rainbow_floor(
                    pk["net_arch"],
                    4,
                    2,
                    kw["batch_size"],
                    pk["n_atoms"],
                    pk["v_min"],
                    pk["v_max"],
                    kw["gamma"] ** kw.get("n_steps", 1),
                    buffer_size=kw["buffer_size"],
                    filled=ours["steps"] // 2,  # (the run's average fill)
                )
                for name, label in (("ScratchDQN", ""), (NUMPY, " [numpy]")):
                    if name not in best:
                        continue
                    per_update, overhead = per_update_and_overhead(best[name])
                    rainbow_rows.append(
                        f"| {config.name}{label} | {per_update * 1e3:.3f} ms | {rf['eager_step'] * 1e3:.3f} ms "
                        f"({per_update / rf['eager_step']:.2f}x) | {rf['gemms'] * 1e3:.3f} ms "
                        f"({per_update / rf['gemms']:.2f}x) | {f['eager_step'] * 1e3:.3f} ms (plain DQN) | "
                        f"{overhead * 1e6:.1f} µs | {rf['act'] * 1e6:.1f} µs ({overhead / rf['act']:.2f}x) |"
                    )
                numpy_rows.append(
                    f"| {config.name} | {rf['numpy_step'] * 1e3:.3f} ms ({rf['numpy_step'] / rf['gemms']:.2f}x) | "
                    f"{rf['per_sample'] * 1e3:.3f} ms | {(rf['numpy_step'] + rf['per_sample']) / rf['gemms']:.2f}x | "
                    f"{rf['numpy_act'] * 1e6:.1f} µs |"
                )
                if plain_wall is not None:  # configuration 1 ran before, in this run
                    with_sampling = rf["numpy_step"] + rf["per_sample"]
                    numpy_plain = (
                        f"{floor_wall(ours, with_sampling, rf['numpy_act']) / plain_numpy_wall:.2f}x"
                        if plain_numpy_wall
                        else "-"
                    )
                    ours_numpy = (
                        f"{best[NUMPY]['wall'] / plain_wall:.2f}x"
                        + (f" ({best[NUMPY]['wall'] / plain_numpy_wall:.2f}x)" if plain_numpy_wall else "")
                        if NUMPY in best
                        else "-"
                    )
                    rainbow_ceilings.append(
                        f"| {config.name} | {ours['wall'] / plain_wall:.2f}x | {ours_numpy} | "
                        f"{floor_wall(ours, rf['eager_step'], rf['act']) / plain_wall:.2f}x | "
                        f"{floor_wall(ours, rf['numpy_step'], rf['numpy_act']) / plain_wall:.2f}x | "
                        f"{floor_wall(ours, with_sampling, rf['numpy_act']) / plain_wall:.2f}x ({numpy_plain}) | "
                        f"{floor_wall(ours, rf['gemms'], rf['act']) / plain_wall:.2f}x |"
                    )
            if "compiled_step" in f:
                compiled_rows.append(
                    f"| {config.name} | {f['eager_step'] * 1e3:.3f} ms | {f['compiled_step'] * 1e3:.3f} ms "
                    f"({f['compiled_step'] / f['eager_step']:.2f}x) | {f['compile']:.1f} s | "
                    f"{sb3_wall / (floor_wall(ours, f['compiled_step'], f['act']) + f['compile']):.2f}x |"
                    if sb3_wall
                    else f"| {config.name} | {f['eager_step'] * 1e3:.3f} ms | {f['compiled_step'] * 1e3:.3f} ms | "
                    f"{f['compile']:.1f} s | - |"
                )
            floor_rows(config.name, best, {"ScratchDQN": "", NUMPY: " [numpy]"}, f, sb3_wall, detail, ceilings)
        elif config.policy == "CnnPolicy" and th.device(args.device).type == "cpu":
            env = config.env()
            obs_shape, n_actions = env.observation_space.shape, int(env.action_space.n)
            env.close()
            f = cnn_floors(obs_shape, n_actions, config.kwargs["batch_size"])
            floor_rows(config.name, best, {"ScratchDQN": ""}, f, sb3_wall, detail, ceilings)
            if CHANNELS_LAST in best:  # (against the same floors in channels-last memory format)
                f = cnn_floors(obs_shape, n_actions, config.kwargs["batch_size"], channels_last=True)
                labels = {CHANNELS_LAST: " [channels_last] (floors in channels-last)"}
                floor_rows(config.name, best, labels, f, sb3_wall, detail, ceilings)
        print("\n".join(lines[-len(best) :]), flush=True)
        if args.breakdown:
            rows = breakdown_table(config, {"ScratchDQN": algos["ScratchDQN"]} if key == "4" else algos)
            breakdowns += ["", *rows]
            print("\n".join(rows), flush=True)
        if args.profile_ops:
            rows = op_profile(config)
            profiles += ["", *rows]
            print("\n".join(rows), flush=True)
    lines += [
        "",
        "ScratchDQN against the floors measured in the same run (same network and batch):",
        "",
        "| config | per gradient step | bare eager fused step | GEMMs alone | per-env-step overhead | forward+argmax |",
        "|---|---:|---:|---:|---:|---:|",
        *detail,
    ]
    if ceilings:
        lines += [
            "",
            "The most any DQN could gain over SB3's best time of this run if it spent only ScratchDQN's env.step time, "
            "one forward+argmax per env step and one floor per gradient step (nothing for sampling, storing, the "
            "loop or callbacks):",
            "",
            "| config | ScratchDQN vs SB3 | ceiling at the bare eager fused step | ceiling at the GEMMs alone |",
            "|---|---:|---:|---:|",
            *ceilings,
        ]
    if rainbow_rows:
        lines += [
            "",
            "ScratchDQN's Rainbow gradient step (prioritized replay's sampling and priority updates included) against "
            "a bare eager Rainbow step and the GEMMs alone of the same network and batch (no replay buffer), and its "
            "per-env-step overhead against a bare noisy C51 action for one observation (noise draw included):",
            "",
            "| config | per gradient step | bare eager Rainbow step | Rainbow GEMMs alone | bare eager fused step "
            "| per-env-step overhead | bare noisy C51 action |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rainbow_rows,
            "",
            "A bare Rainbow step written by hand in NumPy (numpy_rainbow.py, no autograd; times its GEMMs), "
            "ScratchDQN's prioritized sampling and priority update for it, the two together (times the GEMMs), and "
            "a bare noisy C51 action in NumPy:",
            "",
            "| config | bare NumPy Rainbow step | prioritized sample + update | together | bare NumPy noisy action |",
            "|---|---:|---:|---:|---:|",
            *numpy_rows,
        ]
    if rainbow_ceilings:
        lines += [
            "",
            "Configuration 4's ScratchDQN wall time over configuration 1's (target: at most 1.5x), and the same for a "
            "run that spent only ScratchDQN's Rainbow env.step time, one bare noisy C51 action per env step (the eager "
            "one; in the NumPy columns the NumPy one) and one Rainbow floor per gradient step (nothing for "
            "prioritized replay, storing, the loop or callbacks, but in the column that adds ScratchDQN's "
            "prioritized sampling; in brackets, over configuration 1 with the NumPy backend):",
            "",
            "| config | ScratchDQN, 4 over 1 | ScratchDQN numpy, 4 over 1 | at the bare eager Rainbow step "
            "| at the bare NumPy Rainbow step | NumPy step + prioritized sampling | at the Rainbow GEMMs alone |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rainbow_ceilings,
        ]
    if compiled_rows:
        lines += [
            "",
            "The bare step under torch.compile (default mode; the compile time is its first two calls with "
            "inductor's caches off, which a run would pay once), and the ceiling over SB3 at that step, compile "
            "time included:",
            "",
            "| config | bare eager fused step | compiled | compile time | ceiling at the compiled step |",
            "|---|---:|---:|---:|---:|",
            *compiled_rows,
        ]
    if breakdowns:
        lines += [
            "",
            "Where the time goes (one instrumented run per algorithm, µs per env step or per gradient step):",
            *breakdowns,
        ]
    if profiles:
        lines += [
            "",
            "Torch ops where ScratchDQN's time goes (the last quarter of one profiled run per configuration):",
            *profiles,
        ]
    report = "\n".join(lines)
    print()
    print(report)
    if args.out:
        with open(args.out, "w") as file:
            file.write(report + "\n")


if __name__ == "__main__":
    main()
