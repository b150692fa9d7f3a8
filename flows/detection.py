"""Detection pipeline on one machine: data → features → trained head → scores → compression table.

Composes ``sharekan.detection`` (the maths) with ``storage.files`` (every byte written):
the embedded synthetic VOC set is generated once per seed, features are cached under a content
key, the head is checkpointed each epoch (safetensors), and the run ends with ``report.json``,
COCO JSON ground truth and detections, and the printed tables.

    python -m flows.detection                       # embedded synthetic default
    python -m flows.detection --data /path/to/VOC --train 2007:trainval,2012:trainval --test 2007:test
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sharekan.demo import format_table
from sharekan.detection.backbone import build_backbone, extract_features
from sharekan.detection.compare import compare_variants, default_ks
from sharekan.detection.evaluate import coco_json, torchmetrics_map, voc_ap
from sharekan.detection.head import HeadConfig, KANDetectionHead
from sharekan.detection.synthetic import generate_voc
from sharekan.detection.train import ground_truth, location_targets, predict, train_head
from sharekan.detection.voc import VOC_CLASSES, VOCData
from storage.files import cached_tensors, content_key, save_json, save_tensors

__all__ = ["synthetic_root", "detection_pipeline", "main"]


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


class _Images:
    def __init__(self, data: VOCData):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.load_image(i)


def _features(body, info, data: VOCData, size: int, cache: Path, label: str) -> torch.Tensor:
    key = content_key(info.to_dict(), size, [(s.image_id, str(s.image_path), s.image_path.stat().st_size)
                                              for s in data.samples])
    t, hit = cached_tensors(cache, f"features-{label}", key,
                            lambda: {"feats": extract_features(body, _Images(data), size, desc=f"{label} features")},
                            {"backbone": info.to_dict(), "size": size})
    print(f"{label} features {tuple(t['feats'].shape)} ({'cached' if hit else 'extracted'})", flush=True)
    return t["feats"]


def detection_pipeline(data: str | None = None, train_splits: str = "2007:train",
                       test_splits: str = "2007:val", out: str = "artifacts/detection",
                       size: int = 192, backbone: str = "resnet50", layer: str = "layer3",
                       weights: str | None = None, hidden: int = 64, grid_size: int = 10,
                       epochs: int = 6, lr: float = 5e-3, batch_size: int = 2048, seed: int = 0,
                       n_train: int = 1000, n_test: int = 200, skip_bad: bool = False,
                       use_07: bool = False, compress: bool = True, progress: bool = True) -> dict:
    """Run every stage; returns the report (also written to ``out/report.json``)."""
    out_dir = Path(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    root = Path(data) if data else synthetic_root(out_dir.parent / "data", seed, n_train, n_test)
    train = VOCData(root, _splits(train_splits), skip_bad=skip_bad)
    test = VOCData(root, _splits(test_splits), skip_bad=skip_bad)
    skipped = train.skipped + test.skipped
    if skipped:
        print(f"skipped {len(skipped)} bad samples, e.g. {skipped[0]}", flush=True)
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    body, info = build_backbone(backbone, layer, weights, seed=seed)
    if not info.pretrained:
        print("WARNING: backbone has RANDOM INITIALISATION (no weights given or cached)", flush=True)
    cache = out_dir.parent / "cache"
    ftr = _features(body, info, train, size, cache, "train")
    fte = _features(body, info, test, size, cache, "test")
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(seed)
    cfg = HeadConfig(in_channels=info.channels, hidden=hidden, grid_size=grid_size, stride=info.stride)
    head = KANDetectionHead(cfg)
    x, cls, box, centres = location_targets(ftr, train.samples, size, info.stride)
    head.fit_standardisation(x)
    ckpt = out_dir / "head.safetensors"
    meta = {"config": cfg.to_dict(), "backbone": info.to_dict(), "size": size, "seed": seed}
    history = train_head(head, x, cls, box, centres, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, progress=progress,
                         on_epoch=lambda e, sd: save_tensors(ckpt, sd, {**meta, "epoch": e + 1}))
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    dets = predict(head, fte, test.samples, size)
    gts = ground_truth(test.samples)
    voc = voc_ap(dets, gts, cfg.num_classes, use_07=use_07)
    tm = torchmetrics_map(dets, gts)
    gt_json, det_json = coco_json(dets, gts, [s.image_id for s in test.samples],
                                  [(s.width, s.height) for s in test.samples], VOC_CLASSES)
    save_json(out_dir / "coco_gt.json", gt_json)
    save_json(out_dir / "coco_detections.json", det_json)
    timings["evaluate"] = time.perf_counter() - t
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
        t = time.perf_counter()
        print("\ncompressing the head ...", flush=True)
        rows = compare_variants(head, fte, test.samples, size, default_ks(edges), seed=seed, progress=progress)
        timings["compress"] = time.perf_counter() - t
        print(format_table(rows, [("variant", "variant", "s"), ("map50", "mAP@0.5", ".4f"),
                                  ("delta_map50", "Δ mAP", "+.4f"), ("storage_bytes", "storage B", ",d"),
                                  ("compression", "ratio", ".1f"), ("runtime_bytes_1img", "runtime B 1 img", ",d"),
                                  ("runtime_bytes_8img", "runtime B 8 img", ",d")]))
    report = {
        "data": {"root": str(root) if data else "embedded synthetic", "train": train_splits, "test": test_splits,
                 "train_images": len(train), "test_images": len(test), "skipped": skipped},
        "backbone": info.to_dict(), "size": size, "head": cfg.to_dict(), "seed": seed,
        "head_parameters": n_params, "head_edges": edges,
        "dense_storage_bytes": rows[0]["storage_bytes"] if rows else None,
        "history": history, "map50": voc["map"], "map50_metric": "VOC 11-point" if use_07 else "VOC all-points",
        "torchmetrics_map50": tm["map_50"],
        "per_class_ap": {VOC_CLASSES[c]: ap for c, ap in voc["ap"].items()},
        "compression": rows, "seconds": timings,
    }
    save_json(out_dir / "report.json", report)
    print(f"\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"report: {out_dir / 'report.json'}")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="KAN detection head on VOC: train, score, compress")
    p.add_argument("--data", help="VOCdevkit root (default: the embedded synthetic data set)")
    p.add_argument("--train", default="2007:train", help="training splits, YEAR:SET[,YEAR:SET]")
    p.add_argument("--test", default="2007:val", help="evaluation splits")
    p.add_argument("--out", default="artifacts/detection")
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
    p.add_argument("--skip-bad", action="store_true", help="skip bad samples and report how many")
    p.add_argument("--voc07", action="store_true", help="VOC07 11-point AP instead of all-points")
    p.add_argument("--no-compress", action="store_true")
    a = p.parse_args(argv)
    detection_pipeline(a.data, a.train, a.test, a.out, a.size, a.backbone, a.layer, a.weights, a.hidden,
                       epochs=a.epochs, lr=a.lr, seed=a.seed, n_train=a.n_train, n_test=a.n_test,
                       skip_bad=a.skip_bad, use_07=a.voc07, compress=not a.no_compress)


if __name__ == "__main__":
    main()
