"""Baselines the paper compares against: magnitude pruning of edges and int8 PTQ of the dense KAN.

* :func:`prune_edges` removes the edges of smallest norm ``‖(w_base, c)‖`` (base weight and
  scaled spline coefficients together), globally or per layer, to an exact sparsity:
  ``round(sparsity · edges)`` edges go, ties broken by edge order.
* :class:`Int8KAN` stores base weights and scaled spline coefficients as int8 with one fp32 scale
  per output channel; ``|w − ŵ| ≤ scale/2`` element-wise.
* :class:`DenseKAN` is the dense head as a user deploys it at its best: each layer one GEMM over
  ``[silu(x), bases(x)]`` against the fused ``[base | spline]`` weight in fp16 (or any dtype),
  bases by the Cox–de Boor recursion in fp32; no data-dependent control flow, so
  ``torch.compile`` captures it whole (zero graph breaks) at any static shape.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .bspline import bases, cardinal_cubic, cox_de_boor, grid_bytes, uniform_grid_params
from .checks import check_choice
from .kan import KAN, KANLinear
from .quant import quantize

__all__ = ["edge_norms", "PrunedKAN", "prune_edges", "Int8KANLinear", "Int8KAN", "DenseKAN"]


def edge_norms(layer: KANLinear) -> torch.Tensor:
    """Norm of each edge's parameters ``[out, in]``: base weight and scaled coefficients."""
    c = layer.scaled_spline_weight().detach()
    return torch.sqrt(layer.base_weight.detach() ** 2 + (c * c).sum(dim=-1))


