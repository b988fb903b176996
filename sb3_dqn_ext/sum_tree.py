"""A sum-tree over non-negative priorities, for proportional sampling in O(log n).

The tree knows nothing about reinforcement learning: it stores one float64 priority per leaf and answers "which leaf
does this prefix sum fall in", "what is the total" and "what is the smallest positive priority". Every operation is
vectorised over a batch of leaves; the only Python loops run over the ``O(log n)`` levels of the tree.

Layout: a ``fanout``-ary tree, one flat array per level, from the leaves (level 0) to the top level, whose
``fanout`` entries are the root's children. Node ``j`` of level ``l + 1`` is the sum of block ``j`` of level ``l``,
i.e. of entries ``[j · fanout, (j + 1) · fanout)``; each level is padded with zeros to a whole number of blocks, so
padding is never sampled. Each level also keeps the inclusive prefix sums within each block (a ``(blocks, fanout)``
array), so that descending one level is a gather and a comparison, with no cumulative sum on the sampling path.
A wide node makes the tree shallow: by default the fanout is the smallest one >= 32 that holds the capacity in
three levels (47 for 100 000 leaves, where a binary tree has 17 levels), and each level is one batched numpy step,
which is what costs on a CPU (a batch of 64 samples is far too small for numpy's per-call overhead to amortise).
``fanout=2`` is the classic binary sum-tree. Parents are always recomputed from their children (never updated by
adding a delta), so float round-off does not accumulate over millions of updates.
"""

from __future__ import annotations

import numpy as np

# levels of at most this many nodes are recomputed whole on update (a few µs) instead of block by block
_REFRESH_WHOLE_LEVEL = 4096


def default_fanout(capacity: int) -> int:
    """The smallest fanout >= 32 that holds ``capacity`` leaves in at most three levels (``fanout³ >= capacity``)."""
    fanout = max(32, int(round(capacity ** (1.0 / 3.0))) - 1)
    while fanout**3 < capacity:
        fanout += 1
    return fanout


