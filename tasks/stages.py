"""Pipeline stages as Ray tasks: each reads its inputs from the store, calls ``sharekan`` and
writes one versioned artifact.

A stage's version is a hash of its parameters, input versions and code, computed before any
work: a stage whose version is stored returns at once, so a retried task (or a re-run) produces
the same version and does nothing twice. Every stage returns a small dict (``version``,
``created``, ``seconds`` and what the next stage needs); arrays travel through the store only.
Resource requests are explicit in :data:`RESOURCES` and clamped to the cluster by :func:`submit`.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

import sharekan.bspline
import sharekan.detection.backbone
import sharekan.detection.compare
import sharekan.detection.evaluate
import sharekan.detection.head
import sharekan.detection.synthetic
import sharekan.detection.train
import sharekan.kan
import sharekan.kmeans
import sharekan.vq
import sharekan.vq_kan
from sharekan.detection.backbone import build_backbone, extract_features
from sharekan.detection.compare import baseline_variants, compare_variants, vq_variants
from sharekan.detection.evaluate import coco_json, torchmetrics_map, voc_ap
from sharekan.detection.head import HeadConfig, KANDetectionHead
from sharekan.detection.synthetic import generate_voc
from sharekan.detection.train import ground_truth, location_targets, predict, resume_epoch, train_head
from sharekan.detection.voc import VOC_CLASSES, VOCData
from sharekan.vq import decompose
from storage.files import save_json, save_tensors
from storage.shards import put_rows
from storage.store import ArtifactStore, code_version, open_artifact_group, version_id

from .kmeans import ShardPool
from .retry import ray_options

__all__ = ["CODE", "RESOURCES", "submit", "synthetic_root", "dataset", "features", "train", "evaluate",
           "splines", "codebook", "compression", "load_head", "load_split"]

_SELF = sys.modules[__name__]  # how stages compose the library is part of every stage's code version
CODE = {
    "dataset": code_version(_SELF, sharekan.detection.synthetic),
    "features": code_version(_SELF, sharekan.detection.backbone),
    "head": code_version(_SELF, sharekan.kan, sharekan.bspline, sharekan.detection.head, sharekan.detection.train),
    "evaluation": code_version(_SELF, sharekan.detection.evaluate, sharekan.detection.train),
    "splines": code_version(_SELF, sharekan.vq),
    "codebook": code_version(_SELF, sharekan.kmeans, sys.modules["tasks.kmeans"]),
    "assignment": code_version(_SELF, sharekan.kmeans, sharekan.vq, sys.modules["tasks.kmeans"]),
    "encoded": code_version(_SELF, sharekan.vq_kan),
    "compression": code_version(_SELF, sharekan.detection.compare, sharekan.vq_kan),
}

# CPUs per task (GPU stages add num_gpus); coordinators that only start other tasks or actors
# claim none, so they never hold a core their workers need.
RESOURCES = {
    "dataset": {"num_cpus": 1},
    "features": {"num_cpus": 0},
    "features_shard": {"num_cpus": 1, "memory": 2 << 30},
    "train": {"num_cpus": 2, "memory": 4 << 30},
    "evaluate": {"num_cpus": 1, "memory": 2 << 30},
    "splines": {"num_cpus": 1},
    "codebook": {"num_cpus": 0},
    "compression": {"num_cpus": 2, "memory": 4 << 30},
}
def submit(name: str, *args, **kwargs) -> ray.ObjectRef:
    """Run stage ``name`` as a Ray task with its :data:`RESOURCES` (CPUs and memory clamped to the
    largest node, so a small cluster runs everything, more slowly)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    opts = dict(RESOURCES[name])
    opts["num_cpus"] = min(opts["num_cpus"], max(n.get("CPU", 0) for n in nodes))
    if "memory" in opts:
        opts["memory"] = int(min(opts["memory"], 0.5 * max(n.get("memory", 0) for n in nodes)))
    return _REMOTE[name].options(**ray_options(**opts)).remote(*args, **kwargs)


