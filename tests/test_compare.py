"""The compare command: hyperparameters per algorithm, aggregation, resumable parallel runs, Dask, input errors."""

import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from sb3_dqn_ext import PrioritizedReplayBuffer, cli
from sb3_dqn_ext.compare import (
    ALGORITHMS,
    ENVS,
    CompareError,
    ComparisonConfig,
    RunSpec,
    _PeriodicEvaluation,
    hyperparameters,
    plan,
    reference_table,
    registry_table,
    run_one,
    save_run,
    summarize,
)
from sb3_dqn_ext.hyperparams import ZOO_DQN, to_constructor_kwargs

# Small enough that a run takes a few seconds on one thread.
TINY_YAML = """\
CartPole-v1:
  policy: MlpPolicy
  n_timesteps: 1000
  learning_rate: 0.001
  batch_size: 32
  buffer_size: 2000
  learning_starts: 100
  gamma: 0.99
  target_update_interval: 100
  train_freq: 4
  gradient_steps: 1
  exploration_fraction: 0.3
  exploration_final_eps: 0.05
  policy_kwargs: "dict(net_arch=[16])"
"""
TINY_RUN = ["--timesteps", "1000", "--eval-freq", "500", "--n-eval-episodes", "2"]


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_YAML)
    return path


def compare_cli(*args):
    cli.main(["compare", *map(str, args)])


# ---------------------------------------------------------------------------------------------------- hyperparameters
def test_every_algorithm_gets_the_shared_values_and_its_own_settings():
    shared = to_constructor_kwargs(ZOO_DQN["CartPole-v1"])
    shared_policy_kwargs = shared.pop("policy_kwargs")
    resolved = {algo: hyperparameters(algo, "CartPole-v1")[1] for algo in ALGORITHMS}
    for algo, kwargs in resolved.items():
        # noisy layers explore instead
        exploration = {"exploration_final_eps"} if algo in ("rainbow", "rainbow_numpy") else set()
        assert {k: v for k, v in kwargs.items() if k in shared and k not in exploration} == {
            k: v for k, v in shared.items() if k not in exploration
        }, algo
        assert kwargs["policy_kwargs"]["net_arch"] == shared_policy_kwargs["net_arch"] == [256, 256]
        assert kwargs["learning_rate"] == 2.3e-3 and kwargs["train_freq"] == 256 and kwargs["gradient_steps"] == 128

    assert set(resolved["sb3_dqn"]) == set(resolved["scratch_dqn"]) == {*shared, "policy_kwargs"}
    assert resolved["double"]["double_q"] is True
    assert resolved["dueling"]["policy_kwargs"] == {"net_arch": [256, 256], "dueling": True}
    assert resolved["per"]["replay_buffer_class"] is PrioritizedReplayBuffer
    assert resolved["per"]["replay_buffer_kwargs"] == {"alpha": 0.6, "beta": 0.4}
    assert resolved["nstep3"]["n_steps"] == 3
    combined = resolved["double_dueling_per_nstep3"]
    assert (combined["double_q"], combined["n_steps"], combined["policy_kwargs"]["dueling"]) == (True, 3, True)
    assert combined["replay_buffer_class"] is PrioritizedReplayBuffer
    rainbow = resolved["rainbow"]
    assert rainbow["policy_kwargs"] == {"net_arch": [256, 256], "v_min": 0.0, "v_max": 100.0}
    assert rainbow["exploration_initial_eps"] == rainbow["exploration_final_eps"] == 0.0
    assert resolved["rainbow_numpy"] == {**rainbow, "mlp_backend": "numpy"}
    no_noisy = resolved["rainbow_no_noisy"]  # Rainbow's other components, SB3's ε-greedy from the shared values
    assert no_noisy["policy_kwargs"] == {
        "net_arch": [256, 256],
        "dueling": True,
        "n_atoms": 51,
        "v_min": 0.0,
        "v_max": 100.0,
    }
    assert (no_noisy["double_q"], no_noisy["n_steps"], no_noisy["replay_buffer_class"]) == (
        True,
        3,
        PrioritizedReplayBuffer,
    )
    assert no_noisy["replay_buffer_kwargs"] == {"alpha": 0.5, "beta": 0.4}
    assert (no_noisy["exploration_fraction"], no_noisy["exploration_final_eps"]) == (0.16, 0.04)
    _, minatar = hyperparameters("rainbow_no_noisy", "MinAtar/Breakout-v1")
    assert (minatar["exploration_final_eps"], minatar["policy_kwargs"]["v_max"]) == (0.1, 20.0)
    assert "noisy" not in minatar["policy_kwargs"]
    assert resolved["qrdqn"]["policy_kwargs"] == {"net_arch": [256, 256], "n_quantiles": 10}
    assert hyperparameters("qrdqn", "Acrobot-v1")[1]["policy_kwargs"]["n_quantiles"] == 25
    assert hyperparameters("qrdqn", "LunarLander-v3")[1]["policy_kwargs"]["n_quantiles"] == 170
    assert hyperparameters("rainbow", "Acrobot-v1")[1]["policy_kwargs"]["v_min"] == -100.0


