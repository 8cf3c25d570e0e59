"""Fusion clustering: thread limits shared safely by concurrent batches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_info

from adaclip import fusion


def _threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info()]


def test_overlapping_limits_restore_the_original_thread_counts():
    before = _threads()
    limit = fusion._SharedThreadLimit()
    with limit:  # request A starts clustering
        limit.__enter__()  # request B starts while A runs
        assert set(_threads()) == {1}
    assert set(_threads()) == {1}  # A is done, B still clusters
    limit.__exit__(None, None, None)
    assert _threads() == before


def test_concurrent_batches_give_their_own_results_and_leave_threads_alone():
    before = _threads()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 40, 2 * 8)).astype(np.float32) for _ in range(6)]
    alone = [fusion.cluster_centres(b, 5, 0, 2) for b in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda b: fusion.cluster_centres(b, 5, 0, 2), batches))
    for a, t in zip(alone, together):
        np.testing.assert_array_equal(a, t)
    assert _threads() == before