def _bottom(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask keeping all but the ``n`` smallest entries (stable: earlier index goes first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    order = torch.sort(scores.reshape(-1).cpu(), stable=True).indices
    keep[order[:n]] = False
    return keep.reshape(scores.shape)


class PrunedKAN(nn.Module):
    """A dense KAN with pruned edges zeroed; ``masks[n]`` marks the kept edges of layer ``n``."""

    def __init__(self, model: KAN, masks: list[torch.Tensor]):
        super().__init__()
        self.model = model
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks)
        return 1.0 - sum(int(m.sum()) for m in self.masks) / total

    def storage_components(self) -> dict[str, int]:
        """Kept edges (base weight + C folded coefficients, fp32), a 1-bit mask per edge, grids."""
        out = {"base_weights": 0, "spline_coefficients": 0, "mask": 0, "grid": 0}
        for layer, mask in zip(self.model.layers, self.masks):
            kept = int(mask.sum())
            out["base_weights"] += kept * 4
            out["spline_coefficients"] += kept * layer.n_coef * 4
            out["mask"] += -(-mask.numel() // 8)
            out["grid"] += grid_bytes(layer.grid)
        return out


def prune_edges(model: KAN, sparsity: float, scope: str = "global") -> PrunedKAN:
    """Copy ``model`` with the fraction ``sparsity`` of its edges (smallest norm) removed."""
    check_choice("scope", scope, ("global", "layer"))
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    pruned = copy.deepcopy(model)
    norms = [edge_norms(layer) for layer in pruned.layers]
    if scope == "global":
        flat = torch.cat([n.reshape(-1) for n in norms])
        keep = _bottom(flat, round(sparsity * flat.numel()))
        masks = list(torch.split(keep, [n.numel() for n in norms]))
        masks = [m.reshape(n.shape) for m, n in zip(masks, norms)]
    else:
        masks = [_bottom(n, round(sparsity * n.numel())) for n in norms]
    with torch.no_grad():
        for layer, mask in zip(pruned.layers, masks):
            m = mask.to(layer.base_weight.device, layer.base_weight.dtype)
            layer.base_weight.mul_(m)
            layer.spline_weight.mul_(m.unsqueeze(-1))
    return PrunedKAN(pruned, masks)


class Int8KANLinear(nn.Module):
    """One KAN layer with int8 base weights and coefficients, one fp32 scale per output row."""

    def __init__(self, layer: KANLinear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.spline_order = layer.spline_order
        base = quantize("base_weight", layer.base_weight, "int8")
        coef = quantize("spline coefficients", layer.scaled_spline_weight(), "int8")
        self.register_buffer("base", base.data)
        self.register_buffer("base_scale", base.scale)
        self.register_buffer("coef", coef.data)
        self.register_buffer("coef_scale", coef.scale)
        self.register_buffer("grid", layer.grid.detach().clone())
        self._uniform = uniform_grid_params(self.grid)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantised ``(base_weight [out, in], coefficients [out, in, C])``."""
        base = self.base.to(torch.float32) * self.base_scale[:, None]
        coef = self.coef.to(torch.float32) * self.coef_scale[:, None, None]
        return base, coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, coef = self.weights()
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        b = bases(flat, self.grid, self.spline_order, self._uniform).reshape(flat.shape[0], -1)
        y = F.silu(flat) @ base.T + b @ coef.reshape(self.out_features, -1).T
        return y.reshape(*lead, self.out_features)


class Int8KAN(nn.Module):
    """Int8 per-output-channel post-training quantisation of a dense KAN's weights."""

    def __init__(self, model: KAN):
        super().__init__()
        self.layers = nn.ModuleList(Int8KANLinear(layer) for layer in model.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def storage_components(self) -> dict[str, int]:
        def nb(*ts):
            return sum(t.numel() * t.element_size() for t in ts)
        return {"base_weights": sum(nb(q.base) for q in self.layers),
                "spline_coefficients": sum(nb(q.coef) for q in self.layers),
                "scales": sum(nb(q.base_scale, q.coef_scale) for q in self.layers),
                "grid": sum(grid_bytes(q.grid) for q in self.layers)}


class DenseKAN(nn.Module):
    """A :class:`KAN`'s forward, fused for inference: ``y = [silu(x), bases(x)] @ W.T`` per layer with
    ``W [out, in·(C+1)]`` in ``dtype`` (fp16 by default; fp32 accumulate in the GEMM). Bases by the
    Cox–de Boor recursion, or with ``closed_form`` (cubic splines on uniform grids) as the cardinal
    cubic B-spline of each basis, elementwise (``bspline.cardinal_cubic``: one fused kernel under
    ``torch.compile``)."""

    def __init__(self, model: KAN, dtype: torch.dtype = torch.float16, closed_form: bool = False):
        super().__init__()
        self.dtype, self.orders, self.closed_form = dtype, [], closed_form
        for n, lay in enumerate(model.layers):
            fused = torch.cat([lay.base_weight.detach().unsqueeze(-1), lay.scaled_spline_weight().detach()], dim=-1)
            self.register_buffer(f"w{n}", fused.reshape(lay.out_features, -1).to(dtype).contiguous())
            self.register_buffer(f"grid{n}", lay.grid.detach().float().clone())
            if closed_form:
                uniform = lay.uniform_params()
                if lay.spline_order != 3 or uniform is None:
                    raise ValueError(f"closed-form bases need cubic splines on a uniform grid (layer {n})")
                self.register_buffer(f"t0{n}", uniform[0].detach().float().clone())
                self.register_buffer(f"h{n}", uniform[1].detach().float().clone())
            self.orders.append(lay.spline_order)

    def _bases(self, n: int, h: torch.Tensor) -> torch.Tensor:
        grid = getattr(self, f"grid{n}")
        if not self.closed_form:
            return cox_de_boor(h, grid, self.orders[n])
        return cardinal_cubic(h, getattr(self, f"t0{n}"), getattr(self, f"h{n}"), grid.shape[1] - 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1]).float()
        for n in range(len(self.orders)):
            feats = torch.cat([F.silu(h).unsqueeze(-1), self._bases(n, h)], dim=-1)
            h = F.linear(feats.reshape(h.shape[0], -1).to(self.dtype), getattr(self, f"w{n}")).float()
        return h.reshape(*lead, h.shape[-1])
