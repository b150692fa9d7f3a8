"""Data stages: the data set (parsed, decoded once, fingerprinted) and backbone features.

Every later stage reads a split through :func:`load_split` from the data set's artifact version;
images the dataset stage skipped as undecodable stay out everywhere.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import ray
import torch

import sharekan.detection.backbone
import sharekan.detection.synthetic
import sharekan.detection.voc
from sharekan.detection.backbone import build_backbone, extract_features
from sharekan.detection.synthetic import generate_voc
from sharekan.detection.voc import VOCData
from storage.store import ArtifactStore, open_artifact_group

from .runner import Run, StageResult, submit, task, stage, use_assigned_cpus
from .specs import DatasetSpec, FeaturesSpec

__all__ = ["synthetic_root", "describe", "load_split", "dataset", "features"]


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


def _manifest(data: VOCData) -> str:
    """Hash of what the data set is: ids, annotation boxes and labels, image file sizes."""
    h = hashlib.sha256()
    for s in data.samples:
        h.update(f"{s.image_id}:{s.image_path.stat().st_size}".encode())
        for arr in (s.boxes, s.labels, s.difficult):
            h.update(arr.tobytes())
    return h.hexdigest()[:20]


def describe(root: str | Path, label: str, train_splits: str, test_splits: str, skip_bad: bool) -> DatasetSpec:
    """The data set's spec: its annotations parsed and fingerprinted (images are decoded by the stage)."""
    train, test = (VOCData(Path(root), _splits(sp), skip_bad=skip_bad) for sp in (train_splits, test_splits))
    return DatasetSpec(label=label, train_splits=train_splits, test_splits=test_splits, skip_bad=skip_bad,
                       train_manifest=_manifest(train), test_manifest=_manifest(test))


def load_split(store: ArtifactStore, dataset_version: str, which: str) -> VOCData:
    """The ``which`` ("train" or "test") split of a stored data set: its samples as the dataset stage
    validated them (images it skipped as undecodable stay out)."""
    ds = store.get(dataset_version)
    return VOCData(Path(ds.meta["root_path"]), _splits(ds.params[f"{which}_splits"]), skip_bad=ds.params["skip_bad"],
                   exclude=frozenset(ds.meta.get("excluded", {}).get(which, [])))


@stage("dataset", {"num_cpus": 1}, uses=(_splits, sharekan.detection.voc, sharekan.detection.synthetic))
def dataset(run: Run, spec: DatasetSpec, *, root: str) -> StageResult:
    """Decode every image of the data set at ``root`` once; what is skipped stays out of every later stage."""
    train_data, test_data = (VOCData(Path(root), _splits(sp), skip_bad=spec.skip_bad, verify_images=True)
                             for sp in (spec.train_splits, spec.test_splits))
    excluded = {"train": [i for i in train_data.skipped_ids if i], "test": [i for i in test_data.skipped_ids if i]}
    return run.put({}, meta={"train_images": len(train_data), "test_images": len(test_data),
                             "skipped": train_data.skipped + test_data.skipped, "excluded": excluded,
                             "root_path": str(root)})


class _Images:
    def __init__(self, data: VOCData, start: int, stop: int):
        self.data, self.start, self.stop = data, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        return self.data.load_image(self.start + i)


def _backbone(spec: FeaturesSpec):
    return build_backbone(spec.backbone, spec.layer, spec.weights, spec.seed)


@task({"num_cpus": 1, "memory": 2 << 30})
def _features_shard(session, loc, version: str, spec: FeaturesSpec, dataset_version: str, start: int, stop: int):
    use_assigned_cpus()
    body, _ = _backbone(spec)
    data = load_split(ArtifactStore(loc), dataset_version, spec.split)
    feats = extract_features(body, _Images(data, start, stop), spec.size, progress=False)
    open_artifact_group(session, "features", version)["feats"][start:stop] = feats.numpy()
    return session


@stage("features", {"num_cpus": 0}, uses=(_Images, _backbone, _features_shard, load_split, _splits,
                                          sharekan.detection.backbone))
def features(run: Run, spec: FeaturesSpec, dataset_version: str) -> StageResult:
    """Backbone features ``[N, C, H, W]`` (float16) of one split, ``spec.shard_images`` images per task
    (this task only coordinates: it claims no CPU)."""
    body, info = _backbone(spec)
    n = len(load_split(run.store, dataset_version, spec.split))
    with torch.no_grad():
        trailing = tuple(body(torch.zeros(1, 3, spec.size, spec.size)).shape[1:])

    def write_shards(session, ranges):
        return ray.get([submit(_features_shard, session.fork(), run.location, run.version, spec,
                               dataset_version, a, b) for a, b in ranges])

    return run.put_sharded({"feats": (trailing, "<f2")}, n, spec.shard_images, write_shards,
                           meta={"backbone": info.to_dict()})