def test_shared_file_is_overridden_by_the_registry_and_an_algorithm_file_by_nothing(tmp_path, tiny_yaml):
    own = tmp_path / "rainbow.yml"  # what the tuning command writes, with --extensions
    own.write_text(
        "CartPole-v1:\n  learning_rate: 0.0005\n  n_steps: 5\n  replay_buffer_class: PrioritizedReplayBuffer\n"
        '  replay_buffer_kwargs: "dict(alpha=0.7, beta=0.5)"\n'
        '  policy_kwargs: "dict(net_arch=[64], v_max=50.0)"\n'
    )
    shared_file = tmp_path / "shared.yml"
    shared_file.write_text(TINY_YAML + "  double_q: false\n  n_steps: 2\n")
    _, double = hyperparameters("double", "CartPole-v1", shared_file)
    assert double["double_q"] is True  # the registry defines the variant
    assert double["n_steps"] == 2 and double["learning_rate"] == 0.001
    _, sb3 = hyperparameters("sb3_dqn", "CartPole-v1", shared_file)
    assert "double_q" not in sb3 and sb3["n_steps"] == 2  # SB3's DQN does not take double_q
    _, rainbow = hyperparameters("rainbow", "CartPole-v1", shared_file, own)
    assert rainbow["learning_rate"] == 0.0005 and rainbow["n_steps"] == 5
    assert rainbow["replay_buffer_class"] is PrioritizedReplayBuffer
    assert rainbow["replay_buffer_kwargs"] == {"alpha": 0.7, "beta": 0.5}
    assert rainbow["policy_kwargs"] == {"net_arch": [64], "v_min": 0.0, "v_max": 50.0}
    assert "batch_size" not in rainbow  # the algorithm's file replaces the shared one


# ---------------------------------------------------------------------------------------------------- statistics
def fake_run(algo, env, seed, curve, train_seconds=10.0):
    steps = [0, 500, 1000][: len(curve)]
    return dict(
        algo=algo,
        env=env,
        seed=seed,
        steps=steps,
        returns=list(curve),
        final_return=curve[-1],
        train_seconds=train_seconds,
        eval_seconds=1.0,
        steps_per_second=1000 / train_seconds,
        settings=dict(hyperparameters={"learning_rate": 0.001}),
    )


