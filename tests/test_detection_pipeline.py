"""The detection pipeline end to end on a tiny synthetic set with a small real backbone."""

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from flows.detection import detection_pipeline
from sharekan.detection.head import HeadConfig, KANDetectionHead
from storage.files import load_tensors
from storage.shards import read_shard
from storage.store import ArtifactStore

KW = dict(size=64, backbone="resnet18", hidden=8, epochs=2, batch_size=256, n_train=16, n_test=6,
          progress=False)
EDGES = 256 * 8 + 8 * 24


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "detection"
    with pytest.warns(UserWarning, match="RANDOM INITIALISATION"):
        report = detection_pipeline(out=str(out), **KW)
    return out, report


def test_report_and_exports(run):
    out, report = run
    saved = json.loads((out / "report.json").read_text())
    assert saved["backbone"]["pretrained"] is False and saved["backbone"]["weights"] == "random init"
    assert 0.0 <= saved["map50"] <= 1.0
    assert saved["head_edges"] == EDGES
    names = [r["variant"] for r in saved["compression"]]
    assert names[:5] == ["dense fp32", "int8 PTQ", "pruned 10%", "pruned 30%", "pruned 50%"]
    assert "VQ K=256 fp16" in names and f"VQ K={EDGES} int8" in names
    for row in saved["compression"]:
        assert row["storage_bytes"] > 0 and row["runtime_bytes_8img"] >= row["runtime_bytes_1img"] > 0
        if row["variant"].startswith("VQ"):
            assert row["vq_forward_rel_diff"] < 1e-4
    coco = COCO(str(out / "coco_gt.json"))
    assert len(coco.getImgIds()) == 6
    dets = json.loads((out / "coco_detections.json").read_text())
    assert all(d["category_id"] in coco.getCatIds() for d in dets)
    assert all(not s["reused"] for s in saved["stages"].values())


def test_every_stage_is_a_versioned_artifact_with_lineage(run):
    out, report = run
    store = ArtifactStore(out.parent / "store", create=False)
    stages = report["stages"]
    comp = store.get(stages["compression"]["version"])
    assert comp.meta["rows"][0]["variant"] == "dense fp32"
    codebook = store.get(stages[f"codebook_K{EDGES}"]["version"])
    assert codebook.array("codebook").shape == (EDGES, 13)
    splines = store.get(codebook.inputs[0])
    assert splines.stage == "splines" and splines.inputs == [stages["head"]["version"]]
    shard0 = read_shard(splines, "shapes", 0)
    assert np.array_equal(shard0, splines.array("shapes")[:16_384]) and shard0.shape == (EDGES, 13)
    head = store.get(stages["head"]["version"])
    assert set(head.inputs) == {stages["features_train"]["version"], stages["dataset"]["version"]}
    encoded = store.ls("encoded")
    assert len(encoded) == 2 * len([k for k in stages if k.startswith("codebook_")])


def test_checkpoint_restores_the_head(run):
    out, report = run
    tensors, meta = load_tensors(out / "checkpoints" / "head.safetensors")
    assert meta["epoch"] == 2 and meta["backbone"]["name"] == "resnet18"
    cfg = HeadConfig(**{**meta["config"], "grid_range": tuple(meta["config"]["grid_range"])})
    head = KANDetectionHead(cfg)
    head.load_state_dict(tensors)
    assert head(torch.randn(3, cfg.in_channels)).shape == (3, 24)


def test_rerun_reuses_every_stage_and_gives_the_same_versions(run):
    out, report = run
    again = detection_pipeline(out=str(out), **KW)
    assert all(s["reused"] for s in again["stages"].values())
    assert {k: s["version"] for k, s in again["stages"].items()} == \
        {k: s["version"] for k, s in report["stages"].items()}
    assert again["map50"] == report["map50"]
    changed = detection_pipeline(out=str(out), compress=False, **{**KW, "epochs": 3})
    assert changed["stages"]["head"]["version"] != report["stages"]["head"]["version"]
    assert changed["stages"]["features_train"]["reused"]
