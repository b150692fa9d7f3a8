"""Atomic files outside the versioned store: training checkpoints (safetensors) and reports (JSON).

Every write goes to a temporary file in the target folder, is flushed to disk, then renamed over
the target, so a killed writer leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

__all__ = ["atomic_write", "save_tensors", "load_tensors", "save_json"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """safetensors file with JSON ``metadata`` (stored under the key ``json``)."""
    meta = {"json": json.dumps(metadata or {}, sort_keys=True)}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(flat, str(p), metadata=meta))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises several types for damaged files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def save_json(path: str | Path, obj) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))
