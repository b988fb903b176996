"""``python -m tuning``: tune ScratchDQN, SB3's DQN or Rainbow on one environment with Optuna.

Every input is checked before any work starts; a bad one gives a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import optuna

from tuning import outputs
from tuning.objective import ALGOS, algo_class
from tuning.runner import PRUNERS, SAMPLERS, StudyMismatch, TuningConfig, load_study, tune
from tuning.storage import STORAGE_ENV_VAR, StorageError, dashboard_command, redact, resolve_url

PROG = "python -m tuning"


class UsageError(Exception):
    """A bad command-line input; its message is the one line shown to the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise UsageError(message)


def _positive(kind: type) -> type:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Tune a DQN's hyperparameters with Optuna; see docs/tuning.md.")
    parser.add_argument("--algo", required=True, choices=ALGOS, help="the algorithm to tune")
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium environment id, discrete actions (%(default)s)")
    parser.add_argument(
        "--n-trials", type=_positive(int), default=20, help="finished trials this command adds (%(default)s)"
    )
    parser.add_argument(
        "--n-timesteps", type=_positive(int), default=10_000, help="training steps per trial and seed (%(default)s)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/tuning"), help="output folder (%(default)s)")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help=f"Optuna storage, e.g. postgresql://user@host/db (default: ${STORAGE_ENV_VAR}, else sqlite:///OUT/study.db)",
    )
    parser.add_argument("--study-name", help="default: ALGO-ENV, with '-ext' for --extensions")
    parser.add_argument("--n-jobs", type=_positive(int), default=1, help="parallel worker processes (%(default)s)")
    parser.add_argument(
        "--seeds-per-trial", type=_positive(int), default=1, help="training seeds averaged per trial (%(default)s)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="(%(default)s)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="(%(default)s)")
    parser.add_argument(
        "--n-eval-episodes", type=_positive(int), default=5, help="episodes per evaluation (%(default)s)"
    )
    parser.add_argument(
        "--eval-freq", type=_positive(int), default=1_000, help="evaluate every N training steps (%(default)s)"
    )
    parser.add_argument(
        "--extensions",
        action="store_true",
        help="also tune the ScratchDQN-only parameters: double_q, dueling, n_steps, PER, noisy, C51",
    )
    parser.add_argument("--timeout", type=_positive(float), help="start no trial after this many seconds")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seeds are SEED, SEED+1, ...; also seeds the sampler (%(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="PyTorch device of the trials (%(default)s)")
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive(int),
        default=60,
        help="seconds between a running trial's heartbeats (%(default)s)",
    )
    parser.add_argument(
        "--grace-period",
        type=_positive(int),
        default=120,
        help="seconds without heartbeat after which a running trial is failed and retried (%(default)s)",
    )
    return parser


def _check_env(env_id: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error:
        raise UsageError(f"unknown environment id {env_id!r} (not registered in Gymnasium)") from None
    env = gym.make(env_id)
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise UsageError(f"environment {env_id!r} has {env.action_space} actions; DQN needs Discrete actions")
    finally:
        env.close()


def _check_algo(algo: str, extensions: bool) -> None:
    if extensions and algo == "sb3_dqn":
        raise UsageError("--extensions tunes ScratchDQN-only parameters: use --algo scratch_dqn or rainbow")
    try:
        algo_class(algo)
    except ImportError as error:
        raise UsageError(f"--algo {algo} cannot be imported: {error}") from None


def parse_config(argv: Sequence[str] | None = None) -> TuningConfig:
    """Parse and check the command line; raises :class:`UsageError` naming the first problem."""
    args = build_parser().parse_args(argv)
    _check_env(args.env)
    _check_algo(args.algo, args.extensions)
    study_name = args.study_name or f"{args.algo}-{args.env}" + ("-ext" if args.extensions else "")
    return TuningConfig(
        algo=args.algo,
        env_id=args.env,
        storage=resolve_url(args.storage, args.out),
        study_name=study_name,
        out=args.out,
        n_trials=args.n_trials,
        n_timesteps=args.n_timesteps,
        eval_freq=args.eval_freq,
        n_eval_episodes=args.n_eval_episodes,
        seeds_per_trial=args.seeds_per_trial,
        extensions=args.extensions,
        sampler=args.sampler,
        pruner=args.pruner,
        n_jobs=args.n_jobs,
        timeout=args.timeout,
        seed=args.seed,
        device=args.device,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
    )


def main(argv: Sequence[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and one line per trial say it all
    try:
        config = parse_config(argv)
        try:
            config.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create output folder {config.out}: {error.strerror}") from None
        load_study(config)  # reachable storage and matching study, before any training
    except (UsageError, StorageError, StudyMismatch) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(f"Study {config.study_name!r} in {redact(config.storage)}: {config.n_trials} more trials of {config.algo}")

    interrupted = False
    try:
        exit_codes = tune(config)
    except KeyboardInterrupt:
        interrupted, exit_codes = True, []
        print("Interrupted: the study is saved, run the same command to continue it")
    failed_workers = [code for code in exit_codes if code != 0]
    if failed_workers:
        print(f"{len(failed_workers)} of {len(exit_codes)} workers failed (exit codes {failed_workers}), see above")
    write_outputs(config, load_study(config))
    return 130 if interrupted else 1 if failed_workers else 0


def write_outputs(config: TuningConfig, study: optuna.Study) -> None:
    """Trials CSV, plots, dashboard command and, once a trial completed, the best hyperparameters."""
    results = config.results
    results.mkdir(parents=True, exist_ok=True)
    outputs.write_trials_csv(study, results / outputs.TRIALS_CSV)
    print(f"Trials: {results / outputs.TRIALS_CSV}")
    written, skipped = outputs.write_plots(study, results)
    for path in written:
        print(f"Plot: {path}")
    for note in skipped:
        print(f"Plot skipped: {note}")
    if any(trial.state.name == "COMPLETE" for trial in study.get_trials(deepcopy=False)):
        yaml_path = results / outputs.BEST_YAML
        outputs.write_best_yaml(study, config.env_id, config.n_timesteps, config.algo, yaml_path)
        best = study.best_trial
        print(f"Best: trial {best.number}, mean return {best.value:.2f}; hyperparameters: {yaml_path}")
    else:
        print("No completed trial yet: no best hyperparameters written")
    command = dashboard_command(config.storage)
    (results / outputs.DASHBOARD_TXT).write_text(command + "\n")
    print(f"Dashboard: {command}")
