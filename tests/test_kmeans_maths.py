"""The maths distributed k-means is built from: shard statistics, updates, empty-cluster reseeding."""

import numpy as np
import pytest

from sharekan.kmeans_steps import (assign_stats, init_centroids, minibatch_update, reseed_empty, split_k,
                             update_centroids)


def unit(rng, n, d=13):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shard_statistics_add_up_to_the_whole():
    rng = np.random.default_rng(0)
    pts, cb = unit(rng, 900), unit(rng, 17)
    whole = assign_stats(pts, cb)
    parts = [assign_stats(p, cb) for p in np.array_split(pts, 3)]
    assert np.allclose(sum(p[0] for p in parts), whole[0], atol=1e-9)
    assert np.array_equal(sum(p[1] for p in parts), whole[1])
    assert sum(p[2] for p in parts) == pytest.approx(whole[2], rel=1e-12)
    assert whole[1].sum() == 900
    brute = ((pts[:, None, :].astype(np.float64) - cb[None]) ** 2).sum(-1)
    assert np.array_equal(whole[3], brute.argmin(1))
    assert whole[2] == pytest.approx(brute.min(1).sum(), rel=1e-5)


def test_update_is_the_normalised_mean_and_keeps_empty_clusters():
    sums = np.array([[1.0, 1.0], [0.0, 0.0]])
    counts = np.array([2, 0])
    prev = np.array([[1, 0], [0, -1]], np.float32)
    out = update_centroids(sums, counts, prev, spherical=True)
    assert np.allclose(out[0], [2 ** -0.5, 2 ** -0.5]) and np.array_equal(out[1], prev[1])
    plain = update_centroids(sums, counts, prev, spherical=False)
    assert np.allclose(plain[0], [0.5, 0.5])


def test_reseed_splits_the_largest_cluster_deterministically():
    cb = np.eye(4, dtype=np.float32)
    counts = np.array([0, 10, 3, 0])
    a, n = reseed_empty(cb, counts, seed=1, iteration=5)
    b, _ = reseed_empty(cb, counts, seed=1, iteration=5)
    assert n == 2 and np.array_equal(a, b)
    assert np.allclose(a[0], cb[1], atol=1e-3) and not np.array_equal(a[0], a[1])
    # the second empty cluster splits whatever is largest after the first split (10 → 5, 5, 3)
    assert np.allclose(a[3], a[1], atol=1e-3) or np.allclose(a[3], a[0], atol=1e-3)
    c, _ = reseed_empty(cb, counts, seed=2, iteration=5)
    assert not np.array_equal(a, c)


def test_init_is_seeded_distinct_points():
    pts = unit(np.random.default_rng(3), 100)
    a, b = init_centroids(pts, 10, seed=4), init_centroids(pts, 10, seed=4)
    assert np.array_equal(a, b) and len({r.tobytes() for r in a}) == 10
    assert all(any(np.array_equal(r, p) for p in pts) for r in a)
    with pytest.raises(ValueError, match="larger than the number of points"):
        init_centroids(pts, 101, seed=0)


def test_minibatch_step_moves_toward_the_batch_mean():
    cb = np.array([[1.0, 0.0]], np.float32)
    totals = np.array([3])
    sums, counts = np.array([[0.0, 1.0]]), np.array([1])
    out, totals = minibatch_update(cb, totals, sums, counts, spherical=False)
    assert totals.tolist() == [4] and np.allclose(out[0], [0.75, 0.25])


def test_split_k_shares_fine_centroids_by_cluster_size():
    for counts, k in [([10, 0, 5, 1], 8), ([100, 1, 1], 3), ([3, 3, 3], 9), ([1000, 10, 1], 50)]:
        ks = split_k(np.array(counts), k)
        assert ks.sum() == k and np.all(ks <= counts) and np.all((ks > 0) == (np.array(counts) > 0))
    assert list(split_k(np.array([600, 300, 100]), 10)) == [6, 3, 1]
    with pytest.raises(ValueError, match="non-empty coarse clusters"):
        split_k(np.array([5, 5, 5]), 2)
