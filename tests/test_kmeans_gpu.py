"""k-means assignment backends: the choice (everywhere) and, on a GPU, the torch CUDA and FAISS GPU
paths against the CPU path from the same initial centroids."""

import numpy as np
import pytest
import torch

from sharekan.clustering import InMemory, kmeans
from sharekan import nearest
from sharekan.kmeans_steps import assign_stats, faiss_gpus, gpu_nearest, init_centroids, lloyd, pick_backend


def mixture(n=20_000, k=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, 13))
    pts = centres[rng.integers(0, k, n)] + 0.4 * rng.standard_normal((n, 13))
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


def test_backend_choice_names_what_is_missing():
    assert pick_backend("cpu") == "cpu"
    assert pick_backend("auto") == ("faiss-gpu" if faiss_gpus() else "cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="k-means backend must be 'auto' or one of"):
        pick_backend("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'cuda' needs a CUDA GPU"):
            pick_backend("cuda")
    if not faiss_gpus():
        with pytest.raises(RuntimeError, match=r"faiss-gpu.*sharekan\[gpu\]"):
            pick_backend("faiss-gpu")


def _same_up_to_ties(pts, cb, a, b):
    """Labels equal except where both centroids are equally near (fp32 rounding of the distance)."""
    a, b = np.asarray(a), np.asarray(b)
    diff = np.flatnonzero(a != b)
    da = ((pts[diff] - cb[a[diff]]) ** 2).sum(1)
    db = ((pts[diff] - cb[b[diff]]) ** 2).sum(1)
    assert len(diff) <= 1e-4 * len(pts) and np.allclose(da, db, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_fused_nearest_kernel_compiles_with_nvrtc_for_every_dimension_it_takes(arch):
    for d in (1, 6, 13, nearest.MAX_DIM):
        assert len(nearest.nvrtc_compile(arch, d)) > 1000
    with pytest.raises(ValueError, match=f"dimensions 1..{nearest.MAX_DIM}, got {nearest.MAX_DIM + 1}"):
        nearest.nvrtc_compile(arch, nearest.MAX_DIM + 1)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,d", [(20_001, 300, 13), (5_000, 1, 6), (3_000, 129, nearest.MAX_DIM), (0, 10, 13)])
def test_the_fused_kernel_gives_the_torch_path_labels_and_distances(n, k, d):
    """Partial tiles of points and centroids; every dimension class; the labels the blocked torch
    path gives, up to fp32 near-ties; the distances it returns are ‖c‖² − 2 p·c at the label."""
    rng = np.random.default_rng(n + k + d)
    pts = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).cuda()
    cb = torch.from_numpy(rng.standard_normal((k, d)).astype(np.float32)).cuda()
    fused, dist = nearest.nearest(pts, nearest.prepare(cb), distances=True)
    ref = gpu_nearest(pts, cb, "torch")
    assert fused.dtype == torch.int64 and fused.shape == (n,)
    if n:
        assert 0 <= int(fused.min()) and int(fused.max()) < k
    _same_up_to_ties(pts.cpu().numpy(), cb.cpu().numpy(), ref.cpu().numpy(), fused.cpu().numpy())
    expect = (cb[fused] ** 2).sum(1) - 2 * (pts * cb[fused]).sum(1)
    assert torch.allclose(dist, expect, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_the_fused_kernel_breaks_exact_ties_to_the_smaller_index():
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((260, 13)).astype(np.float32)
    cb[[7, 135, 259]] = cb[200]  # the same centroid in four tiles' places, across threads and tiles
    pts = np.repeat(cb[200:201], 300, axis=0)
    labels = gpu_nearest(torch.from_numpy(pts).cuda(), torch.from_numpy(cb).cuda(), "fused")
    assert labels.cpu().tolist() == [7] * 300


def test_an_unknown_nearest_kernel_is_named():
    with pytest.raises(ValueError, match="'auto', 'fused' or 'torch', got 'cublas'"):
        gpu_nearest(torch.zeros(2, 3), torch.zeros(1, 3), "cublas")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "faiss-gpu"])
def test_gpu_assignment_equals_the_cpu_path(backend):
    if backend == "faiss-gpu" and not faiss_gpus():
        pytest.skip("faiss-gpu is not installed (pip install 'sharekan[gpu]')")
    pts = mixture()
    cb = init_centroids(pts, 300, seed=1)
    s_cpu, n_cpu, o_cpu, l_cpu = assign_stats(pts, cb, "cpu")
    s_gpu, n_gpu, o_gpu, l_gpu = assign_stats(pts, cb, backend)
    l_gpu = l_gpu.cpu().numpy() if isinstance(l_gpu, torch.Tensor) else l_gpu
    _same_up_to_ties(pts, cb, l_cpu, l_gpu)
    if np.array_equal(l_cpu, l_gpu):
        assert np.array_equal(n_cpu, n_gpu) and np.allclose(s_cpu, s_gpu, rtol=1e-9, atol=1e-9)
    assert o_gpu == pytest.approx(o_cpu, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["full", "two-level"])
