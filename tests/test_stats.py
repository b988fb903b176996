import numpy as np
import pytest
import scipy.stats

from sb3_dqn_ext import stats


def rliable_bootstrap_library():
    """rliable's bootstrap needs an ``arch`` that imports with the installed pandas; skip where it does not."""
    try:
        from rliable import library
    except Exception as error:  # arch 7 with pandas 3 fails with a TypeError, not an ImportError
        pytest.skip(f"rliable.library not importable here: {error!r}")
    return library


def test_iqm_is_mean_of_middle_half_by_hand():
    scores = np.array([[10.0, 1.0], [7.0, 3.0], [100.0, 4.0], [6.0, 0.0]])  # sorted: 0 1 3 4 6 7 10 100
    assert stats.iqm(scores) == (3 + 4 + 6 + 7) / 4
    # 10 scores: int(2.5) = 2 trimmed at each end, as scipy.stats.trim_mean does.
    assert stats.iqm(np.arange(10.0).reshape(5, 2)[::-1]) == np.mean([2, 3, 4, 5, 6, 7])
    assert stats.iqm(np.array([[5.0]])) == 5.0


def test_mean_median_optimality_gap_by_hand():
    scores = np.array([[0.2, 1.5, 0.4], [0.6, 0.5, 0.0]])  # task means 0.4, 1.0, 0.2
    assert stats.mean(scores) == pytest.approx(1.6 / 3)
    assert stats.median(scores) == pytest.approx(0.4)  # median of task means, not of the 6 scores (0.45)
    assert stats.optimality_gap(scores) == pytest.approx(1 - 2.7 / 6)  # 1.5 clipped to 1
    assert stats.optimality_gap(scores, gamma=0.5) == pytest.approx(0.5 - 2.1 / 6)
    # A 1-D array is the runs of a single task.
    assert stats.median(np.array([1.0, 2.0, 9.0])) == 4.0


def test_point_metrics_agree_with_scipy_and_rliable_metrics():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(0)
    for shape in [(3, 1), (5, 4), (10, 7), (7, 10)]:
        scores = rng.normal(size=shape) * 2
        assert stats.iqm(scores) == pytest.approx(scipy.stats.trim_mean(scores, 0.25, axis=None), rel=1e-12)
        assert stats.iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)
        assert stats.mean(scores) == pytest.approx(metrics.aggregate_mean(scores), rel=1e-12)
        assert stats.median(scores) == pytest.approx(metrics.aggregate_median(scores), rel=1e-12)
        assert stats.optimality_gap(scores, 0.5) == pytest.approx(metrics.aggregate_optimality_gap(scores, 0.5))


def test_normalize_per_task():
    raw = np.array([[0.0, 500.0], [100.0, -21.0]])
    normalized = stats.normalize(raw, min_score=np.array([0.0, -21.0]), max_score=np.array([200.0, 21.0]))
    np.testing.assert_allclose(normalized, [[0.0, 521 / 42], [0.5, 0.0]])
    with pytest.raises(ValueError, match="differ"):
        stats.normalize(raw, 1.0, 1.0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        stats.iqm(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="empty"):
        stats.mean(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="number of tasks"):
        stats.probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="n_points"):
        stats.iqm_curve({"a": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="confidence"):
        stats.aggregate_with_ci({"a": np.zeros((3, 2))}, confidence=95)


def test_steps_to_threshold_on_hand_made_curve():
    steps = np.array([0, 1000, 2000, 3000, 4000])
    curve = np.array([10.0, 50.0, 40.0, 200.0, 500.0])
    assert stats.steps_to_threshold(steps, curve, 45.0) == 1000.0  # first crossing, even though it dips after
    assert stats.steps_to_threshold(steps, curve, 200.0) == 3000.0  # reaching means >=
    assert stats.steps_to_threshold(steps, curve, 5.0) == 0.0
    assert stats.steps_to_threshold(steps, curve, 501.0) == np.inf


def test_steps_to_threshold_per_run_is_vectorised():
    steps = np.array([10, 20, 30])
    curves = np.array([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [np.nan, 0.5, 0.5], [np.nan, np.nan, 3.0]])
    np.testing.assert_array_equal(stats.steps_to_threshold_per_run(steps, curves, 1.0), [20.0, 10.0, np.inf, 30.0])
    per_task = stats.steps_to_threshold_per_run(steps, curves.reshape(2, 2, 3), 1.0)
    np.testing.assert_array_equal(per_task, [[20.0, 10.0], [np.inf, 30.0]])
    with pytest.raises(ValueError, match="do not match"):
        stats.steps_to_threshold_per_run(steps, np.zeros((2, 4)), 1.0)


def test_probability_of_improvement_is_pairwise_count_by_hand():
    # Task 0: pairs (3,2) (3,1) (3,0) (1,0) win, (1,1) ties, (1,2) loses -> (4 + 0.5) / 6.
    # Task 1: every X run loses -> 0.
    x = np.array([[3.0, 0.0], [1.0, 0.0]])
    y = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    point, low, high = stats.probability_of_improvement(x, y, reps=500)
    assert point == pytest.approx((4.5 / 6 + 0.0) / 2)
    assert 0.0 <= low <= point <= high <= 1.0
    assert stats.probability_of_improvement(y, x, reps=10)[0] == pytest.approx(1 - point)
    assert stats.probability_of_improvement(x, x, reps=10)[0] == 0.5


def test_probability_of_improvement_agrees_with_mann_whitney():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(6, 4)).astype(float)  # small integers: many ties
    y = rng.integers(0, 5, size=(9, 4)).astype(float)
    by_task = [scipy.stats.mannwhitneyu(x[:, t], y[:, t], alternative="greater").statistic / 54 for t in range(4)]
    point = stats.probability_of_improvement(x, y, reps=10)[0]
    assert point == pytest.approx(np.mean(by_task), rel=1e-12)
    assert point == pytest.approx(metrics.probability_of_improvement(x, y), rel=1e-12)


