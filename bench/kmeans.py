"""Question: how does the distributed k-means compare with single-process FAISS and scikit-learn?

One data set of ``--points`` unit shape vectors (d = 13; ``shapes_data``: a trained head has far
fewer edges than 2 M, so the data is a documented synthetic mixture). For each K, every method starts from the
same seeded initial centroids and runs ``--niter`` iterations:

* ``distributed w=1 / w=2``: ``tasks.kmeans`` on a local Ray cluster, the shapes stored as 1 or 2
  shards (one actor and one core per shard); spherical (centroids renormalised), as the pipeline runs;
* ``faiss.Kmeans``: single process, every core (spherical, like ours);
* ``distributed w=2 Euclidean``: ours with ``spherical=False`` (centroids are plain means);
* ``MiniBatchKMeans``: scikit-learn, batch 4,096, ``--niter`` epochs, every core (Euclidean).

Reported: seconds per iteration, final objective (sum of squared distances of all points to
their nearest centroid, computed the same way for every method), time to reach the target
objective (1.005 × FAISS's final one) for the spherical methods, and for the Euclidean ones the
time to reach MiniBatchKMeans's final objective; for the distributed runs the Ray overhead per
iteration (iteration wall time minus the slowest actor's compute, over the wall time).
Spherical and Euclidean objectives are not comparable: a centroid on the unit sphere is farther
from the points it serves than their mean is, so only like is compared with like.

    python bench/kmeans.py --points 2000000 --ks 4096 65536 --niter 10 --niter-large 2 \
        --niter-euclid-large 12 --json bench/results/kmeans.json

``--gpu`` (on a GPU machine) asks instead: how much faster is the assignment on the GPU? For each K,
from the same initial centroids: the 2-worker CPU run (two shard actors, CPU FAISS), the same
shard actors with the torch CUDA backend (one actor holding every shard on the GPU), and the
in-memory source on the GPU (``sharekan.clustering.InMemory(backend="cuda")``). Reported: seconds
per iteration (median), the objective after each common iteration and its largest relative
difference from the CPU run's, and the speed-up per iteration.

    python bench/kmeans.py --gpu --points 10000000 --ks 4096 65536 --niter 4 --niter-cpu 2 \
        --json bench/results/kmeans_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.clustering import InMemory, kmeans  # noqa: E402
from sharekan.kmeans_steps import assign_stats, init_centroids  # noqa: E402
from sharekan.table import format_table  # noqa: E402
from storage.shards import put_rows  # noqa: E402
from storage.store import ArtifactStore  # noqa: E402
from tasks.cluster import connect  # noqa: E402
from tasks.kmeans import RayShards  # noqa: E402

from shapes_data import D, shapes  # noqa: E402


def objective(x: np.ndarray, c: np.ndarray) -> float:
    return assign_stats(x, c)[2]


def time_to(target: float, trace: list[tuple[float, float]]) -> float | None:
    """First time at which the objective is ≤ ``target`` in a ``[(seconds, objective)]`` trace."""
    return next((t for t, o in trace if o <= target), None)


def run_distributed(store_path, version, k, init, niter, spherical=True, backend="cpu") -> dict:
    with RayShards(store_path, version, "shapes", backend) as pool:
        t0 = time.perf_counter()
        cb, hist = kmeans(pool, k, niter=niter, tol=0, init=init, spherical=spherical)
        total = time.perf_counter() - t0
        steps = pool.step_seconds()
    walls = np.diff([0.0] + [h["seconds"] for h in hist])
    slowest = steps[:, -len(walls):].max(axis=0)
    return {"centroids": cb, "seconds": total, "per_iter": float(np.median(walls[1:] if len(walls) > 1 else walls)),
            "overhead": float(np.median((walls - slowest) / walls)),
            "trace": [(h["seconds"], h["objective"]) for h in hist]}


def run_faiss(x, k, init, niter) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    km = faiss.Kmeans(D, k, niter=niter, seed=0, spherical=True, max_points_per_centroid=len(x),
                      min_points_per_centroid=1, verbose=False)
    t0 = time.perf_counter()
    km.train(x, init_centroids=init)
    total = time.perf_counter() - t0
    stats = km.iteration_stats  # per iteration: objective, cumulative seconds
    times = [s["time"] for s in stats]  # cumulative seconds
    return {"centroids": np.array(km.centroids), "seconds": total,
            "per_iter": float(np.median(np.diff([0.0] + times))), "overhead": None,
            "trace": [(t, s["obj"]) for t, s in zip(times, stats)]}


def run_minibatch(x, k, init, niter) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, init=init, n_init=1, batch_size=4096, max_iter=niter, random_state=0,
                         compute_labels=False, max_no_improvement=None, tol=0.0)
    t0 = time.perf_counter()
    km.fit(x)
    total = time.perf_counter() - t0
    return {"centroids": km.cluster_centers_.astype(np.float32), "seconds": total,
            "per_iter": total / max(1, km.n_iter_), "overhead": None, "trace": []}


def store_shards(path: Path, x: np.ndarray) -> dict[int, str]:
    """The points stored as 1 and as 2 shards: ``{shards: artifact version}``."""
    store = ArtifactStore(path)
    return {w: put_rows(store, "splines", {"points": len(x), "workers": w}, [], "bench", {"shapes": x},
                        chunk_rows=-(-len(x) // w), workers=1)[0].version for w in (1, 2)}


def run_in_memory(x, k, init, niter, backend) -> dict:
    source = InMemory(x, backend)
    t0 = time.perf_counter()
    cb, hist = kmeans(source, k, niter=niter, tol=0, init=init)
    walls = np.diff([0.0] + [h["seconds"] for h in hist])
    return {"centroids": cb, "seconds": time.perf_counter() - t0,
            "per_iter": float(np.median(walls[1:] if len(walls) > 1 else walls)), "overhead": None,
            "trace": [(h["seconds"], h["objective"]) for h in hist]}


def gpu_main(a) -> None:
    x = shapes(a.points)
    connect(num_cpus=os.cpu_count())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        versions = store_shards(Path(tmp) / "store", x)
        for k in a.ks:
            init = init_centroids(x[np.random.default_rng(1).choice(len(x), 4 * k, replace=False)], k, seed=0)
            runs = {}
            for name, run in (("CPU, 2 shard actors", lambda: run_distributed(str(Path(tmp) / "store"), versions[2],
                                                                             k, init, a.niter_cpu, backend="cpu")),
                              ("torch CUDA, shard actor", lambda: run_distributed(str(Path(tmp) / "store"),
                                                                                  versions[1], k, init, a.niter,
                                                                                  backend="cuda")),
                              ("torch CUDA, in memory", lambda: run_in_memory(x, k, init, a.niter, "cuda"))):
                print(f"K={k}: {name} ...", flush=True)
                runs[name] = run()
            cpu = runs["CPU, 2 shard actors"]
            for name, r in runs.items():
                common = min(len(cpu["trace"]), len(r["trace"]))
                rel = max(abs(r["trace"][i][1] - cpu["trace"][i][1]) / cpu["trace"][i][1] for i in range(common))
                results.append({"k": k, "method": name, "points": a.points, "niter": len(r["trace"]),
                                "per_iter_s": r["per_iter"], "speedup": cpu["per_iter"] / r["per_iter"],
                                "objective_at_common_iter": r["trace"][common - 1][1],
                                "max_rel_objective_diff_vs_cpu": rel, "common_iters": common,
                                "centroid_max_abs_diff_vs_cpu": float(np.abs(r["centroids"] - cpu["centroids"]).max())
                                if len(r["trace"]) == len(cpu["trace"]) else None})
    print(format_table([{k: (float("nan") if v is None else v) for k, v in r.items()} for r in results],
                       [("k", "K", "d"), ("method", "method", "s"), ("niter", "iters", "d"),
                        ("per_iter_s", "s/iter", ".3f"), ("speedup", "speed-up", ".1f"),
                        ("objective_at_common_iter", "objective", ".6g"),
                        ("max_rel_objective_diff_vs_cpu", "rel. diff vs CPU", ".1e")]))
    meta = {"points": a.points, "dim": D, "cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name(),
            "command": "python bench/kmeans.py " + " ".join(sys.argv[1:])}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {a.json}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=2_000_000)
    p.add_argument("--ks", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--niter-large", type=int, default=4, help="iterations for K ≥ 32,768 (each is ~16× K=4,096)")
    p.add_argument("--niter-euclid-large", type=int, help="iterations of the Euclidean run for K ≥ 32,768 "
                   "(default --niter-large; more fit in MiniBatchKMeans's time there)")
    p.add_argument("--json", default="bench/results/kmeans.json")
    p.add_argument("--gpu", action="store_true", help="GPU assignment against the 2-worker CPU run (see above)")
    p.add_argument("--niter-cpu", type=int, default=2, help="--gpu: iterations of the CPU run")
    a = p.parse_args(argv)
    if a.gpu:
        return gpu_main(a)

    x = shapes(a.points)
    connect(num_cpus=os.cpu_count())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        versions = store_shards(Path(tmp) / "store", x)
        for k in a.ks:
            niter = a.niter if k < 32_768 else a.niter_large
            sample = np.random.default_rng(1).choice(len(x), min(len(x), 4 * k), replace=False)
            init = init_centroids(x[sample], k, seed=0)
            runs = {}
            for w in (1, 2):
                print(f"K={k}: distributed, {w} worker(s) ...", flush=True)
                runs[f"distributed w={w}"] = run_distributed(str(Path(tmp) / "store"), versions[w], k, init, niter)
            print(f"K={k}: faiss.Kmeans ...", flush=True)
            runs["faiss.Kmeans"] = run_faiss(x, k, init, niter)
            print(f"K={k}: distributed, 2 workers, Euclidean ...", flush=True)
            n_euclid = niter if k < 32_768 else (a.niter_euclid_large or niter)
            runs["distributed w=2 Euclidean"] = run_distributed(str(Path(tmp) / "store"), versions[2], k, init,
                                                                n_euclid, spherical=False)
            print(f"K={k}: MiniBatchKMeans ...", flush=True)
            runs["MiniBatchKMeans"] = run_minibatch(x, k, init, niter)
            finals = {name: objective(x, r["centroids"]) for name, r in runs.items()}
            targets = {"spherical": 1.005 * finals["faiss.Kmeans"], "Euclidean": finals["MiniBatchKMeans"]}
            for name, r in runs.items():
                kind = "Euclidean" if name in ("distributed w=2 Euclidean", "MiniBatchKMeans") else "spherical"
                trace = r["trace"] + [(r["seconds"], finals[name])]
                results.append({"k": k, "method": name, "objective_kind": kind,
                                "niter": n_euclid if name == "distributed w=2 Euclidean" else niter,
                                "seconds": r["seconds"], "per_iter_s": r["per_iter"], "final_objective": finals[name],
                                "target_objective": targets[kind], "seconds_to_target": time_to(targets[kind], trace),
                                "ray_overhead": r["overhead"]})
            w1, w2 = runs["distributed w=1"]["per_iter"], runs["distributed w=2"]["per_iter"]
            print(f"K={k}: per-iteration speed-up 1 → 2 workers {w1 / w2:.2f}×", flush=True)
            next(r for r in results if r["k"] == k and r["method"] == "distributed w=2")["speedup_vs_w1"] = w1 / w2

    shown = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in results]
    print(format_table(shown, [("k", "K", "d"), ("method", "method", "s"), ("objective_kind", "objective", "s"),
                                 ("niter", "iters", "d"),
                                 ("seconds", "total s", ".1f"), ("per_iter_s", "s/iter", ".2f"),
                                 ("final_objective", "final objective", ".1f"),
                                 ("seconds_to_target", "s to target", ".1f"), ("ray_overhead", "Ray overhead", ".1%")]))
    meta = {"points": a.points, "dim": D, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
