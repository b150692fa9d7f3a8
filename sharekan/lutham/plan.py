"""Static memory planner: every tensor the compressed head needs, in one aligned arena.

The plan lists, per layer, the codebook (shared by the head: placed once), indices, gains,
biases, base weights, grid constants, the basis scratch and the activation buffers for a declared
maximum batch; each at a ``ALIGN``-byte aligned offset, none overlapping. It reports bytes per
component, the total, whether the arena (and its hot part) fits a target's L2, and the order in
which to prefer residency: the codebook first (every edge gathers from it), then per-input
constants and scratch, then the per-edge streams that are read once per call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["ALIGN", "L2_BYTES", "LayerSpec", "Block", "Plan", "codebook_width", "plan_arena"]

ALIGN = 256  # bytes: cudaMalloc's alignment, enough for 128-bit loads and wmma tiles
L2_BYTES = {"A100": 40 << 20, "H100": 50 << 20, "H200": 60 << 20, "Jetson Orin": 4 << 20}
RESIDENCY = ("codebook", "grid", "t0", "h", "scales", "prep", "activations", "indices", "gains", "biases", "base")
MAX_COEF = 15  # the tensor-core path packs C coefficients + the base weight into 16 slots


@dataclass(frozen=True)
class LayerSpec:
    in_features: int
    out_features: int
    n_knots: int  # G + 7 for cubic splines


@dataclass(frozen=True)
class Block:
    name: str
    component: str
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Plan:
    blocks: list[Block]
    total: int
    max_rows: int
    codebook_size: int
    n_coef: int
    layers: list[LayerSpec]
    l2_persisting: str = "not requested"
    by_component: dict[str, int] = field(default_factory=dict)

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    def hot_bytes(self) -> int:
        """Bytes reused on every call and worth keeping in L2: codebook, constants, scratch."""
        return sum(b.nbytes for b in self.blocks if b.component in RESIDENCY[:7])

    def fits(self, l2_bytes: int) -> dict:
        return {"arena": self.total <= l2_bytes, "hot": self.hot_bytes() <= l2_bytes}

    def summary(self) -> dict:
        return {"total_bytes": self.total, "hot_bytes": self.hot_bytes(), "by_component": self.by_component,
                "max_rows": self.max_rows, "codebook_size": self.codebook_size,
                "residency_order": [c for c in RESIDENCY if c in self.by_component],
                "fits_l2": {t: self.fits(b) for t, b in L2_BYTES.items()},
                "l2_persisting": self.l2_persisting,
                "blocks": [asdict(b) for b in self.blocks]}


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def codebook_width(n_coef: int) -> int:
    """Floats per codeword in the arena: 3 zeros, the ``n_coef`` coefficients, then zeros to a
    multiple of 4 that holds the two aligned ``float4`` loads of the last window a basis reads
    (positions up to ``n_coef + 2``): 20 for the 13 coefficients of G = 10."""
    return (n_coef + 2) // 4 * 4 + 8


def plan_arena(layers: list[LayerSpec], codebook_size: int, max_rows: int) -> Plan:
    """Lay out the arena for a head of ``layers`` sharing one ``codebook_size``-entry codebook."""
    if not layers:
        raise ValueError("a head needs at least one layer")
    if max_rows < 1:
        raise ValueError(f"max_rows must be ≥ 1, got {max_rows}")
    if not 1 <= codebook_size <= 65_536:
        raise ValueError(f"codebook_size must be in [1, 65536] (uint16 indices), got {codebook_size}")
    n_coef = layers[0].n_knots - 4
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if a.out_features != b.in_features:
            raise ValueError(f"layer {i} has {a.out_features} outputs but layer {i + 1} takes {b.in_features}")
    if any(lay.n_knots - 4 != n_coef for lay in layers):
        raise ValueError("every layer must have the same number of spline coefficients (one codebook)")
    if n_coef > MAX_COEF:
        raise ValueError(f"{n_coef} coefficients per edge exceed LUTHAM's {MAX_COEF} (grid size ≤ 12)")
    specs: list[tuple[str, str, tuple[int, ...], str, int]] = [
        ("codebook", "codebook", (codebook_size, codebook_width(n_coef)), "float32", 4)]
    for n, lay in enumerate(layers):
        e = (lay.out_features, lay.in_features)
        specs += [(f"L{n}.grid", "grid", (lay.in_features, lay.n_knots), "float32", 4),
                  (f"L{n}.t0", "t0", (lay.in_features,), "float32", 4),
                  (f"L{n}.h", "h", (lay.in_features,), "float32", 4),
                  (f"L{n}.indices", "indices", e, "uint16", 2),
                  (f"L{n}.gains", "gains", e, "float16", 2),
                  (f"L{n}.biases", "biases", e, "float16", 2),
                  (f"L{n}.base", "base", e, "float16", 2),
                  (f"L{n}.scales", "scales", (3, lay.out_features), "float32", 4)]
    widest = max(lay.in_features for lay in layers)
    specs.append(("prep", "prep", (max_rows, widest, 8), "float32", 4))
    specs += [(f"act{n}", "activations", (max_rows, w), "float32", 4)
              for n, w in enumerate([layers[0].in_features] + [lay.out_features for lay in layers])]
    specs.sort(key=lambda sp: RESIDENCY.index(sp[1]))  # hot first: a contiguous prefix to persist in L2
    blocks, offset, by = [], 0, {}
    for name, comp, shape, dtype, item in specs:
        nbytes = item
        for s in shape:
            nbytes *= s
        blocks.append(Block(name, comp, offset, nbytes, shape, dtype))
        by[comp] = by.get(comp, 0) + nbytes
        offset += _aligned(nbytes)
    return Plan(blocks, offset, max_rows, codebook_size, n_coef, list(layers), by_component=by)
