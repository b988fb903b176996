"""
The ``sb3-dqn-ext`` command.

``sb3-dqn-ext train --env CartPole-v1 --timesteps 50000 --seed 0 --save model.zip`` trains ScratchDQN with
rl-zoo3's hyperparameters for the env (or a ``--hyperparams`` YAML), shows SB3's progress bar, evaluates the
greedy policy and prints the mean return.

``sb3-dqn-ext compare --env CartPole-v1 --algos scratch_dqn,sb3_dqn,rainbow,qrdqn --seeds 10 --out DIR`` trains
every (algorithm, env, seed) in parallel workers and writes the statistics (see :mod:`sb3_dqn_ext.compare`).

A bad input gives a one-line error on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym


def _fail(message: str) -> None:
    print(f"sb3-dqn-ext: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        _fail(f"{self.prog}: {message}")


def _check_env_id(env_id: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        _fail(f"unknown env id {env_id!r} ({exc})")


def train_main(args: argparse.Namespace) -> None:
    import torch as th
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_dqn_ext import ScratchDQN, ScratchDQNError
    from sb3_dqn_ext.hyperparams import load_hyperparams, to_constructor_kwargs

    _check_env_id(args.env)
    if args.timesteps is not None and args.timesteps <= 0:
        _fail(f"--timesteps must be > 0, got {args.timesteps}")
    th.set_num_threads(args.threads)
    try:
        entry = load_hyperparams(args.env, args.hyperparams)
        kwargs = to_constructor_kwargs(entry)
        timesteps = args.timesteps if args.timesteps is not None else int(entry.get("n_timesteps", 50_000))
        model = ScratchDQN(entry.get("policy", "MlpPolicy"), args.env, seed=args.seed, verbose=args.verbose, **kwargs)
    except ScratchDQNError as exc:
        _fail(str(exc))
    start = time.perf_counter()
    model.learn(timesteps, progress_bar=not args.no_progress_bar)
    elapsed = time.perf_counter() - start
    eval_env = gym.make(args.env)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.n_eval_episodes, deterministic=True)
    print(
        f"{args.env}: mean return {mean:.2f} +/- {std:.2f} over {args.n_eval_episodes} episodes "
        f"after {timesteps} steps ({elapsed:.1f} s, seed {args.seed})"
    )
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")


def compare_main(args: argparse.Namespace) -> None:
    import torch as th

    from sb3_dqn_ext.compare import CompareError, ComparisonConfig, compare, headline_table

    th.set_num_threads(1)
    shared, own = None, {}
    for text in args.hyperparams or []:
        algo, sep, path = text.partition("=")
        if not (sep and algo.isidentifier()):
            if shared is not None:
                _fail(f"--hyperparams: two shared files ({shared}, {text}); give one, or ALGO=FILE per algorithm")
            shared = text
        elif algo in own:
            _fail(f"--hyperparams: two files for {algo}")
        else:
            own[algo] = path
    config = ComparisonConfig(
        envs=args.env or ["CartPole-v1"],
        algos=[name.strip() for name in args.algos.split(",") if name.strip()],
        seeds=args.seeds,
        timesteps=args.timesteps,
        eval_freq=args.eval_freq,
        n_eval_episodes=args.n_eval_episodes,
        out=Path(args.out),
        hyperparams=shared,
        algo_hyperparams=own,
        workers=args.workers,
        dask_scheduler=args.dask_scheduler,
        device=args.device,
        command=" ".join(["sb3-dqn-ext", *args.argv]),
        checkpoint_every=args.checkpoint_every,
    )
    # a job scheduler's SIGTERM stops the workers as Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary, failures = compare(config)
    except CompareError as error:
        _fail(" ".join(str(error).split()))  # one line, also for a YAML parser's multi-line message
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are saved in {config.out}: run the same command to finish", file=sys.stderr)
        raise SystemExit(130) from None
    if failures:
        print(f"sb3-dqn-ext: {len(failures)} run(s) failed (the others are saved; run again to retry)", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
    print(headline_table(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sb3-dqn-ext", description=__doc__.split("\n\n")[0].strip())
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train ScratchDQN on one env and print its evaluation")
    train.add_argument("--env", default="CartPole-v1", help="gymnasium env id")
    train.add_argument("--timesteps", type=int, default=None, help="env steps (default: the YAML's n_timesteps)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--hyperparams", default=None, help="rl-zoo3-format YAML (default: rl-zoo3's DQN values)")
    train.add_argument("--save", default=None, help="path of the model zip to write")
    train.add_argument("--n-eval-episodes", type=int, default=20)
    train.add_argument("--threads", type=int, default=1, help="torch threads")
    train.add_argument("--verbose", type=int, default=0)
    train.add_argument("--no-progress-bar", action="store_true")
    train.set_defaults(func=train_main)

    compare = sub.add_parser(
        "compare",
        help="train several algorithms on the same envs and seeds, and compare them statistically",
        description="Train every (algorithm, env, seed), evaluate periodically, aggregate with bootstrap CIs. "
        "Runs are saved one by one under OUT: the same command again runs only what is missing.",
    )
    compare.add_argument("--env", action="append", help="gymnasium env id; repeat for several (default: CartPole-v1)")
    compare.add_argument(
        "--algos",
        default="scratch_dqn,sb3_dqn",
        help="comma-separated names from sb3_dqn_ext.compare.ALGORITHMS (default: %(default)s)",
    )
    compare.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per algorithm and env (%(default)s)")
    compare.add_argument("--timesteps", type=int, default=None, help="env steps per run (default: n_timesteps)")
    compare.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (%(default)s)")
    compare.add_argument("--out", default="compare_out", help="output folder (%(default)s)")
    compare.add_argument(
        "--hyperparams",
        action="append",
        metavar="[ALGO=]FILE",
        help="rl-zoo3-format YAML: FILE for every algorithm, ALGO=FILE for one (repeatable; default: rl-zoo3's DQN)",
    )
    compare.add_argument("--eval-freq", type=int, default=5000, help="evaluate every N env steps (%(default)s)")
    compare.add_argument("--n-eval-episodes", type=int, default=10, help="episodes per evaluation (%(default)s)")
    compare.add_argument("--dask-scheduler", metavar="ADDRESS", help="run on this Dask scheduler, not locally")
    compare.add_argument("--device", default="cpu", help="PyTorch device of the runs (%(default)s)")
    compare.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="checkpoint each run every STEPS env steps under OUT/checkpoints/: a run stopped midway resumes from its "
        "newest checkpoint when the same command runs again (default: runs start over)",
    )
    compare.set_defaults(func=compare_main)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.func(args)


if __name__ == "__main__":
    main()
