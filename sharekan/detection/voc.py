"""PASCAL VOC reading (torchvision's ``VOCDetection`` layout and XML parsing), validated.

:class:`VOCData` reads one or more ``(year, image_set)`` splits of a VOCdevkit root (real VOC
2007/2012 or the synthetic default) and checks every sample up front, before any work starts:
an undecodable line in a split list, malformed or unreadable XML, a missing image, an image file
that is no image, an annotated ``<size>`` that disagrees with the image, a zero-area, non-finite
or out-of-image box and an unknown class name each raise :class:`BadSampleError` naming the file.
``verify_images=True`` also decodes every image (a truncated file fails there rather than in
feature extraction); the dataset stage does this once and later readers ``exclude`` what it
skipped. With ``skip_bad=True`` bad samples are skipped instead and counted in ``skipped``.
Boxes come out 0-based ``[x0, y0, x1, y1]`` in pixels.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
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


class _XML(VOCDetection):
    """torchvision's VOC XML → dict conversion, without reading a split list."""

    def __init__(self):  # noqa: D107 - parse_voc_xml needs no state
        pass


_TO_DICT = _XML()


def _image_size(img_path: Path, xml_path: Path, decode: bool) -> tuple[int, int]:
    try:
        with Image.open(img_path) as im:
            if decode:
                im.load()
            return im.size
    except UnidentifiedImageError:
        raise BadSampleError(f"{img_path}: not a readable image (annotated in {xml_path.name})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSampleError(f"{img_path}: cannot decode image ({e}; annotated in {xml_path.name})") from None


def _parse(xml_path: Path, img_path: Path, decode: bool = False) -> Sample:
    try:
        ann = _TO_DICT.parse_voc_xml(ET.parse(xml_path).getroot())["annotation"]
    except ET.ParseError as e:
        raise BadSampleError(f"{xml_path}: malformed XML ({e})") from None
    except FileNotFoundError:
        raise BadSampleError(f"{xml_path}: annotation file missing") from None
    except OSError as e:  # a symlink loop, a folder, no permission
        raise BadSampleError(f"{xml_path}: annotation not readable ({e.strerror or e})") from None
    if not img_path.is_file():
        raise BadSampleError(f"{img_path}: image missing (annotated in {xml_path.name})")
    width, height = _image_size(img_path, xml_path, decode)
    size = ann.get("size") if isinstance(ann.get("size"), dict) else {}
    try:
        stated = (int(size["width"]), int(size["height"]))
    except (KeyError, TypeError, ValueError):
        stated = None
    if stated is not None and stated != (width, height):
        raise BadSampleError(f"{xml_path}: annotated size {stated[0]}x{stated[1]} but {img_path.name} is "
                             f"{width}x{height}")
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
        if not all(map(math.isfinite, (x0, y0, x1, y1))):
            raise BadSampleError(f"{xml_path}: box for {name!r} has a non-finite coordinate "
                                 f"({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g})")
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


def _split_ids(voc: Path, image_set: str) -> list[str | BadSampleError]:
    """The image ids a split list names; a line that is not UTF-8 becomes a :class:`BadSampleError`."""
    path = voc / "ImageSets" / "Main" / f"{image_set}.txt"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{voc}: split {image_set!r} not readable ({path}: {e.strerror or e})") from None
    ids: list[str | BadSampleError] = []
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            ids.append(BadSampleError(f"{path}: line {n} is not UTF-8 ({line[:40]!r})"))
            continue
        if text:
            ids.append(text)
    return ids


@dataclass
class VOCData:
    """Validated samples of ``splits`` (``[(year, image_set), ...]``) under a VOCdevkit ``root``."""

    root: Path
    splits: list[tuple[str, str]]
    skip_bad: bool = False
    verify_images: bool = False
    exclude: frozenset[str] = frozenset()
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skipped_ids: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        if not (self.root / "VOCdevkit").is_dir():
            raise FileNotFoundError(f"{self.root}: no VOCdevkit folder (expected "
                                    f"{self.root / 'VOCdevkit' / 'VOC2007'})")
        for year, image_set in self.splits:
            voc = self.root / "VOCdevkit" / f"VOC{year}"
            if not voc.is_dir():
                raise FileNotFoundError(f"{self.root}: no {voc.relative_to(self.root)} folder for VOC{year} "
                                        f"split {image_set!r}")
            for image_id in _split_ids(voc, image_set):
                if image_id in self.exclude:
                    continue
                try:
                    if isinstance(image_id, BadSampleError):
                        raise image_id
                    self.samples.append(_parse(voc / "Annotations" / f"{image_id}.xml",
                                               voc / "JPEGImages" / f"{image_id}.jpg", self.verify_images))
                except BadSampleError as e:
                    if not self.skip_bad:
                        raise
                    self.skipped.append(str(e))
                    self.skipped_ids.append(image_id if isinstance(image_id, str) else None)
        if not self.samples:
            raise BadSampleError(f"{self.root}: no usable samples in {self.splits}")

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> Image.Image:
        return Image.open(self.samples[i].image_path).convert("RGB")