def test_summary_matches_statistics_computed_by_hand():
    cartpole, acrobot = ENVS["CartPole-v1"], ENVS["Acrobot-v1"]
    curves = {
        # CartPole curves per seed, and one Acrobot curve per seed
        "scratch_dqn": [([22.55, 480, 500], [-499.33, -99.33, -100.0]), ([22.55, 100, 475], [-499.33, -300, -200.0])],
        "sb3_dqn": [([22.55, 30, 261.275], [-499.33, -500, -499.33]), ([22.55, 475, 22.55], [-499.33, -100, -100.0])],
    }
    results = [
        fake_run(algo, env, seed, curve, train_seconds=10.0 * (1 + seed))
        for algo, runs in curves.items()
        for seed, pair in enumerate(runs)
        for env, curve in zip(["CartPole-v1", "Acrobot-v1"], pair, strict=True)
    ]
    summary = summarize(results, ["scratch_dqn", "sb3_dqn"], ["CartPole-v1", "Acrobot-v1"], reps=200)

    # normalised: CartPole (x − 22.55) / 477.45, Acrobot (x + 499.33) / 399.33
    assert cartpole.random_score == 22.55 and cartpole.max_score == 500.0 and acrobot.max_score == -100.0
    scratch = np.array([[1.0, 1.0], [(475 - 22.55) / 477.45, (499.33 - 200) / 399.33]])
    sb3 = np.array([[0.5, 0.0], [0.0, 1.0]])
    iqm_scratch = np.sort(scratch.ravel())[1:3].mean()  # 4 scores: drop the lowest and the highest
    assert summary["aggregates"]["scratch_dqn"]["iqm"][0] == pytest.approx(iqm_scratch)
    assert summary["aggregates"]["sb3_dqn"]["iqm"][0] == pytest.approx(np.sort(sb3.ravel())[1:3].mean()) == 0.25
    assert summary["aggregates"]["sb3_dqn"]["median"][0] == pytest.approx(0.375)  # median of env means .25, .5
    assert summary["aggregates"]["sb3_dqn"]["optimality_gap"][0] == pytest.approx(0.625)
    # P(scratch > sb3): CartPole pairs (1 > .5, 1 > 0, .948 > .5, .948 > 0) = 1; Acrobot (1 > 0, 1 = 1, .75 > 0,
    # .75 < 1) = (1 + .5 + 1 + 0) / 4; averaged over the two envs
    assert summary["probability_of_improvement"]["scratch_dqn"][0] == pytest.approx((1 + 2.5 / 4) / 2)
    assert summary["baseline"] == "sb3_dqn"

    cart = summary["per_env"]["CartPole-v1"]
    assert cart["scratch_dqn"]["seeds_solved"] == 2 and cart["sb3_dqn"]["seeds_solved"] == 0
    assert cart["scratch_dqn"]["median_steps_to_threshold"] == 750.0  # reached at 500 and 1000
    assert cart["sb3_dqn"]["median_steps_to_threshold"] is None  # one of two runs reached 475 (at 500)
    assert cart["sb3_dqn"]["seeds_reached_threshold"] == 1
    assert cart["sb3_dqn"]["mean"] == pytest.approx((261.275 + 22.55) / 2)
    assert summary["per_env"]["Acrobot-v1"]["scratch_dqn"]["median_steps_to_threshold"] is None
    assert summary["per_env"]["Acrobot-v1"]["sb3_dqn"]["seeds_solved"] == 1
    timing = summary["timing"]["scratch_dqn"]
    assert timing["steps_per_second_mean"] == pytest.approx((100 + 50) / 2)
    assert timing["train_seconds_total"] == pytest.approx(2 * (10 + 20))

    curve = summary["sample_efficiency"]
    assert curve["steps"] == [0, 500, 1000]
    point, low, high = curve["iqm"]["scratch_dqn"]
    assert point[-1] == pytest.approx(iqm_scratch)  # the last point: the final scores
    assert point[0] == low[0] == high[0] == 0.0  # every run starts at the random score
    profile = summary["performance_profile"]
    assert profile["taus"][0] == 0.0 and profile["taus"][-1] == 1.0
    assert profile["taus"][75] == 0.75
    assert profile["fraction"]["sb3_dqn"][0][75] == pytest.approx(1 / 4)  # scores > 0.75: one of four


def test_summary_refuses_incomplete_runs():
    results = [fake_run("scratch_dqn", "CartPole-v1", 0, [1, 2, 3]), fake_run("sb3_dqn", "CartPole-v1", 1, [1, 2, 3])]
    with pytest.raises(ValueError, match="runs missing"):
        summarize(results, ["scratch_dqn", "sb3_dqn"], ["CartPole-v1"], reps=10)


