"""
Invalid-action masking benchmark (issue #5) on the single-machine scheduling task of ``masked_scheduling.py``.

    python benchmarks/masking.py [--seeds 5] [--timesteps 40000] [--eval-freq 2500] [--thresholds 0.9,0.95]
        [--out FILE.md] [--raw FILE.json]

Three agents with the same hyperparameters (``HYPERPARAMS``), each trained ``--timesteps`` env steps per seed:

- ``ScratchDQN + masking``: ``ScratchDQN`` on the env in ``mode="masked"``, ``learn(use_masking=True)``; the env has
  ``action_masks()``, so warm-up, ε-greedy and greedy actions and the TD target's max are over the unscheduled jobs
  (an illegal action would raise, so the run also checks that masks are honoured);
- ``ScratchDQN + penalty``: ``ScratchDQN`` on the env in ``mode="penalty"``, ``learn(use_masking=False)``;
- ``SB3 DQN + penalty``: ``stable_baselines3.DQN`` on the same penalty env.

Every ``--eval-freq`` steps (and before training) each agent plays the same ``--eval-episodes`` instances (env seeds
``EVAL_SEED_BASE + i``) greedily: the masking agent with ``predict(..., action_masks=env.action_masks())``, the
others without masks on the penalty env. The score of an evaluation is the mean optimality ratio
``OPT / sum_j w_j C_j`` of its episodes, an unfinished schedule (step limit hit) being completed in the worst order
(see ``masked_scheduling.py``): the same metric for all three agents. The eval return (with the penalties) is
reported too.

Statistics, all from ``sb3_dqn_ext.stats``: IQM of the final score (last evaluation) and of the final return over
seeds with 95% stratified-bootstrap CIs (``aggregate_with_ci``); steps to reach each of ``--thresholds`` per seed
(``steps_to_threshold_per_run``), their median with a bootstrap CI (``bootstrap_ci``) and the number of seeds that
reach it; the probability that the masking agent's final score beats each baseline's
(``probability_of_improvement``); the IQM learning curve (``iqm_curve``). Runs go one after another in this process
(seed-major, variants interleaved, so that changes in machine load hit all variants alike), with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masked_scheduling import MaskedSchedulingEnv  # noqa: E402

from sb3_dqn_ext import ScratchDQN  # noqa: E402
from sb3_dqn_ext.stats import (  # noqa: E402
    aggregate_with_ci,
    bootstrap_ci,
    iqm_curve,
    probability_of_improvement,
    steps_to_threshold_per_run,
)

th.set_num_threads(1)

N_JOBS = 8
EVAL_SEED_BASE = 100_000
HYPERPARAMS: dict[str, Any] = dict(
    learning_rate=1e-3,
    buffer_size=50_000,
    learning_starts=1000,
    batch_size=64,
    gamma=1.0,  # the objective is the undiscounted total weighted completion time; episodes last <= 24 steps
    train_freq=4,
    gradient_steps=1,
    target_update_interval=500,
    exploration_fraction=0.3,
    exploration_initial_eps=1.0,
    exploration_final_eps=0.05,
    max_grad_norm=10,
    policy_kwargs=dict(net_arch=[64, 64]),
)


@dataclass
class Variant:
    name: str
    algo: type
    mode: str  # env mode: "masked" or "penalty"
    use_masking: bool


VARIANTS = {
    "masked": Variant("ScratchDQN + masking", ScratchDQN, "masked", True),
    "scratch-penalty": Variant("ScratchDQN + penalty", ScratchDQN, "penalty", False),
    "sb3-penalty": Variant("SB3 DQN + penalty", DQN, "penalty", False),
}


@dataclass
class RunResult:
    variant: str
    seed: int
    steps: list[int] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # mean optimality ratio of each evaluation
    eval_return: list[float] = field(default_factory=list)
    illegal_per_episode: list[float] = field(default_factory=list)
    unfinished: list[float] = field(default_factory=list)  # fraction of eval episodes that hit the step limit
    train_steps: int = 0
    train_episodes: int = 0
    train_illegal: int = 0
    wall_s: float = 0.0
    eval_s: float = 0.0


class TrainingCounter(gym.Wrapper):
    """Count env steps, episodes and illegal moves during training (``action_masks`` passes through)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = self.episodes = self.illegal = 0

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if terminated or truncated:
            self.episodes += 1
            self.illegal += int(info["illegal_moves"])
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def make_env(mode: str, penalty: float | None) -> MaskedSchedulingEnv:
    return MaskedSchedulingEnv(N_JOBS, mode=mode, penalty=penalty)


