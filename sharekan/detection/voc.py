"""PASCAL VOC reading through torchvision's ``VOCDetection`` (``download=False``), validated.

:class:`VOCData` reads one or more ``(year, image_set)`` splits of a VOCdevkit root (real VOC
2007/2012 or the synthetic default) and checks every sample up front, before any work starts:
malformed XML, a missing image, a zero-area or out-of-image box and an unknown class name each
raise :class:`BadSampleError` naming the file. With ``skip_bad=True`` such samples are skipped
instead and counted in ``skipped``. Boxes come out 0-based ``[x0, y0, x1, y1]`` in pixels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import VOCDetection

__all__ = ["VOC_CLASSES", "BadSampleError", "Sample", "VOCData"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class BadSampleError(ValueError):
    """A VOC sample that cannot be used; the message names its file."""


@dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray       # [n, 4] float32, 0-based x0, y0, x1, y1
    labels: np.ndarray      # [n] int64, index into VOC_CLASSES
    difficult: np.ndarray   # [n] bool


def _parse(ds: VOCDetection, i: int) -> Sample:
    xml_path = Path(ds.annotations[i])
    img_path = Path(ds.images[i])
    try:
        ann = ds.parse_voc_xml(ET.parse(xml_path).getroot())["annotation"]
    except ET.ParseError as e:
        raise BadSampleError(f"{xml_path}: malformed XML ({e})") from None
    except FileNotFoundError:
        raise BadSampleError(f"{xml_path}: annotation file missing") from None
    if not img_path.is_file():
        raise BadSampleError(f"{img_path}: image missing (annotated in {xml_path.name})")
    try:
        width, height = int(ann["size"]["width"]), int(ann["size"]["height"])
    except (KeyError, TypeError, ValueError):
        with Image.open(img_path) as im:
            width, height = im.size
    objs = ann.get("object", [])
    objs = objs if isinstance(objs, list) else [objs]
    boxes, labels, difficult = [], [], []
    for obj in objs:
        name = obj.get("name")
        if name not in VOC_CLASSES:
            raise BadSampleError(f"{xml_path}: unknown class name {name!r}")
        try:
            bb = obj["bndbox"]
            x0, y0 = float(bb["xmin"]) - 1, float(bb["ymin"]) - 1
            x1, y1 = float(bb["xmax"]), float(bb["ymax"])
        except (KeyError, TypeError, ValueError):
            raise BadSampleError(f"{xml_path}: object {name!r} has no valid bndbox") from None
        if x1 <= x0 or y1 <= y0:
            raise BadSampleError(f"{xml_path}: zero-area box for {name!r}: "
                                 f"({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g})")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise BadSampleError(f"{xml_path}: box for {name!r} ({x0 + 1:g}, {y0 + 1:g}, {x1:g}, "
                                 f"{y1:g}) lies outside the {width}x{height} image")
        boxes.append((x0, y0, x1, y1))
        labels.append(VOC_CLASSES.index(name))
        difficult.append(str(obj.get("difficult", "0")).strip() == "1")
    return Sample(xml_path.stem, img_path, width, height,
                  np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                  np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool))


@dataclass
class VOCData:
    """Validated samples of ``splits`` (``[(year, image_set), ...]``) under a VOCdevkit ``root``."""

    root: Path
    splits: list[tuple[str, str]]
    skip_bad: bool = False
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        if not (self.root / "VOCdevkit").is_dir():
            raise FileNotFoundError(f"{self.root}: no VOCdevkit folder (expected "
                                    f"{self.root / 'VOCdevkit' / 'VOC2007'})")
        for year, image_set in self.splits:
            try:
                ds = VOCDetection(str(self.root), year=year, image_set=image_set, download=False)
            except (RuntimeError, FileNotFoundError, ValueError) as e:
                raise FileNotFoundError(f"{self.root}: VOC{year} split {image_set!r} not readable: {e}") from None
            for i in range(len(ds.images)):
                try:
                    self.samples.append(_parse(ds, i))
                except BadSampleError as e:
                    if not self.skip_bad:
                        raise
                    self.skipped.append(str(e))
        if not self.samples:
            raise BadSampleError(f"{self.root}: no usable samples in {self.splits}")

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> Image.Image:
        return Image.open(self.samples[i].image_path).convert("RGB")
