"""Detection scoring: VOC AP@0.5, torchmetrics' COCO-style AP, and COCO JSON export.

* :func:`voc_ap` is PASCAL VOC's own rule: detections sorted by score, each matched to the
  unmatched ground truth of its image and class with the highest IoU ≥ 0.5; a match to a
  ``difficult`` box counts neither way; AP is the area under the monotone precision envelope
  (all points, VOC 2010+) or the 11-point mean (VOC 2007, ``use_07=True``). mAP averages the
  classes that have at least one non-difficult ground-truth box.
* :func:`torchmetrics_map` runs ``torchmetrics`` ``MeanAveragePrecision`` at IoU 0.5 (COCO's
  101-point interpolation; difficult boxes passed as ``iscrowd``), as an independent check.
* :func:`coco_json` writes ground truth and detections as COCO JSON for pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Detections", "GroundTruth", "voc_ap", "torchmetrics_map", "coco_json"]


@dataclass
class Detections:
    boxes: np.ndarray   # [n, 4] x0, y0, x1, y1 pixels
    scores: np.ndarray  # [n]
    labels: np.ndarray  # [n]


@dataclass
class GroundTruth:
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


def _ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    if use_07:
        return float(np.mean([prec[rec >= t].max() if np.any(rec >= t) else 0.0
                              for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_ap(dets: list[Detections], gts: list[GroundTruth], num_classes: int, iou: float = 0.5,
           use_07: bool = False) -> dict:
    """``{"map": float, "ap": {class: AP}, "npos": {class: n}}`` over paired images."""
    if len(dets) != len(gts):
        raise ValueError(f"{len(dets)} detection lists for {len(gts)} images")
    ap, npos_all = {}, {}
    for c in range(num_classes):
        npos = sum(int(((g.labels == c) & ~g.difficult).sum()) for g in gts)
        records = [(float(s), i, b) for i, d in enumerate(dets)
                   for b, s, lab in zip(d.boxes, d.scores, d.labels) if lab == c]
        records.sort(key=lambda r: -r[0])
        used = [np.zeros(int((g.labels == c).sum()), dtype=bool) for g in gts]
        tp, fp = [], []
        for _, i, box in records:
            g = gts[i]
            sel = g.labels == c
            gb, gd = g.boxes[sel], g.difficult[sel]
            if len(gb) == 0:
                tp.append(0), fp.append(1)
                continue
            ious = _iou(np.asarray(box, dtype=np.float64), gb.astype(np.float64))
            j = int(ious.argmax())
            if ious[j] < iou:
                tp.append(0), fp.append(1)
            elif gd[j]:
                continue
            elif used[i][j]:
                tp.append(0), fp.append(1)
            else:
                used[i][j] = True
                tp.append(1), fp.append(0)
        npos_all[c] = npos
        if npos == 0:
            continue
        tp_c, fp_c = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
        rec = tp_c / npos
        prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        ap[c] = _ap(rec, prec, use_07)
    return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap, "npos": npos_all}


def torchmetrics_map(dets: list[Detections], gts: list[GroundTruth]) -> dict:
    """torchmetrics ``MeanAveragePrecision`` at IoU 0.5 with per-class APs (COCO-style)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True,
                                  backend="pycocotools")
    metric.update(
        [{"boxes": torch.as_tensor(d.boxes, dtype=torch.float32).reshape(-1, 4),
          "scores": torch.as_tensor(d.scores, dtype=torch.float32),
          "labels": torch.as_tensor(d.labels, dtype=torch.int64)} for d in dets],
        [{"boxes": torch.as_tensor(g.boxes, dtype=torch.float32).reshape(-1, 4),
          "labels": torch.as_tensor(g.labels, dtype=torch.int64),
          "iscrowd": torch.as_tensor(g.difficult, dtype=torch.int64)} for g in gts])
    res = metric.compute()
    classes = res["classes"].reshape(-1).tolist()
    per = res["map_per_class"].reshape(-1).tolist()
    return {"map_50": float(res["map_50"]), "ap": dict(zip(classes, per))}


def coco_json(dets: list[Detections], gts: list[GroundTruth], image_ids: list[str],
              sizes: list[tuple[int, int]], class_names: tuple[str, ...]) -> tuple[dict, list]:
    """``(ground_truth, results)`` in COCO JSON form; difficult boxes become ``iscrowd = 1``."""
    images, anns, results = [], [], []
    for n, (name, (w, h), g, d) in enumerate(zip(image_ids, sizes, gts, dets), start=1):
        images.append({"id": n, "file_name": f"{name}.jpg", "width": int(w), "height": int(h)})
        for b, lab, diff in zip(g.boxes, g.labels, g.difficult):
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": int(lab) + 1,
                         "bbox": [float(b[0]), float(b[1]), bw, bh], "area": bw * bh,
                         "iscrowd": int(diff)})
        for b, s, lab in zip(d.boxes, d.scores, d.labels):
            results.append({"image_id": n, "category_id": int(lab) + 1, "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}, results
