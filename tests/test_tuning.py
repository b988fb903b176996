"""The Optuna tuning package: search space, objective, pruning, storage, outputs and the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch as th
from optuna.trial import TrialState
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env

import tuning.objective
from tuning.cli import main
from tuning.objective import ALGOS, Objective, build_model
from tuning.outputs import BEST_YAML, format_kwargs, load_hyperparams, parse_kwargs
from tuning.runner import make_pruner
from tuning.space import EXTENSION_SPACE, SEARCH_SPACE, markdown_table, sample_params, search_space, to_hyperparams
from tuning.storage import dashboard_command, redact

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "CartPole-v1"
# Hyperparameters that train fast and learn something within a thousand steps.
FAST_PARAMS = {
    "learning_rate": 1e-3,
    "batch_size_pow": 5,
    "buffer_size": 10_000,
    "one_minus_gamma": 0.01,
    "target_update_interval": 100,
    "train_freq": 4,
    "subsample_steps": 2,
    "exploration_fraction": 0.2,
    "exploration_final_eps": 0.05,
    "net_arch": "small",
}
# Distinct variants, queued in the studies that the command line runs, so that their trials are fast.
FAST_TRIALS = [{**FAST_PARAMS, "learning_rate": lr} for lr in (1e-3, 5e-4, 2e-3, 7e-4)]
# Every ScratchDQN component on.
ALL_EXTENSIONS = {
    "double_q": True,
    "dueling": True,
    "n_steps": 3,
    "prioritized_replay": True,
    "per_alpha": 0.6,
    "per_beta": 0.4,
    "noisy": True,
    "noisy_std_init": 0.5,
    "distributional": True,
    "n_atoms": 51,
    "v_max": 100.0,
}


def enqueue_trials(out: Path, study_name: str, trials: list[dict]) -> None:
    """Queue these parameters in the study that ``--out out`` will run (its first trials)."""
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    for params in trials:
        study.enqueue_trial(params)


def tiny_argv(algo: str, out: Path, *extra: str) -> list[str]:
    return [
        "--algo", algo, "--env", ENV_ID, "--out", str(out), "--n-trials", "2", "--n-timesteps", "1000",
        "--eval-freq", "500", "--n-eval-episodes", "2", *extra,
    ]  # fmt: skip


def load(out: Path, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """``tiny_study(algo)``: a finished two-trial study, run once through the command line; all in one ``--out``.

    Returns the ``--out`` folder.
    """
    out = tmp_path_factory.mktemp("out")
    done: set[str] = set()

    def get(algo: str) -> Path:
        if algo not in done:
            enqueue_trials(out, f"{algo}-{ENV_ID}", FAST_TRIALS[:2])
            assert main(tiny_argv(algo, out)) == 0
            done.add(algo)
        return out

    return get


# --- the search space -------------------------------------------------------------------------------------------


def sampled_distributions(algo: str, extensions: bool = False) -> dict:
    objective = Objective(algo, ENV_ID, 1000, 500, 1, [0], extensions)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sample_params(trial, objective.space)
    return trial.distributions


def test_every_algorithm_is_tuned_over_the_same_parameters_and_ranges():
    reference = sampled_distributions("sb3_dqn")
    assert sampled_distributions("scratch_dqn") == reference
    assert sampled_distributions("rainbow") == reference
    assert set(reference) == {param.name for param in SEARCH_SPACE}
    # rl-zoo3's ranges for the parameters it tunes
    assert reference["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 2e-3, log=True)
    assert reference["one_minus_gamma"] == optuna.distributions.FloatDistribution(1e-4, 0.03, log=True)
    assert reference["target_update_interval"] == optuna.distributions.IntDistribution(1, 20_000, log=True)
    assert reference["exploration_final_eps"] == optuna.distributions.FloatDistribution(0.0, 0.2)


def test_extensions_add_the_scratch_dqn_only_parameters(tmp_path, capsys):
    names = set(sampled_distributions("scratch_dqn", extensions=True))
    assert {"double_q", "dueling", "n_steps", "prioritized_replay", "noisy", "distributional"} <= names
    assert {param.name for param in SEARCH_SPACE} < names
    assert main(tiny_argv("sb3_dqn", tmp_path, "--extensions")) == 2
    assert "--extensions" in capsys.readouterr().err


def test_conditional_parameters_are_sampled_only_when_their_component_is_on():
    space = search_space(extensions=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = sample_params(study.ask(), space)
        assert ("per_alpha" in params) == params["prioritized_replay"]
        assert ("noisy_std_init" in params) == params["noisy"]
        assert ("n_atoms" in params) == ("v_max" in params) == params["distributional"]


def test_sampled_values_convert_to_constructor_arguments_as_rl_zoo3_does():
    hyperparams = to_hyperparams({**FAST_PARAMS, "train_freq": 7, "subsample_steps": 3})
    assert hyperparams["batch_size"] == 32
    assert hyperparams["gamma"] == pytest.approx(0.99)
    assert hyperparams["gradient_steps"] == 2  # 7 // 3
    assert hyperparams["policy_kwargs"] == {"net_arch": [64, 64]}
    assert to_hyperparams({**FAST_PARAMS, "train_freq": 2, "subsample_steps": 8})["gradient_steps"] == 1
    assert "double_q" not in hyperparams

    extensions = {**ALL_EXTENSIONS, "noisy": False, "v_max": 200.0}
    del extensions["noisy_std_init"]
    hyperparams = to_hyperparams({**FAST_PARAMS, **extensions})
    assert hyperparams["double_q"] is True and hyperparams["n_steps"] == 3
    assert hyperparams["replay_buffer_class"] == "PrioritizedReplayBuffer"
    assert hyperparams["replay_buffer_kwargs"] == {"alpha": 0.6, "beta": 0.4}
    assert hyperparams["policy_kwargs"] == {
        "net_arch": [64, 64],
        "dueling": True,
        "noisy": False,
        "n_atoms": 51,
        "v_min": -200.0,
        "v_max": 200.0,
    }


def test_docs_print_the_search_space_table():
    docs = (REPO / "docs" / "tuning.md").read_text()
    assert markdown_table(SEARCH_SPACE) in docs
    assert markdown_table(EXTENSION_SPACE) in docs


def test_kwargs_strings_round_trip_and_code_is_refused():
    kwargs = {"net_arch": [256, 256], "dueling": True, "n_atoms": None, "v_min": -10.0}
    assert format_kwargs({"net_arch": [256, 256]}) == "dict(net_arch=[256, 256])"
    assert parse_kwargs(format_kwargs(kwargs)) == kwargs
    for code in ("__import__('os').system('true')", "dict(x=open('f'))", "dict(**y)", "[1, 2]"):
        with pytest.raises(ValueError):
            parse_kwargs(code)


# --- the objective ----------------------------------------------------------------------------------------------


def run_fixed_trial(objective: Objective, study: optuna.Study | None = None) -> optuna.trial.FrozenTrial:
    study = study or optuna.create_study(direction="maximize")
    study.enqueue_trial(FAST_PARAMS)
    study.optimize(objective, n_trials=1)
    return study.trials[-1]


def test_seeds_train_in_lock_step_as_if_each_ran_alone_and_their_mean_is_reported():
    both = run_fixed_trial(Objective("sb3_dqn", ENV_ID, 1000, 500, 3, seeds=[0, 1]))
    alone = [run_fixed_trial(Objective("sb3_dqn", ENV_ID, 1000, 500, 3, seeds=[seed])) for seed in (0, 1)]
    assert both.state == TrialState.COMPLETE
    assert both.user_attrs["seed_returns"] == [trial.value for trial in alone]
    for step in (500, 1000):
        assert both.intermediate_values[step] == pytest.approx(np.mean([t.intermediate_values[step] for t in alone]))
    assert both.value == pytest.approx(both.intermediate_values[1000])


def test_a_trial_clearly_worse_than_the_others_is_pruned_at_its_first_evaluation():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", n_timesteps=3000, eval_freq=1000))
    for _ in range(5):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=500.0, intermediate_values={1000: 500.0, 2000: 500.0, 3000: 500.0}
            )
        )
    trial = run_fixed_trial(Objective("sb3_dqn", ENV_ID, 3000, 1000, 2, seeds=[0, 1]), study)
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1000]  # stopped before training on
    assert trial.intermediate_values[1000] < 500.0


class NaNWeightsDQN(DQN):
    """SB3's DQN whose network weights are NaN, as after a diverged update."""

    def _setup_model(self) -> None:
        super()._setup_model()
        with th.no_grad():
            next(self.policy.parameters()).fill_(float("nan"))


