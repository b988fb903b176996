"""benchmarks/ablation.py: one comparison per env with its own seeds, the PER overhead paired by seed, the report."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablation  # noqa: E402


def test_parse_env():
    assert ablation.parse_env("Acrobot-v1=5") == ("Acrobot-v1", 5)
    assert ablation.parse_env("CartPole-v1") == ("CartPole-v1", 10)


def test_tiny_ablation_writes_tables_and_per_overhead_from_the_saved_runs(tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["--env", "CartPole-v1=2", "--algos", "scratch_dqn,per", "--timesteps", "300", "--eval-freq", "300"]
    argv += ["--n-eval-episodes", "1", "--workers", "1", "--out", str(out)]
    ablation.main(argv)
    text = (out / "ablation.md").read_text()
    assert "## CartPole-v1 (2 seeds, 300 steps)" in text
    assert "| per | " in text and "| scratch_dqn | " in text

    # the overhead is each seed's per / scratch_dqn training time, from the saved runs
    runs = out / "CartPole-v1" / "runs" / "CartPole-v1"
    seconds = {
        (algo, seed): json.loads((runs / algo / f"seed_{seed}.json").read_text())["train_seconds"]
        for algo in ("scratch_dqn", "per")
        for seed in (0, 1)
    }
    ratios = ablation.per_overhead(out / "CartPole-v1", "CartPole-v1", 2)
    assert ratios == pytest.approx([seconds["per", s] / seconds["scratch_dqn", s] for s in (0, 1)])
    assert f"median {sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2:.2f}x" in text

    # the same command again re-runs only the deleted run: the others are saved
    (runs / "per" / "seed_1.json").unlink()
    ablation.main(argv)
    assert "1 to run" in capsys.readouterr().out
