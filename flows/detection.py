"""Detection pipeline on one machine, every stage a versioned artifact in the store.

dataset → features (train, test) → head → spline grids (sharded) → codebooks → encoded heads →
evaluation and compression table → report. Each stage calls ``sharekan`` for the maths and
``storage`` for the bytes; its version is a content hash of its parameters, input versions and
code, so a re-run with the same inputs reuses every stored stage and does no work.

    python -m flows.detection                       # embedded synthetic default
    python -m flows.detection --data /path/to/VOC --train 2007:trainval,2012:trainval --test 2007:test
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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
from sharekan.demo import format_table
from sharekan.detection.backbone import build_backbone, extract_features
from sharekan.detection.compare import baseline_variants, compare_variants, default_ks, vq_variants
from sharekan.detection.evaluate import coco_json, torchmetrics_map, voc_ap
from sharekan.detection.head import HeadConfig, KANDetectionHead
from sharekan.detection.synthetic import generate_voc
from sharekan.detection.train import ground_truth, location_targets, predict, train_head
from sharekan.detection.voc import VOC_CLASSES, VOCData
from sharekan.kmeans import fit_codebook
from sharekan.vq import decompose
from storage.files import save_json, save_tensors
from storage.shards import put_rows
from storage.store import Artifact, ArtifactStore, code_version, parse_location, version_id

__all__ = ["synthetic_root", "detection_pipeline", "main"]

_FLOW = sys.modules[__name__]  # the composition itself (seeding, parameters) is part of every stage
CODE = {
    "dataset": code_version(_FLOW, sharekan.detection.synthetic),
    "features": code_version(_FLOW, sharekan.detection.backbone),
    "head": code_version(_FLOW, sharekan.kan, sharekan.bspline, sharekan.detection.head, sharekan.detection.train),
    "splines": code_version(_FLOW, sharekan.vq),
    "codebook": code_version(_FLOW, sharekan.kmeans),
    "encoded": code_version(_FLOW, sharekan.vq_kan),
    "evaluation": code_version(_FLOW, sharekan.detection.evaluate, sharekan.detection.train),
    "compression": code_version(_FLOW, sharekan.detection.compare, sharekan.vq_kan),
}


def synthetic_root(base: Path, seed: int, n_train: int, n_test: int) -> Path:
    """The synthetic data set for these parameters, generated once (atomically) under ``base``."""
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


def _manifest(data: VOCData) -> str:
    """Hash of what the data set is: ids, annotation boxes and labels, image file sizes."""
    h = hashlib.sha256()
    for s in data.samples:
        h.update(f"{s.image_id}:{s.image_path.stat().st_size}".encode())
        for arr in (s.boxes, s.labels, s.difficult):
            h.update(arr.tobytes())
    return h.hexdigest()[:20]


class _Images:
    def __init__(self, data: VOCData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.load_image(i)


class _Stages:
    """Runs stages against the store, reporting which were reused."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.seconds: dict[str, float] = {}
        self.versions: dict[str, str] = {}
        self.reused: dict[str, bool] = {}

    def done(self, key: str, art: Artifact, created: bool, t0: float) -> Artifact:
        self.seconds[key] = time.perf_counter() - t0
        self.versions[key] = art.version
        self.reused[key] = not created
        print(f"[{key}] {art.version} ({'new' if created else 'reused'}, {self.seconds[key]:.1f}s)", flush=True)
        return art