def test_a_diverged_trial_is_pruned_with_its_reason_and_the_study_goes_on(monkeypatch):
    monkeypatch.setattr(tuning.objective, "algo_class", lambda algo: NaNWeightsDQN)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective("sb3_dqn", ENV_ID, 400, 200, 1, seeds=[0]), n_trials=2)
    assert [trial.state for trial in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert "non-finite network weights at step 200" in study.trials[0].user_attrs["fail_reason"]


def test_a_scratch_dqn_error_during_training_prunes_the_trial_with_its_reason(monkeypatch):
    from sb3_dqn_ext import ScratchDQN, ScratchDQNError

    class ExplodingDQN(ScratchDQN):
        def train(self, gradient_steps: int, batch_size: int = 100) -> None:
            raise ScratchDQNError("loss is nan")

    monkeypatch.setattr(tuning.objective, "algo_class", lambda algo: ExplodingDQN)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective("scratch_dqn", ENV_ID, 400, 200, 1, seeds=[0]), n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    assert study.trials[0].user_attrs["fail_reason"] == "ScratchDQNError: loss is nan"


# --- the command end to end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_a_tiny_study_writes_a_yaml_that_loads_back_and_trains(tiny_study, algo):
    out = tiny_study(algo)
    study = load(out, f"{algo}-{ENV_ID}")
    assert len(study.trials) == 2
    results = out / f"{algo}-{ENV_ID}"  # one folder per study: algorithms tuned into one --out keep their files
    trials = pd.read_csv(results / "trials.csv")
    assert list(trials["number"]) == [0, 1]
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (results / f"{name}.html").stat().st_size > 0
    assert (results / "dashboard.txt").read_text() == f"optuna-dashboard sqlite:///{(out / 'study.db').resolve()}\n"

    hyperparams = load_hyperparams(results / BEST_YAML, ENV_ID)
    assert hyperparams["policy"] == "MlpPolicy"
    assert hyperparams["n_timesteps"] == 1000
    assert {k: v for k, v in hyperparams.items() if k not in ("policy", "n_timesteps")} == to_hyperparams(
        study.best_trial.params
    )
    assert f'policy_kwargs: "{format_kwargs(hyperparams["policy_kwargs"])}"' in (results / BEST_YAML).read_text()
    model = build_model(algo, make_vec_env(ENV_ID), {**hyperparams, "learning_starts": 50}, seed=0)
    model.learn(200)
    assert model.num_timesteps == 200
    assert model.policy.net_arch == hyperparams["policy_kwargs"]["net_arch"]


def test_an_extensions_yaml_is_read_back_by_the_comparison_command_and_trains(tmp_path):
    from sb3_dqn_ext import PrioritizedReplayBuffer
    from sb3_dqn_ext.compare import hyperparameters

    enqueue_trials(tmp_path, f"scratch_dqn-{ENV_ID}-ext", [{**FAST_PARAMS, **ALL_EXTENSIONS}])
    assert main(tiny_argv("scratch_dqn", tmp_path, "--extensions", "--n-trials", "1", "--n-timesteps", "300")) == 0
    path = tmp_path / f"scratch_dqn-{ENV_ID}-ext" / BEST_YAML
    tuned = to_hyperparams({**FAST_PARAMS, **ALL_EXTENSIONS})
    hyperparams = load_hyperparams(path, ENV_ID)
    assert hyperparams["replay_buffer_class"] == "PrioritizedReplayBuffer"
    assert hyperparams["replay_buffer_kwargs"] == {"alpha": 0.6, "beta": 0.4}
    assert hyperparams["policy_kwargs"]["n_atoms"] == 51 and hyperparams["policy_kwargs"]["v_min"] == -100.0

    policy, kwargs = hyperparameters("scratch_dqn", ENV_ID, own_file=path)  # the comparison command's reader
    assert policy == "MlpPolicy"
    assert kwargs["replay_buffer_class"] is PrioritizedReplayBuffer
    assert kwargs["replay_buffer_kwargs"] == tuned["replay_buffer_kwargs"]
    assert kwargs["policy_kwargs"] == tuned["policy_kwargs"]
    for key in ("learning_rate", "batch_size", "gamma", "gradient_steps", "double_q", "n_steps"):
        assert kwargs[key] == tuned[key]

    model = build_model("scratch_dqn", make_vec_env(ENV_ID), {**hyperparams, "learning_starts": 50}, seed=0)
    assert isinstance(model.replay_buffer, PrioritizedReplayBuffer)
    assert model.double_q and model.n_steps == 3
    model.learn(200)
    assert model.num_timesteps == 200


def test_rl_zoo3_trains_from_the_sb3_dqn_yaml(tiny_study, tmp_path):
    pytest.importorskip("rl_zoo3")
    yaml_path = tiny_study("sb3_dqn") / f"sb3_dqn-{ENV_ID}" / BEST_YAML
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "dqn", "--env", ENV_ID, "-conf", str(yaml_path)]
    command += ["-n", "300", "-f", str(tmp_path), "--eval-freq", "-1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "dqn" / f"{ENV_ID}_1" / f"{ENV_ID}.zip").exists()


def test_running_the_same_command_again_continues_the_study(tiny_study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_study("sb3_dqn"), out)
    storage = f"sqlite:///{out / 'study.db'}"
    studies = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage))
    enqueue_trials(out, f"sb3_dqn-{ENV_ID}", FAST_TRIALS[:2])
    assert main(tiny_argv("sb3_dqn", out)) == 0
    assert sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage)) == studies
    trials = load(out, f"sb3_dqn-{ENV_ID}").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4
    assert pd.read_csv(out / f"sb3_dqn-{ENV_ID}" / "trials.csv")["number"].tolist() == [0, 1, 2, 3]


