import copy
import pickle

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from sb3_dqn_ext.sum_tree import SumTree, default_fanout

CAPACITIES = [1, 2, 3, 5, 7, 8, 13, 100, 1000, 10_000]  # 10 000: levels too big to refresh whole
# 2: the binary tree; 3: blocks that do not divide the capacities; 32: the default (one level up to 32 leaves)
FANOUTS = [2, 3, 32]


def sequential_updates(capacity, batches):
    """Reference: a plain array written one sample at a time, so the last duplicate wins."""
    leaves = np.zeros(capacity)
    for indices, priorities in batches:
        for index, priority in zip(indices, np.broadcast_to(priorities, np.shape(indices)), strict=True):
            leaves[index] = priority
    return leaves


def assert_internal_nodes_consistent(tree):
    """
    Every node is the sum (min) of its block of children, padding included; each block's prefix sums are its
    cumulative sum; the total is the top block's.
    """
    f = tree.fanout
    for level in range(len(tree._sums)):
        children = tree._sums[level]
        np.testing.assert_array_equal(tree._prefix[level], np.cumsum(children.reshape(-1, f), axis=1))
        if level == len(tree._sums) - 1:
            break
        parents = tree._sums[level + 1]
        n_blocks = children.size // f
        np.testing.assert_allclose(
            parents[:n_blocks], [children[j * f : (j + 1) * f].sum() for j in range(n_blocks)], rtol=1e-12
        )
        np.testing.assert_array_equal(parents[:n_blocks], tree._prefix[level][:, -1])
        np.testing.assert_array_equal(parents[n_blocks:], 0.0)
        mins, parent_mins = tree._mins[level], tree._mins[level + 1]
        np.testing.assert_array_equal(
            parent_mins[:n_blocks], [mins[j * f : (j + 1) * f].min() for j in range(n_blocks)]
        )
    assert tree.total == tree._prefix[-1][0, -1]
    np.testing.assert_allclose(tree.total, tree._sums[-1].sum(), rtol=1e-12)
    assert tree.min_priority == tree._mins[-1].min()
    assert tree._sums[-1].size == f


def random_batches(rng, capacity, n_batches, zero_fraction=0.2):
    batches = []
    for _ in range(n_batches):
        size = int(rng.integers(1, 2 * capacity + 1))
        indices = rng.integers(capacity, size=size)  # many duplicates when size > capacity
        priorities = rng.exponential(size=size) * (rng.random(size) > zero_fraction)
        batches.append((indices, priorities))
    return batches


@pytest.mark.parametrize("fanout", FANOUTS)
@pytest.mark.parametrize("capacity", CAPACITIES)
def test_random_batch_updates_match_sequential_reference(capacity, fanout):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity, fanout)
    batches = random_batches(rng, capacity, n_batches=20)
    for i, (indices, priorities) in enumerate(batches):
        tree.update(indices, priorities)
        expected = sequential_updates(capacity, batches[: i + 1])
        np.testing.assert_array_equal(tree.get(np.arange(capacity)), expected)
        assert tree.total == pytest.approx(expected.sum(), rel=1e-12, abs=1e-300)
        positive = expected[expected > 0]
        assert tree.min_priority == (positive.min() if positive.size else np.inf)
        assert_internal_nodes_consistent(tree)
    assert tree.max_priority == max(p.max() for _, p in batches)


def test_duplicate_indices_last_write_wins():
    tree = SumTree(6)
    tree.update(np.array([3, 1, 3, 3, 1]), np.array([1.0, 2.0, 9.0, 0.5, 7.0]))
    np.testing.assert_array_equal(tree.get(np.arange(6)), [0.0, 7.0, 0.0, 0.5, 0.0, 0.0])
    assert tree.total == 7.5
    assert tree.min_priority == 0.5
    assert tree.max_priority == 9.0  # as in a sequential loop, the overwritten 9.0 was written once
    assert_internal_nodes_consistent(tree)


def test_scalar_priority_broadcasts_and_get_keeps_shape():
    tree = SumTree(10)
    tree.update(np.array([0, 4, 9]), 2.5)
    assert tree.total == 7.5
    assert tree[4] == 2.5 and isinstance(tree[4], float)
    assert tree.get(np.array([[0, 1], [4, 9]])).tolist() == [[2.5, 0.0], [2.5, 2.5]]
    tree.update(np.array([], dtype=np.int64), np.array([]))  # empty batch is a no-op
    assert tree.total == 7.5