def _level_sizes(capacity: int, fanout: int) -> list[int]:
    """Padded lengths of the levels, leaves first; the last level is one block (the root's children)."""
    sizes = [-(-capacity // fanout) * fanout]
    while sizes[-1] > fanout:
        sizes.append(-(-(sizes[-1] // fanout) // fanout) * fanout)
    return sizes


class SumTree:
    """
    Sum-tree over ``capacity`` non-negative float64 priorities, with a parallel min-tree.

    Used by prioritized experience replay (Schaul et al., 2016) to sample leaf ``i`` with probability
    ``p_i / sum_j p_j``. A parallel min-tree keeps the smallest *positive* priority in O(log n) per update, which the
    importance-sampling weights need; zero-priority leaves are left out of it because they can never be sampled.

    The state is a few plain numpy arrays and numbers, so the tree pickles (and deep-copies) as it is.

    :param capacity: Number of leaves (any integer >= 1).
    :param fanout: Children per node (>= 2); 2 is a binary tree. Results do not depend on it beyond float round-off.
        ``None`` (default): :func:`default_fanout`, at least 32 and at most three levels.
    """

    def __init__(self, capacity: int, fanout: int | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"SumTree capacity must be an integer >= 1, got {capacity!r}")
        if fanout is None:
            fanout = default_fanout(int(capacity))
        if isinstance(fanout, bool) or not isinstance(fanout, (int, np.integer)) or fanout < 2:
            raise ValueError(f"SumTree fanout must be an integer >= 2, got {fanout!r}")
        self.capacity = int(capacity)
        self.fanout = int(fanout)
        sizes = _level_sizes(self.capacity, self.fanout)
        self._sums = [np.zeros(size, dtype=np.float64) for size in sizes]
        # per level, the inclusive prefix sums within each block: _prefix[l][j] == np.cumsum(block j of _sums[l])
        self._prefix = [np.zeros((size // self.fanout, self.fanout), dtype=np.float64) for size in sizes]
        # Zero-priority and padding leaves hold +inf so that they never become the minimum.
        self._mins = [np.full(size, np.inf, dtype=np.float64) for size in sizes]
        self._total = 0.0
        self._min_priority = float("inf")
        self._max_priority = 0.0

    @staticmethod
    def nbytes_for(capacity: int, fanout: int | None = None) -> int:
        """Bytes of the arrays of a tree of this capacity (to check memory before allocating a replay buffer)."""
        fanout = default_fanout(int(capacity)) if fanout is None else int(fanout)
        return 3 * 8 * sum(_level_sizes(int(capacity), fanout))

    @property
    def nbytes(self) -> int:
        """Bytes of this tree's arrays."""
        return sum(array.nbytes for array in (*self._sums, *self._prefix, *self._mins))

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return self._total

    @property
    def min_priority(self) -> float:
        """Smallest strictly positive priority, or ``inf`` when every priority is 0."""
        return self._min_priority

    @property
    def max_priority(self) -> float:
        """
        Largest priority ever written (0.0 before the first write).

        This is the running maximum of all writes, not the current maximum: lowering a leaf later does not lower it.
        That is what PER needs to give new transitions "the maximal priority seen so far", and it is O(1). Dopamine's
        ``max_recorded_priority`` is the same quantity, starting at 1.0 instead of 0.0; a replay buffer that wants
        that floor applies it itself.
        """
        return self._max_priority

    def update(self, indices: np.ndarray, priorities: np.ndarray | float) -> None:
        """
        Set the priorities of a batch of leaves and refresh their ancestors.

        When a leaf appears several times in ``indices`` the last write wins, as in a sequential loop.

        :param indices: Integer leaf indices in ``[0, capacity)``, any shape.
        :param priorities: Finite, non-negative priorities, broadcastable to the shape of ``indices``.
        """
        indices = self._check_indices(indices).ravel()
        priorities = np.asarray(priorities, dtype=np.float64)
        try:
            priorities = np.broadcast_to(priorities, indices.shape)
        except ValueError:
            raise ValueError(f"priorities of shape {priorities.shape} do not match {indices.size} indices") from None
        if indices.size == 0:
            return
        # NaN propagates through min/max, so this one test rejects NaN, inf and negatives
        lowest, highest = priorities.min(), priorities.max()
        if not (lowest >= 0.0 and highest < np.inf):
            raise ValueError("priorities must be finite and >= 0")
        # Sequential semantics: a duplicate that is overwritten within the batch was still written.
        self._max_priority = max(self._max_priority, float(highest))

        # Keep the last occurrence of each leaf: np.unique on the reversed array returns first occurrences.
        nodes, first_in_reversed = np.unique(indices[::-1], return_index=True)
        leaf_priorities = priorities[::-1][first_in_reversed]
        self._sums[0][nodes] = leaf_priorities
        self._mins[0][nodes] = np.where(leaf_priorities > 0, leaf_priorities, np.inf)

        # One vectorised step per level: each touched block's prefix sums are recomputed from its children, and its
        # parent is the block's last prefix sum. Blocks touched twice are written twice with the same values. A
        # small level is refreshed whole, in place: fewer numpy calls than gathering and scattering its blocks.
        fanout = self.fanout
        for level in range(len(self._sums) - 1):
            n_blocks = self._prefix[level].shape[0]
            if n_blocks * fanout <= _REFRESH_WHOLE_LEVEL:
                np.cumsum(self._sums[level].reshape(-1, fanout), axis=1, out=self._prefix[level])
                self._sums[level + 1][:n_blocks] = self._prefix[level][:, -1]
                np.min(self._mins[level].reshape(-1, fanout), axis=1, out=self._mins[level + 1][:n_blocks])
                continue
            nodes = nodes // fanout
            prefix = self._sums[level].reshape(-1, fanout)[nodes].cumsum(axis=1)
            self._prefix[level][nodes] = prefix
            self._sums[level + 1][nodes] = prefix[:, -1]
            self._mins[level + 1][nodes] = self._mins[level].reshape(-1, fanout)[nodes].min(axis=1)
        top = np.cumsum(self._sums[-1])
        self._prefix[-1][0] = top
        self._total = float(top[-1])
        self._min_priority = float(self._mins[-1].min())

    def get(self, indices: np.ndarray | int) -> np.ndarray | float:
        """
        Priorities of the given leaves.

        :param indices: Integer leaf indices in ``[0, capacity)``, a scalar or an array of any shape.
        :return: A float for a scalar index, else a float64 array of the same shape as ``indices``.
        """
        checked = self._check_indices(indices)
        values = self._sums[0][checked]
        return float(values) if checked.ndim == 0 else values

    __getitem__ = get

    def find_prefix_sum(self, values: np.ndarray) -> np.ndarray:
        """
        For each value ``v``, the leaf ``i`` with ``sum(p[:i]) <= v < sum(p[:i + 1])``.

        This is ``np.searchsorted(np.cumsum(p), v, side="right")`` computed by one descent of the tree: per level, a
        cumulative sum over each node's block of children.
        The descent never enters a subtree whose sum is 0, so it never returns a zero-priority leaf, even when float
        round-off pushes ``v`` to (or just past) the edge of its subtree; ``v == total`` maps to the last leaf with a
        positive priority.

        :param values: Prefix sums in ``[0, total]``, any shape.
        :return: int64 leaf indices of the same shape as ``values``.
        """
        values = np.asarray(values, dtype=np.float64)
        total = self.total
        if total <= 0.0:
            raise ValueError("cannot search a SumTree whose priorities are all 0")
        if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > total):
            raise ValueError(f"prefix sums must lie in [0, total={total}]")

        return self._descend(values.ravel()).reshape(values.shape)

    def _descend(self, values: np.ndarray) -> np.ndarray:
        """:meth:`find_prefix_sum` of a 1-D float64 array already known to lie in ``[0, total]``."""
        fanout = self.fanout
        remaining = values.copy()
        offsets = np.arange(remaining.size) * fanout - 1  # flat index of "prefix sum before child c" is offset + c
        nodes = np.zeros(remaining.size, dtype=np.int64)  # at the top: the one block of the root's children
        for level in range(len(self._sums) - 1, -1, -1):
            prefix = self._prefix[level][nodes]  # (batch, fanout): each node's block of children, as prefix sums
            # the child whose cumulative range holds the value (zero children have empty ranges and are skipped)
            child = np.count_nonzero(prefix <= remaining[:, None], axis=1)
            past_end = child == fanout
            if past_end.any():
                # round-off put the value at (or past) the block's sum: the last positive child
                child[past_end] = np.argmax(prefix[past_end] >= prefix[past_end, -1:], axis=1)
            remaining -= np.where(child > 0, prefix.ravel()[offsets + child], 0.0)
            nodes = nodes * fanout + child
        return nodes

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """
        Stratified proportional sampling: leaf ``i`` is drawn with probability ``p_i / total``.

        ``[0, total)`` is split into ``batch_size`` equal segments and one value is drawn uniformly in each (Schaul et
        al., 2016, appendix B.2.1), which lowers the variance of a batch compared with independent draws.

        :param batch_size: Number of leaves to draw (>= 1).
        :param rng: Random generator (``np.random.Generator`` or ``RandomState``). ``None`` uses numpy's global
            generator, which ``stable_baselines3.common.utils.set_random_seed`` seeds.
        :return: int64 leaf indices of shape ``(batch_size,)``; never a leaf whose priority is 0.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        total = self.total
        if total <= 0.0:
            raise ValueError("cannot sample from a SumTree whose priorities are all 0")
        # SB3's set_random_seed seeds numpy's global generator, so that is the default stream.
        uniform = np.random.random(batch_size) if rng is None else rng.random(batch_size)  # noqa: NPY002
        values = (np.arange(batch_size) + uniform) * (total / batch_size)
        # Round-off can push the last value to ``total``; find_prefix_sum maps it to the last positive leaf.
        return self._descend(np.minimum(values, total))

    def _check_indices(self, indices: np.ndarray | int) -> np.ndarray:
        indices = np.asarray(indices)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"SumTree indices must be integers, got dtype {indices.dtype}")
        indices = indices.astype(np.int64, copy=False)
        if indices.size and (indices.min() < 0 or indices.max() >= self.capacity):
            raise ValueError(
                f"SumTree indices must lie in [0, {self.capacity}), got [{indices.min()}, {indices.max()}]"
            )
        return indices

    def __setstate__(self, state: dict) -> None:
        """Unpickle; a tree pickled before the prefix sums were kept gets them rebuilt from its leaves."""
        self.__dict__.update(state)
        if "_prefix" not in state:
            leaves = self._sums[0][: self.capacity].copy()
            self.__init__(self.capacity, self.fanout)  # type: ignore[misc]
            self.update(np.arange(self.capacity), leaves)
            self._max_priority = state["_max_priority"]

    def __repr__(self) -> str:
        return f"SumTree(capacity={self.capacity}, fanout={self.fanout}, total={self.total:.6g})"