# ---------------------------------------------------------------------------------------------------- running
def test_tiny_comparison_writes_results_and_resumes_only_missing_runs(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "out"
    args = ["--algos", "scratch_dqn,sb3_dqn,rainbow", "--seeds", 2, "--workers", 2, "--out", out, *TINY_RUN]
    compare_cli(*args, "--hyperparams", tiny_yaml)
    printed = capsys.readouterr().out
    assert "6 runs: 0 saved" in printed and "| scratch_dqn |" in printed  # the headline table

    run_files = sorted((out / "runs" / "CartPole-v1").glob("*/seed_*.json"))
    assert len(run_files) == 6
    runs = {(p.parent.name, p.stem): json.loads(p.read_text()) for p in run_files}
    scratch, sb3 = runs["scratch_dqn", "seed_0"], runs["sb3_dqn", "seed_0"]
    assert scratch["steps"] == [0, 500, 1000] and len(scratch["episode_returns"][0]) == 2
    # Same seed and hyperparameters: ScratchDQN draws what SB3's DQN draws, so they score the same.
    assert scratch["episode_returns"] == sb3["episode_returns"]
    assert scratch["settings"]["hyperparameters"]["policy_kwargs"] == {"net_arch": [16]}

    results = json.loads((out / "results.json").read_text())
    assert results["algos"] == ["scratch_dqn", "sb3_dqn", "rainbow"]
    assert results["probability_of_improvement"]["scratch_dqn"][0] == 0.5
    final = [runs["rainbow", f"seed_{s}"]["final_return"] for s in (0, 1)]
    assert results["per_env"]["CartPole-v1"]["rainbow"]["mean"] == pytest.approx(np.mean(final))
    markdown = (out / "results.md").read_text()
    assert "| algorithm | IQM | mean | median | optimality gap (lower is better) |" in markdown
    assert "| rainbow | sb3_dqn |" in markdown
    for name in ["aggregates", "sample_efficiency", "performance_profile", "curves_CartPole-v1"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in markdown

    # The same command again runs nothing and rewrites the same results.
    stamps = {p: p.stat().st_mtime_ns for p in run_files}
    compare_cli(*args, "--hyperparams", tiny_yaml)
    assert "6 runs: 6 saved" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run_files} == stamps
    assert json.loads((out / "results.json").read_text())["aggregates"] == results["aggregates"]

    # A deleted run is the only one run again, and with its seed it gives the same result.
    deleted = out / "runs" / "CartPole-v1" / "rainbow" / "seed_1.json"
    before = json.loads(deleted.read_text())
    deleted.unlink()
    compare_cli(*args, "--hyperparams", tiny_yaml)
    assert "6 runs: 5 saved" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run_files if p != deleted} == {
        p: t for p, t in stamps.items() if p != deleted
    }
    assert json.loads(deleted.read_text())["episode_returns"] == before["episode_returns"]


def test_dask_cluster_runs_give_the_local_results(tmp_path, tiny_yaml, capsys):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        compare_cli(
            "--algos", "scratch_dqn,qrdqn", "--seeds", 1, "--out", out, "--hyperparams", tiny_yaml, *TINY_RUN,
            "--dask-scheduler", cluster.scheduler_address,
        )  # fmt: skip
    assert "on Dask scheduler tcp://" in capsys.readouterr().out
    saved = json.loads((out / "runs" / "CartPole-v1" / "qrdqn" / "seed_0.json").read_text())
    config = ComparisonConfig(envs=["CartPole-v1"], algos=["qrdqn"], seeds=1, timesteps=1000, eval_freq=500,
                              n_eval_episodes=2, out=out, hyperparams=str(tiny_yaml))  # fmt: skip
    (spec,) = plan(config)
    assert saved["settings"] == spec.settings()
    assert run_one(spec)["episode_returns"] == saved["episode_returns"]
    assert (out / "results.md").exists()


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "yaml_text", "message"),
    [
        (["--env", "NoSuchEnv-v0"], None, "unknown env id 'NoSuchEnv-v0'"),
        (["--env", "Pendulum-v1"], None, "no reference scores for env 'Pendulum-v1'"),
        (["--algos", "scratch_dqn,dqn_typo"], None, "unknown algorithm 'dqn_typo'"),
        (["--seeds", "0"], None, "--seeds must be > 0, got 0"),
        (["--seeds", "-2"], None, "--seeds must be > 0, got -2"),
        (["--seeds", "many"], None, "argument --seeds: invalid int value: 'many'"),
        (["--workers", "0"], None, "--workers must be > 0"),
        (["--timesteps", "0"], None, "--timesteps must be > 0"),
        (["--hyperparams", "missing.yml"], None, "cannot read hyperparameters file"),
        (["--hyperparams", "dqn=x.yml"], None, "unknown algorithm 'dqn'"),
        ([], "CartPole-v1: [unclosed", "cannot read hyperparameters file"),
        ([], "Acrobot-v1: {learning_rate: 0.001}", "has no entry for 'CartPole-v1'"),
        ([], "CartPole-v1: {learning_rate: -1.0}", "scratch_dqn on CartPole-v1: learning_rate must be > 0, got -1.0"),
        ([], "CartPole-v1: {learnig_rate: 0.1}", "no chosen algorithm takes 'learnig_rate'"),
        ([], "CartPole-v1: {policy_kwargs: 'dict(net_arch=[64'}", "cannot read 'dict(net_arch=[64' as dict("),
    ],
)
def test_bad_input_is_one_line_on_stderr_before_any_work(tmp_path, capsys, args, yaml_text, message):
    if yaml_text is not None:
        (tmp_path / "bad.yml").write_text(yaml_text)
        args = ["--hyperparams", tmp_path / "bad.yml"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        compare_cli("--algos", "scratch_dqn,sb3_dqn", "--timesteps", 1000, "--out", out, *args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("sb3-dqn-ext: error: ")
    assert message in captured.err
    assert not out.exists()


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "sb3_dqn_ext.cli", "compare", "--algos", "rainbow,bogus", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        f"sb3-dqn-ext: error: unknown algorithm 'bogus'; known: {', '.join(ALGORITHMS)}"
    ]


def test_saved_runs_made_with_other_settings_are_refused(tmp_path, tiny_yaml):
    config = ComparisonConfig(envs=["CartPole-v1"], algos=["scratch_dqn"], seeds=1, timesteps=1000, eval_freq=500,
                              n_eval_episodes=2, out=tmp_path, hyperparams=str(tiny_yaml))  # fmt: skip
    (spec,) = plan(config)
    other = RunSpec(**{**spec.__dict__, "timesteps": 2000})
    save_run(spec.path(tmp_path), dict(settings=other.settings()))
    with pytest.raises(CompareError, match="other settings than this command's .timesteps: 2000 there, 1000 here"):
        plan(config)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _stop_at(monkeypatch, step):
    """Make the next run raise KeyboardInterrupt at env step ``step`` (as a killed worker would stop)."""
    original = _PeriodicEvaluation._on_step

    def on_step(self):
        if self.num_timesteps == step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(_PeriodicEvaluation, "_on_step", on_step)


def _fingerprint_weights(monkeypatch):
    """Record, at every evaluation of the runs that follow, the step and the bytes of the model's weights."""
    seen = []
    original = _PeriodicEvaluation.evaluate

    def evaluate(self, model, step):
        weights = th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])
        seen.append((step, weights.numpy().tobytes()))
        return original(self, model, step)

    monkeypatch.setattr(_PeriodicEvaluation, "evaluate", evaluate)
    return seen


