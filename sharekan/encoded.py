"""The compressed head as data: a :class:`~sharekan.vq_kan.VQKAN`'s stored tensors plus a small
description (sizes, widths, grid, codebook per layer), and the detection head's non-KAN tensors.

One form everywhere: the pipeline's ``encode`` and ``finetune`` artifacts hold it, and
``sharekan export`` writes :func:`pack`'s tensors and metadata as one self-contained safetensors
file that :func:`load` reads back bit for bit with this library alone, on CPU or GPU. A file of another
format version is refused with an error that names both versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bspline import expand_grid
from .quant import QuantizedTensor
from .vq_kan import VQKAN, VQKANLinear

__all__ = ["FORMAT", "FORMAT_VERSION", "FormatError", "CompressedHead", "to_tensors", "from_tensors", "pack", "unpack",
           "load"]

FORMAT = "sharekan-compressed-head"
FORMAT_VERSION = 1
_QUANTIZED = ("gain", "bias", "base")


class FormatError(ValueError):
    """A file or artifact that is not a compressed head of this format version; names the file."""


def to_tensors(vq: VQKAN) -> tuple[dict[str, torch.Tensor], dict]:
    """``vq``'s stored tensors (each distinct codebook once, ``codebook.{j}``; per layer
    ``layers.{n}.{name}``) and the description :func:`from_tensors` needs."""
    books = vq.codebooks()
    ptrs = [b.data_ptr() for b in books]
    tensors = {f"codebook.{j}": b.detach().cpu() for j, b in enumerate(books)}
    layers = []
    for n, layer in enumerate(vq.layers):
        for name, t in layer.state_dict().items():
            if name != "codebook":
                tensors[f"layers.{n}.{name}"] = t.detach().cpu()
        layers.append({"in": layer.in_features, "out": layer.out_features, "knots": layer.grid.shape[1],
                       "codebook": ptrs.index(layer.codebook.data_ptr()),
                       **{name: getattr(layer, name + "_dtype") for name in _QUANTIZED}})
    return tensors, {"k": int(books[0].shape[0]), "layers": layers}


def from_tensors(tensors: dict[str, torch.Tensor], description: dict) -> VQKAN:
    """The :class:`VQKAN` that :func:`to_tensors` described (the same tensors, bit for bit)."""
    try:
        books = {j: tensors[f"codebook.{j}"] for j in {lay["codebook"] for lay in description["layers"]}}
        return VQKAN([_layer(tensors, f"layers.{n}.", lay, books[lay["codebook"]])
                      for n, lay in enumerate(description["layers"])])
    except KeyError as e:
        raise FormatError(f"compressed head: tensor or field {e} missing") from None


def _layer(tensors: dict[str, torch.Tensor], prefix: str, lay: dict, codebook: torch.Tensor) -> VQKANLinear:
    def q(name: str) -> QuantizedTensor:
        dtype = lay[name]
        return QuantizedTensor(tensors[prefix + name], dtype, tensors.get(prefix + name + "_scale"),
                               columns=lay["in"] if dtype == "int4" else None)

    if prefix + "grid" in tensors:
        grid = tensors[prefix + "grid"]
    else:
        grid = expand_grid(tensors[prefix + "grid_lo"], tensors[prefix + "grid_h"], lay["in"], lay["knots"])
    return VQKANLinear(codebook, tensors[prefix + "indices"], *(q(n) for n in _QUANTIZED), grid)


@dataclass
class CompressedHead:
    """A compressed detection head: the KAN (``kan``), the detection head's own tensors and
    configuration (standardisation, output bias), and what it was made from (``meta``: K, side-data
    width, whether fine-tuned, lineage)."""

    kan: VQKAN
    head_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    head_config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def detection_head(self):
        """The :class:`~sharekan.detection.head.KANDetectionHead` with this KAN in place."""
        from .detection.head import HeadConfig, KANDetectionHead

        cfg = HeadConfig(**{**self.head_config, "grid_range": tuple(self.head_config["grid_range"])})
        head = KANDetectionHead(cfg)
        head.kan = self.kan
        with torch.no_grad():
            for name, t in self.head_tensors.items():  # standardisation and output bias
                getattr(head, name).copy_(t)
        return head.eval()

    def to(self, device) -> CompressedHead:
        self.kan.to(device)
        self.head_tensors = {n: t.to(device) for n, t in self.head_tensors.items()}
        return self


def pack(head: CompressedHead) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON metadata of ``head``'s file (``storage.files.save_tensors`` writes them)."""
    tensors, description = to_tensors(head.kan)
    tensors.update({f"head.{n}": t.detach().cpu() for n, t in head.head_tensors.items()})
    return tensors, {"format": FORMAT, "format_version": FORMAT_VERSION, "kan": description,
                     "head_config": head.head_config, "meta": head.meta}


def unpack(tensors: dict[str, torch.Tensor], metadata: dict, what: str) -> CompressedHead:
    """The inverse of :func:`pack`; ``what`` names the source in errors."""
    if metadata.get("format") != FORMAT:
        raise FormatError(f"{what} is not a SHARe-KAN compressed head (format {metadata.get('format')!r}, "
                          f"expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{what} has compressed-head format version {metadata.get('format_version')!r}; this "
                          f"library reads version {FORMAT_VERSION}: export it again with this version of sharekan")
    head = {n.removeprefix("head."): t for n, t in tensors.items() if n.startswith("head.")}
    kan = from_tensors({n: t for n, t in tensors.items() if not n.startswith("head.")}, metadata["kan"])
    return CompressedHead(kan.eval(), head, metadata.get("head_config", {}), metadata.get("meta", {}))


def load(path: str | Path, device: str | torch.device = "cpu") -> CompressedHead:
    """A compressed head exported by ``sharekan export`` (one safetensors file), on ``device``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed head file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("json", "{}"))
            tensors = {n: f.get_tensor(n) for n in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None
    return unpack(tensors, metadata, str(path)).to(device)
