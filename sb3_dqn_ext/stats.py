"""Statistics for evaluating RL agents over several runs: aggregate metrics with stratified-bootstrap intervals.

The metrics and the bootstrap follow Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", and give the same numbers as its library ``rliable`` (the tests check this). Scores are arrays of shape
``(n_runs, n_tasks)``, usually normalised with :func:`normalize`; a 1-D array is read as the runs of a single task.

Everything here is plain numpy and vectorised over bootstrap replications, rather than calling ``rliable.library``:
its bootstrap goes through ``arch``, which fails to import with pandas 3 (arch 7) or rejects rliable's
``random_state`` argument (arch 8); it draws from numpy's global generator whatever ``random_state`` says; and it
calls the metric once per replication in Python. Here ``seed`` alone fixes the result and the global generator is
left untouched.

Two resampling details: each replication resamples runs with replacement independently within each task (stratified
bootstrap; tasks are kept fixed), and for learning curves a resampled run keeps its whole curve. Intervals are
percentile intervals, as rliable's default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

# Upper bound on the number of resampled scores held in memory at once; replications are processed in chunks.
_CHUNK_ELEMENTS = 1 << 18

Interval = tuple[float, float, float]
"""A point estimate with the lower and upper bounds of its confidence interval."""

AGGREGATE_METRICS = ("iqm", "mean", "median", "optimality_gap")
"""Names of the metrics returned by :func:`aggregate_with_ci`, in order."""


def _as_scores(scores: np.ndarray, name: str = "scores", min_ndim: int = 2, max_ndim: int = 2) -> np.ndarray:
    """Validate scores as float64 of shape ``(n_runs, n_tasks, ...)``; a 1-D array is one task."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1 and min_ndim == 2:
        array = array[:, None]
    if not min_ndim <= array.ndim <= max_ndim:
        expected = "(n_runs, n_tasks)" if max_ndim == 2 else "(n_runs, n_tasks, n_points)"
        raise ValueError(f"{name} must have shape {expected}, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    return array


# Batched metrics: ``scores`` has shape (..., n_runs, n_tasks) and the result has shape (...).


def _iqm(scores: np.ndarray) -> np.ndarray:
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(0.25 * n)  # the same rounding as scipy.stats.trim_mean
    return flat[..., cut : n - cut].mean(axis=-1)


def _mean(scores: np.ndarray) -> np.ndarray:
    return scores.mean(axis=(-2, -1))


def _median(scores: np.ndarray) -> np.ndarray:
    return np.median(scores.mean(axis=-2), axis=-1)


def _optimality_gap(scores: np.ndarray, gamma: float) -> np.ndarray:
    return gamma - np.minimum(scores, gamma).mean(axis=(-2, -1))


def _probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 per task, averaged over tasks; ``x``: (..., n_x, n_tasks), ``y``: (..., n_y, n_tasks)."""
    x_column, y_row = x[..., :, None, :], y[..., None, :, :]
    per_task = (x_column > y_row).mean(axis=(-3, -2)) + 0.5 * (x_column == y_row).mean(axis=(-3, -2))
    return per_task.mean(axis=-1)


def iqm(scores: np.ndarray) -> float:
    """
    Interquartile mean: the mean of the middle 50% of all scores, runs and tasks pooled.

    Equal to ``scipy.stats.trim_mean(scores, 0.25, axis=None)`` and ``rliable.metrics.aggregate_iqm``.

    :param scores: Scores of shape ``(n_runs, n_tasks)``.
    :return: The IQM.
    """
    return float(_iqm(_as_scores(scores)))


def mean(scores: np.ndarray) -> float:
    """
    Mean over tasks of the per-task mean score (``rliable.metrics.aggregate_mean``).

    :param scores: Scores of shape ``(n_runs, n_tasks)``.
    :return: The mean.
    """
    return float(_mean(_as_scores(scores)))


def median(scores: np.ndarray) -> float:
    """
    Median over tasks of the per-task mean score (``rliable.metrics.aggregate_median``), not the median of all scores.

    :param scores: Scores of shape ``(n_runs, n_tasks)``.
    :return: The median.
    """
    return float(_median(_as_scores(scores)))


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> float:
    """
    How far scores fall short of ``gamma`` on average: ``gamma - mean(min(scores, gamma))``. Lower is better.

    :param scores: Scores of shape ``(n_runs, n_tasks)``.
    :param gamma: Target score; scores above it count as ``gamma``.
    :return: The optimality gap.
    """
    return float(_optimality_gap(_as_scores(scores), gamma))


def normalize(scores: np.ndarray, min_score: np.ndarray | float, max_score: np.ndarray | float) -> np.ndarray:
    """
    Map ``min_score`` to 0 and ``max_score`` to 1: ``(scores - min_score) / (max_score - min_score)``.

    :param scores: Raw scores, e.g. of shape ``(n_runs, n_tasks)``.
    :param min_score: Reference low score (e.g. a random policy), a scalar or one per task (shape ``(n_tasks,)``).
    :param max_score: Reference high score (e.g. a human or the environment's maximum), same shape as ``min_score``.
    :return: Normalised scores, float64, of the broadcast shape.
    """
    scores = np.asarray(scores, dtype=np.float64)
    low = np.asarray(min_score, dtype=np.float64)
    span = np.asarray(max_score, dtype=np.float64) - low
    if np.any(span == 0) or not np.all(np.isfinite(span)):
        raise ValueError("max_score must differ from min_score, and both must be finite")
    return (scores - low) / span


def bootstrap_ci(
    scores: np.ndarray | Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Stratified-bootstrap percentile interval of a statistic of one or more score arrays.

    Each replication resamples the runs of every task with replacement, independently per task and, when several
    arrays are given, independently per array (rliable's ``StratifiedBootstrap`` and
    ``StratifiedIndependentBootstrap``). Trailing axes after ``n_tasks`` (e.g. evaluation points) are carried along
    with their run.

    :param scores: One array of shape ``(n_runs, n_tasks, ...)``, or a sequence of them (numbers of runs may differ).
    :param statistic: Vectorised statistic. It receives one array per input, each with a leading replication axis,
        shape ``(batch, n_runs, n_tasks, ...)``, and returns shape ``(batch, ...)``. The point estimate is the
        statistic of the data itself (a batch of one).
    :param reps: Number of bootstrap replications.
    :param confidence: Coverage of the interval, in (0, 1).
    :param seed: Seed or generator for the resampling; the same seed gives the same interval.
    :return: ``(point, low, high)``, each of the statistic's output shape.
    """
    arrays = [scores] if isinstance(scores, np.ndarray) else list(scores)
    arrays = [_as_scores(a, min_ndim=2, max_ndim=max(2, np.ndim(a))) for a in arrays]
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)

    point = np.asarray(statistic(*(a[None] for a in arrays)))[0]
    per_rep = sum(a.size for a in arrays)
    chunk = max(1, _CHUNK_ELEMENTS // per_rep)
    replicates = []
    for start in range(0, reps, chunk):
        batch = min(chunk, reps - start)
        resampled = []
        for a in arrays:
            n_runs, n_tasks = a.shape[:2]
            runs = rng.integers(n_runs, size=(batch, n_runs, n_tasks))
            resampled.append(a[runs, np.arange(n_tasks)])
        replicates.append(np.asarray(statistic(*resampled)))
    replicates = np.concatenate(replicates)

    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha], axis=0)
    return point, low, high


