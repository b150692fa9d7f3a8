"""A dense, per-location KAN detection head on a frozen backbone feature map.

Design (FCOS-style, single level, anchor-free), and why:

* Every feature-map location is one sample: its C-channel feature vector, standardised with
  per-channel statistics of the training features (so values land on the spline grid), goes
  through a KAN ``[C, hidden, num_classes + 4]`` (cubic, G = 10). A per-location head is what
  the paper compresses — all of its parameters are KAN edges — and it is cheap enough to train on
  a CPU. The only non-KAN parameters are the standardisation buffers and a per-output bias
  (a KAN layer has none; the class bias starts at the focal-loss prior −log((1−π)/π)).
* Classification: one sigmoid per class with focal loss (``torchvision.ops.sigmoid_focal_loss``),
  normalised by the number of positives. A location is positive for a box when its centre lies
  inside the box and within ``radius·stride`` of the box centre (FCOS centre sampling); the
  location nearest each box centre is always positive, so small boxes are never orphaned; among
  several boxes the smallest wins. Boxes flagged ``difficult`` are not trained on.
* Regression: distances to the four sides, ``exp(t)·stride``, trained with GIoU loss
  (``torchvision.ops.generalized_box_iou_loss``) on positives.
* Decoding: scores above a threshold, top-k, ``torchvision.ops.batched_nms`` per class.

Coordinates are in the resized ``size × size`` input; :func:`decode` maps them back to pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from ..kan import KAN

__all__ = ["HeadConfig", "KANDetectionHead", "location_centres", "assign_targets", "head_loss", "decode"]


@dataclass(frozen=True)
class HeadConfig:
    in_channels: int
    num_classes: int = 20
    hidden: int = 64
    grid_size: int = 10
    grid_range: tuple[float, float] = (-3.0, 3.0)
    stride: int = 16
    prior: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def edges(self) -> int:
        """KAN edges of the head ``[in_channels, hidden, num_classes + 4]``: what a codebook compresses."""
        return self.hidden * (self.in_channels + self.num_classes + 4)


class KANDetectionHead(nn.Module):
    """Standardise → KAN → + bias; outputs ``[..., num_classes + 4]`` (class logits, box deltas)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("feat_mean", torch.zeros(cfg.in_channels))
        self.register_buffer("feat_std", torch.ones(cfg.in_channels))
        self.kan = KAN([cfg.in_channels, cfg.hidden, cfg.num_classes + 4], grid_size=cfg.grid_size,
                       grid_range=cfg.grid_range)
        bias = torch.zeros(cfg.num_classes + 4)
        bias[: cfg.num_classes] = -math.log((1 - cfg.prior) / cfg.prior)
        self.out_bias = nn.Parameter(bias)

    @torch.no_grad()
    def fit_standardisation(self, feats: torch.Tensor) -> None:
        """Per-channel mean/std from training features ``[n, C]``."""
        f = feats.to(torch.float64)
        self.feat_mean.copy_(f.mean(dim=0).float())
        self.feat_std.copy_(f.std(dim=0).clamp_min(1e-6).float())

    def standardise(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats.to(torch.float32) - self.feat_mean) / self.feat_std

    def forward(self, feats: torch.Tensor, kan: nn.Module | None = None) -> torch.Tensor:
        """``feats [..., C]`` → ``[..., num_classes + 4]``; ``kan`` swaps in a compressed KAN."""
        return (kan or self.kan)(self.standardise(feats)) + self.out_bias

    def extra_bytes(self) -> int:
        """Bytes of the head's non-KAN tensors (standardisation and bias), stored by every variant."""
        return sum(t.numel() * t.element_size() for t in (self.feat_mean, self.feat_std, self.out_bias))


def location_centres(h: int, w: int, stride: int) -> torch.Tensor:
    """Centres ``[h·w, 2]`` (x, y) of a feature map's locations in input pixels, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], dim=1).float()


def assign_targets(centres: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, stride: int,
                   radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per location: class (``-1`` = background) and target box ``[L, 4]`` (zeros if background)."""
    n_loc = centres.shape[0]
    cls = torch.full((n_loc,), -1, dtype=torch.int64)
    tgt = torch.zeros(n_loc, 4)
    if boxes.numel() == 0:
        return cls, tgt
    cx, cy = centres[:, 0:1], centres[:, 1:2]
    inside = (cx > boxes[:, 0]) & (cx < boxes[:, 2]) & (cy > boxes[:, 1]) & (cy < boxes[:, 3])
    bcx, bcy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near = ((cx - bcx).abs() <= radius * stride) & ((cy - bcy).abs() <= radius * stride)
    pos = inside & near
    nearest = ((centres[:, None, :] - torch.stack([bcx, bcy], 1)[None]) ** 2).sum(-1).argmin(dim=0)
    pos[nearest, torch.arange(boxes.shape[0])] = True
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(pos, area[None, :].expand_as(pos), torch.full_like(pos, float("inf"), dtype=area.dtype))
    best_cost, best = cost.min(dim=1)
    hit = torch.isfinite(best_cost)
    cls[hit] = labels[best[hit]]
    tgt[hit] = boxes[best[hit]]
    return cls, tgt


def _boxes_from(deltas: torch.Tensor, centres: torch.Tensor, stride: int) -> torch.Tensor:
    d = torch.exp(deltas.clamp(max=8.0)) * stride
    return torch.stack([centres[:, 0] - d[:, 0], centres[:, 1] - d[:, 1],
                        centres[:, 0] + d[:, 2], centres[:, 1] + d[:, 3]], dim=1)


def head_loss(out: torch.Tensor, cls: torch.Tensor, tgt: torch.Tensor, centres: torch.Tensor,
              num_classes: int, stride: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss over all locations + GIoU loss over positives, both per positive."""
    logits, deltas = out[:, :num_classes], out[:, num_classes:]
    onehot = torch.zeros_like(logits)
    pos = cls >= 0
    onehot[pos, cls[pos]] = 1.0
    n_pos = max(1, int(pos.sum()))
    focal = sigmoid_focal_loss(logits, onehot, reduction="sum") / n_pos
    if pos.any():
        giou = generalized_box_iou_loss(_boxes_from(deltas[pos], centres[pos], stride), tgt[pos],
                                        reduction="sum") / n_pos
    else:
        giou = deltas.sum() * 0.0
    return focal + giou, {"focal": focal.item(), "giou": giou.item()}


@torch.no_grad()
def decode(out: torch.Tensor, centres: torch.Tensor, num_classes: int, stride: int,
           scale_xy: tuple[float, float], image_wh: tuple[int, int], score_thresh: float = 0.05,
           pre_nms: int = 300, iou: float = 0.5, max_det: int = 100
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's head output ``[L, num_classes + 4]`` → ``(boxes [n, 4] pixels, scores, labels)``."""
    scores = torch.sigmoid(out[:, :num_classes].float())
    boxes = _boxes_from(out[:, num_classes:].float(), centres, stride)
    loc, lab = torch.nonzero(scores > score_thresh, as_tuple=True)
    s = scores[loc, lab]
    if s.numel() > pre_nms:
        s, keep = s.topk(pre_nms)
        loc, lab = loc[keep], lab[keep]
    b = boxes[loc] * torch.tensor([scale_xy[0], scale_xy[1], scale_xy[0], scale_xy[1]])
    w, h = image_wh
    b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
    keep = batched_nms(b, s, lab, iou)[:max_det]
    return b[keep], s[keep], lab[keep]