def _threads() -> None:
    """Torch threads = the CPUs Ray gave this task (workers are reused across tasks)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1) if ray.is_initialized() else 0
    torch.set_num_threads(max(1, int(cpus)))


def _result(art, created: bool, t0: float, **extra) -> dict:
    return {"version": art.version, "created": created, "seconds": time.perf_counter() - t0, **extra}


# -- data ------------------------------------------------------------------------------------------

def synthetic_root(base: str | Path, seed: int, n_train: int, n_test: int) -> Path:
    """The synthetic data set for these parameters, generated once (atomically) under ``base``."""
    base = Path(base)
    root = base / f"synthetic-voc-s{seed}-{n_train}-{n_test}"
    if not (root / "VOCdevkit").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=base))
        try:
            generate_voc(tmp, n_train=n_train, n_test=n_test, seed=seed)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _splits(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        year, _, image_set = item.partition(":")
        if not year or not image_set:
            raise ValueError(f"split {item!r} must look like YEAR:IMAGE_SET, e.g. 2007:trainval")
        out.append((year.strip(), image_set.strip()))
    return out


def load_split(store: ArtifactStore, dataset_version: str, which: str) -> VOCData:
    """The ``which`` ("train" or "test") split of a stored data set: its samples as the dataset stage
    validated them (images it skipped as undecodable stay out)."""
    ds = store.get(dataset_version)
    return VOCData(Path(ds.meta["root_path"]), _splits(ds.params[which]), skip_bad=ds.meta["skip_bad"],
                   exclude=frozenset(ds.meta.get("excluded", {}).get(which, [])))


def _manifest(data: VOCData) -> str:
    """Hash of what the data set is: ids, annotation boxes and labels, image file sizes."""
    h = hashlib.sha256()
    for s in data.samples:
        h.update(f"{s.image_id}:{s.image_path.stat().st_size}".encode())
        for arr in (s.boxes, s.labels, s.difficult):
            h.update(arr.tobytes())
    return h.hexdigest()[:20]


def dataset(loc, root: str, train_splits: str, test_splits: str, skip_bad: bool, label: str) -> dict:
    """Parse, decode and fingerprint the data set (``label`` names it in the version: "synthetic" or
    its path). Every image is decoded once here; what is skipped stays out of every later stage."""
    t0 = time.perf_counter()
    train_data, test_data = (VOCData(Path(root), _splits(sp), skip_bad=skip_bad, verify_images=True)
                             for sp in (train_splits, test_splits))
    skipped = train_data.skipped + test_data.skipped
    excluded = {"train": [i for i in train_data.skipped_ids if i], "test": [i for i in test_data.skipped_ids if i]}
    params = {"root": label, "train": train_splits, "test": test_splits,
              "train_manifest": _manifest(train_data), "test_manifest": _manifest(test_data)}
    art, created = ArtifactStore(loc).put("dataset", params, [], CODE["dataset"], {},
                                          meta={"train_images": len(train_data), "test_images": len(test_data),
                                                "skipped": skipped, "excluded": excluded, "root_path": str(root),
                                                "skip_bad": skip_bad})
    return _result(art, created, t0, train_images=len(train_data), test_images=len(test_data),
                   skipped_samples=art.meta["skipped"])


# -- features: one task per shard of images, each writing its own rows ---------------------------

class _Images:
    def __init__(self, data: VOCData, start: int, stop: int):
        self.data, self.start, self.stop = data, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        return self.data.load_image(self.start + i)


def _features_shard(session, loc, version, dataset_version, which, backbone, size, start, stop):
    _threads()
    body, _ = build_backbone(**backbone)
    data = load_split(ArtifactStore(loc), dataset_version, which)
    feats = extract_features(body, _Images(data, start, stop), size, progress=False)
    open_artifact_group(session, "features", version)["feats"][start:stop] = feats.numpy()
    return session


def features(loc, dataset_version: str, backbone: dict, size: int, split: str, shard_images: int = 64) -> dict:
    """Backbone features ``[N, C, H, W]`` (float16) of the data set's ``split`` ("train" or "test"),
    ``shard_images`` per task."""
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    body, info = build_backbone(**backbone)
    params = {"backbone": info.to_dict(), "size": size, "split": split, "shard_images": shard_images}
    n = len(load_split(store, dataset_version, split))
    with torch.no_grad():
        trailing = tuple(body(torch.zeros(1, 3, size, size)).shape[1:])
    version = version_id("features", params, [dataset_version], CODE["features"])

    def write_shards(session, ranges):
        refs = [submit("features_shard", session.fork(), loc, version, dataset_version, split, backbone, size, a, b)
                for a, b in ranges]
        return ray.get(refs)

    art, created = store.put_sharded("features", params, [dataset_version], CODE["features"],
                                     {"feats": (trailing, "<f2")}, n, shard_images, 1, write_shards,
                                     meta={"backbone": info.to_dict()})
    return _result(art, created, t0, backbone=info.to_dict())


# -- head: training and evaluation ------------------------------------------------------------------

def load_head(art) -> KANDetectionHead:
    head = KANDetectionHead(HeadConfig(**art.params["config"]))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in art.arrays().items()})
    return head.eval()


def train(loc, features_version: str, dataset_version: str, size: int, hidden: int, grid_size: int, epochs: int, lr: float, batch_size: int, seed: int,
          checkpoint: str | None = None, progress: bool = True) -> dict:
    """Train the KAN detection head on stored features. With ``checkpoint``, the head is saved there
    after every epoch, and a run of the same version that was killed resumes from its last epoch."""
    _threads()
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    feats = store.get(features_version)
    info = feats.meta["backbone"]
    cfg = HeadConfig(in_channels=info["channels"], hidden=hidden, grid_size=grid_size, stride=info["stride"])
    params = {"config": cfg.to_dict(), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    inputs = [features_version, dataset_version]
    version = version_id("head", params, inputs, CODE["head"])
    if store.has(version):
        return _result(store.get(version), False, t0)
    torch.manual_seed(seed)
    head = KANDetectionHead(cfg)
    samples = load_split(store, dataset_version, "train").samples
    x, cls, box, centres = location_targets(torch.from_numpy(feats.array("feats")[...]), samples, size,
                                            info["stride"])
    head.fit_standardisation(x)
    meta = {"config": cfg.to_dict(), "backbone": info, "size": size, "seed": seed}
    on_epoch = None if checkpoint is None else (
        lambda e, sd: save_tensors(Path(checkpoint), sd, {**meta, "epoch": e + 1}))
    resume = None if checkpoint is None else Path(checkpoint).with_name(f"{version}.resume.pt")
    resumed_from = resume_epoch(resume)  # > 0 when an earlier attempt of this version was killed
    history = train_head(head, x, cls, box, centres, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         progress=progress, on_epoch=on_epoch, resume_path=resume)
    arrays = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    art, created = store.put("head", params, inputs, CODE["head"], arrays, meta={**meta, "history": history})
    if resume is not None:
        resume.unlink(missing_ok=True)  # stored: a retry now finds the artifact
    return _result(art, created, t0, resumed_from=resumed_from)


def evaluate(loc, head_version: str, features_version: str, dataset_version: str, size: int, use_07: bool,
             out: str | None = None) -> dict:
    """Dense head's VOC mAP@0.5 (and torchmetrics' AP50); COCO JSON exports into ``out``."""
    _threads()
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    params, inputs = {"use_07": use_07}, [head_version, features_version, dataset_version]
    version = version_id("evaluation", params, inputs, CODE["evaluation"])
    exported = out is None or all((Path(out) / f).is_file() for f in ("coco_gt.json", "coco_detections.json"))
    if store.has(version) and exported:
        return _result(store.get(version), False, t0, **store.get(version).meta)
    head = load_head(store.get(head_version))
    samples = load_split(store, dataset_version, "test").samples
    dets = predict(head, torch.from_numpy(store.get(features_version).array("feats")[...]), samples, size)
    gts = ground_truth(samples)
    voc, tm = voc_ap(dets, gts, head.cfg.num_classes, use_07=use_07), torchmetrics_map(dets, gts)
    if out is not None:
        gt_json, det_json = coco_json(dets, gts, [s.image_id for s in samples],
                                      [(s.width, s.height) for s in samples], VOC_CLASSES)
        save_json(Path(out) / "coco_gt.json", gt_json)
        save_json(Path(out) / "coco_detections.json", det_json)
    meta = {"map50": voc["map"], "metric": "VOC 11-point" if use_07 else "VOC all-points",
            "torchmetrics_map50": tm["map_50"], "per_class_ap": {VOC_CLASSES[c]: ap for c, ap in voc["ap"].items()},
            "npos": {VOC_CLASSES[c]: n for c, n in voc["npos"].items()},
            "torchmetrics_ap": {VOC_CLASSES[c]: ap for c, ap in tm["ap"].items()}}
    art, created = store.put("evaluation", params, inputs, CODE["evaluation"], {}, meta=meta)
    return _result(art, created, t0, **meta)


# -- compression: spline shards → codebooks (+ per-edge assignment) → encoded heads → table ----------

def splines(loc, head_version: str, workers: int = 2) -> dict:
    """Every edge's spline coefficients and their bias/gain/shape split, sharded along edges."""
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    head = load_head(store.get(head_version))
    layers = list(head.kan.layers)
    coef = np.concatenate([lay.scaled_spline_weight().detach().reshape(-1, lay.n_coef).numpy() for lay in layers])
    shapes, gains, biases = decompose(torch.from_numpy(coef))
    art, created = put_rows(store, "splines", {"layers": [[lay.out_features, lay.in_features] for lay in layers]},
                            [head_version], CODE["splines"],
                            {"coefficients": coef, "shapes": shapes.numpy(), "gains": gains.numpy(),
                             "biases": biases.numpy()}, chunk_rows=16_384, workers=workers)
    return _result(art, created, t0, edges=len(coef))


