"""Compression stages: spline shards → codebook (distributed k-means) → per-edge assignment →
encoded heads (post-training, then fine-tuned) → the compression table. An encoded head is stored
in the library's compressed-head form (``sharekan.encoded``): fine-tuning, the table, LUTHAM and
``sharekan export`` all read that artifact."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

import sharekan.clustering
import sharekan.detection.compare
import sharekan.detection.train
import sharekan.encoded
import sharekan.finetune
import sharekan.kmeans_steps
import sharekan.vq
import sharekan.vq_kan
from sharekan.clustering import kmeans
from sharekan.detection.compare import Variant, baseline_variants, compare_variants
from sharekan.detection.head import KANDetectionHead
from sharekan.detection.train import finetune_vq, location_targets
from sharekan.encoded import CompressedHead, pack, unpack
from sharekan.vq_kan import VQKAN, encode_kan
from sharekan.vq import decompose
from storage.files import save_tensors
from storage.shards import put_rows

from . import kmeans as ray_kmeans
from .data import load_split
from .head import load_head
from .kmeans import RayShards
from .runner import Run, StageResult, stage
from .specs import AssignmentSpec, CodebookSpec, CompressionSpec, EncodeSpec, FinetuneSpec, SplinesSpec

__all__ = ["splines", "codebook", "assignment", "encode", "finetune", "compression", "load_encoded", "export"]


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


@stage("codebook", {"num_cpus": 0}, uses=(ray_kmeans, sharekan.clustering, sharekan.kmeans_steps))
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
    return run.put({"codebook": cb}, meta={"history": history, "k": spec.k, "backend": shards.backend,
                                           "shard_nodes": shards.nodes})


@stage("assignment", {"num_cpus": 0}, uses=(ray_kmeans, sharekan.kmeans_steps, sharekan.vq))
def assignment(run: Run, spec: AssignmentSpec, codebook_version: str, splines_version: str, *,
               backend: str = "auto") -> StageResult:
    """Every edge's nearest codeword index, with its gain and bias, written by the shard actors."""
    centroids = run.store.get(codebook_version).array("codebook")[...]
    with RayShards(run.location, splines_version, "shapes", backend) as shards:
        return run.result(*shards.write_assignment(run.store, *run.key, centroids,
                                                   meta={"k": spec.k, "backend": shards.backend,
                                                         "shard_nodes": shards.nodes}))


def load_encoded(store, version: str) -> CompressedHead:
    """A stored encoded head (an ``encode`` or ``finetune`` artifact) as the library's
    :class:`~sharekan.encoded.CompressedHead`, the same form ``sharekan export`` writes."""
    art = store.get(version)
    return unpack({n: torch.from_numpy(a) for n, a in art.arrays().items()}, art.meta["encoded"],
                  f"artifact {version}")


def export(store, version: str, path: Path) -> CompressedHead:
    """Write the encoded head ``version`` (an ``encoded`` or ``finetune`` artifact) to ``path`` as one
    self-contained file (``sharekan.load`` reads it), its lineage in the metadata; returns it."""
    art = store.get(version)
    if art.stage not in ("encoded", "finetune"):
        raise ValueError(f"{version} is a {art.stage!r} artifact, not a compressed head: export an 'encoded' or "
                         "'finetune' version (sharekan artifacts ls --stage encoded)")
    head = load_encoded(store, version)
    head.meta |= {"version": version, "stage": art.stage, "code": art.code, "lineage": store.lineage(version)}
    save_tensors(path, *pack(head))
    return head


def _store_encoded(run: Run, head: KANDetectionHead, vq: VQKAN, variant: Variant, meta: dict) -> StageResult:
    tensors, description = pack(CompressedHead(vq, {n: t for n, t in head.state_dict().items()
                                                    if not n.startswith("kan.")}, head.cfg.to_dict(),
                                                {"variant": asdict(variant)}))
    return run.put({n: t.numpy() for n, t in tensors.items()}, meta={"encoded": description, **meta})


