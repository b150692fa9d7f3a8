"""Reconstruction metrics: R² and relative error of coefficients and of layer outputs."""

from __future__ import annotations

import torch
from torch import nn

from .baselines import Int8KANLinear, PrunedKAN
from .kan import KAN, KANLinear
from .vq_kan import VQKANLinear

__all__ = ["r2", "relative_error", "layers_of", "coefficients", "layer_report"]


def r2(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """``1 − SS_res / SS_tot`` over all elements (``SS_tot`` about the mean of ``ref``)."""
    ref, approx = ref.double().reshape(-1), approx.double().reshape(-1)
    ss_tot = ((ref - ref.mean()) ** 2).sum()
    ss_res = ((ref - approx) ** 2).sum()
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else float("-inf")
    return float(1.0 - ss_res / ss_tot)


def relative_error(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖ref − approx‖ / ‖ref‖``."""
    ref, approx = ref.double(), approx.double()
    den = torch.linalg.vector_norm(ref)
    num = torch.linalg.vector_norm(ref - approx)
    return float(num / den) if den > 0 else float(num)


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The KAN layers of a dense, pruned, int8 or VQ model, in order."""
    if isinstance(model, PrunedKAN):
        return list(model.model.layers)
    if hasattr(model, "layers"):
        return list(model.layers)
    raise TypeError(f"{type(model).__name__} has no KAN layers")


def coefficients(layer: nn.Module) -> torch.Tensor:
    """Scaled spline coefficients ``[out, in, C]`` a layer computes with."""
    if isinstance(layer, KANLinear):
        return layer.scaled_spline_weight()
    if isinstance(layer, VQKANLinear):
        return layer.coefficients()
    if isinstance(layer, Int8KANLinear):
        return layer.weights()[1]
    raise TypeError(f"no coefficients for {type(layer).__name__}")


@torch.no_grad()
def layer_report(dense: KAN, compressed: nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """Per layer: coefficient and output R² / relative error; each compressed layer is fed the
    dense model's input to that layer, so errors do not compound across rows of the table."""
    rows = []
    for n, (d, c) in enumerate(zip(layers_of(dense), layers_of(compressed))):
        yd, yc = d(x), c(x)
        cd, cc = coefficients(d), coefficients(c)
        rows.append({"layer": n, "coef_r2": r2(cd, cc), "coef_rel_err": relative_error(cd, cc),
                     "out_r2": r2(yd, yc), "out_rel_err": relative_error(yd, yc)})
        x = yd
    return rows