def evaluate(
    model: Any, mode: str, use_masking: bool, n_episodes: int, penalty: float | None
) -> tuple[float, float, float, float]:
    """Greedy play on the fixed eval instances: mean optimality ratio, return, illegal moves and unfinished share."""
    env = make_env(mode, penalty)
    ratios, returns, illegal, unfinished = [], [], [], []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + i)
        total, done, info = 0.0, False, {}
        while not done:
            if use_masking:
                action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
            else:
                action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _, info = env.step(action)
            total += reward
        ratios.append(info["optimality_ratio"])
        returns.append(total)
        illegal.append(info["illegal_moves"])
        unfinished.append(not info["completed"])
    return float(np.mean(ratios)), float(np.mean(returns)), float(np.mean(illegal)), float(np.mean(unfinished))


class PeriodicEval(BaseCallback):
    def __init__(
        self, result: RunResult, variant: Variant, eval_freq: int, n_episodes: int, penalty: float | None
    ) -> None:
        super().__init__()
        self.result, self.variant, self.eval_freq, self.n_episodes = result, variant, eval_freq, n_episodes
        self.penalty = penalty

    def run_eval(self) -> None:
        start = time.perf_counter()
        ratio, ret, illegal, unfinished = evaluate(
            self.model, self.variant.mode, self.variant.use_masking, self.n_episodes, self.penalty
        )
        self.result.steps.append(int(self.num_timesteps))
        self.result.ratio.append(ratio)
        self.result.eval_return.append(ret)
        self.result.illegal_per_episode.append(illegal)
        self.result.unfinished.append(unfinished)
        self.result.eval_s += time.perf_counter() - start

    def _on_training_start(self) -> None:
        self.run_eval()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            self.run_eval()
        return True


def run(key: str, seed: int, timesteps: int, eval_freq: int, n_episodes: int, penalty: float | None) -> RunResult:
    variant = VARIANTS[key]
    env = TrainingCounter(make_env(variant.mode, penalty))
    result = RunResult(key, seed)
    start = time.perf_counter()
    model = variant.algo("MlpPolicy", env, seed=seed, device="cpu", **HYPERPARAMS)
    callback = PeriodicEval(result, variant, eval_freq, n_episodes, penalty)
    learn_kwargs: dict[str, Any] = {"use_masking": variant.use_masking} if variant.algo is ScratchDQN else {}
    model.learn(timesteps, callback=callback, **learn_kwargs)
    if result.steps[-1] != model.num_timesteps:
        callback.run_eval()
    result.wall_s = time.perf_counter() - start
    result.train_steps, result.train_episodes, result.train_illegal = env.steps, env.episodes, env.illegal
    return result


# ------------------------------------------------------------------------------------------------ report


def fmt_ci(point: float, low: float, high: float, digits: int = 3) -> str:
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_steps(value: float, budget: int) -> str:
    return f"> {budget:,}" if value > budget else f"{value:,.0f}"