def test_capacity_one():
    tree = SumTree(1)
    tree.update(np.array([0]), np.array([3.0]))
    assert tree.total == 3.0
    np.testing.assert_array_equal(tree.find_prefix_sum(np.array([0.0, 1.5, 3.0])), [0, 0, 0])
    np.testing.assert_array_equal(tree.sample(4, np.random.default_rng(0)), [0, 0, 0, 0])


@pytest.mark.parametrize("fanout", FANOUTS)
@pytest.mark.parametrize("capacity", CAPACITIES)
def test_find_prefix_sum_matches_searchsorted_of_cumsum(capacity, fanout):
    rng = np.random.default_rng(capacity + 1)
    priorities = rng.exponential(size=capacity) * (rng.random(capacity) > 0.3)
    priorities[rng.integers(capacity)] = 1.0  # at least one positive leaf
    tree = SumTree(capacity, fanout)
    tree.update(np.arange(capacity), priorities)
    values = rng.random(10_000) * priorities.sum()
    expected = np.searchsorted(np.cumsum(priorities), values, side="right")
    np.testing.assert_array_equal(tree.find_prefix_sum(values), expected)


@pytest.mark.parametrize("fanout", FANOUTS)
def test_find_prefix_sum_at_exact_boundaries_skips_zero_leaves(fanout):
    # Integer priorities: every partial sum is exact, so boundaries can be hit exactly.
    priorities = np.array([1.0, 0.0, 2.0, 0.0, 0.0, 3.0])  # cumsum 1, 1, 3, 3, 3, 6; padded with zero leaves
    tree = SumTree(6, fanout)
    tree.update(np.arange(6), priorities)
    values = np.array([0.0, 0.999, 1.0, 2.5, 3.0, 5.9, 6.0])
    expected_searchsorted = np.searchsorted(np.cumsum(priorities), values[:-1], side="right")
    np.testing.assert_array_equal(tree.find_prefix_sum(values[:-1]), expected_searchsorted)
    # v == total is outside searchsorted's range: the tree maps it to the last positive leaf.
    np.testing.assert_array_equal(tree.find_prefix_sum(values), [0, 0, 2, 2, 5, 5, 5])
    assert tree.find_prefix_sum(np.array([[0.5, 4.0]])).shape == (1, 2)


@pytest.mark.parametrize("fanout", [2, 3])
def test_sampling_frequencies_match_priorities_chi_square(fanout):
    capacity = 10  # not a multiple of the fanout: padding leaves must never be drawn
    priorities = np.array([1.0, 0.0, 3.0, 0.5, 2.0, 0.0, 6.0, 1.5, 4.0, 2.0])
    tree = SumTree(capacity, fanout)
    tree.update(np.arange(capacity), priorities)
    rng = np.random.default_rng(0)
    batch_size, n_batches = 32, 6250  # 200k draws
    draws = np.concatenate([tree.sample(batch_size, rng) for _ in range(n_batches)])
    counts = np.bincount(draws, minlength=capacity)
    assert counts.size == capacity
    assert counts[priorities == 0].sum() == 0
    positive = priorities > 0
    expected = priorities[positive] / priorities.sum() * draws.size
    # Stratification makes counts less variable than a multinomial, so the test is conservative.
    assert scipy.stats.chisquare(counts[positive], expected).pvalue > 1e-3
    np.testing.assert_allclose(counts / draws.size, priorities / priorities.sum(), atol=3e-3)


def test_sample_is_stratified_one_draw_per_segment():
    rng = np.random.default_rng(3)
    priorities = rng.exponential(size=50)
    tree = SumTree(50)
    tree.update(np.arange(50), priorities)
    batch_size = 16
    cumsum = np.cumsum(priorities)
    segment = priorities.sum() / batch_size
    for _ in range(100):
        leaves = tree.sample(batch_size, rng)
        before, including = cumsum[leaves] - priorities[leaves], cumsum[leaves]
        # Leaf i of the batch overlaps segment i: [i * segment, (i + 1) * segment).
        k = np.arange(batch_size)
        assert np.all(before <= (k + 1) * segment * (1 + 1e-12))
        assert np.all(including >= k * segment * (1 - 1e-12))


