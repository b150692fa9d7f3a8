"""Compression stages: spline shards → codebook (distributed k-means) → per-edge assignment →
fine-tuned variants → encoded heads and the compression table."""

from __future__ import annotations

import numpy as np
import torch

import sharekan.clustering
import sharekan.detection.compare
import sharekan.detection.train
import sharekan.finetune
import sharekan.kmeans
import sharekan.vq
import sharekan.vq_kan
from sharekan.clustering import kmeans
from sharekan.detection.compare import Variant, baseline_variants, compare_variants, vq_variants
from sharekan.detection.head import KANDetectionHead
from sharekan.detection.train import finetune_vq, location_targets
from sharekan.vq_kan import VQKAN, compress_kan
from sharekan.vq import decompose
from storage.shards import put_rows

from . import kmeans as ray_kmeans
from .data import load_split
from .head import load_head
from .kmeans import RayShards
from .runner import Run, StageResult, stage
from .specs import AssignmentSpec, CodebookSpec, CompressionSpec, FinetuneSpec, SplinesSpec

__all__ = ["splines", "codebook", "assignment", "finetune", "compression"]


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
def codebook(run: Run, spec: CodebookSpec, *splines_versions: str, backend: str = "auto",
             progress: bool = True) -> StageResult:
    """A K-entry shared codebook by k-means over the shape shards, one Ray actor per shard (this
    task only coordinates: it claims no CPU); several splines artifacts (heads) are pooled into one
    codebook for all of them. ``backend`` (where the assignment runs: GPUs where
    the cluster has them, by default) does not change the result beyond float rounding, so it is
    not part of the version; the metadata records it."""
    if not splines_versions:
        raise ValueError("codebook: no splines artifact given")
    with RayShards(run.location, list(splines_versions), "shapes", backend) as shards:
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


def _codebook(store, codebook_version: str) -> torch.Tensor:
    return torch.from_numpy(store.get(codebook_version).array("codebook")[...])


def _encoded(head: KANDetectionHead, codebook: torch.Tensor, gain_dtype: str) -> VQKAN:
    """The post-training VQ form of ``head``'s KAN (the compression table's variant)."""
    return compress_kan(head.kan, codebook.shape[0], gain_dtype=gain_dtype, codebooks=[codebook] * len(head.kan.layers))


@stage("finetune", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_head, load_split, _codebook, _encoded, sharekan.finetune, sharekan.detection.train, sharekan.vq_kan))
def finetune(run: Run, spec: FinetuneSpec, head_version: str, features_version: str, dataset_version: str,
             codebook_version: str, *, progress: bool = True) -> StageResult:
    """A VQ variant (K, gain dtype) fine-tuned on the training features with its indices fixed:
    stores the compressed KAN's state (codebook included), its losses per epoch and the training
    split's loss before and after."""
    head = load_head(run.store.get(head_version))
    cb = _codebook(run.store, codebook_version)
    if cb.shape[0] != spec.k:
        raise ValueError(f"finetune: spec.k={spec.k} but codebook {codebook_version} has {cb.shape[0]} entries")
    feats = run.store.get(features_version)
    x, cls, box, centres = location_targets(torch.from_numpy(feats.array("feats")[...]),
                                            load_split(run.store, dataset_version, "train").samples,
                                            feats.params["size"], head.cfg.stride)
    tuned, history = finetune_vq(head, _encoded(head, cb, spec.gain_dtype), x, cls, box, centres, epochs=spec.epochs,
                                 batch_size=spec.batch_size, lr=spec.lr, train_codebook=spec.train_codebook,
                                 seed=spec.seed, progress=progress)
    return run.put({n: b.numpy() for n, b in tuned.state_dict().items()},
                   meta={"k": spec.k, "gain_dtype": spec.gain_dtype, "history": history})


def load_finetuned(store, head: KANDetectionHead, version: str) -> VQKAN:
    """A stored fine-tuned variant as a :class:`VQKAN` (built like the post-training one, then loaded)."""
    art = store.get(version)
    k, dtype = art.meta["k"], art.meta["gain_dtype"]
    arrays = art.arrays()
    vq = _encoded(head, torch.from_numpy(arrays["layers.0.codebook"]), dtype)
    vq.load_state_dict({n: torch.from_numpy(a) for n, a in arrays.items()})
    if vq.codebooks()[0].shape[0] != k:
        raise ValueError(f"{version}: stored codebook has {vq.codebooks()[0].shape[0]} entries, meta says K={k}")
    return vq


@stage("compression", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_head, load_split, load_finetuned, _encoded, sharekan.detection.compare, sharekan.vq_kan))
def compression(run: Run, spec: CompressionSpec, head_version: str, features_version: str, dataset_version: str,
                *model_versions: str, progress: bool = True) -> StageResult:
    """Encoded VQ heads (per K in ``spec.ks`` and gain dtype) and the compression table: mAP (on
    ``spec.split``, whose features ``features_version`` are), storage and runtime bytes of dense,
    int8, pruned, VQ and fine-tuned VQ variants. ``model_versions``: the
    codebooks in ``spec.ks``'s order, then the fine-tuned variants in ``spec.finetuned``'s order."""
    n_books, n_tuned = len(spec.ks), len(spec.finetuned)
    if len(model_versions) != n_books + n_tuned:
        raise ValueError(f"compression: {n_books} codebook sizes {spec.ks} and {n_tuned} fine-tuned variants need "
                         f"{n_books + n_tuned} inputs, got {len(model_versions)}")
    head = load_head(run.store.get(head_version))
    books = dict(zip(spec.ks, model_versions[:n_books]))
    cbs = {k: _codebook(run.store, v) for k, v in books.items()}
    variants = baseline_variants(head.kan, spec.sparsities) + vq_variants(head.kan, cbs, spec.gain_dtypes)
    variants += [(Variant("vq", k=k, dtype=dt, finetuned=True), load_finetuned(run.store, head, v))
                 for (k, dt), v in zip(spec.finetuned, model_versions[n_books:])]
    for v, model in variants:
        if v.kind == "vq" and not v.finetuned:  # a fine-tuned variant is its own artifact already
            run.store.put("encoded", {"k": v.k, "gain_dtype": v.dtype}, [head_version, books[v.k]], run.stage.code,
                          {n: b.numpy() for n, b in model.state_dict().items() if not n.endswith(".codebook")})
    samples = load_split(run.store, dataset_version, spec.split).samples
    feats = run.store.get(features_version)
    rows = compare_variants(head, torch.from_numpy(feats.array("feats")[...]), samples, feats.params["size"],
                            variants, progress=progress)
    return run.put({}, meta={"rows": rows})
