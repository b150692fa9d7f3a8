"""Data stages: the data set (parsed, decoded once, fingerprinted), the backbone (pretrained on the
training split when no weights exist) and backbone features.

Every later stage reads a split through :func:`load_split` from the data set's artifact version;
images the dataset stage skipped as undecodable stay out everywhere.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from pathlib import Path

import ray
import torch

import sharekan.detection.backbone
import sharekan.detection.pretrain
import sharekan.detection.synthetic
import sharekan.detection.voc
from sharekan.detection.backbone import STRIDES, build_backbone, extract_features, resized
from sharekan.detection.pretrain import pretrain_backbone
from sharekan.detection.synthetic import DEFAULT, SHIFTED, generate_voc
from sharekan.detection.voc import VOCData
from storage.store import ArtifactStore, open_artifact_group

from .runner import Run, StageResult, submit, task, stage, use_assigned_cpus
from .specs import DatasetSpec, FeaturesSpec, PretrainSpec

__all__ = ["synthetic_root", "describe", "load_split", "dataset", "pretrain", "features"]


def synthetic_root(base: str | Path, seed: int, n_train: int, n_test: int, n_ood: int = 0,
                   shifted: bool = False) -> Path:
    """The synthetic data set for these parameters (``n_ood`` > 0: with its shifted ``ood`` split;
    ``shifted``: training and test images in the shifted style too), generated once (atomically)
    under ``base``."""
    base = Path(base)
    root = base / (f"synthetic-voc-s{seed}-{n_train}-{n_test}" + (f"-ood{n_ood}" if n_ood else "")
                   + ("-shifted" if shifted else ""))
    if not (root / "VOCdevkit").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=base))
        try:
            generate_voc(tmp, n_train=n_train, n_test=n_test, seed=seed, n_ood=n_ood,
                         style=SHIFTED if shifted else DEFAULT)
            try:
                tmp.rename(root)
            except OSError:  # another run generated the same files meanwhile
                if not (root / "VOCdevkit").is_dir():
                    raise
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


def describe(root: str | Path, label: str, train_splits: str, test_splits: str, skip_bad: bool,
             ood_splits: str = "") -> DatasetSpec:
    """The data set's spec: its annotations parsed and fingerprinted (images are decoded by the stage)."""
    splits = {"train": train_splits, "test": test_splits, "ood": ood_splits}
    manifests = {f"{w}_manifest": _manifest(VOCData(Path(root), _splits(sp), skip_bad=skip_bad))
                 for w, sp in splits.items() if sp}
    return DatasetSpec(label=label, **{f"{w}_splits": sp for w, sp in splits.items()}, skip_bad=skip_bad, **manifests)


def load_split(store: ArtifactStore, dataset_version: str, which: str) -> VOCData:
    """The ``which`` ("train", "test" or "ood") split of a stored data set: its samples as the dataset
    stage validated them (images it skipped as undecodable stay out)."""
    ds = store.get(dataset_version)
    return VOCData(Path(ds.meta["root_path"]), _splits(ds.params[f"{which}_splits"]), skip_bad=ds.params["skip_bad"],
                   exclude=frozenset(ds.meta.get("excluded", {}).get(which, [])))


@stage("dataset", {"num_cpus": 1}, uses=(_splits, sharekan.detection.voc, sharekan.detection.synthetic))
def dataset(run: Run, spec: DatasetSpec, *, root: str) -> StageResult:
    """Decode every image of the data set at ``root`` once; what is skipped stays out of every later stage."""
    splits = {w: sp for w, sp in (("train", spec.train_splits), ("test", spec.test_splits),
                                   ("ood", spec.ood_splits)) if sp}
    loaded = {w: VOCData(Path(root), _splits(sp), skip_bad=spec.skip_bad, verify_images=True) for w, sp in splits.items()}
    return run.put({}, meta={**{f"{w}_images": len(d) for w, d in loaded.items()},
                             "skipped": [msg for d in loaded.values() for msg in d.skipped],
                             "excluded": {w: [i for i in d.skipped_ids if i] for w, d in loaded.items()},
                             "root_path": str(root)})


class _Images:
    def __init__(self, data: VOCData, start: int, stop: int):
        self.data, self.start, self.stop = data, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        return self.data.load_image(self.start + i)


@stage("backbone", {"num_cpus": 8, "memory": 4 << 30},
       uses=(load_split, _splits, sharekan.detection.backbone, sharekan.detection.pretrain))
def pretrain(run: Run, spec: PretrainSpec, dataset_version: str, *, progress: bool = True) -> StageResult:
    """A backbone body trained on the training split (see ``sharekan.detection.pretrain``); features
    of every split then come from it, frozen."""
    data = load_split(run.store, dataset_version, "train")
    with warnings.catch_warnings():  # the random initialisation is the starting point here, not a fault
        warnings.simplefilter("ignore")
        body, info = build_backbone(spec.backbone, spec.layer, None, spec.seed)
    images = torch.stack([resized(data.load_image(i), spec.size) for i in range(len(data))])
    history = pretrain_backbone(body, images, data.samples, spec.size, STRIDES[spec.layer], info.channels,
                                epochs=spec.epochs, crop=spec.crop, batch_size=spec.batch_size, lr=spec.lr,
                                seed=spec.seed, progress=progress)
    arrays = {k: v.numpy() for k, v in body.state_dict().items()}
    return run.put(arrays, meta={"history": history, "images": len(data)})


def _backbone(spec: FeaturesSpec, store: ArtifactStore | None = None, backbone_version: str | None = None):
    if backbone_version is None:
        return build_backbone(spec.backbone, spec.layer, spec.weights, spec.seed)
    art = store.get(backbone_version)
    return build_backbone(spec.backbone, spec.layer, seed=spec.seed, trained_on=f"the training split ({art.version})",
                          state={k: torch.from_numpy(v[...]) for k, v in art.arrays().items()})


@task({"num_cpus": 1, "memory": 2 << 30})
def _features_shard(session, loc, version: str, spec: FeaturesSpec, dataset_version: str, start: int, stop: int,
                    backbone_version: str | None):
    use_assigned_cpus()
    body, _ = _backbone(spec, ArtifactStore(loc), backbone_version)
    data = load_split(ArtifactStore(loc), dataset_version, spec.split)
    feats = extract_features(body, _Images(data, start, stop), spec.size, progress=False)
    open_artifact_group(session, version)["feats"][start:stop] = feats.numpy()
    return session


@stage("features", {"num_cpus": 0}, uses=(_Images, _backbone, _features_shard, load_split, _splits,
                                          sharekan.detection.backbone))
def features(run: Run, spec: FeaturesSpec, dataset_version: str, backbone_version: str | None = None) -> StageResult:
    """Backbone features ``[N, C, H, W]`` (float16) of one split, ``spec.shard_images`` images per task
    (this task only coordinates: it claims no CPU); the backbone is ``backbone_version``'s trained
    body when given."""
    body, info = _backbone(spec, run.store, backbone_version)
    n = len(load_split(run.store, dataset_version, spec.split))
    with torch.no_grad():
        trailing = tuple(body(torch.zeros(1, 3, spec.size, spec.size)).shape[1:])

    def write_shards(session, ranges):
        return ray.get([submit(_features_shard, session.fork(), run.location, run.version, spec,
                               dataset_version, a, b, backbone_version) for a, b in ranges])

    return run.put_sharded({"feats": (trailing, "<f2")}, n, spec.shard_images, write_shards,
                           meta={"backbone": info.to_dict()})
