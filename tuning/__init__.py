"""Optuna hyperparameter tuning of ScratchDQN, SB3's DQN and Rainbow: ``python -m tuning --help``.

- :mod:`tuning.space`: the search space, as data, shared by every algorithm
- :mod:`tuning.objective`: the trial: lock-step seeds, evaluations reported to the pruner
- :mod:`tuning.runner`: the study and its worker processes
- :mod:`tuning.storage`: SQLite or PostgreSQL storage with heartbeats and retries
- :mod:`tuning.outputs`: rl-zoo3 YAML, trials CSV, plots
"""

from tuning.space import EXTENSION_SPACE, SEARCH_SPACE, Param, sample_params, search_space, to_hyperparams

__all__ = ["EXTENSION_SPACE", "SEARCH_SPACE", "Param", "sample_params", "search_space", "to_hyperparams"]