def _state_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def detection_pipeline(data: str | None = None, train_splits: str = "2007:train",
                       test_splits: str = "2007:val", out: str = "artifacts/detection",
                       store: str | None = None, size: int = 192, backbone: str = "resnet50",
                       layer: str = "layer3", weights: str | None = None, hidden: int = 64,
                       grid_size: int = 10, epochs: int = 6, lr: float = 5e-3, batch_size: int = 2048,
                       seed: int = 0, n_train: int = 1000, n_test: int = 200, skip_bad: bool = False,
                       use_07: bool = False, compress: bool = True, workers: int = 2,
                       progress: bool = True) -> dict:
    """Run every stage; returns the report (also written to ``out/report.json``)."""
    out_dir = Path(out)
    st = _Stages(ArtifactStore(parse_location(store or str(out_dir.parent / "store"))))

    t = time.perf_counter()
    root = Path(data) if data else synthetic_root(out_dir.parent / "data", seed, n_train, n_test)
    train = VOCData(root, _splits(train_splits), skip_bad=skip_bad)
    test = VOCData(root, _splits(test_splits), skip_bad=skip_bad)
    skipped = train.skipped + test.skipped
    if skipped:
        print(f"skipped {len(skipped)} bad samples, e.g. {skipped[0]}", flush=True)
    ds_params = {"root": "synthetic" if data is None else str(root), "train": train_splits, "test": test_splits,
                 "train_manifest": _manifest(train), "test_manifest": _manifest(test)}
    dataset = st.done("dataset", *st.store.put("dataset", ds_params, [], CODE["dataset"], {},
                                               meta={"train_images": len(train), "test_images": len(test),
                                                     "skipped": skipped}), t)

    body, info = build_backbone(backbone, layer, weights, seed=seed)
    if not info.pretrained:
        print("WARNING: backbone has RANDOM INITIALISATION (no weights given or cached)", flush=True)
    feats = {}
    for split, vdata in (("train", train), ("test", test)):
        t = time.perf_counter()
        params = {"backbone": info.to_dict(), "size": size, "split": split}
        version_exists = st.store.has(_vid("features", params, [dataset.version]))
        arrays = {} if version_exists else {
            "feats": extract_features(body, _Images(vdata), size, desc=f"{split} features",
                                      progress=progress).numpy()}
        art = st.done(f"features_{split}", *st.store.put("features", params, [dataset.version],
                                                         CODE["features"], arrays,
                                                         chunks={"feats": (16,) + tuple(arrays["feats"].shape[1:])}
                                                         if arrays else None), t)
        feats[split] = torch.from_numpy(art.array("feats")[...])

    t = time.perf_counter()
    cfg = HeadConfig(in_channels=info.channels, hidden=hidden, grid_size=grid_size, stride=info.stride)
    torch.manual_seed(seed)
    head = KANDetectionHead(cfg)
    head_params = {"config": cfg.to_dict(), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    head_inputs = [st.versions["features_train"], dataset.version]
    history: list = []
    if st.store.has(_vid("head", head_params, head_inputs)):
        arrays = {}
    else:
        x, cls, box, centres = location_targets(feats["train"], train.samples, size, info.stride)
        head.fit_standardisation(x)
        ckpt = out_dir / "checkpoints" / "head.safetensors"
        meta = {"config": cfg.to_dict(), "backbone": info.to_dict(), "size": size, "seed": seed}
        history = train_head(head, x, cls, box, centres, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             progress=progress, on_epoch=lambda e, sd: save_tensors(ckpt, sd, {**meta, "epoch": e + 1}))
        arrays = _state_arrays(head)
    head_art = st.done("head", *st.store.put("head", head_params, head_inputs, CODE["head"], arrays,
                                             meta={"history": history, "backbone": info.to_dict(), "size": size}), t)
    head.load_state_dict({k: torch.from_numpy(v) for k, v in head_art.arrays().items()})
    head.eval()

    t = time.perf_counter()
    dets = predict(head, feats["test"], test.samples, size)
    gts = ground_truth(test.samples)
    voc = voc_ap(dets, gts, cfg.num_classes, use_07=use_07)
    tm = torchmetrics_map(dets, gts)
    gt_json, det_json = coco_json(dets, gts, [s.image_id for s in test.samples],
                                  [(s.width, s.height) for s in test.samples], VOC_CLASSES)
    save_json(out_dir / "coco_gt.json", gt_json)
    save_json(out_dir / "coco_detections.json", det_json)
    evaluation = {"map50": voc["map"], "metric": "VOC 11-point" if use_07 else "VOC all-points",
                  "torchmetrics_map50": tm["map_50"],
                  "per_class_ap": {VOC_CLASSES[c]: ap for c, ap in voc["ap"].items()}}
    st.done("evaluation", *st.store.put("evaluation", {"use_07": use_07},
                                        [head_art.version, st.versions["features_test"], dataset.version],
                                        CODE["evaluation"], {}, meta=evaluation), t)
    n_params = sum(p.numel() for p in head.parameters())
    edges = sum(layer.in_features * layer.out_features for layer in head.kan.layers)
    print(f"\ndense head: mAP@0.5 {voc['map']:.4f} (VOC {'11-point' if use_07 else 'all-points'}), "
          f"torchmetrics COCO-style AP50 {tm['map_50']:.4f}; {n_params:,} parameters, {edges:,} edges")
    print(format_table([{"class": VOC_CLASSES[c], "npos": voc["npos"][c], "ap": voc["ap"].get(c, float("nan")),
                         "tm": tm["ap"].get(c, float("nan"))} for c in range(cfg.num_classes)],
                       [("class", "class", "s"), ("npos", "gt", "d"), ("ap", "VOC AP@0.5", ".4f"),
                        ("tm", "torchmetrics AP50", ".4f")]))

    rows = []
    if compress:
        rows = _compress(st, head, head_art, feats["test"], test.samples, size, edges, seed, workers, progress)
    report = {
        "data": {"root": ds_params["root"], "train": train_splits, "test": test_splits,
                 "train_images": len(train), "test_images": len(test), "skipped": skipped},
        "backbone": info.to_dict(), "size": size, "head": cfg.to_dict(), "seed": seed,
        "head_parameters": n_params, "head_edges": edges,
        "dense_storage_bytes": rows[0]["storage_bytes"] if rows else None,
        "history": head_art.meta.get("history", []), **evaluation, "compression": rows,
        "stages": {k: {"version": st.versions[k], "seconds": st.seconds[k], "reused": st.reused[k]}
                   for k in st.versions},
    }
    save_json(out_dir / "report.json", report)
    print("\nstages: " + ", ".join(f"{k} {v:.1f}s" for k, v in st.seconds.items()))
    print(f"report: {out_dir / 'report.json'}")
    return report


def _vid(stage: str, params: dict, inputs: list[str]) -> str:
    return version_id(stage, params, inputs, CODE[stage])


def _compress(st: _Stages, head: KANDetectionHead, head_art: Artifact, feats: torch.Tensor, samples, size: int,
              edges: int, seed: int, workers: int, progress: bool) -> list[dict]:
    """Spline shards → codebooks → encoded heads → the compression table (each stored)."""
    t = time.perf_counter()
    layers = list(head.kan.layers)
    coef = np.concatenate([layer.scaled_spline_weight().detach().reshape(-1, layer.n_coef).numpy() for layer in layers])
    shapes, gains, biases = decompose(torch.from_numpy(coef))
    splines = st.done("splines", *put_rows(
        st.store, "splines", {"layers": [[lay.out_features, lay.in_features] for lay in layers]},
        [head_art.version], CODE["splines"],
        {"coefficients": coef, "shapes": shapes.numpy(), "gains": gains.numpy(), "biases": biases.numpy()},
        chunk_rows=16_384, workers=workers), t)
    codebooks = {}
    for k in default_ks(edges):
        t = time.perf_counter()
        params = {"k": k, "seed": seed, "niter": 25, "spherical": True}
        arrays = {} if st.store.has(_vid("codebook", params, [splines.version])) else {
            "codebook": fit_codebook(splines.array("shapes")[...], k, seed=seed).numpy()}
        art = st.done(f"codebook_K{k}", *st.store.put("codebook", params, [splines.version], CODE["codebook"], arrays), t)
        codebooks[k] = torch.from_numpy(art.array("codebook")[...])
    t = time.perf_counter()
    variants = baseline_variants(head.kan) + vq_variants(head.kan, codebooks)
    for name, v in variants:
        if name.startswith("VQ"):
            k, dt = name.split()[1][2:], name.split()[2]
            st.store.put("encoded", {"gain_dtype": dt}, [head_art.version, st.versions[f"codebook_K{k}"]],
                         CODE["encoded"], {n: b.numpy() for n, b in v.state_dict().items()
                                           if not n.endswith(".codebook")})
    comp_params = {"variants": [n for n, _ in variants]}
    comp_inputs = [head_art.version, st.versions["features_test"]] + [st.versions[f"codebook_K{k}"] for k in codebooks]
    if st.store.has(_vid("compression", comp_params, comp_inputs)):
        rows = st.store.get(_vid("compression", comp_params, comp_inputs)).meta["rows"]
        art, created = st.store.get(_vid("compression", comp_params, comp_inputs)), False
    else:
        print("\ncompressing the head ...", flush=True)
        rows = compare_variants(head, feats, samples, size, variants, progress=progress)
        art, created = st.store.put("compression", comp_params, comp_inputs, CODE["compression"], {},
                                    meta={"rows": rows})
    st.done("compression", art, created, t)
    print(format_table(rows, [("variant", "variant", "s"), ("map50", "mAP@0.5", ".4f"),
                              ("delta_map50", "Δ mAP", "+.4f"), ("storage_bytes", "storage B", ",d"),
                              ("compression", "ratio", ".1f"), ("runtime_bytes_1img", "runtime B 1 img", ",d"),
                              ("runtime_bytes_8img", "runtime B 8 img", ",d")]))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="KAN detection head on VOC: train, score, compress")
    p.add_argument("--data", help="VOCdevkit root (default: the embedded synthetic data set)")
    p.add_argument("--train", default="2007:train", help="training splits, YEAR:SET[,YEAR:SET]")
    p.add_argument("--test", default="2007:val", help="evaluation splits")
    p.add_argument("--out", default="artifacts/detection", help="report folder")
    p.add_argument("--store", help="artifact store: folder or s3://bucket/prefix (default: beside --out)")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--layer", default="layer3", choices=["layer3", "layer4"])
    p.add_argument("--weights", help="torchvision checkpoint for the backbone")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--workers", type=int, default=2, help="parallel shard writers")
    p.add_argument("--skip-bad", action="store_true", help="skip bad samples and report how many")
    p.add_argument("--voc07", action="store_true", help="VOC07 11-point AP instead of all-points")
    p.add_argument("--no-compress", action="store_true")
    a = p.parse_args(argv)
    detection_pipeline(a.data, a.train, a.test, a.out, a.store, a.size, a.backbone, a.layer, a.weights,
                       a.hidden, epochs=a.epochs, lr=a.lr, seed=a.seed, n_train=a.n_train, n_test=a.n_test,
                       skip_bad=a.skip_bad, use_07=a.voc07, compress=not a.no_compress, workers=a.workers)


if __name__ == "__main__":
    main()