def test_sample_uses_numpy_global_rng_without_generator():
    # SB3 seeds numpy's global generator, so the tree draws from it when given none.
    priorities = np.arange(1.0, 21.0)
    tree = SumTree(20)
    tree.update(np.arange(20), priorities)
    np.random.seed(123)  # noqa: NPY002
    first = tree.sample(8)
    np.random.seed(123)  # noqa: NPY002
    uniform = np.random.random(8)  # noqa: NPY002
    expected = np.searchsorted(np.cumsum(priorities), (np.arange(8) + uniform) * priorities.sum() / 8, side="right")
    np.testing.assert_array_equal(first, expected)
    np.random.seed(123)  # noqa: NPY002
    np.testing.assert_array_equal(tree.sample(8), first)
    np.testing.assert_array_equal(tree.sample(8, np.random.RandomState(5)), tree.sample(8, np.random.RandomState(5)))


class TopOfRangeRng:
    """Returns the largest double below 1, so the last stratified value lands at (or rounds to) the total."""

    def random(self, size):
        return np.full(size, np.nextafter(1.0, 0.0))


@pytest.mark.parametrize(
    "priorities",
    [
        np.array([0.1, 0.2, 0.3, 0.0, 0.0]),  # trailing zero leaves, then zero padding up to 8
        np.array([1e-3, 1e3, 0.1, 1e-7, 0.0, 0.7, 0.0]),
        np.array([0.3] * 5),  # only padding leaves are zero
        np.full(1000, 0.1),
        # With this total, (2 + u) * (total / 3) rounds to just above the total for u close to 1: values are clamped.
        np.array([96.68927644258896, 0.0, 0.0]),
    ],
)
@pytest.mark.parametrize("fanout", FANOUTS)
def test_zero_priority_leaves_never_sampled_at_top_of_range(priorities, fanout):
    tree = SumTree(len(priorities), fanout)
    tree.update(np.arange(len(priorities)), priorities)
    last_positive = np.flatnonzero(priorities)[-1]
    for batch_size in (1, 3, 7, 64):
        leaves = tree.sample(batch_size, TopOfRangeRng())
        assert np.all(priorities[leaves] > 0)
        assert leaves[-1] == last_positive
    assert tree.find_prefix_sum(np.array([tree.total]))[0] == last_positive


def test_min_and_max_priority_tracking():
    tree = SumTree(5)
    assert tree.min_priority == np.inf and tree.max_priority == 0.0 and tree.total == 0.0
    tree.update(np.array([0, 1, 2]), np.array([4.0, 0.5, 2.0]))
    assert (tree.min_priority, tree.max_priority) == (0.5, 4.0)
    tree.update(np.array([1]), np.array([0.0]))  # zero priorities are left out of the minimum
    assert tree.min_priority == 2.0
    tree.update(np.array([0]), np.array([1.0]))  # lowering the largest leaf keeps the running maximum
    assert (tree.min_priority, tree.max_priority) == (1.0, 4.0)
    tree.update(np.array([0, 2]), np.array([0.0, 0.0]))
    assert tree.min_priority == np.inf and tree.total == 0.0


def test_pickle_and_deepcopy_round_trip():
    rng = np.random.default_rng(7)
    tree = SumTree(37)
    tree.update(rng.integers(37, size=100), rng.exponential(size=100))
    for clone in (pickle.loads(pickle.dumps(tree)), copy.deepcopy(tree)):
        assert clone.capacity == 37
        assert (clone.total, clone.min_priority, clone.max_priority) == (
            tree.total,
            tree.min_priority,
            tree.max_priority,
        )
        np.testing.assert_array_equal(clone.get(np.arange(37)), tree.get(np.arange(37)))
        np.testing.assert_array_equal(
            clone.sample(64, np.random.default_rng(1)), tree.sample(64, np.random.default_rng(1))
        )
        clone.update(np.array([0]), np.array([100.0]))
        assert tree[0] != 100.0  # the copy owns its arrays


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True, "8"])
def test_bad_capacity_raises(capacity):
    with pytest.raises(ValueError, match="capacity"):
        SumTree(capacity)


@pytest.mark.parametrize("fanout", [0, 1, 2.0, True])
def test_bad_fanout_raises(fanout):
    with pytest.raises(ValueError, match="fanout"):
        SumTree(8, fanout)