def test_a_run_stopped_midway_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(
    tmp_path, tiny_yaml, monkeypatch, capsys
):
    config = ComparisonConfig(envs=["CartPole-v1"], algos=["scratch_dqn"], seeds=1, timesteps=1000, eval_freq=250,
                              n_eval_episodes=2, out=tmp_path / "plain", hyperparams=str(tiny_yaml))  # fmt: skip
    (plain,) = plan(config)
    weights = _fingerprint_weights(monkeypatch)
    uninterrupted = run_one(plain)
    uninterrupted_weights = dict(weights)
    assert "resumed" not in uninterrupted and len(uninterrupted_weights) == 5

    out = tmp_path / "checkpointed"
    (spec,) = plan(replace(config, out=out, checkpoint_every=300))
    assert spec.settings() == plain.settings()  # checkpointing does not change what a run is
    _stop_at(monkeypatch, 700)
    with pytest.raises(KeyboardInterrupt):
        run_one(spec)
    folder = Path(spec.checkpoint_dir)
    # checkpoints at the first rollout start at or after each multiple of 300, each with its progress file
    assert sorted(p.name for p in folder.glob("progress-*.pkl")) == [
        "progress-000000000300.pkl",
        "progress-000000000600.pkl",
    ]
    assert sorted(p.name for p in folder.glob("ckpt-*")) == ["ckpt-000000000300", "ckpt-000000000600"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    # resumed at 600: the weights at the evaluations of 750 and 1000 are bitwise the uninterrupted run's
    monkeypatch.undo()
    weights = _fingerprint_weights(monkeypatch)
    resumed = run_one(spec)
    assert [step for step, _ in weights] == [750, 1000]
    assert all(uninterrupted_weights[step] == value for step, value in weights)
    assert resumed["resumed"] == [dict(at=600, env_restored=True, eval_env_restored=True)]
    for key in ("steps", "episode_returns", "settings"):
        assert resumed[key] == uninterrupted[key]
    assert 0 < resumed["train_seconds"]
    monkeypatch.undo()

    # the command resumes it too (in a worker process), saves the result and deletes the checkpoints
    compare_cli("--algos", "scratch_dqn", "--seeds", 1, "--workers", 1, "--out", copy, "--hyperparams", tiny_yaml,
                *TINY_RUN[:2], "--eval-freq", 250, "--n-eval-episodes", 2, "--checkpoint-every", 300)  # fmt: skip
    assert "1 runs: 0 saved" in capsys.readouterr().out
    saved = json.loads(spec.path(copy).read_text())
    assert saved["resumed"] == resumed["resumed"] and saved["episode_returns"] == uninterrupted["episode_returns"]
    assert not (copy / "checkpoints").exists()  # nor its empty parent folders


def test_a_run_whose_envs_cannot_be_saved_resumes_on_new_seeded_envs(tmp_path, tiny_yaml, monkeypatch):
    # e.g. LunarLander's Box2D worlds do not pickle: the checkpoint holds no env, the resumed run gets new ones
    config = ComparisonConfig(envs=["CartPole-v1"], algos=["sb3_dqn"], seeds=1, timesteps=1000, eval_freq=250,
                              n_eval_episodes=2, out=tmp_path, hyperparams=str(tiny_yaml),
                              checkpoint_every=500)  # fmt: skip
    (spec,) = plan(config)
    dumps = cloudpickle.dumps

    def no_envs(value, *args, **kwargs):
        if isinstance(value, VecEnv):
            raise TypeError("cannot pickle this env")
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(cloudpickle, "dumps", no_envs)
    _stop_at(monkeypatch, 800)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):  # recorded in the result, not warned
        warnings.filterwarnings("error", message="the checkpoint does not hold the env")
        run_one(spec)
    monkeypatch.undo()
    result = run_one(spec)
    assert result["resumed"] == [dict(at=500, env_restored=False, eval_env_restored=False)]
    assert result["steps"] == [0, 250, 500, 750, 1000] and len(result["episode_returns"]) == 5


