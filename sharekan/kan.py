"""KAN layers with efficient-kan's parameterisation and state-dict keys.

``KANLinear`` holds ``grid [in, G+2k+1]`` (buffer), ``base_weight [out, in]``,
``spline_weight [out, in, G+k]`` and ``spline_scaler [out, in]`` (when
``enable_standalone_scale_spline``), so an efficient-kan ``KANLinear`` state dict loads as is and
gives the same outputs:

    y = silu(x) @ base_weight.T + bases(x).flatten(1) @ (spline_weight * scaler).flatten(1).T

Cubic splines on uniform grids use the closed-form basis (4 active bases per input); any other
order or grid uses the Cox–de Boor recursion. The spline term is exactly 0 outside every knot.
No grid update is offered: inputs are expected to be normalised into ``grid_range`` upstream.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bspline import bases, make_grid, uniform_grid_params
from .checks import check_finite, check_positive_int

__all__ = ["KANLinear", "KAN"]


class KANLinear(nn.Module):
    """One KAN layer: a learnable function ``φ_oi`` on every edge ``(o, i)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 10,
        spline_order: int = 3,
        scale_noise: float = 0.1,
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        enable_standalone_scale_spline: bool = True,
        grid_range: Sequence[float] = (-1.0, 1.0),
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("grid_size", grid_size), ("spline_order", spline_order)):
            check_positive_int(name, value)
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.enable_standalone_scale_spline = enable_standalone_scale_spline
        self.register_buffer("grid", make_grid(in_features, grid_size, spline_order, tuple(grid_range)))
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, self.n_coef))
        if enable_standalone_scale_spline:
            self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self._uniform_key: tuple | None = None
        self._uniform: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_parameters(scale_noise, scale_base, scale_spline)

    @property
    def n_coef(self) -> int:
        return self.grid_size + self.spline_order

    def reset_parameters(self, scale_noise: float = 0.1, scale_base: float = 1.0,
                         scale_spline: float = 1.0) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * scale_base)
        with torch.no_grad():
            noise = (torch.rand_like(self.spline_weight) - 0.5) * scale_noise / self.grid_size
            factor = 1.0 if self.enable_standalone_scale_spline else scale_spline
            self.spline_weight.copy_(noise * factor)
        if self.enable_standalone_scale_spline:
            nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * scale_spline)

    def scaled_spline_weight(self) -> torch.Tensor:
        """Per-edge coefficients ``c = spline_weight · spline_scaler``: ``[out, in, C]``."""
        if self.enable_standalone_scale_spline:
            return self.spline_weight * self.spline_scaler.unsqueeze(-1)
        return self.spline_weight

    def slope_penalty(self) -> torch.Tensor:
        """Mean squared slope of the edges' control polygons, ``((c[j+1] − c[j]) / h)²``: a B-spline's
        derivative is a spline of those slopes, so this bounds (in mean square) how fast an edge
        can change its output — the Lipschitz penalty of the head option ``lipschitz``."""
        h = (self.grid[:, -1] - self.grid[:, 0]) / (self.grid.shape[1] - 1)       # [in]
        c = self.scaled_spline_weight()
        return (((c[..., 1:] - c[..., :-1]) / h[None, :, None]) ** 2).mean()

    def uniform_params(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(t0, h)`` per input when the grid is uniform (cached until the grid changes)."""
        key = (self.grid.data_ptr(), self.grid._version, self.grid.device)
        if key != self._uniform_key:
            self._uniform = uniform_grid_params(self.grid)
            self._uniform_key = key
        return self._uniform

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """Bases ``[batch, in, C]`` of ``x [batch, in]``."""
        return bases(x, self.grid, self.spline_order, self.uniform_params())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLinear expects input with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x), self.base_weight)
        spline = F.linear(self.b_splines(x).reshape(x.shape[0], -1),
                          self.scaled_spline_weight().reshape(self.out_features, -1))
        return (base + spline).reshape(*lead, self.out_features)

    def validate_state_dict(self, state_dict, prefix: str = "", strict: bool = True) -> None:
        """Raise, naming the entry, if ``state_dict`` lacks a key (when ``strict``), has a
        wrongly shaped entry, or holds NaN/inf. Nothing is copied."""
        names = ["grid", "base_weight", "spline_weight"]
        if self.enable_standalone_scale_spline:
            names.append("spline_scaler")
        for name in names:
            key = prefix + name
            if key not in state_dict:
                if not strict:
                    continue
                raise KeyError(f"state dict is missing '{key}' for KANLinear "
                               f"({self.in_features}→{self.out_features})")
            value = state_dict[key]
            want = tuple(getattr(self, name).shape)
            if tuple(value.shape) != want:
                raise ValueError(f"state dict entry '{key}' has shape {tuple(value.shape)}, "
                                 f"expected {want}")
            check_finite(f"state dict entry '{key}'", value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self.validate_state_dict(state_dict, prefix, strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"grid_size={self.grid_size}, spline_order={self.spline_order}")


class KAN(nn.Module):
    """A stack of :class:`KANLinear` layers (efficient-kan's ``KAN``: keys ``layers.N.*``)."""

    def __init__(self, layers_hidden: Sequence[int], grid_size: int = 10, spline_order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), **layer_kwargs):
        super().__init__()
        if len(layers_hidden) < 2:
            raise ValueError(f"layers_hidden needs at least 2 widths, got {list(layers_hidden)}")
        self.layers = nn.ModuleList(
            KANLinear(i, o, grid_size=grid_size, spline_order=spline_order,
                      grid_range=grid_range, **layer_kwargs)
            for i, o in zip(layers_hidden[:-1], layers_hidden[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def slope_penalty(self) -> torch.Tensor:
        """The layers' :meth:`KANLinear.slope_penalty`, summed."""
        return sum(layer.slope_penalty() for layer in self.layers)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Validate every layer's entries first, so a bad state dict leaves the model untouched."""
        for n, layer in enumerate(self.layers):
            layer.validate_state_dict(state_dict, f"layers.{n}.", strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
