"""What a study leaves in ``--out``: the best hyperparameters as rl-zoo3 YAML, a CSV of all trials, Optuna's plots.

The YAML is in rl-zoo3's format, ``{env_id: {policy, n_timesteps, <constructor arguments>}}``, with
``policy_kwargs`` and ``replay_buffer_kwargs`` written as rl-zoo3 writes them, strings like
``"dict(net_arch=[256, 256])"``, and ``replay_buffer_class`` as a class name. rl-zoo3 reads it for ``sb3_dqn``
(``python -m rl_zoo3.train --algo dqn --env ENV -conf best_hyperparams.yml``); :func:`load_hyperparams` reads it
back without ``eval``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from sb3_dqn_ext.hyperparams import load_hyperparams as load_zoo_entry
from sb3_dqn_ext.hyperparams import parse_kwargs
from tuning.space import to_hyperparams

BEST_YAML = "best_hyperparams.yml"
TRIALS_CSV = "trials.csv"
DASHBOARD_TXT = "dashboard.txt"
# Constructor arguments that rl-zoo3 stores as Python expressions in strings.
KWARGS_KEYS = ("policy_kwargs", "replay_buffer_kwargs")


def format_kwargs(kwargs: dict[str, Any]) -> str:
    """``{"net_arch": [256, 256]}`` -> ``"dict(net_arch=[256, 256])"``, as in rl-zoo3's YAML files."""
    return "dict(" + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) + ")"


class _Expression(str):
    """A Python expression that rl-zoo3 evaluates, written in double quotes as in rl-zoo3's files."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Expression, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, '"'))


def best_hyperparams(study: optuna.Study, env_id: str, n_timesteps: int) -> dict[str, dict[str, Any]]:
    """The best trial's hyperparameters, in rl-zoo3's YAML layout (kwargs as strings)."""
    entry: dict[str, Any] = {"policy": "MlpPolicy", "n_timesteps": n_timesteps}
    for key, value in to_hyperparams(study.best_trial.params).items():
        entry[key] = _Expression(format_kwargs(value)) if key in KWARGS_KEYS else value
    return {env_id: entry}


def write_best_yaml(study: optuna.Study, env_id: str, n_timesteps: int, algo: str, path: Path) -> None:
    best = study.best_trial
    header = f"# Best of study {study.study_name!r} ({algo}): trial {best.number}, mean return {best.value:.2f}\n"
    if algo == "sb3_dqn":
        header += f"# rl-zoo3: python -m rl_zoo3.train --algo dqn --env {env_id} -conf {path.name}\n"
    body = yaml.dump(best_hyperparams(study, env_id, n_timesteps), Dumper=_Dumper, sort_keys=False, width=1_000)
    path.write_text(header + body)


def load_hyperparams(path: str | Path, env_id: str) -> dict[str, Any]:
    """Read an rl-zoo3 YAML entry back as constructor values (``policy_kwargs`` etc. as dicts).

    ``replay_buffer_class`` stays a class name; :func:`tuning.objective.build_model` resolves it.
    """
    entry = load_zoo_entry(env_id, path)
    for key in KWARGS_KEYS:
        if isinstance(entry.get(key), str):
            entry[key] = parse_kwargs(entry[key])
    return entry


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    study.trials_dataframe().to_csv(path, index=False)


def write_plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """Optimization history, parameter importances and parallel coordinates as HTML files.

    Returns the files written and a note for each plot that could not be drawn (too few completed trials).
    """
    from optuna import visualization

    plots = {
        "optimization_history": visualization.plot_optimization_history,
        "param_importances": visualization.plot_param_importances,
        "parallel_coordinate": visualization.plot_parallel_coordinate,
    }
    written, skipped = [], []
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name, plot in plots.items():
        if n_complete == 0:
            skipped.append(f"{name}: no completed trial")
            continue
        if name == "param_importances" and n_complete < 2:
            skipped.append(f"{name}: needs 2 completed trials, the study has {n_complete}")
            continue
        path = out / f"{name}.html"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = plot(study)
            # plotly.min.js is written once next to the plots, which then work offline.
            figure.write_html(path, include_plotlyjs="directory")
        except (ValueError, RuntimeError) as error:
            skipped.append(f"{name}: {error}")
            continue
        written.append(path)
    return written, skipped