def test_continuing_a_study_with_another_budget_is_refused(tiny_study, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(tiny_study("sb3_dqn"), out)
    argv = tiny_argv("sb3_dqn", out)
    argv[argv.index("--n-timesteps") + 1] = "2000"
    assert main(argv) == 2
    assert "n_timesteps=1000" in capsys.readouterr().err
    assert len(load(out, f"sb3_dqn-{ENV_ID}").trials) == 2


def test_n_jobs_runs_trials_in_separate_worker_processes(tmp_path):
    enqueue_trials(tmp_path, f"sb3_dqn-{ENV_ID}", FAST_TRIALS)  # one more, for a worker that starts one too many
    assert main(tiny_argv("sb3_dqn", tmp_path, "--n-jobs", "2", "--n-trials", "3")) == 0
    trials = load(tmp_path, f"sb3_dqn-{ENV_ID}").trials
    finished = [trial for trial in trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 3 <= len(finished) <= 4  # the second worker may have started one more before the study was full
    workers = {trial.user_attrs["worker"].rsplit(":", 1)[1] for trial in finished}
    assert len(workers) == 2 and str(os.getpid()) not in workers


# --- bad input --------------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "unknown env": (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    "continuous actions": (["--env", "Pendulum-v1"], "Discrete"),
    "unknown algo": (["--algo", "ppo"], "ppo"),
    "no trials": (["--n-trials", "0"], "--n-trials"),
    "negative budget": (["--n-timesteps", "-5"], "--n-timesteps"),
    "unreachable postgres": (["--storage", "postgresql://tuner:s3cret@127.0.0.1:1/study"], "127.0.0.1"),
    "missing sqlite folder": (["--storage", "sqlite:////no/such/folder/study.db"], "/no/such/folder"),
    "not a URL": (["--storage", "study.db"], "storage URL"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_a_one_line_error_before_any_work(case, tmp_path, capsys):
    extra, named = BAD_INPUTS[case]
    assert main(tiny_argv("sb3_dqn", tmp_path / "out") + extra) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("python -m tuning: error: ")
    assert named in captured.err
    assert "s3cret" not in captured.err + captured.out
    assert not (tmp_path / "out" / "study.db").exists()
    assert not (tmp_path / "out" / f"sb3_dqn-{ENV_ID}").exists()


def test_the_module_exits_with_code_2_and_no_traceback_on_bad_input(tmp_path):
    command = [sys.executable, "-m", "tuning", "--algo", "sb3_dqn", "--n-trials", "0", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m tuning: error: argument --n-trials: must be positive, got 0"
    ]


def test_storage_urls_are_shown_without_their_password():
    url = "postgresql://tuner:s3cret@db.example:5432/studies"
    assert redact(url) == "postgresql://tuner:***@db.example:5432/studies"
    assert dashboard_command(url) == "optuna-dashboard postgresql://tuner@db.example:5432/studies"
