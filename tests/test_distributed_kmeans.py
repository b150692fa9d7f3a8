"""Distributed k-means on a real local Ray cluster (one per test module), shards from the store."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from sharekan.clustering import InMemory, kmeans
from sharekan.kmeans_steps import assign_stats, init_centroids, lloyd
from storage.shards import put_rows
from storage.store import ArtifactStore
from tasks.kmeans import RayShards, ShardError, check_shard_memory

ROOT = Path(__file__).resolve().parents[1]


def distributed_kmeans(location, version, name, k, backend="auto", **kw):
    """The library's k-means loop over the Ray shard actors, as the codebook stage runs it."""
    with RayShards(location, version, name, backend) as source:
        return kmeans(source, k, **kw)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, ray_cluster):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 13))
    pts = centres[rng.integers(0, 12, 6000)] + 0.3 * rng.standard_normal((6000, 13))
    pts = (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)
    path = tmp_path_factory.mktemp("km") / "store"
    extra = {"gains": rng.random(6000).astype(np.float32), "biases": rng.standard_normal(6000).astype(np.float16)}
    art, _ = put_rows(ArtifactStore(path), "splines", {"n": 6000}, [], "c", {"shapes": pts, **extra},
                      chunk_rows=1500, workers=2)
    return str(path), art.version, pts


def single(pts, init, niter=30, spherical=True):
    def stats(c):
        s, n, o, _ = assign_stats(pts, c)
        return s, n, o, 0
    return lloyd(stats, init, niter=niter, seed=0, spherical=spherical)


@pytest.mark.parametrize("spherical", [True, False])
def test_distributed_equals_single_process(shapes, spherical):
    path, version, pts = shapes
    init = init_centroids(pts, 16, seed=3)
    dist, hist = distributed_kmeans(path, version, "shapes", 16, init=init, niter=30, progress=False,
                                    spherical=spherical)
    ref, ref_hist = single(pts, init, spherical=spherical)
    norms = np.linalg.norm(dist, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) if spherical else norms.max() < 0.999  # means of unit vectors
    assert np.allclose(dist, ref, atol=1e-5)
    assert np.array_equal(assign_stats(pts, dist)[3], assign_stats(pts, ref)[3])
    assert len(hist) == len(ref_hist) and hist[-1]["objective"] <= hist[0]["objective"]
    lib, _ = kmeans(InMemory(pts), 16, init=init, niter=30, spherical=spherical)  # the library's own source
    assert np.allclose(lib, ref, atol=1e-5)


def test_one_loop_serves_one_array_and_the_shards(shapes):
    """The same ``sharekan.clustering.kmeans`` over an in-memory array and over Ray shard actors:
    from the same initial centroids, the same two-level codebook (fine fits on the actors)."""
    path, version, pts = shapes
    memory = InMemory(pts)
    with RayShards(path, version, "shapes") as shards:
        assert shards.rows == 6000 and len(shards.actors) == 4
        one_shard_start = shards.initial(30, 4)  # drawn across shards in proportion to their rows
        shards.initial = memory.initial  # the same coarse initialisation for both
        sharded, hist = kmeans(shards, 30, mode="two-level", seed=4, niter=12)
    memory, mem_hist = kmeans(memory, 30, mode="two-level", seed=4, niter=12)
    assert np.allclose(sharded, memory, atol=1e-5)
    assert [h["phase"] for h in hist] == [h["phase"] for h in mem_hist]
    assert one_shard_start.shape == (30, 13) and len(np.unique(one_shard_start, axis=0)) == 30


def test_shapes_of_several_artifacts_pool_into_one_codebook(shapes):
    """Two heads' spline shapes in one k-means (a codebook shared by many heads): equal to k-means
    on the concatenated points; writing an assignment back to the pool is refused."""
    path, version, pts = shapes
    rng = np.random.default_rng(1)
    more = pts[rng.permutation(6000)[:2500]] + 0.05 * rng.standard_normal((2500, 13)).astype(np.float32)
    other, _ = put_rows(ArtifactStore(path), "splines", {"n": 2500}, [], "c", {"shapes": more}, chunk_rows=1000,
                        workers=1)
    both = np.concatenate([pts, more])
    init = init_centroids(both, 16, seed=5)
    with RayShards(path, [version, other.version], "shapes") as pool:
        assert pool.rows == 8500 and len(pool.actors) == 4 + 3
        pooled, _ = kmeans(pool, 16, init=init, niter=20)
        with pytest.raises(ValueError, match="not to the pooled"):
            pool.write_assignment(ArtifactStore(path), "assignment", {}, [], "c", pooled)
    ref, _ = kmeans(InMemory(both), 16, init=init, niter=20)
    assert np.allclose(pooled, ref, atol=1e-5)


