"""End-to-end demo on a synthetic task: train a small KAN, compress it every way, print a table.

The task is 10-class classification of points in ``[-1, 1]^16`` labelled by a random teacher
KAN, so a good KAN can learn it and every compression's damage shows in the accuracy.
Run: ``python -m sharekan.demo`` (``make demo``); ``--json PATH`` also writes the table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from .baselines import Int8KAN, prune_edges
from .kan import KAN
from .memory import runtime_bytes, storage_bytes
from .metrics import r2
from .table import format_table
from .vq_kan import compress_kan

__all__ = ["make_task", "train", "evaluate_variants", "main"]


def make_task(n_train: int = 8192, n_test: int = 4096, dim: int = 16, classes: int = 10,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``U(-1, 1)^dim`` labelled by the argmax of a random teacher KAN."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = KAN([dim, classes], grid_size=5)
    with torch.no_grad():
        teacher.layers[0].spline_weight.copy_(torch.randn(teacher.layers[0].spline_weight.shape,
                                                          generator=gen))
    x = torch.rand(n_train + n_test, dim, generator=gen) * 2 - 1
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 600,
          lr: float = 1e-2, batch: int = 1024, seed: int = 0) -> list[float]:
    """AdamW with cosine decay on mini-batches; returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate_variants(model: KAN, x: torch.Tensor, y: torch.Tensor, ks: list[int],
                      seed: int = 0) -> list[dict]:
    """Accuracy, storage, compression ratio, output R² and runtime bytes for every variant."""
    model.eval()
    variants: list[tuple[str, torch.nn.Module]] = [("dense fp32", model), ("int8 PTQ", Int8KAN(model))]
    for s in (0.1, 0.5):
        variants.append((f"pruned {int(s * 100)}%", prune_edges(model, s)))
    for k in ks:
        for dt in ("fp16", "int8"):
            variants.append((f"VQ K={k} {dt}", compress_kan(model, k, gain_dtype=dt, seed=seed)))
    ref = model(x)
    dense_bytes = storage_bytes(model)
    rows = []
    for name, m in variants:
        out = m(x)
        rows.append({
            "variant": name,
            "accuracy": float((out.argmax(dim=1) == y).float().mean()),
            "storage_bytes": storage_bytes(m),
            "compression": dense_bytes / storage_bytes(m),
            "output_r2": r2(ref, out),
            "runtime_bytes_b1": runtime_bytes(m, x[:1])["total"],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--json", help="also write the table as JSON to this path")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = make_task(seed=args.seed)
    model = KAN([xtr.shape[1], args.hidden, 10])
    edges = sum(layer.in_features * layer.out_features for layer in model.layers)
    print(f"KAN {[xtr.shape[1], args.hidden, 10]}: {edges} edges, cubic, G=10; "
          f"training {args.steps} steps on {len(xtr)} points ...", flush=True)
    t = time.perf_counter()
    losses = train(model, xtr, ytr, steps=args.steps, seed=args.seed)
    print(f"trained in {time.perf_counter() - t:.1f}s, loss {losses[0]:.3f} → {losses[-1]:.3f}", flush=True)
    ks = [k for k in (32, 256, 1024) if k <= edges]
    rows = evaluate_variants(model, xte, yte, ks, seed=args.seed)
    print(format_table(rows, [("variant", "variant", "s"), ("accuracy", "test acc", ".4f"),
                              ("storage_bytes", "storage B", ",d"), ("compression", "ratio", ".1f"),
                              ("output_r2", "output R²", ".4f"),
                              ("runtime_bytes_b1", "runtime B (batch 1)", ",d")]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "edges": edges, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