def test_gpu_kmeans_keeps_its_guarantee_against_the_cpu_run_from_the_same_start(mode):
    """What is guaranteed (README, "k-means on the GPU"): every assignment step equals the CPU's
    except where a point's two best distances tie to fp32 rounding, with the objective to 1e-6; so
    the runs' final objectives agree to 1e-5, and their codebooks are equal where no step met such
    a near-tie (checked step by step for the full mode, whose steps can be replayed). A near-tie
    resolved differently may move a few centroids (an H100 moved 3 of 64 in two-level mode)."""
    pts = mixture(seed=3)
    start = init_centroids(pts, 64, seed=2)
    kw = {"mode": mode, "seed": 2, "niter": 20} | ({"init": start} if mode == "full" else {})
    cpu, h_cpu = kmeans(InMemory(pts, "cpu"), 64, **kw)
    gpu, h_gpu = kmeans(InMemory(torch.from_numpy(pts).cuda(), "cuda"), 64, **kw)
    assert h_gpu[-1]["objective"] == pytest.approx(h_cpu[-1]["objective"], rel=1e-5)
    if mode != "full":
        return
    ties = []

    def both(centroids):  # the CPU run's own steps (lloyd), each also assigned on the GPU
        s_cpu, n_cpu, o_cpu, l_cpu = assign_stats(pts, centroids, "cpu")
        _, _, o_gpu, l_gpu = assign_stats(pts, centroids, "cuda")
        l_gpu = l_gpu.cpu().numpy()
        _same_up_to_ties(pts, centroids, l_cpu, l_gpu)
        assert o_gpu == pytest.approx(o_cpu, rel=1e-6)
        ties.append(int((l_cpu != l_gpu).sum()))
        return s_cpu, n_cpu, o_cpu, 0

    replayed, _ = lloyd(both, start, niter=20, seed=2)
    assert np.allclose(replayed, cpu, atol=1e-6)  # the replay is the CPU run
    if not any(ties):
        assert np.allclose(gpu, cpu, atol=1e-5)


@pytest.mark.gpu
def test_a_process_given_a_quarter_of_the_gpu_cannot_allocate_more():
    """What a shard actor on a shared GPU does first (``cap_gpu_memory``), in a process of its own:
    a fifth of the card allocates, a third is refused by torch's allocator."""
    import subprocess
    import sys

    script = """if True:
        import torch
        from sharekan.kmeans_steps import cap_gpu_memory
        assert cap_gpu_memory(0.25, "cpu") is None and cap_gpu_memory(1.0, "cuda") is None
        assert cap_gpu_memory(0.25, "cuda") == 0.25
        total = torch.cuda.get_device_properties(0).total_memory
        a = torch.empty(int(0.2 * total), dtype=torch.uint8, device="cuda")
        try:
            b = torch.empty(int(0.1 * total), dtype=torch.uint8, device="cuda")
        except torch.OutOfMemoryError:
            print("refused")
    """
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr[-2000:]


@pytest.mark.gpu
def test_shard_actors_on_the_gpu_give_the_cpu_codebook(tmp_path):
    ray = pytest.importorskip("ray")
    from storage.shards import put_rows
    from storage.store import ArtifactStore
    from tasks.cluster import connect
    from tasks.kmeans import RayShards

    pts = mixture(seed=5)
    art, _ = put_rows(ArtifactStore(tmp_path), "splines", {}, [], "c", {"shapes": pts}, chunk_rows=5000, workers=1)
    start = init_centroids(pts, 50, seed=0)
    connect(num_cpus=4)
    try:
        with RayShards(tmp_path, art.version, "shapes", "auto") as shards:  # the cluster has a GPU: auto takes it
            assert shards.backend in ("cuda", "faiss-gpu")
            # 4 shards share the GPU: each actor may allocate a quarter of its memory
            assert ray.get([a.memory_cap.remote() for a in shards.actors]) == [0.25] * 4
            gpu, _ = kmeans(shards, 50, init=start, niter=15)
        with RayShards(tmp_path, art.version, "shapes", "cpu") as shards:
            cpu, _ = kmeans(shards, 50, init=start, niter=15)
    finally:
        ray.shutdown()
    assert np.allclose(gpu, cpu, atol=1e-5)


def test_a_gpu_backend_on_a_cluster_without_gpus_is_refused_before_any_actor(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ray = pytest.importorskip("ray")
    from storage.shards import put_rows
    from storage.store import ArtifactStore
    from tasks.cluster import connect
    from tasks.kmeans import RayShards, ShardError

    art, _ = put_rows(ArtifactStore(tmp_path), "splines", {}, [], "c", {"shapes": mixture(n=100)}, chunk_rows=50,
                      workers=1)
    connect(num_cpus=1)
    try:
        with pytest.raises(ShardError, match="backend 'cuda' needs a GPU but the Ray cluster has none"):
            RayShards(tmp_path, art.version, "shapes", "cuda")
        with RayShards(tmp_path, art.version, "shapes", "auto") as shards:
            assert shards.backend == "cpu"
    finally:
        ray.shutdown()
