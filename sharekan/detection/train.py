"""Training and inference of the KAN detection head on cached feature maps.

Training samples are feature-map locations: :func:`location_targets` flattens ``[N, C, h, w]``
features with their per-location targets once; :func:`train_head` runs AdamW with a one-cycle
schedule over shuffled mini-batches of locations (seeded), showing progress, and hands each
epoch's state to an optional ``on_epoch`` callback (the caller saves checkpoints). With
``resume_path`` it saves everything training needs after every epoch (weights, optimiser,
schedule, both random streams, history; atomically) and, when the file exists, continues from
it: a run killed at epoch 11 of 40 and restarted ends with the same weights as one never killed.
:func:`finetune_vq` fine-tunes a compressed
KAN's stored values on the same loss. :func:`predict` turns feature maps into per-image detections in original pixels.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..finetune import trainable
from ..vq_kan import VQKAN
from .evaluate import Detections, GroundTruth
from .head import KANDetectionHead, assign_targets, decode, head_loss, location_centres
from .voc import Sample

__all__ = ["location_targets", "train_head", "finetune_vq", "resume_epoch", "predict", "ground_truth"]


def _scaled(sample: Sample, size: int) -> torch.Tensor:
    sx, sy = size / sample.width, size / sample.height
    return torch.as_tensor(sample.boxes) * torch.tensor([sx, sy, sx, sy])


def location_targets(feats: torch.Tensor, samples: list[Sample], size: int, stride: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [M, C], cls [M], box [M, 4], centres [M, 2])`` for every location of every image."""
    n, c, h, w = feats.shape
    centres = location_centres(h, w, stride)
    cls, box = [], []
    for s in samples:
        keep = torch.as_tensor(~s.difficult)
        k, b = assign_targets(centres, _scaled(s, size)[keep], torch.as_tensor(s.labels)[keep], stride)
        cls.append(k)
        box.append(b)
    x = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return x, torch.cat(cls), torch.cat(box), centres.repeat(n, 1)


def train_head(head: KANDetectionHead, x: torch.Tensor, cls: torch.Tensor, box: torch.Tensor,
               centres: torch.Tensor, epochs: int = 10, batch_size: int = 2048, lr: float = 3e-3,
               weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
               on_epoch: Callable[[int, dict], None] | None = None,
               resume_path: str | Path | None = None, lipschitz: float = 0.0) -> list[dict]:
    """Train in place; returns per-epoch mean losses. ``lipschitz`` > 0 adds that multiple of the
    KAN's :meth:`~sharekan.kan.KAN.slope_penalty` to the loss (LipKAN-style smoothness)."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be ≥ 1, got {epochs}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head.train()
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.1)
    cfg = head.cfg
    history, start = [], 0
    key = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
           "rows": int(x.shape[0]), "lipschitz": lipschitz}
    if resume_path is not None and Path(resume_path).is_file():
        state = torch.load(resume_path, weights_only=True)
        if state["key"] == key:
            head.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            history, start = state["history"], state["epoch"]
            if progress:
                print(f"resuming from {resume_path} after epoch {start}/{epochs}", flush=True)
    for epoch in range(start, epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        totals = {"loss": 0.0, "focal": 0.0, "giou": 0.0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   unit="step", leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss, parts = head_loss(head(x[idx]), cls[idx], box[idx], centres[idx], cfg.num_classes, cfg.stride)
            if lipschitz:
                loss = loss + lipschitz * head.kan.slope_penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals["loss"] += loss.item()
            totals["focal"] += parts["focal"]
            totals["giou"] += parts["giou"]
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({k: v / steps_per_epoch for k, v in totals.items()})
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f} "
                  f"(focal {history[-1]['focal']:.4f}, giou {history[-1]['giou']:.4f})", flush=True)
        if resume_path is not None:
            _save_atomic({"key": key, "epoch": epoch + 1, "model": head.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "gen": gen.get_state(), "rng": torch.get_rng_state(),
                          "history": history}, Path(resume_path))
        if on_epoch is not None:
            on_epoch(epoch, head.state_dict())
    head.eval()
    return history


def finetune_vq(head: KANDetectionHead, vq: VQKAN, x: torch.Tensor, cls: torch.Tensor, box: torch.Tensor,
                centres: torch.Tensor, epochs: int = 2, batch_size: int = 2048, lr: float = 1e-3,
                train_codebook: bool = False, seed: int = 0, progress: bool = True) -> tuple[VQKAN, list[dict]]:
    """``vq`` (the compressed form of ``head.kan``) fine-tuned on the head's loss with its indices
    fixed (see :mod:`sharekan.finetune`); ``head`` itself is unchanged. Returns the new
    compressed KAN and per-epoch losses."""
    tuned = copy.deepcopy(head)
    tuned.kan = trainable(vq, train_codebook)
    tuned.out_bias.requires_grad_(False)
    history = train_head(tuned, x, cls, box, centres, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=0.0, seed=seed, progress=progress)
    return tuned.kan.encoded(), history


def resume_epoch(path: str | Path | None) -> int:
    """The epoch a ``resume_path`` file would continue after (0: none there)."""
    if path is None or not Path(path).is_file():
        return 0
    return int(torch.load(path, weights_only=True)["epoch"])


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def predict(head: KANDetectionHead, feats: torch.Tensor, samples: list[Sample], size: int,
            kan: nn.Module | None = None, batch_images: int = 32, **decode_kw) -> list[Detections]:
    """Detections per image (original pixels); ``kan`` swaps in a compressed KAN."""
    n, c, h, w = feats.shape
    centres = location_centres(h, w, head.cfg.stride)
    dets = []
    for start in range(0, n, batch_images):
        chunk = feats[start:start + batch_images].permute(0, 2, 3, 1).reshape(-1, h * w, c)
        out = head(chunk, kan=kan)
        for o, s in zip(out, samples[start:start + batch_images]):
            b, sc, lab = decode(o, centres, head.cfg.num_classes, head.cfg.stride,
                                (s.width / size, s.height / size), (s.width, s.height), **decode_kw)
            dets.append(Detections(b.numpy(), sc.numpy(), lab.numpy()))
    return dets


def ground_truth(samples: list[Sample]) -> list[GroundTruth]:
    return [GroundTruth(s.boxes, s.labels, s.difficult) for s in samples]
