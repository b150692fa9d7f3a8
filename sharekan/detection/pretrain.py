"""Supervised pretraining of a backbone on the training split, for when no pretrained weights exist.

The frozen-backbone setting of the paper assumes features that already mean something; a randomly
initialised ResNet gives the head little to work with. :func:`pretrain_backbone` trains the
truncated ResNet body end to end with a throw-away per-location linear predictor (a 1×1
convolution) under the head's own FCOS losses (:func:`head_loss`: focal + GIoU, same target
assignment), on the training images only, with horizontal flips. AdamW with a one-cycle schedule,
seeded batch order and flips; BatchNorm statistics are learnt too. The linear predictor is thrown
away: the KAN head is then trained on the frozen body's features as usual.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm import tqdm

from .backbone import normalise
from .head import assign_targets, head_loss, location_centres
from .voc import Sample

__all__ = ["pretrain_backbone"]


def _crop_targets(sample: Sample, size: int, stride: int, crop: int, x0: int, y0: int, flip: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the ``crop``-square window at ``(x0, y0)`` of the ``size``-square image (mirrored
    after cropping when ``flip``). Boxes are clipped to the window; one that keeps under half its
    area is dropped (its remains count as background)."""
    keep = ~sample.difficult
    sx, sy = size / sample.width, size / sample.height
    b = torch.as_tensor(sample.boxes[keep], dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    b = b - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    clipped = b.clamp(0, crop)
    area = lambda t: (t[:, 2] - t[:, 0]).clamp_min(0) * (t[:, 3] - t[:, 1]).clamp_min(0)  # noqa: E731
    visible = area(clipped) >= 0.5 * area(b)
    clipped, labels = clipped[visible], torch.as_tensor(sample.labels[keep])[visible]
    if flip:
        clipped = torch.stack([crop - clipped[:, 2], clipped[:, 1], crop - clipped[:, 0], clipped[:, 3]], dim=1)
    return assign_targets(location_centres(crop // stride, crop // stride, stride), clipped, labels, stride)


def pretrain_backbone(body: nn.Module, images: torch.Tensor, samples: list[Sample], size: int, stride: int,
                      channels: int, num_classes: int = 20, epochs: int = 8, crop: int = 128,
                      batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                      progress: bool = True) -> list[dict]:
    """Train ``body`` in place on uint8 ``images [N, 3, size, size]`` (see ``backbone.resized``); returns per-epoch losses
    and seconds. Each step sees one random ``crop``-square window per image (offsets on the stride
    grid, so object scale is the features' own) — ``(size/crop)²`` times cheaper than whole images.
    ``body`` is left in eval mode with its parameters frozen."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be ≥ 1, got {epochs}, {batch_size}")
    if crop % stride or not stride <= crop <= size:
        raise ValueError(f"crop must be a multiple of the stride {stride} between {stride} and {size}, got {crop}")
    if images.dtype != torch.uint8 or images.shape[0] != len(samples) or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(f"images must be uint8 [{len(samples)}, 3, {size}, {size}], got {images.dtype} "
                         f"{tuple(images.shape)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    predictor = nn.Conv2d(channels, num_classes + 4, 1)
    with torch.no_grad():
        predictor.bias[:num_classes] = -math.log((1 - 0.01) / 0.01)
        predictor.bias[num_classes:] = math.log(2.0)
    centres = location_centres(crop // stride, crop // stride, stride)
    offsets = (size - crop) // stride + 1
    for p in body.parameters():
        p.requires_grad_(True)
    params = list(body.parameters()) + list(predictor.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = -(-images.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    body.train()
    history = []
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(images.shape[0], generator=gen)
        flips = (torch.rand(images.shape[0], generator=gen) < 0.5).tolist()
        starts = (torch.randint(0, offsets, (images.shape[0], 2), generator=gen) * stride).tolist()
        bar = tqdm(range(steps), desc=f"pretrain {epoch + 1}/{epochs}", unit="step", disable=not progress,
                   leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            xs, cls, box = [], [], []
            for i in idx.tolist():
                (x0, y0), flip = starts[i], flips[i]
                window = images[i, :, y0:y0 + crop, x0:x0 + crop]
                xs.append(window.flip(-1) if flip else window)
                k, t = _crop_targets(samples[i], size, stride, crop, x0, y0, flip)
                cls.append(k)
                box.append(t)
            out = predictor(body(normalise(torch.stack(xs)))).permute(0, 2, 3, 1).reshape(-1, num_classes + 4)
            loss, _ = head_loss(out, torch.cat(cls), torch.cat(box), centres.repeat(len(idx), 1),
                                num_classes, stride)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"loss": total / steps, "seconds": time.perf_counter() - t0})
        if progress:
            print(f"pretrain epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f} "
                  f"({history[-1]['seconds']:.0f} s)", flush=True)
    body.eval()
    for p in body.parameters():
        p.requires_grad_(False)
    return history