def report(results: list[RunResult], args: argparse.Namespace, command: str, date: str) -> str:
    keys = [k for k in VARIANTS if any(r.variant == k for r in results)]
    by_key = {k: sorted((r for r in results if r.variant == k), key=lambda r: r.seed) for k in keys}
    steps = np.asarray(by_key[keys[0]][0].steps, dtype=np.float64)
    curves = {k: np.asarray([r.ratio for r in rs]) for k, rs in by_key.items()}  # (n_seeds, n_points)
    final_ratio = {k: c[:, -1] for k, c in curves.items()}
    final_return = {k: np.asarray([r.eval_return[-1] for r in rs]) for k, rs in by_key.items()}
    agg_ratio = aggregate_with_ci(final_ratio, seed=0)
    agg_return = aggregate_with_ci(final_return, seed=0)
    never = 2.0 * args.timesteps  # "not reached" as a finite value above the budget, so bootstrap quantiles exist

    def median_runs(x: np.ndarray) -> np.ndarray:
        return np.median(x, axis=(-2, -1))

    lines = [
        "# Invalid-action masking: ScratchDQN + masking vs illegal-move penalty",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {date}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()},"
        f" python {platform.python_version()}, torch {th.__version__} (CPU, {th.get_num_threads()} thread)",
        "",
        f"Task: single-machine scheduling of {N_JOBS} jobs (benchmarks/masked_scheduling.py), {len(by_key[keys[0]])}"
        f" seeds x {args.timesteps:,} env steps per variant, evaluation every {args.eval_freq:,} steps on the same"
        f" {args.eval_episodes} instances (greedy). Score = mean optimality ratio OPT / sum w_j C_j (WSPT optimum = 1,"
        " random order 0.63 on these instances; unfinished schedules completed in the worst order).",
        "",
        "| Variant | Final score IQM [95% CI] | Final eval return IQM [95% CI] | "
        + "".join(f"Median steps to score >= {t} [95% CI] (seeds reaching) | " for t in args.thresholds)
        + "Illegal moves / episode (final eval) | Unfinished eval episodes (final) | Illegal moves in training"
        " (% of steps) | Wall time / run (s): total (eval) |",
        "|---|---|---|" + "---|" * len(args.thresholds) + "---|---|---|---|",
    ]
    for k, rs in by_key.items():
        reach_cells = []
        for threshold in args.thresholds:
            reach = steps_to_threshold_per_run(steps, curves[k], threshold)
            finite = np.where(np.isfinite(reach), reach, never)
            med, low, high = (fmt_steps(float(v), args.timesteps) for v in bootstrap_ci(finite, median_runs, seed=0))
            reach_cells.append(f"{med} [{low}, {high}] ({int(np.isfinite(reach).sum())}/{len(rs)}) | ")
        illegal = np.mean([r.illegal_per_episode[-1] for r in rs])
        unfinished = np.mean([r.unfinished[-1] for r in rs])
        train_illegal = 100.0 * sum(r.train_illegal for r in rs) / sum(r.train_steps for r in rs)
        wall, eval_s = np.mean([r.wall_s for r in rs]), np.mean([r.eval_s for r in rs])
        lines.append(
            f"| {VARIANTS[k].name} | {fmt_ci(*agg_ratio[k]['iqm'])} | {fmt_ci(*agg_return[k]['iqm'])} | "
            + "".join(reach_cells)
            + f"{illegal:.2f} | {100 * unfinished:.1f}% | "
            f"{train_illegal:.1f}% | {wall:.0f} ({eval_s:.0f}) |"
        )

    if "masked" in by_key and len(keys) > 1:
        lines += ["", "Probability that a masking run's final score beats a baseline run's (rliable's P(X > Y)):", ""]
        for k in keys:
            if k != "masked":
                poi = probability_of_improvement(final_ratio["masked"][:, None], final_ratio[k][:, None], seed=0)
                lines.append(f"- vs {VARIANTS[k].name}: {fmt_ci(*poi, digits=2)}")

    curve_ci = iqm_curve({k: c[:, None, :] for k, c in curves.items()}, seed=0)
    n_cols = 8
    picks = sorted({int(round(i)) for i in np.linspace(0, len(steps) - 1, n_cols)})
    lines += [
        "",
        "IQM score over training (95% CI):",
        "",
        "| Steps | " + " | ".join(VARIANTS[k].name for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for i in picks:
        cells = [fmt_ci(curve_ci[k][0][i], curve_ci[k][1][i], curve_ci[k][2][i]) for k in keys]
        lines.append(f"| {int(steps[i]):,} | " + " | ".join(cells) + " |")

    lines += [
        "",
        f"Per seed: final score / steps to score >= {args.thresholds[0]} / illegal moves per final eval episode:",
        "",
        "| Variant | " + " | ".join(f"seed {r.seed}" for r in by_key[keys[0]]) + " |",
        "|---|" + "---|" * len(by_key[keys[0]]),
    ]
    for k, rs in by_key.items():
        reach = steps_to_threshold_per_run(steps, curves[k], args.thresholds[0])
        cells = [
            f"{r.ratio[-1]:.3f} / {fmt_steps(s if np.isfinite(s) else never, args.timesteps)} / "
            f"{r.illegal_per_episode[-1]:.2f}"
            for r, s in zip(rs, reach, strict=True)
        ]
        lines.append(f"| {VARIANTS[k].name} | " + " | ".join(cells) + " |")
    lines += ["", "Hyperparameters (all variants): `" + json.dumps(HYPERPARAMS) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per variant (0, 1, ...)")
    parser.add_argument("--timesteps", type=int, default=40_000, help="env steps per run")
    parser.add_argument("--eval-freq", type=int, default=2500, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=50, help="fixed instances per evaluation")
    parser.add_argument(
        "--thresholds", default="0.9,0.95", help="comma-separated scores (optimality ratios) to reach; first per seed"
    )
    parser.add_argument(
        "--penalty", type=float, default=None, help="reward of an illegal move (penalty env); default -1/n_jobs"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--raw", type=Path, help="write the per-run results here (JSON)")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.variants.split(",") if k.strip()]
    args.thresholds = [float(t) for t in args.thresholds.split(",")]
    unknown = set(keys) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")

    command = "python benchmarks/masking.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    results = []
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    for seed in range(args.seeds):
        for key in keys:
            result = run(key, seed, args.timesteps, args.eval_freq, args.eval_episodes, args.penalty)
            results.append(result)
            log(
                f"{VARIANTS[key].name:22s} seed {seed}: final score {result.ratio[-1]:.3f},"
                f" best {max(result.ratio):.3f}, illegal/ep {result.illegal_per_episode[-1]:.2f},"
                f" {result.wall_s:.0f}s ({result.eval_s:.0f}s eval)"
            )
            if args.raw:
                args.raw.write_text(json.dumps([asdict(r) for r in results], indent=1))
    text = report(results, args, command, date)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
