"""Embedded default data: a seeded generator that writes a synthetic data set in VOC format.

``VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main}`` with the 20 VOC class names.
Each class is one of 4 shapes (box, disc, triangle, cross) drawn in one of 5 colour
families; colours jitter per object, so telling classes apart needs both colour and shape.
Images vary in size; 1–4 objects each, of varied scale and aspect, overlapping (later objects
occlude earlier ones), on a gradient background with clutter (lines, specks, and distractor
blobs that are no class). Small objects are flagged ``difficult`` as VOC does. The same seed
always gives the same files, byte for byte.

With ``n_ood`` > 0 an out-of-distribution split ``ood`` is added, drawn in the :data:`SHIFTED`
style (its own random stream, so the other splits are unchanged): the same classes, with
colours jittered twice as far and the whole image darker and lower in contrast, striped
backgrounds instead of gradients, noise σ 20 instead of 8, and objects about 40 % smaller.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .voc import VOC_CLASSES

__all__ = ["SHAPES", "PALETTES", "Style", "DEFAULT", "SHIFTED", "class_style", "generate_voc"]

SHAPES = ("box", "disc", "triangle", "cross")
# colour families (RGB centres); a class is (shape, family)
PALETTES = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 40), (190, 60, 200))
DIFFICULT_SIDE = 20  # objects whose shorter side is below this many pixels are 'difficult'


@dataclass(frozen=True)
class Style:
    """How images are drawn: colour jitter, a global contrast/brightness map, background,
    noise and object scale (as a fraction of the shorter image side)."""

    jitter: int = 20
    contrast: float = 1.0
    brightness: float = 0.0
    stripes: bool = False
    noise: float = 8.0
    scale: tuple[float, float] = (0.25, 0.7)


DEFAULT = Style()
SHIFTED = Style(jitter=40, contrast=0.75, brightness=-20.0, stripes=True, noise=20.0, scale=(0.15, 0.42))


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


def _background(rng: np.random.Generator, width: int, height: int, style: Style) -> Image.Image:
    a, b = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    if style.stripes:  # alternating bands of the two colours, random period and direction
        period = int(rng.integers(6, 20))
        axis = np.arange(width)[None, :, None] if rng.random() < 0.5 else np.arange(height)[:, None, None]
        t = ((axis // period) % 2).astype(float)
    else:
        t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    img = (a * (1 - t) + b * t) * np.ones((height, width, 1))
    img += rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _finish(rng: np.random.Generator, img: Image.Image, style: Style) -> Image.Image:
    """The style's global contrast/brightness map and extra noise, over the drawn image."""
    if style == DEFAULT:
        return img
    a = np.asarray(img, dtype=np.float64)
    a = (a - 128.0) * style.contrast + 128.0 + style.brightness
    a += rng.normal(0, math.sqrt(max(style.noise**2 - 8.0**2, 0.0)), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


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


def _image(rng: np.random.Generator, min_size: int, max_size: int, style: Style = DEFAULT):
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    img = _background(rng, width, height, style)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, width, height)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            side = min(width, height) * rng.uniform(*style.scale)
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
        _draw_object(draw, shape, box, _jitter(rng, colour, style.jitter))
        objects.append((label, box, min(w, h) < DIFFICULT_SIDE))
    return _finish(rng, img, style), objects


def generate_voc(root: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0,
                 min_size: int = 176, max_size: int = 240, year: str = "2007", n_ood: int = 0,
                 style: Style = DEFAULT) -> Path:
    """Write the data set under ``root/VOCdevkit/VOC{year}``; returns that folder.

    Splits: ``train`` and ``val`` (= ``test``) in ``ImageSets/Main``, plus ``trainval``, drawn in
    ``style`` (:data:`SHIFTED`: another domain of the same classes); with ``n_ood`` > 0 also ``ood``
    (the :data:`SHIFTED` style, see the module docstring).
    """
    if n_train < 1 or n_test < 1 or n_ood < 0:
        raise ValueError(f"n_train and n_test must be ≥ 1 and n_ood ≥ 0, got {n_train}, {n_test}, {n_ood}")
    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}" for i in range(n_train + n_test)]
    for name in names:
        img, objects = _image(rng, min_size, max_size, style)
        img.save(base / "JPEGImages" / f"{name}.jpg", quality=92)
        (base / "Annotations" / f"{name}.xml").write_bytes(_annotation(name, img.width, img.height, objects))
    splits = {"train": names[:n_train], "val": names[n_train:], "test": names[n_train:],
              "trainval": names}
    if n_ood:
        ood_rng = np.random.default_rng([seed, 1])  # its own stream: the other splits stay byte-identical
        splits["ood"] = [f"ood{i:06d}" for i in range(n_ood)]
        for name in splits["ood"]:
            img, objects = _image(ood_rng, min_size, max_size, SHIFTED)
            img.save(base / "JPEGImages" / f"{name}.jpg", quality=92)
            (base / "Annotations" / f"{name}.xml").write_bytes(_annotation(name, img.width, img.height, objects))
    for split, items in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    return base
