"""Static memory planner: every tensor the compressed head needs, in one aligned arena.

The plan lists the codebook (shared by the head: placed once) as float32 4-coefficient windows
(:func:`window_slot`), per layer the edge records (8 bytes an edge, tile-major, outputs padded to
whole 16-output tiles), per-output scales and per-input knot constants, and the activation
buffers for a declared maximum batch; each at an ``ALIGN``-byte aligned offset, none overlapping.
The tensor-core kernels read their B fragments from a bounded ``bases`` scratch
(:func:`~sharekan.lutham.geometry.bases_scratch`); a head run as cuBLAS slabs at large batches adds
one bounded ``workspace`` (a slab's fp16 weights and bases,
:func:`~sharekan.lutham.geometry.slab_workspace`), last — and then the runtime keeps the B
fragments in the workspace's first bytes (a call runs one path or the other), planning no
``bases`` block. The plan reports bytes per component,
the total, whether the arena (and its hot part) fits a target's L2, and the order in which to
prefer residency: the codebook first (every edge gathers from it), then per-input and per-output
constants, then the edge records (read once per call: resident across calls where L2 holds
them), then the activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .geometry import TILE_O

__all__ = ["ALIGN", "L2_BYTES", "LayerSpec", "Block", "Plan", "n_windows", "window_slot", "plan_arena", "plan_packed"]

ALIGN = 256  # bytes: cudaMalloc's alignment, enough for 128-bit loads and wmma tiles
L2_BYTES = {"A100": 40 << 20, "H100": 50 << 20, "H200": 60 << 20, "Jetson Orin": 4 << 20}
RESIDENCY = ("codebook", "t0", "h", "scales", "edges", "activations", "bases", "workspace")
PLANES = ("idx", "gain", "bias", "base")  # a packed layer's edge planes (``packed.PackedLayer``)
HOT = 4  # the codebook and the constants: reused by every edge on every call
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
        """Bytes reused by every edge on every call: the codebook and the per-input/per-output constants."""
        return sum(b.nbytes for b in self.blocks if b.component in RESIDENCY[:HOT])

    def edge_bytes(self) -> float:
        """Bytes the edge records take an edge (outputs padded to whole tiles or groups included)."""
        return self.by_component["edges"] / sum(lay.in_features * lay.out_features for lay in self.layers)

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


def n_windows(n_coef: int) -> int:
    """Windows per codeword: one per first basis ``-3 … n_coef - 1`` (``n_coef + 3``), at least the
    16 whose aligned four (3, 7, 11, 15) hold coefficients 0 … 15: 16 for G = 10."""
    return max(n_coef + 3, 16)


def window_slot(p: int) -> int:
    """Where window ``p`` (coefficients ``p-3 … p``) sits in a codeword: the aligned windows 3, 7,
    11, 15 first (so the whole codeword is its first 64 bytes), then the others in order (the
    kernels' ``window_slot``)."""
    return p >> 2 if p < 16 and p & 3 == 3 else 4 + p - min((p + 1) >> 2, 4)


def plan_arena(layers: list[LayerSpec], codebook_size: int, max_rows: int, workspace: int = 0,
               bases: int = 0) -> Plan:
    """Lay out the arena for a head of ``layers`` sharing one ``codebook_size``-entry codebook, with
    ``bases`` bytes of B-fragment scratch for the tensor-core kernels and ``workspace`` bytes for the
    slab path (0: none)."""
    n_coef = _check(layers, codebook_size, max_rows)
    specs: list[tuple[str, str, tuple[int, ...], str, int]] = [
        ("codebook", "codebook", (codebook_size, n_windows(n_coef), 4), "float32", 4)]
    for n, lay in enumerate(layers):
        tiles = -(-lay.out_features // TILE_O)
        specs += [(f"L{n}.t0", "t0", (lay.in_features,), "float32", 4),
                  (f"L{n}.h", "h", (lay.in_features,), "float32", 4),
                  (f"L{n}.edges", "edges", (tiles, lay.in_features, TILE_O, 4), "uint16", 2),
                  (f"L{n}.scales", "scales", (3, lay.out_features), "float32", 4)]
    return _layout(specs, layers, codebook_size, n_coef, max_rows, workspace, bases)


def plan_packed(layers: list[LayerSpec], codebook_size: int, side_bytes: int, max_rows: int, windows: bool,
                workspace: int = 0, partials: int = 0) -> Plan:
    """Lay out the arena for a head run from packed planes (LUTHAM v3, ``packed.PackedLayer``): the
    codebook coefficient-major ``[C, K_pad]`` (and as 4-coefficient windows where ``windows``: heads
    with a layer that gathers windows instead of building lookup tables, or tensor cores), per layer the knot constants, the per-output
    scales ``[4, out_pad]`` and the four edge planes — the index plane at 1 byte an edge where
    ``K ≤ 256`` (2 otherwise), each side plane at ``side_bytes`` bytes a group of 8 outputs — then the
    activations, the partial sums of split inputs (``partials`` floats; 0: none) and the slab ``workspace``
    (0: none)."""
    n_coef = _check(layers, codebook_size, max_rows)
    specs: list[tuple[str, str, tuple[int, ...], str, int]] = [
        ("codebook", "codebook", (n_coef, -(-codebook_size // 32) * 32), "float32", 4)]
    if windows:
        specs.append(("windows", "codebook", (codebook_size, n_windows(n_coef), 4), "float32", 4))
    for n, lay in enumerate(layers):
        groups = -(-lay.out_features // 8)
        specs += [(f"L{n}.t0", "t0", (lay.in_features,), "float32", 4),
                  (f"L{n}.h", "h", (lay.in_features,), "float32", 4),
                  (f"L{n}.scales", "scales", (4, groups * 8), "float32", 4),
                  (f"L{n}.idx", "edges", (lay.in_features, groups * 8 * (1 if codebook_size <= 256 else 2)), "uint8", 1),
                  *((f"L{n}.{q}", "edges", (lay.in_features, groups * side_bytes), "uint8", 1) for q in PLANES[1:])]
    if partials:
        specs.append(("partials", "activations", (partials,), "float32", 4))
    return _layout(specs, layers, codebook_size, n_coef, max_rows, workspace, 0)


def _check(layers: list[LayerSpec], codebook_size: int, max_rows: int) -> int:
    """The head's coefficients per edge, after checking that the layers chain and fit LUTHAM."""
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
    return n_coef


def _layout(specs, layers: list[LayerSpec], codebook_size: int, n_coef: int, max_rows: int, workspace: int,
            bases: int) -> Plan:
    """``specs`` plus the activations, scratch and workspace, placed hot first at aligned offsets."""
    specs += [(f"act{n}", "activations", (max_rows, w), "float32", 4)
              for n, w in enumerate([layers[0].in_features] + [lay.out_features for lay in layers])]
    if bases:
        specs.append(("bases", "bases", (-(-bases // 4),), "uint32", 4))
    if workspace:
        specs.append(("workspace", "workspace", (workspace,), "uint8", 1))
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
