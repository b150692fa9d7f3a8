"""Head stages: train the KAN detection head on stored features, and score it (VOC mAP@0.5).

The evaluation artifact holds the COCO-format ground truth and detections; :func:`export_coco`
writes them as files for a user's own tools.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import sharekan.bspline
import sharekan.detection.evaluate
import sharekan.detection.head
import sharekan.detection.train
import sharekan.kan
from sharekan.detection.evaluate import coco_json, torchmetrics_map, voc_ap
from sharekan.detection.head import HeadConfig, KANDetectionHead
from sharekan.detection.train import ground_truth, location_targets, predict, resume_epoch, train_head
from sharekan.detection.voc import VOC_CLASSES
from storage.files import atomic_write, save_tensors
from storage.store import Artifact, ArtifactStore

from .data import load_split
from .runner import Run, StageResult, stage
from .specs import EvaluationSpec, HeadSpec

__all__ = ["load_head", "train", "evaluate", "export_coco", "COCO_FILES"]

COCO_FILES = {"coco_gt": "coco_gt.json", "coco_detections": "coco_detections.json"}


def load_head(art: Artifact) -> KANDetectionHead:
    head = KANDetectionHead(HeadConfig(**art.meta["config"]))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in art.arrays().items()})
    return head.eval()


@stage("head", {"num_cpus": 2, "memory": 4 << 30},
       uses=(load_split, sharekan.kan, sharekan.bspline, sharekan.detection.head, sharekan.detection.train))
def train(run: Run, spec: HeadSpec, features_version: str, dataset_version: str, *,
          checkpoint: str | None = None, progress: bool = True) -> StageResult:
    """Train the head. With ``checkpoint``, the head is saved there after every epoch, and a run of
    the same version that was killed resumes from its last epoch."""
    feats = run.store.get(features_version)
    info, size = feats.meta["backbone"], feats.params["size"]
    cfg = HeadConfig(in_channels=info["channels"], hidden=spec.hidden, grid_size=spec.grid_size, stride=info["stride"])
    torch.manual_seed(spec.seed)
    head = KANDetectionHead(cfg)
    samples = load_split(run.store, dataset_version, "train").samples
    x, cls, box, centres = location_targets(torch.from_numpy(feats.array("feats")[...]), samples, size, info["stride"])
    head.fit_standardisation(x)
    meta = {"config": cfg.to_dict(), "backbone": info, "size": size, "seed": spec.seed}
    on_epoch = None if checkpoint is None else (
        lambda e, sd: save_tensors(Path(checkpoint), sd, {**meta, "epoch": e + 1}))
    resume = None if checkpoint is None else Path(checkpoint).with_name(f"{run.version}.resume.pt")
    resumed_from = resume_epoch(resume)  # > 0 when an earlier attempt of this version was killed
    history = train_head(head, x, cls, box, centres, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
                         seed=spec.seed, progress=progress, on_epoch=on_epoch, resume_path=resume,
                         lipschitz=spec.lipschitz)
    arrays = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    out = run.put(arrays, meta={**meta, "history": history, "edges": cfg.edges})
    if resume is not None:
        resume.unlink(missing_ok=True)  # stored: a retry now finds the artifact
    return replace(out, meta={**out.meta, "resumed_from": resumed_from})


@stage("evaluation", {"num_cpus": 1, "memory": 2 << 30},
       uses=(load_head, load_split, sharekan.detection.evaluate, sharekan.detection.train))
def evaluate(run: Run, spec: EvaluationSpec, head_version: str, features_version: str,
             dataset_version: str) -> StageResult:
    """The dense head's VOC mAP@0.5 (and torchmetrics' AP50) on the test split; COCO JSON kept."""
    head = load_head(run.store.get(head_version))
    feats = run.store.get(features_version)
    samples = load_split(run.store, dataset_version, "test").samples
    dets = predict(head, torch.from_numpy(feats.array("feats")[...]), samples, feats.params["size"])
    gts = ground_truth(samples)
    voc, tm = voc_ap(dets, gts, head.cfg.num_classes, use_07=spec.use_07), torchmetrics_map(dets, gts)
    gt_json, det_json = coco_json(dets, gts, [s.image_id for s in samples], [(s.width, s.height) for s in samples],
                                  VOC_CLASSES)
    arrays = {name: np.frombuffer(json.dumps(obj, indent=2).encode(), dtype=np.uint8)
              for name, obj in (("coco_gt", gt_json), ("coco_detections", det_json))}
    return run.put(arrays, meta={
        "map50": voc["map"], "metric": "VOC 11-point" if spec.use_07 else "VOC all-points",
        "torchmetrics_map50": tm["map_50"], "per_class_ap": {VOC_CLASSES[c]: ap for c, ap in voc["ap"].items()},
        "npos": {VOC_CLASSES[c]: n for c, n in voc["npos"].items()},
        "torchmetrics_ap": {VOC_CLASSES[c]: ap for c, ap in tm["ap"].items()}})


def export_coco(loc, evaluation_version: str, out: str | Path) -> list[Path]:
    """Write the evaluation's COCO ground truth and detections into ``out`` (atomically)."""
    art = ArtifactStore(loc, create=False).get(evaluation_version)
    paths = []
    for name, filename in COCO_FILES.items():
        data = art.array(name)[...].tobytes()
        paths.append(atomic_write(Path(out) / filename, lambda tmp, data=data: tmp.write_bytes(data + b"\n")))
    return paths
