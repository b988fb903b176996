"""
The ``sb3-dqn-ext`` command.

``sb3-dqn-ext train --env CartPole-v1 --timesteps 50000 --seed 0 --save model.zip`` trains ScratchDQN with
rl-zoo3's hyperparameters for the env (or a ``--hyperparams`` YAML), shows SB3's progress bar, evaluates the
greedy policy and prints the mean return.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import gymnasium as gym


def _fail(message: str) -> None:
    print(f"sb3-dqn-ext: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sb3-dqn-ext", description=__doc__.split("\n\n")[0].strip())
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