def test_deterministic_across_runs(shapes):
    path, version, _ = shapes
    a, ha = distributed_kmeans(path, version, "shapes", 20, seed=7, niter=10, progress=False)
    b, hb = distributed_kmeans(path, version, "shapes", 20, seed=7, niter=10, progress=False)
    assert np.array_equal(a, b) and [h["objective"] for h in ha] == [h["objective"] for h in hb]


def test_concurrent_fits_queue_for_their_actors_instead_of_deadlocking(shapes):
    """Two fits at once on the 2-CPU cluster, each needing all of it (4 shard actors × 0.5 CPU):
    placed one after the other, whole, both finish with the codebook a fit alone gives. (Placed
    actor by actor, each fit could hold half its actors and wait on the other's for ever.)"""
    path, version, _ = shapes
    assert ray.cluster_resources()["CPU"] == 2
    alone, _ = distributed_kmeans(path, version, "shapes", 20, seed=7, niter=5, progress=False)
    results = [None, None]

    def fit(i):
        results[i] = distributed_kmeans(path, version, "shapes", 20, seed=7, niter=5, progress=False)[0]
    threads = [threading.Thread(target=fit, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "two concurrent fits waited on each other"
    assert all(np.array_equal(r, alone) for r in results)
    from ray.util import placement_group_table

    deadline = time.time() + 30  # every placement group released (Ray removes them asynchronously)
    while any(g["state"] != "REMOVED" for g in placement_group_table().values()) and time.time() < deadline:
        time.sleep(0.5)
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values())


def test_minibatch_mode_lowers_the_objective_and_is_deterministic(shapes):
    path, version, pts = shapes
    init = init_centroids(pts, 12, seed=2)
    a, hist = distributed_kmeans(path, version, "shapes", 12, init=init, mode="minibatch", niter=15,
                                 batch_size=600, progress=False)
    b, _ = distributed_kmeans(path, version, "shapes", 12, init=init, mode="minibatch", niter=15,
                              batch_size=600, progress=False)
    assert np.array_equal(a, b) and len(hist) == 15
    assert assign_stats(pts, a)[2] < assign_stats(pts, init)[2]
    with pytest.raises(ValueError, match="mode"):
        distributed_kmeans(path, version, "shapes", 12, mode="bogus")


def test_two_level_mode_is_deterministic_and_close_to_full(shapes):
    path, version, pts = shapes
    a, hist = distributed_kmeans(path, version, "shapes", 40, seed=1, niter=15, mode="two-level", progress=False)
    b, _ = distributed_kmeans(path, version, "shapes", 40, seed=1, niter=15, mode="two-level", progress=False)
    full, _ = kmeans(InMemory(pts), 40, seed=1, niter=15)  # what full mode gives (test_distributed_equals_...)
    assert a.shape == (40, 13) and np.array_equal(a, b)
    assert hist[-1]["phase"] == "fine" and hist[0]["phase"] == "coarse"
    obj = assign_stats(pts, a)[2]
    assert obj == pytest.approx(hist[-1]["objective"], rel=1e-5)
    assert obj < 1.15 * assign_stats(pts, full)[2]  # two-level trades a little objective for parallelism
    with pytest.raises(ValueError, match="fine centroids"):
        distributed_kmeans(path, version, "shapes", 8, mode="two-level", coarse_k=9, progress=False)


def test_final_pass_writes_indices_gains_biases_per_shard(shapes, tmp_path):
    path, version, pts = shapes
    store = ArtifactStore(path)
    with RayShards(path, version, "shapes") as pool:
        cb, _ = kmeans(pool, 16, seed=0, niter=5)
        art, created = pool.write_assignment(store, "encoded", {"k": 16}, [version], "c", cb)
        again, created_again = pool.write_assignment(store, "encoded", {"k": 16}, [version], "c", cb)
    src = store.get(version)
    assert created and not created_again and again.version == art.version
    assert art.array("indices").dtype == np.uint8 and art.array("indices").chunks == (1500,)
    assert np.array_equal(art.array("indices")[...], assign_stats(pts, cb)[3])
    for name in ("gains", "biases"):
        assert np.array_equal(art.array(name)[...], src.array(name)[...])
        assert art.array(name).dtype == src.array(name).dtype
    assert store.lineage(art.version)["inputs"][0]["version"] == version


def test_shard_larger_than_any_node_is_refused_naming_it():
    check_shard_memory([10, 20], 30, "v/shapes")
    with pytest.raises(ShardError, match="shard 1 of v/shapes"):
        check_shard_memory([10, 40], 30, "v/shapes")


def test_empty_clusters_are_reseeded(shapes):
    path, version, pts = shapes
    init = np.repeat(pts[:4], 2, axis=0)  # duplicated centroids: half of them start empty
    cb, hist = distributed_kmeans(path, version, "shapes", 8, init=init, niter=15, progress=False)
    assert hist[0]["reseeded"] == 4
    assert np.all(assign_stats(pts, cb)[1] > 0)  # every cluster owns points at the end


def test_killed_shard_actor_restarts_and_gives_the_same_codebook(shapes):
    """A real SIGKILL of one shard actor's process between two Lloyd steps (at a fixed step, not
    on a timer): Ray restarts it, the step is retried and the codebook is bit-for-bit the same."""
    path, version, pts = shapes
    init = init_centroids(pts, 16, seed=5)
    undisturbed, calm = distributed_kmeans(path, version, "shapes", 16, init=init, niter=25, tol=0,
                                           progress=False)
    with RayShards(path, version, "shapes") as source:
        victim = source.actors[0]
        before = ray.get(victim.pid.remote())
        step, calls = source.stats, []

        def stats_killing_at_the_fourth_step(centroids):
            calls.append(1)
            if len(calls) == 4:
                os.kill(before, signal.SIGKILL)
            return step(centroids)

        source.stats = stats_killing_at_the_fourth_step
        disturbed, hist = kmeans(source, 16, init=init, niter=25, tol=0, progress=False)
        after = ray.get(victim.pid.remote())
    assert len(calls) > 4 and [h["objective"] for h in hist] == [h["objective"] for h in calm]
    assert after != before  # a new process: the actor was restarted
    assert np.array_equal(disturbed, undisturbed)


def test_unreadable_shard_is_named(shapes):
    path, _, _ = shapes
    with pytest.raises(Exception, match="splines-missing"):
        distributed_kmeans(path, "splines-missing", "shapes", 4, progress=False)


def test_a_corrupt_shard_is_named_corrupt_in_the_last_line(shapes, tmp_path):
    import shutil

    path, version, _ = shapes
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    chunks = sorted((copy / "chunks").iterdir(), key=lambda f: f.stat().st_size)
    for f in chunks:  # flip bytes in the middle of every chunk: whichever shard is read first, it is corrupt
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    with pytest.raises(ShardError) as err:
        distributed_kmeans(str(copy), version, "shapes", 4, progress=False)
    last = str(err.value).strip().splitlines()[-1]
    assert "is corrupt" in last and version in last, str(err.value)


CLUSTER_SCRIPT = textwrap.dedent("""
    import sys
    from sharekan.clustering import kmeans
    from tasks.cluster import connect
    from tasks.kmeans import RayShards
    connect(address=sys.argv[1])
    with RayShards(sys.argv[2], sys.argv[3], "shapes") as source:
        cb, hist = kmeans(source, 8, niter=5, progress=False)
    print("centroids", cb.shape[0], len(hist))
""")


def test_cluster_started_with_ray_start_head(shapes, tmp_path):
    """A `ray start --head` cluster (token authentication on) reached by address; stopping it
    stops that head alone."""
    from cli.services import free_port, prefect_env, ray_head

    path, version, _ = shapes
    env = {**prefect_env(), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    with ray_head(port=free_port(), num_cpus=1, env=env) as address:
        script = tmp_path / "client.py"
        script.write_text(CLUSTER_SCRIPT)
        out = subprocess.run([sys.executable, str(script), address, path, version],
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "centroids 8" in out.stdout  # 8 centroids; ≤ 5 iterations (tol may stop it early)