def codebook(loc, splines_version: str, k: int, seed: int, niter: int = 25, mode: str = "full",
             progress: bool = True) -> dict:
    """A K-entry shared codebook by distributed k-means over the shape shards, and the per-edge
    assignment (index, gain, bias) written back by the shard actors."""
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    params = {"k": k, "seed": seed, "niter": niter, "spherical": True, "mode": mode}
    version = version_id("codebook", params, [splines_version], CODE["codebook"])
    assign_params = {"k": k}
    assigned = version_id("assignment", assign_params, [version, splines_version], CODE["assignment"])
    if store.has(version) and store.has(assigned):
        return _result(store.get(version), False, t0, assignment=assigned)
    with ShardPool(loc, splines_version, "shapes") as pool:
        if store.has(version):
            art, created = store.get(version), False
        else:
            cb, history = pool.fit(k, seed=seed, niter=niter, mode=mode, progress=progress)
            art, created = store.put("codebook", params, [splines_version], CODE["codebook"], {"codebook": cb},
                                     meta={"history": history})
        assignment, _ = pool.write_assignment(store, "assignment", assign_params, [art.version, splines_version],
                                              CODE["assignment"], art.array("codebook")[...])
    return _result(art, created, t0, assignment=assignment.version)


def compression(loc, head_version: str, features_version: str, dataset_version: str, codebooks: dict[int, str],
                size: int, progress: bool = True) -> dict:
    """Encoded VQ heads (fp16 and int8 gains per K) and the compression table: mAP, storage and
    runtime bytes of dense, int8, pruned and VQ variants."""
    _threads()
    t0 = time.perf_counter()
    store = ArtifactStore(loc)
    head = load_head(store.get(head_version))
    cbs = {int(k): torch.from_numpy(store.get(v).array("codebook")[...]) for k, v in codebooks.items()}
    names = [n for n, _ in baseline_variants(head.kan)] + [f"VQ K={k} {dt}" for k in sorted(cbs) for dt in ("fp16", "int8")]
    params, inputs = {"variants": names}, [head_version, features_version] + [codebooks[k] for k in sorted(codebooks)]
    version = version_id("compression", params, inputs, CODE["compression"])
    if store.has(version):
        art = store.get(version)
        return _result(art, False, t0, rows=art.meta["rows"])
    variants = baseline_variants(head.kan) + vq_variants(head.kan, cbs)
    for name, v in variants:
        if name.startswith("VQ"):
            k, dt = int(name.split()[1][2:]), name.split()[2]
            store.put("encoded", {"gain_dtype": dt}, [head_version, codebooks[k]], CODE["encoded"],
                      {n: b.numpy() for n, b in v.state_dict().items() if not n.endswith(".codebook")})
    samples = load_split(store, dataset_version, "test").samples
    feats = torch.from_numpy(store.get(features_version).array("feats")[...])
    rows = compare_variants(head, feats, samples, size, variants, progress=progress)
    art, created = store.put("compression", params, inputs, CODE["compression"], {}, meta={"rows": rows})
    return _result(art, created, t0, rows=rows)


_REMOTE = {name: ray.remote(fn) for name, fn in {
    "dataset": dataset, "features": features, "features_shard": _features_shard, "train": train,
    "evaluate": evaluate, "splines": splines, "codebook": codebook, "compression": compression}.items()}