def aggregate_with_ci(
    score_dict: Mapping[str, np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    gamma: float = 1.0,
) -> dict[str, dict[str, Interval]]:
    """
    IQM, mean, median and optimality gap of each algorithm, with stratified-bootstrap confidence intervals.

    The four metrics share the same bootstrap replications.

    :param score_dict: Algorithm name -> normalised scores of shape ``(n_runs, n_tasks)``.
    :param reps: Number of bootstrap replications.
    :param confidence: Coverage of the intervals.
    :param seed: Seed or generator of the resampling (a seed restarts for every algorithm).
    :param gamma: Target score of the optimality gap.
    :return: Algorithm name -> metric name (see ``AGGREGATE_METRICS``) -> ``(point, low, high)``.
    """

    def all_metrics(scores: np.ndarray) -> np.ndarray:
        return np.stack([_iqm(scores), _mean(scores), _median(scores), _optimality_gap(scores, gamma)], axis=-1)

    results = {}
    for name, scores in score_dict.items():
        point, low, high = bootstrap_ci(
            _as_scores(scores, f"score_dict[{name!r}]"), all_metrics, reps, confidence, seed
        )
        results[name] = {
            metric: (float(point[i]), float(low[i]), float(high[i])) for i, metric in enumerate(AGGREGATE_METRICS)
        }
    return results


def probability_of_improvement(
    x: np.ndarray,
    y: np.ndarray,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> Interval:
    """
    Probability that a run of X scores higher than a run of Y on the same task, averaged over tasks.

    Per task this is the Mann-Whitney U statistic over ``n_x * n_y``: ``P(X > Y) + P(X = Y) / 2`` over all pairs of
    runs (``rliable.metrics.probability_of_improvement``). The interval resamples the runs of X and of Y independently.

    :param x: Scores of algorithm X, shape ``(n_runs_x, n_tasks)``.
    :param y: Scores of algorithm Y, shape ``(n_runs_y, n_tasks)``, the same tasks in the same order.
    :param reps: Number of bootstrap replications.
    :param confidence: Coverage of the interval.
    :param seed: Seed or generator of the resampling.
    :return: ``(point, low, high)``; 0.5 means no difference.
    """
    x, y = _as_scores(x, "x"), _as_scores(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of tasks, got {x.shape[1]} and {y.shape[1]}")
    point, low, high = bootstrap_ci((x, y), _probability_of_improvement, reps, confidence, seed)
    return float(point), float(low), float(high)


def performance_profile(
    score_dict: Mapping[str, np.ndarray],
    taus: np.ndarray,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """
    Score distribution: the fraction of all runs (over all tasks) whose score is above each threshold ``tau``.

    This is rliable's ``create_performance_profile`` with its default ``use_score_distribution=True``.

    :param score_dict: Algorithm name -> normalised scores of shape ``(n_runs, n_tasks)``.
    :param taus: Thresholds, shape ``(n_taus,)``.
    :param reps: Number of bootstrap replications.
    :param confidence: Coverage of the intervals.
    :param seed: Seed or generator of the resampling.
    :return: Algorithm name -> ``(fraction, low, high)``, each of shape ``(n_taus,)``.
    """
    taus = np.asarray(taus, dtype=np.float64).ravel()

    def fraction_above(scores: np.ndarray) -> np.ndarray:
        return (scores[..., None] > taus).mean(axis=(-3, -2))

    return {
        name: bootstrap_ci(_as_scores(scores, f"score_dict[{name!r}]"), fraction_above, reps, confidence, seed)
        for name, scores in score_dict.items()
    }


def iqm_curve(
    score_dict: Mapping[str, np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """
    IQM at each evaluation point of a learning curve, with pointwise confidence intervals (sample-efficiency curves).

    :param score_dict: Algorithm name -> normalised scores of shape ``(n_runs, n_tasks, n_points)``.
    :param reps: Number of bootstrap replications.
    :param confidence: Coverage of the intervals.
    :param seed: Seed or generator of the resampling.
    :return: Algorithm name -> ``(iqm, low, high)``, each of shape ``(n_points,)``.
    """

    def iqm_per_point(scores: np.ndarray) -> np.ndarray:
        return _iqm(np.moveaxis(scores, -1, -3))

    return {
        name: bootstrap_ci(
            _as_scores(scores, f"score_dict[{name!r}]", min_ndim=3, max_ndim=3), iqm_per_point, reps, confidence, seed
        )
        for name, scores in score_dict.items()
    }


def steps_to_threshold_per_run(steps: np.ndarray, curves: np.ndarray, threshold: float) -> np.ndarray:
    """
    For each curve, the first evaluation step at which it reaches ``threshold`` (``curve >= threshold``).

    :param steps: Environment steps of the evaluations, shape ``(n_points,)``, in the order of the curve.
    :param curves: Evaluation results, shape ``(..., n_points)``, e.g. ``(n_runs, n_points)``. NaN never reaches.
    :param threshold: Score to reach.
    :return: Steps of shape ``curves.shape[:-1]``, ``np.inf`` where the threshold is never reached (so that
        "never" sorts last: aggregate with a median or a fraction reached, not with a mean).
    """
    steps = np.asarray(steps, dtype=np.float64)
    curves = np.asarray(curves, dtype=np.float64)
    if steps.ndim != 1 or curves.ndim < 1 or curves.shape[-1] != steps.shape[0]:
        raise ValueError(f"curves of shape {curves.shape} do not match steps of shape {steps.shape}")
    reached = curves >= threshold
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(axis=-1), steps[first], np.inf)


def steps_to_threshold(steps: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """
    The first evaluation step at which ``curve`` reaches ``threshold`` (``curve >= threshold``), ``np.inf`` if never.

    :param steps: Environment steps of the evaluations, shape ``(n_points,)``.
    :param curve: Evaluation results at those steps, shape ``(n_points,)``.
    :param threshold: Score to reach.
    :return: The step, or ``np.inf``.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1:
        raise ValueError(f"curve must be 1-D, got shape {curve.shape}; use steps_to_threshold_per_run")
    return float(steps_to_threshold_per_run(steps, curve, threshold))
