"""Embedded default data: a seeded generator that writes a synthetic data set in VOC format.

``VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main}`` with the 20 VOC class names.
Each class is one of 4 shapes (box, disc, triangle, cross) drawn in one of 5 colour
families; colours jitter per object, so telling classes apart needs both colour and shape.
Images vary in size; 1–4 objects each, of varied scale and aspect, overlapping (later objects
occlude earlier ones), on a gradient background with clutter (lines, specks, and distractor
blobs that are no class). Small objects are flagged ``difficult`` as VOC does. The same seed
always gives the same files, byte for byte.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .voc import VOC_CLASSES

__all__ = ["SHAPES", "PALETTES", "class_style", "generate_voc"]

SHAPES = ("box", "disc", "triangle", "cross")
# colour families (RGB centres); a class is (shape, family)
PALETTES = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 40), (190, 60, 200))
DIFFICULT_SIDE = 20  # objects whose shorter side is below this many pixels are 'difficult'


def class_style(label: int) -> tuple[str, tuple[int, int, int]]:
    """(shape, base colour) of VOC class index ``label``."""
    return SHAPES[label % len(SHAPES)], PALETTES[label // len(SHAPES)]


def _jitter(rng: np.random.Generator, colour, amount: int = 20) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "box":
        draw.rectangle(box, fill=fill)
    elif shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif shape == "cross":
        tw, th = max(2, w // 3), max(2, h // 3)
        draw.rectangle((x0 + (w - tw) // 2, y0, x0 + (w + tw) // 2, y1), fill=fill)
        draw.rectangle((x0, y0 + (h - th) // 2, x1, y0 + (h + th) // 2), fill=fill)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    a, b = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    img = (a * (1 - t) + b * t) * np.ones((height, width, 1))
    img += rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.line((x0, y0, rng.integers(0, width), rng.integers(0, height)), fill=colour,
                      width=int(rng.integers(1, 4)))
        elif kind == 1:
            r = int(rng.integers(2, 6))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
        else:  # a grey distractor blob: shaped like an object but in no class colour
            g = int(rng.integers(90, 170))
            s = int(rng.integers(10, 30))
            draw.polygon([(x0, y0), (x0 + s, y0 + s // 3), (x0 + s // 2, y0 + s)], fill=(g, g, g))


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _annotation(name: str, width: int, height: int, objects) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for label, (x0, y0, x1, y1), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bb = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based, inclusive pixel coordinates
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(int(v))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _image(rng: np.random.Generator, min_size: int, max_size: int):
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, width, height)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            side = min(width, height) * rng.uniform(0.25, 0.7)
            aspect = math.exp(rng.uniform(-0.7, 0.7))
            w = int(np.clip(side * math.sqrt(aspect), 8, width - 2))
            h = int(np.clip(side / math.sqrt(aspect), 8, height - 2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, o[1]) < 0.15 for o in objects):
                break
        else:
            continue
        label = int(rng.integers(len(VOC_CLASSES)))
        shape, colour = class_style(label)
        _draw_object(draw, shape, box, _jitter(rng, colour))
        objects.append((label, box, min(w, h) < DIFFICULT_SIDE))
    return img, objects


def generate_voc(root: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0,
                 min_size: int = 176, max_size: int = 240, year: str = "2007") -> Path:
    """Write the data set under ``root/VOCdevkit/VOC{year}``; returns that folder.

    Splits: ``train`` and ``val`` (= ``test``) in ``ImageSets/Main``, plus ``trainval``.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be ≥ 1, got {n_train}, {n_test}")
    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}" for i in range(n_train + n_test)]
    for name in names:
        img, objects = _image(rng, min_size, max_size)
        img.save(base / "JPEGImages" / f"{name}.jpg", quality=92)
        (base / "Annotations" / f"{name}.xml").write_bytes(_annotation(name, img.width, img.height, objects))
    splits = {"train": names[:n_train], "val": names[n_train:], "test": names[n_train:],
              "trainval": names}
    for split, items in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    return base