def test_aggregate_with_ci_points_and_reproducibility():
    rng = np.random.default_rng(2)
    score_dict = {"dqn": rng.normal(1.0, 0.3, size=(10, 3)), "rainbow": rng.normal(1.5, 0.3, size=(10, 3))}
    state = np.random.get_state()  # noqa: NPY002
    result = stats.aggregate_with_ci(score_dict, reps=500, seed=4)
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # noqa: NPY002 (global generator left alone)
    assert result == stats.aggregate_with_ci(score_dict, reps=500, seed=4)
    assert result != stats.aggregate_with_ci(score_dict, reps=500, seed=5)
    for name, scores in score_dict.items():
        assert list(result[name]) == list(stats.AGGREGATE_METRICS)
        assert result[name]["iqm"][0] == stats.iqm(scores)
        assert result[name]["mean"][0] == stats.mean(scores)
        assert result[name]["median"][0] == stats.median(scores)
        assert result[name]["optimality_gap"][0] == stats.optimality_gap(scores)
        for point, low, high in result[name].values():
            assert low <= point <= high
    assert result["dqn"]["iqm"][2] < result["rainbow"]["iqm"][1]  # 0.5 apart with a standard error of ~0.06


def test_bootstrap_mean_interval_width_matches_normal_theory():
    # Mean of n = 400 standard normal runs: the 95% interval is about +-1.96 / sqrt(400) = +-0.098.
    scores = np.random.default_rng(3).normal(size=(400, 1))
    point, low, high = stats.bootstrap_ci(scores, lambda s: s.mean(axis=(-2, -1)), reps=4000, seed=0)
    assert point == pytest.approx(scores.mean())
    assert (high - low) / 2 == pytest.approx(1.96 * scores.std() / 20, rel=0.08)


def test_bootstrap_interval_coverage_is_near_nominal():
    # Across 200 simulated experiments (20 runs x 3 tasks), the 95% intervals of the mean and of the IQM contain the
    # true value (0.7: the distribution is symmetric, so its interquartile mean is its mean) about 95% of the time.
    rng = np.random.default_rng(2021)
    true_value, covered = 0.7, np.zeros(2)
    n_experiments = 200
    for _ in range(n_experiments):
        result = stats.aggregate_with_ci({"algo": rng.normal(true_value, 1.0, size=(20, 3))}, reps=300, seed=rng)
        for i, metric in enumerate(("mean", "iqm")):
            _, low, high = result["algo"][metric]
            covered[i] += low <= true_value <= high
    coverage = covered / n_experiments
    assert np.all((coverage >= 0.88) & (coverage <= 0.99)), coverage


def test_performance_profile_fraction_above_tau_by_hand():
    scores = np.array([[0.1, 0.5], [0.9, 1.2]])
    profile = stats.performance_profile({"a": scores}, taus=np.array([0.0, 0.5, 1.0, 2.0]), reps=200)
    fraction, low, high = profile["a"]
    np.testing.assert_array_equal(fraction, [1.0, 0.5, 0.25, 0.0])  # 0.5 is not above 0.5
    assert np.all((low <= fraction) & (fraction <= high))
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


def test_iqm_curve_points_match_per_point_iqm():
    rng = np.random.default_rng(5)
    curves = np.cumsum(rng.random(size=(8, 2, 6)), axis=-1)
    curves[:, :, 0] = 0.25  # every run identical at the first point: a zero-width interval
    point, low, high = stats.iqm_curve({"a": curves}, reps=300)["a"]
    np.testing.assert_allclose(point, [stats.iqm(curves[:, :, k]) for k in range(6)])
    assert low[0] == high[0] == point[0] == 0.25
    assert np.all((low <= point) & (point <= high))
    assert np.all(np.diff(point) > 0)


def test_bootstrap_agrees_with_rliable_library():
    library = rliable_bootstrap_library()
    metrics = pytest.importorskip("rliable.metrics")
    scores = np.random.default_rng(6).normal(size=(10, 4))
    np.random.seed(0)  # noqa: NPY002 (rliable draws from the global generator)
    _, intervals = library.get_interval_estimates(
        {"a": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=20000
    )
    expected = intervals["a"].ravel()
    _, low, high = stats.bootstrap_ci(scores, stats._iqm, reps=20000, seed=0)
    # Different random draws of the same resampling scheme: bounds agree to Monte-Carlo precision.
    np.testing.assert_allclose([low, high], expected, atol=0.02)
