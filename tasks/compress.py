"""Compression stages: spline shards → codebook (distributed k-means) → per-edge assignment →
encoded heads and the compression table."""

from __future__ import annotations

import numpy as np
import torch

import sharekan.clustering
import sharekan.detection.compare
import sharekan.kmeans
import sharekan.vq
import sharekan.vq_kan
from sharekan.clustering import kmeans
from sharekan.detection.compare import baseline_variants, compare_variants, vq_variants
from sharekan.vq import decompose
from storage.shards import put_rows

from . import kmeans as ray_kmeans
from .data import load_split
from .head import load_head
from .kmeans import RayShards
from .runner import Run, StageResult, stage
from .specs import AssignmentSpec, CodebookSpec, CompressionSpec, SplinesSpec

__all__ = ["splines", "codebook", "assignment", "compression"]


@stage("splines", {"num_cpus": 1}, uses=(load_head, sharekan.vq))
def splines(run: Run, spec: SplinesSpec, head_version: str, *, workers: int = 2) -> StageResult:
    """Every edge's spline coefficients and their bias/gain/shape split, sharded along edges."""
    layers = list(load_head(run.store.get(head_version)).kan.layers)
    coef = np.concatenate([lay.scaled_spline_weight().detach().reshape(-1, lay.n_coef).numpy() for lay in layers])
    shapes, gains, biases = decompose(torch.from_numpy(coef))
    return run.result(*put_rows(run.store, *run.key, {"coefficients": coef, "shapes": shapes.numpy(),
                                                      "gains": gains.numpy(), "biases": biases.numpy()},
                                chunk_rows=16_384, workers=workers,
                                meta={"layers": [[lay.out_features, lay.in_features] for lay in layers],
                                      "edges": len(coef)}))


@stage("codebook", {"num_cpus": 0}, uses=(ray_kmeans, sharekan.clustering, sharekan.kmeans))
def codebook(run: Run, spec: CodebookSpec, splines_version: str, *, backend: str = "auto",
             progress: bool = True) -> StageResult:
    """A K-entry shared codebook by k-means over the shape shards, one Ray actor per shard (this
    task only coordinates: it claims no CPU). ``backend`` (where the assignment runs: GPUs where
    the cluster has them, by default) does not change the result beyond float rounding, so it is
    not part of the version; the metadata records it."""
    with RayShards(run.location, splines_version, "shapes", backend) as shards:
        cb, history = kmeans(shards, spec.k, mode=spec.mode, seed=spec.seed, niter=spec.niter,
                             spherical=spec.spherical, progress=progress)
    return run.put({"codebook": cb}, meta={"history": history, "k": spec.k, "backend": shards.backend})


@stage("assignment", {"num_cpus": 0}, uses=(ray_kmeans, sharekan.kmeans, sharekan.vq))
def assignment(run: Run, spec: AssignmentSpec, codebook_version: str, splines_version: str, *,
               backend: str = "auto") -> StageResult:
    """Every edge's nearest codeword index, with its gain and bias, written by the shard actors."""
    centroids = run.store.get(codebook_version).array("codebook")[...]
    with RayShards(run.location, splines_version, "shapes", backend) as shards:
        return run.result(*shards.write_assignment(run.store, *run.key, centroids,
                                                   meta={"k": spec.k, "backend": shards.backend}))


@stage("compression", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_head, load_split, sharekan.detection.compare, sharekan.vq_kan))
def compression(run: Run, spec: CompressionSpec, head_version: str, features_version: str, dataset_version: str,
                *codebook_versions: str, progress: bool = True) -> StageResult:
    """Encoded VQ heads (per K in ``spec.ks``, whose codebooks come in that order, and gain dtype) and
    the compression table: mAP, storage and runtime bytes of dense, int8, pruned and VQ variants."""
    if len(codebook_versions) != len(spec.ks):
        raise ValueError(f"compression: {len(spec.ks)} codebook sizes {spec.ks} but {len(codebook_versions)} codebooks")
    head = load_head(run.store.get(head_version))
    books = dict(zip(spec.ks, codebook_versions))
    cbs = {k: torch.from_numpy(run.store.get(v).array("codebook")[...]) for k, v in books.items()}
    variants = baseline_variants(head.kan, spec.sparsities) + vq_variants(head.kan, cbs, spec.gain_dtypes)
    for v, model in variants:
        if v.kind == "vq":
            run.store.put("encoded", {"k": v.k, "gain_dtype": v.dtype}, [head_version, books[v.k]], run.stage.code,
                          {n: b.numpy() for n, b in model.state_dict().items() if not n.endswith(".codebook")})
    samples = load_split(run.store, dataset_version, "test").samples
    feats = run.store.get(features_version)
    rows = compare_variants(head, torch.from_numpy(feats.array("feats")[...]), samples, feats.params["size"],
                            variants, progress=progress)
    return run.put({}, meta={"rows": rows})
