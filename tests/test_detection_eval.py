import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sharekan.detection.evaluate import Detections, GroundTruth, coco_json, torchmetrics_map, voc_ap

NAMES = ("a", "b", "c")


def gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    diff = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return GroundTruth(boxes, np.asarray(labels, np.int64), diff)


def det(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


GTS = [gt([[10, 10, 50, 50], [60, 60, 90, 100]], [0, 1]), gt([[5, 5, 40, 30]], [0])]


def test_perfect_predictions_score_one():
    dets = [det(g.boxes, np.ones(len(g.labels)), g.labels) for g in GTS]
    r = voc_ap(dets, GTS, 3)
    assert r["map"] == pytest.approx(1.0)
    assert set(r["ap"]) == {0, 1}  # class 2 has no ground truth: not averaged
    assert torchmetrics_map(dets, GTS)["map_50"] == pytest.approx(1.0)


def test_one_miss_halves_recall():
    dets = [det([[10, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.8], [0, 1]), det([], [], [])]
    r = voc_ap(dets, GTS, 3)
    assert r["ap"][0] == pytest.approx(0.5)  # 1 of 2 class-0 boxes found at precision 1
    assert r["ap"][1] == pytest.approx(1.0)
    assert r["map"] == pytest.approx(0.75)


def test_duplicate_is_a_false_positive():
    dets = [det([[10, 10, 50, 50], [11, 11, 50, 50], [60, 60, 90, 100]], [0.9, 0.8, 0.7], [0, 0, 1]),
            det([[5, 5, 40, 30]], [0.6], [0])]
    r = voc_ap(dets, GTS, 3)
    # class 0 ranks: TP (rec .5, prec 1), FP (rec .5, prec .5), TP (rec 1, prec 2/3)
    assert r["ap"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    r07 = voc_ap(dets, GTS, 3, use_07=True)
    assert r07["ap"][0] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_difficult_boxes_count_neither_way():
    gts = [gt([[10, 10, 50, 50], [60, 60, 90, 100]], [0, 0], difficult=[False, True])]
    found = [det([[10, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.95], [0, 0])]
    assert voc_ap(found, gts, 1)["ap"][0] == pytest.approx(1.0)
    assert voc_ap([det([[10, 10, 50, 50]], [0.9], [0])], gts, 1)["npos"][0] == 1


def test_coco_json_rescored_by_pycocotools_matches_torchmetrics(tmp_path):
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(6):
        boxes = rng.uniform(0, 60, (3, 2))
        boxes = np.concatenate([boxes, boxes + rng.uniform(10, 40, (3, 2))], 1)
        labels = rng.integers(0, 3, 3)
        gts.append(gt(boxes, labels))
        noisy = boxes + rng.normal(0, 4, boxes.shape)
        dets.append(det(np.concatenate([noisy, rng.uniform(0, 80, (2, 4)).cumsum(1)[:, [0, 1, 2, 3]]]),
                        rng.uniform(0, 1, 5), np.concatenate([labels, rng.integers(0, 3, 2)])))
    gt_json, res = coco_json(dets, gts, [f"im{i}" for i in range(6)], [(120, 120)] * 6, NAMES)
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "res.json").write_text(json.dumps(res))
    coco = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco, coco.loadRes(str(tmp_path / "res.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    ap50 = ev.stats[1]
    assert 0.1 < ap50 < 1.0
    assert torchmetrics_map(dets, gts)["map_50"] == pytest.approx(ap50, abs=1e-6)
    # VOC's all-points AP is a different interpolation of the same matches: close, not equal
    assert voc_ap(dets, gts, 3)["map"] == pytest.approx(ap50, abs=0.1)


def _row(variant, map50, compression):
    from sharekan.detection.compare import Variant, VariantRow

    v = Variant("vq", k=int(variant.split()[1][2:]), dtype=variant.split()[2]) if variant.startswith("VQ") \
        else Variant("dense")
    assert v.name == variant
    return VariantRow(v, map50=map50, delta_map50=0.0, storage_bytes=1, compression=compression, runtime_bytes_1img=1,
                      runtime_bytes_8img=1, components={})


def test_the_runtime_variant_is_the_best_map_among_fp16_variants_that_compress():
    from dataclasses import replace

    from sharekan.detection.compare import Variant, runtime_variant

    rows = [_row("dense fp32", 0.41, 1.0), _row("VQ K=256 fp16", 0.40, 8.0), _row("VQ K=256 int8", 0.43, 10.0),
            _row("VQ K=4096 fp16", 0.409, 4.0), _row("VQ K=65536 fp16", 0.41, 1.0)]
    assert runtime_variant(rows) == Variant("vq", k=4096, dtype="fp16")  # K=65,536: best mAP, does not compress 2x
    assert runtime_variant(rows, min_compression=1.0).k == 65536
    rows[1] = replace(rows[1], map50=0.409)  # a tie goes to the smaller codebook
    assert runtime_variant(rows).k == 256
    assert runtime_variant([_row("VQ K=4096 fp16", 0.4, 1.2), _row("VQ K=65536 fp16", 0.41, 1.0)]).k == 4096
    with pytest.raises(ValueError, match="fp16"):
        runtime_variant([_row("dense fp32", 0.41, 1.0)])
    row = rows[3]  # a row crosses JSON flat and comes back equal
    assert type(row).from_dict(row.to_dict()) == row