@pytest.mark.parametrize(
    ("capacity", "fanout", "sizes"),
    [
        (1, 32, [32]),
        (32, 32, [32]),
        (33, 32, [64, 32]),
        (100_000, 32, [100_000, 3136, 128, 32]),  # 4 levels where a binary tree has 17
        (10, 2, [10, 6, 4, 2]),
        (10, 3, [12, 6, 3]),
    ],
)
def test_levels_and_memory(capacity, fanout, sizes):
    tree = SumTree(capacity, fanout)
    assert [level.size for level in tree._sums] == sizes
    assert [level.shape for level in tree._prefix] == [(size // fanout, fanout) for size in sizes]
    # sums, prefix sums and minima: three float64 per node
    assert tree.nbytes == SumTree.nbytes_for(capacity, fanout) == 3 * 8 * sum(sizes)


@pytest.mark.parametrize(
    ("capacity", "fanout", "levels"),
    [(1, 32, 1), (32_768, 32, 3), (32_769, 33, 3), (100_000, 47, 3), (1_000_000, 100, 3), (1_000_001, 101, 3)],
)
def test_default_fanout_is_at_least_32_with_at_most_three_levels(capacity, fanout, levels):
    assert default_fanout(capacity) == fanout
    tree = SumTree(capacity)
    assert tree.fanout == fanout and len(tree._sums) == levels
    assert SumTree.nbytes_for(capacity) == tree.nbytes


def test_tree_pickled_without_prefix_sums_is_rebuilt():
    rng = np.random.default_rng(3)
    tree = SumTree(100, 4)
    tree.update(np.arange(100), rng.exponential(size=100))
    tree.update(np.array([5]), 0.25)  # the running max is not the current max: it must survive
    state = {k: v for k, v in tree.__dict__.items() if k != "_prefix"}  # the layout before the prefix sums
    old = SumTree.__new__(SumTree)
    old.__setstate__(copy.deepcopy(state))
    assert_internal_nodes_consistent(old)
    assert old.max_priority == tree.max_priority and old.total == pytest.approx(tree.total, rel=1e-12)
    values = rng.random(50) * tree.total
    np.testing.assert_array_equal(old.find_prefix_sum(values), tree.find_prefix_sum(values))


def test_bad_inputs_raise_value_error():
    tree = SumTree(4)
    with pytest.raises(ValueError, match="all 0"):
        tree.sample(2)
    with pytest.raises(ValueError, match="all 0"):
        tree.find_prefix_sum(np.array([0.0]))
    for priorities in ([np.nan], [np.inf], [-1.0]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            tree.update(np.array([0]), np.array(priorities))
    for indices in ([-1], [4], [0, 7]):
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            tree.update(np.array(indices), 1.0)
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            tree.get(np.array(indices))
    with pytest.raises(ValueError, match="integers"):
        tree.update(np.array([0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        tree.update(np.array([0, 1]), np.array([1.0, 2.0, 3.0]))
    assert tree.total == 0.0  # nothing was written by the failed updates
    tree.update(np.array([0, 1]), np.array([1.0, 2.0]))
    for values in ([-0.1], [3.5], [np.nan]):
        with pytest.raises(ValueError, match="prefix sums"):
            tree.find_prefix_sum(np.array(values))
    for batch_size in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            tree.sample(batch_size)


# Integer-valued priorities keep every partial sum exact, so the tree must agree with numpy bit for bit.
update_batches = st.lists(
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 50)), min_size=1, max_size=80), min_size=1, max_size=6
)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    fanout=st.sampled_from([2, 3, 4, 32]),
    batches=update_batches,
    fractions=st.lists(st.floats(0, 1), max_size=20),
)
def test_property_tree_agrees_with_numpy(capacity, fanout, batches, fractions):
    tree = SumTree(capacity, fanout)
    reference = []
    for batch in batches:
        indices = np.array([i % capacity for i, _ in batch])
        priorities = np.array([p for _, p in batch], dtype=np.float64)
        tree.update(indices, priorities)
        reference.append((indices, priorities))
    leaves = sequential_updates(capacity, reference)
    np.testing.assert_array_equal(tree.get(np.arange(capacity)), leaves)
    assert tree.total == leaves.sum()
    assert_internal_nodes_consistent(tree)
    if leaves.sum() > 0:
        values = np.array(fractions) * leaves.sum()
        found = tree.find_prefix_sum(values)
        assert np.all(leaves[found] > 0)
        below_total = values < leaves.sum()
        expected = np.searchsorted(np.cumsum(leaves), values[below_total], side="right")
        np.testing.assert_array_equal(found[below_total], expected)