def test_checkpoints_made_with_other_settings_are_refused(tmp_path, tiny_yaml):
    config = ComparisonConfig(envs=["CartPole-v1"], algos=["scratch_dqn"], seeds=1, timesteps=1000, eval_freq=500,
                              n_eval_episodes=2, out=tmp_path, hyperparams=str(tiny_yaml),
                              checkpoint_every=300)  # fmt: skip
    (spec,) = plan(config)
    other = RunSpec(**{**spec.__dict__, "eval_freq": 100})
    folder = Path(spec.checkpoint_dir)
    folder.mkdir(parents=True)
    (folder / "progress-000000000300.pkl").write_bytes(cloudpickle.dumps(dict(settings=other.settings())))
    with pytest.raises(CompareError, match="checkpoints in .* other settings than this command's .eval_freq: 100"):
        plan(config)
    with pytest.raises(CompareError, match="--checkpoint-every must be > 0"):
        plan(replace(config, checkpoint_every=0))


def test_docs_print_the_registry_and_the_reference_scores():
    text = (Path(__file__).parents[1] / "docs" / "compare.md").read_text()
    assert registry_table() in text
    assert reference_table() in text


def test_minatar_breakout_is_registered_capped_and_uses_the_papers_network():
    pytest.importorskip("minatar")
    from sb3_dqn_ext.compare import make_env
    from sb3_dqn_ext.torch_layers import SmallCNN

    policy, kwargs = hyperparameters("rainbow", "MinAtar/Breakout-v1")
    assert policy == "CnnPolicy"
    assert kwargs["policy_kwargs"]["features_extractor_class"] is SmallCNN
    assert kwargs["policy_kwargs"]["features_extractor_kwargs"] == dict(channels_last=True)
    assert (kwargs["policy_kwargs"]["v_min"], kwargs["policy_kwargs"]["v_max"]) == (0.0, 20.0)
    assert (kwargs["batch_size"], kwargs["target_update_interval"], kwargs["learning_starts"]) == (32, 1000, 5000)
    env = make_env("MinAtar/Breakout-v1", seed=0)
    assert env.envs[0].spec.max_episode_steps == ENVS["MinAtar/Breakout-v1"].max_episode_steps == 10_000
    assert env.observation_space.shape == (10, 10, 4)
    assert make_env("CartPole-v1").envs[0].spec.max_episode_steps == 500  # registered limit untouched
