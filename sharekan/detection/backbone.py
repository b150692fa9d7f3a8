"""Frozen torchvision backbone and batched feature extraction.

The backbone (ResNet-50 by default; any torchvision ResNet by name) runs in eval mode with every
parameter frozen, truncated after ``layer3`` (C4, stride 16, the Faster R-CNN C4 choice) or
``layer4`` (C5, stride 32). Weights come from a checkpoint path the user gives, torchvision's
local cache (``torch.hub.get_dir()/checkpoints``), or a body trained by the pipeline itself
(``state``, see :mod:`.pretrain`); nothing is ever downloaded. With none, it runs with random
initialisation and says so loudly: ``BackboneInfo.pretrained`` is ``False`` and a warning is
printed; every report carries that flag.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from tqdm import tqdm

__all__ = ["BackboneInfo", "build_backbone", "resolve_weights", "backbone_channels", "extract_features", "preprocess",
           "resized", "normalise", "STRIDES"]

STRIDES = {"layer3": 16, "layer4": 32}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    layer: str
    stride: int
    channels: int
    pretrained: bool
    weights: str  # the checkpoint file used, or "random init"

    def to_dict(self) -> dict:
        return asdict(self)


def _find_cached(name: str) -> Path | None:
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(ckpt_dir.glob(f"{name}-*.pth")) if ckpt_dir.is_dir() else []
    return found[0] if found else None


def resolve_weights(name: str, weights: str | Path | None) -> str | None:
    """The checkpoint file a backbone loads: ``weights`` if given, else torchvision's cached file for
    ``name``, else ``None`` (random initialisation)."""
    path = Path(weights) if weights else _find_cached(name)
    return None if path is None else str(path)


def backbone_channels(name: str, layer: str) -> int:
    """Feature channels of ``name`` cut after ``layer``, from the architecture alone (no weights)."""
    if not name.startswith("resnet") or not hasattr(torchvision.models, name):
        raise ValueError(f"backbone must be a torchvision ResNet (e.g. 'resnet50'), got {name!r}")
    fc_in = getattr(torchvision.models, name)(weights=None).fc.in_features
    return fc_in if layer == "layer4" else fc_in // 2


def build_backbone(name: str = "resnet50", layer: str = "layer3", weights: str | Path | None = None,
                   seed: int = 0, state: dict | None = None, trained_on: str = "") -> tuple[nn.Module, BackboneInfo]:
    """A frozen, eval-mode feature extractor and what it is. ``state`` is the body's own state dict
    (as trained by :func:`.pretrain.pretrain_backbone` on ``trained_on``); it wins over ``weights``."""
    if layer not in STRIDES:
        raise ValueError(f"layer must be one of {sorted(STRIDES)}, got {layer!r}")
    if not name.startswith("resnet") or not hasattr(torchvision.models, name):
        raise ValueError(f"backbone must be a torchvision ResNet (e.g. 'resnet50'), got {name!r}")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    found = None if state is not None else resolve_weights(name, weights)
    path = None if found is None else Path(found)
    if weights and not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"backbone weights {path} lack {len(missing)} keys, e.g. {missing[:3]}")
    elif state is None:
        warnings.warn(f"no pretrained weights for {name} (none given, none in torchvision's cache "
                      f"{Path(torch.hub.get_dir()) / 'checkpoints'}): using RANDOM INITIALISATION",
                      stacklevel=2)
    stages = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
    if layer == "layer4":
        stages.append(net.layer4)
    body = nn.Sequential(*stages).eval()
    if state is not None:
        body.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    for p in body.parameters():
        p.requires_grad_(False)
    source = f"trained on {trained_on}" if state is not None else str(path) if path is not None else "random init"
    info = BackboneInfo(name, layer, STRIDES[layer], backbone_channels(name, layer),
                        state is not None or path is not None, source)
    return body, info


def resized(image, size: int) -> torch.Tensor:
    """PIL image → ``[3, size, size]`` uint8 tensor (resized without keeping aspect)."""
    return torchvision.transforms.functional.pil_to_tensor(image.resize((size, size)))


def normalise(t: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` → the float input the ResNets expect (ImageNet statistics)."""
    return (t.float() / 255.0 - _MEAN) / _STD


def preprocess(image, size: int) -> torch.Tensor:
    """PIL image → normalised ``[3, size, size]`` tensor (resized without keeping aspect)."""
    return normalise(resized(image, size))


@torch.inference_mode()
def extract_features(body: nn.Module, images, size: int, batch_size: int = 16,
                     progress: bool = True, desc: str = "features") -> torch.Tensor:
    """Features ``[N, C, size/stride, size/stride]`` (float16) of an indexable of PIL images."""
    out = []
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        batch = torch.stack([preprocess(images[i], size) for i in range(start, min(start + batch_size, n))])
        out.append(body(batch).to(torch.float16))
    return torch.cat(out)

