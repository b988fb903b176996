"""
Ablation: stock SB3 DQN, ScratchDQN plain, each extension alone and all together (optionally Rainbow and QR-DQN).

    python benchmarks/ablation.py [--env CartPole-v1=10 --env Acrobot-v1=5 ...] [--algos a,b,...]
        [--timesteps N] [--workers 2] [--out runs/ablation] [--report FILE.md]

Every env is one comparison of :mod:`sb3_dqn_ext.compare` (the library's public comparison API) in its own folder
``OUT/ENV_ID``, with its own number of seeds (``ENV=SEEDS``): the runs are saved one by one and a stopped ablation
started again with the same ``--out`` runs only what is missing. All algorithms get rl-zoo3's DQN hyperparameters
for the env; a run's score is its 20-episode deterministic evaluation at the end of training.

The report gives, per env and algorithm: seeds solved (final return ≥ the env's threshold), the final return's IQM,
the normalised IQM with its stratified-bootstrap 95% CI, the median steps to the threshold, and the mean training
wall time; and the PER overhead: per seed, the wall time of the ``per`` run over that of the ``scratch_dqn`` run
(same config, same seed, same comparison), whose median is the figure the target (≤ 1.25x) is about.

The runs of a comparison share the machine with each other (``--workers`` processes), so wall times are
comparable within one ablation, not across machines. ``--per-overhead-only STEPS`` measures the PER overhead on its
own instead, in one process: ScratchDQN with rl-zoo3's CartPole-v1 values, uniform and prioritized replay
(α 0.6, β 0.4) alternately for ``STEPS`` steps each, same seed, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sb3_dqn_ext import PrioritizedReplayBuffer, ScratchDQN
from sb3_dqn_ext.compare import ENVS, CompareError, ComparisonConfig, compare, read_run
from sb3_dqn_ext.hyperparams import load_hyperparams, to_constructor_kwargs

ABLATION = ["sb3_dqn", "scratch_dqn", "double", "dueling", "per", "nstep3", "double_dueling_per_nstep3"]
DEFAULT_ENVS = ["CartPole-v1=10", "Acrobot-v1=5", "LunarLander-v3=5"]


def parse_env(text: str) -> tuple[str, int]:
    """``"CartPole-v1=10"`` -> ``("CartPole-v1", 10)``; a bare id gets 10 seeds."""
    env_id, _, seeds = text.partition("=")
    return env_id, int(seeds) if seeds else 10


def per_overhead(out: Path, env_id: str, seeds: int) -> list[float]:
    """Per seed: training wall time of ``per`` over that of ``scratch_dqn`` (only seeds where both are saved)."""
    ratios = []
    for seed in range(seeds):
        per = read_run(out / "runs" / env_id / "per" / f"seed_{seed}.json")
        plain = read_run(out / "runs" / env_id / "scratch_dqn" / f"seed_{seed}.json")
        if per is not None and plain is not None:
            ratios.append(per["train_seconds"] / plain["train_seconds"])
    return ratios


def time_per_overhead(timesteps: int, repeats: int, env_id: str = "CartPole-v1") -> dict[str, float]:
    """
    Best-of-``repeats`` training wall time of ScratchDQN with uniform and with prioritized replay, run alternately.

    :return: ``{"uniform": seconds, "per": seconds, "ratio": per / uniform}``
    """
    kwargs = to_constructor_kwargs(load_hyperparams(env_id))
    variants = {
        "uniform": {},
        "per": dict(replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs=dict(alpha=0.6, beta=0.4)),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, extra in variants.items():
            model = ScratchDQN(load_hyperparams(env_id).get("policy", "MlpPolicy"), env_id, seed=0, **kwargs, **extra)
            start = time.perf_counter()
            model.learn(timesteps)
            best[name] = min(best[name], time.perf_counter() - start)
    return dict(best, ratio=best["per"] / best["uniform"])


def _ci(values: Sequence[float]) -> str:
    point, low, high = values
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def env_table(summary: Mapping[str, Any], env_id: str) -> str:
    """One markdown table for one env's comparison."""
    threshold = ENVS[env_id].threshold
    n = len(summary["seeds"])
    plain_seconds = summary["timing"].get("scratch_dqn", {}).get("train_seconds_mean")
    lines = [
        f"| algorithm | seeds solved (≥ {threshold:g}) | final return IQM | normalised IQM [95% CI] "
        f"| median steps to {threshold:g} | train time (s, mean) | time / scratch_dqn |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo in summary["algos"]:
        row = summary["per_env"][env_id][algo]
        steps = row["median_steps_to_threshold"]
        steps_text = f"{steps:,.0f}" if steps is not None else f"not reached ({row['seeds_reached_threshold']}/{n})"
        seconds = summary["timing"][algo]["train_seconds_mean"]
        ratio = f"{seconds / plain_seconds:.2f}x" if plain_seconds else "–"
        lines.append(
            f"| {algo} | {row['seeds_solved']}/{n} | {row['iqm']:.1f} | {_ci(summary['aggregates'][algo]['iqm'])} "
            f"| {steps_text} | {seconds:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def report(sections: list[tuple[str, int, Mapping[str, Any], list[float]]], command: str) -> str:
    """The ablation's markdown: one table per env and the PER overhead."""
    parts = [
        "# Ablation",
        "",
        f"- Command: `{command}`",
        f"- Finished: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})",
        "",
    ]
    for env_id, seeds, summary, ratios in sections:
        parts += [
            f"## {env_id} ({seeds} seeds, {summary['settings']['timesteps']} steps)",
            "",
            env_table(summary, env_id),
        ]
        if ratios:
            parts += [
                "",
                f"PER overhead (per / scratch_dqn training wall time, paired by seed, {len(ratios)} seeds): "
                f"median {np.median(ratios):.2f}x, min {min(ratios):.2f}x, max {max(ratios):.2f}x (target ≤ 1.25x).",
            ]
        parts.append("")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", help=f"ENV_ID=SEEDS, repeat (default: {' '.join(DEFAULT_ENVS)})")
    parser.add_argument("--algos", default=",".join(ABLATION), help="comma-separated (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, default=None, help="steps per run (default: rl-zoo3's n_timesteps)")
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--n-eval-episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--report", default=None, help="markdown file to write (default: OUT/ablation.md)")
    parser.add_argument("--per-overhead-only", type=int, metavar="STEPS", help="only time uniform vs PER replay")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of --per-overhead-only (best kept)")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="checkpoint each run every STEPS env steps: a stopped run resumes from its newest checkpoint",
    )
    args = parser.parse_args(argv)

    import torch as th

    th.set_num_threads(1)
    if args.per_overhead_only:
        timing = time_per_overhead(args.per_overhead_only, args.repeats)
        print(
            f"ScratchDQN, rl-zoo3 CartPole-v1 values, {args.per_overhead_only} steps, best of {args.repeats}, "
            f"1 torch thread: uniform {timing['uniform']:.2f} s, PER {timing['per']:.2f} s, "
            f"PER / uniform {timing['ratio']:.3f}x"
        )
        return
    out = Path(args.out)
    algos = [name.strip() for name in args.algos.split(",") if name.strip()]
    command = " ".join(["python benchmarks/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    sections = []
    for env_id, seeds in map(parse_env, args.env or DEFAULT_ENVS):
        config = ComparisonConfig(
            envs=[env_id],
            algos=algos,
            seeds=seeds,
            timesteps=args.timesteps,
            eval_freq=args.eval_freq,
            n_eval_episodes=args.n_eval_episodes,
            out=out / env_id,
            workers=args.workers,
            command=command,
            checkpoint_every=args.checkpoint_every,
        )
        try:
            summary, failures = compare(config)
        except CompareError as error:
            parser.exit(2, f"ablation: {error}\n")
        if summary is None:
            parser.exit(1, "ablation: runs failed (run again to retry):\n  " + "\n  ".join(failures) + "\n")
        sections.append((env_id, seeds, summary, per_overhead(out / env_id, env_id, seeds) if "per" in algos else []))
    text = report(sections, command)
    path = Path(args.report) if args.report else out / "ablation.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