@stage("encoded", {"num_cpus": 1}, uses=(load_head, _store_encoded, sharekan.encoded, sharekan.vq_kan))
def encode(run: Run, spec: EncodeSpec, head_version: str, codebook_version: str, assignment_version: str
           ) -> StageResult:
    """The head encoded post-training: the codebook (at ``spec.codebook_dtype``: fp16 is rounded once,
    after k-means), every edge's index from the distributed assignment, and its gain, bias and base
    weight at ``spec.side_dtype``."""
    head = load_head(run.store.get(head_version))
    codebook = torch.from_numpy(run.store.get(codebook_version).array("codebook")[...])
    codebook = codebook.to(torch.float16) if spec.codebook_dtype == "fp16" else codebook
    if codebook.shape[0] != spec.k:
        raise ValueError(f"encode: spec.k={spec.k} but codebook {codebook_version} has {codebook.shape[0]} entries")
    flat = torch.from_numpy(run.store.get(assignment_version).array("indices")[...].astype(np.int64))
    sizes = [lay.out_features * lay.in_features for lay in head.kan.layers]
    if flat.numel() != sum(sizes):
        raise ValueError(f"encode: assignment {assignment_version} has {flat.numel():,} edges, the head "
                         f"{sum(sizes):,}")
    indices = [part.reshape(lay.out_features, lay.in_features)
               for part, lay in zip(torch.split(flat, sizes), head.kan.layers)]
    vq = encode_kan(head.kan, [codebook] * len(sizes), gain_dtype=spec.side_dtype, indices=indices)
    return _store_encoded(run, head, vq, Variant("vq", k=spec.k, dtype=spec.side_dtype), {})


@stage("finetune", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_head, load_split, load_encoded, _store_encoded, sharekan.finetune, sharekan.detection.train))
def finetune(run: Run, spec: FinetuneSpec, head_version: str, encoded_version: str, features_version: str,
             dataset_version: str, *, progress: bool = True) -> StageResult:
    """An encoded head fine-tuned on the training features with its indices fixed: stores the
    fine-tuned encoded head (codebook included), its losses per epoch."""
    head = load_head(run.store.get(head_version))
    enc = load_encoded(run.store, encoded_version)
    variant = Variant(**enc.meta["variant"])
    if (variant.k, variant.dtype) != (spec.k, spec.side_dtype):
        raise ValueError(f"finetune: spec (K={spec.k}, {spec.side_dtype}) but {encoded_version} is {variant.name}")
    feats = run.store.get(features_version)
    x, cls, box, centres = location_targets(torch.from_numpy(feats.array("feats")[...]),
                                            load_split(run.store, dataset_version, "train").samples,
                                            feats.params["size"], head.cfg.stride)
    tuned, history = finetune_vq(head, enc.kan, x, cls, box, centres, epochs=spec.epochs,
                                 batch_size=spec.batch_size, lr=spec.lr, train_codebook=spec.train_codebook,
                                 seed=spec.seed, progress=progress)
    return _store_encoded(run, head, tuned, replace(variant, finetuned=True), {"history": history})


@stage("compression", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_head, load_split, load_encoded, sharekan.detection.compare))
def compression(run: Run, spec: CompressionSpec, head_version: str, features_version: str, dataset_version: str,
                *encoded_versions: str, progress: bool = True) -> StageResult:
    """The compression table on ``spec.split`` (whose features ``features_version`` are): mAP,
    storage and runtime bytes of the dense head, int8 PTQ, magnitude pruning and every encoded
    head given (a row each, in the order given)."""
    head = load_head(run.store.get(head_version))
    variants = baseline_variants(head.kan, spec.sparsities)
    for version in encoded_versions:
        enc = load_encoded(run.store, version)
        variants.append((Variant(**enc.meta["variant"]), enc.kan))
    samples = load_split(run.store, dataset_version, spec.split).samples
    feats = run.store.get(features_version)
    rows = compare_variants(head, torch.from_numpy(feats.array("feats")[...]), samples, feats.params["size"],
                            variants, progress=progress)
    return run.put({}, meta={"rows": [r.to_dict() for r in rows]})
