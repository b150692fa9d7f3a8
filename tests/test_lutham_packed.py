"""LUTHAM v3's packed planes: the format round-trips what storage keeps (every width, odd sizes, K at
256 / 257 / 65,536), its CPU reference equals the stored head's forward, the arena and launch geometry
add up, and — on a CUDA machine — the packed kernels against the stored head on every path."""

import numpy as np
import pytest
import torch

from sharekan.kan import KAN
from sharekan.lutham.geometry import (LUT_FLOATS, PACKED_KERNELS, PACKED_NR, PACKED_TC_STEP, ROW1_CLUSTER, THREADS,
                                      packed_launch, packed_tc_launch, packed_tc_partials, row1_launch,
                                      row1_partials)
from sharekan.lutham.packed import edge_bytes, pack_layer, reference_forward, unpack_layer
from sharekan.lutham.packed_head import ONE_ROW
from sharekan.lutham.plan import LayerSpec, plan_packed
from sharekan.vq_kan import VQKAN, encode_layer

from .conftest import randomize

WIDTHS = ("int4", "int8", "fp16")


def packed_vq(sizes, k, side, device="cpu", seed=0):
    torch.manual_seed(seed)
    model = randomize(KAN(sizes)).to(device)
    shapes = torch.nn.functional.normalize(torch.randn(k, 13, device=device), dim=1)
    return VQKAN([encode_layer(layer, shapes, side) for layer in model.layers]).eval()


@pytest.mark.parametrize("k", [256, 257, 65_536])
@pytest.mark.parametrize("side", WIDTHS)
def test_packed_planes_round_trip_the_stored_layer(k, side):
    layer = packed_vq([13, 21], k, side).layers[0]  # 21 outputs: a partial group of 8
    p = pack_layer(layer)
    assert p.idx.dtype == (np.uint8 if k <= 256 else np.uint16) and p.idx.shape == (13, 3, 8)
    back = unpack_layer(p)
    assert np.array_equal(back["indices"], layer.indices.numpy().astype(np.int64))
    for q in ("gain", "bias", "base"):
        assert np.array_equal(back[q], layer.stored_values(q).numpy())  # the stored values, bit for bit
        scale = getattr(layer, q + "_scale")
        want = np.ones(21, np.float32) if scale is None else scale.numpy().ravel()
        np.testing.assert_allclose(back[q + "_scale"], want, rtol=1e-6)
    assert p.record_bytes == 13 * 24 * edge_bytes(k, side)
    assert edge_bytes(256, "int4") == 2.5 and edge_bytes(256, "int8") == 4 and edge_bytes(65_536, "fp16") == 8


@pytest.mark.parametrize("k", [256, 257])
@pytest.mark.parametrize("side", WIDTHS)
def test_the_packed_reference_equals_the_stored_heads_forward(k, side):
    vq = packed_vq([17, 9, 5], k, side, seed=1)
    x = torch.cat([torch.rand(4, 17) * 2 - 1, (torch.rand(3, 17) * 2 - 1) * 6])  # inside and outside the grid
    with torch.no_grad():
        ref = vq(x)
        h = x
        for layer in vq.layers:
            h = reference_forward(pack_layer(layer), layer.codebook, h)
    assert float((h - ref).abs().max() / ref.abs().max()) < 1e-5


def test_packing_refuses_mixed_widths_and_names_them():
    model = randomize(KAN([6, 4]))
    shapes = torch.nn.functional.normalize(torch.randn(16, 13), dim=1)
    layer = encode_layer(model.layers[0], shapes, "int4", base_dtype="fp32")
    with pytest.raises(ValueError, match="gain as int4, bias as int4, base as fp32"):
        pack_layer(layer)


def test_packed_plan_holds_two_and_a_half_bytes_an_edge_at_k256_int4():
    layers = [LayerSpec(12_544, 1024, 17), LayerSpec(1024, 1024, 17)]
    plan = plan_packed(layers, 256, 4, max_rows=1, windows=False)
    edges = 12_544 * 1024 + 1024 * 1024
    assert plan.by_component["edges"] == 2.5 * edges
    assert plan.block("codebook").shape == (13, 256) and "windows" not in {b.name for b in plan.blocks}
    assert plan.total < 36 << 20  # the arena the memory targets rest on (≈ 35 MB)
    wide = plan_packed(layers, 65_536, 16, max_rows=1, windows=True)
    assert wide.by_component["edges"] == 8 * edges and wide.block("windows").shape == (65_536, 16, 4)
    blocks = sorted(plan.blocks, key=lambda b: b.offset)
    assert all(a.offset + a.nbytes <= b.offset for a, b in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("in_f,out_f", [(12_544, 1024), (1024, 1024), (1024, 64), (64, 24), (5, 3), (300, 70)])
@pytest.mark.parametrize("k,ib,sb", [(256, 1, 4), (256, 1, 8), (257, 2, 16), (1024, 2, 4), (16, 1, 4)])
def test_the_one_row_launch_covers_every_output_and_input_within_shared_memory(in_f, out_f, k, ib, sb):
    chunk, us, grid, block, smem, gather, cl = row1_launch(in_f, out_f, 132, k, ib, sb)
    assert cl == 1
    bx, hy = block
    assert gather == (out_f < k)  # tables where each serves at least as many edges as it has entries
    assert grid[0] * bx * 8 >= out_f and (grid[0] - 1) * bx * 8 < out_f and bx * hy <= 256
    assert chunk % (us * hy) == 0 and grid[1] * chunk >= in_f and (grid[1] - 1) * chunk < in_f
    kp = -(-k // 32) * 32  # the codebook's padded width: a table's span
    assert (gather or us * hy * kp <= LUT_FLOATS) and smem <= 227 << 10  # a phase's tables; an H100's shared memory a block
    assert row1_launch(in_f, out_f, 132, 2048, 2, 4)[5]  # K > LUT_MAX_K: windows, whatever the width
    # the partial sums packed_sum adds: every chunk's padded outputs, none where the layer is one chunk
    assert row1_partials([(in_f, out_f)], 132, k, ib, sb) == (grid[1] * -(-out_f // 8) * 8 if grid[1] > 1 else 0)
    # sm_90: a split table layer in clusters of ROW1_CLUSTER chunks, a partial row a cluster (none for one cluster)
    *_, cgrid, _, _, _, ccl = row1_launch(in_f, out_f, 132, k, ib, sb, ROW1_CLUSTER)
    assert ccl == (ROW1_CLUSTER if grid[1] > 1 and not gather else 1) and cgrid[1] % ccl == 0
    assert cgrid[1] - ccl < grid[1] <= cgrid[1]  # the chunks, rounded up to whole clusters
    rows = cgrid[1] // ccl
    assert row1_partials([(in_f, out_f)], 132, k, ib, sb, ROW1_CLUSTER) == (rows * -(-out_f // 8) * 8 if rows > 1 else 0)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 9, 49, 63])
@pytest.mark.parametrize("in_f,out_f", [(12_544, 1024), (256, 64), (64, 24), (5, 3)])
def test_packed_launch_covers_every_row_output_and_input(rows, in_f, out_f):
    nr, chunk, grid, block = packed_launch(rows, in_f, out_f, n_sm=132)
    assert nr in PACKED_NR and (rows == 1) == (nr == 1)
    assert grid[0] * block[0] * 8 >= out_f and block[0] % 32 == 0 and block[0] <= 256
    assert grid[2] * nr >= rows and (grid[2] - 1) * nr < rows
    assert chunk % 8 == 0 and grid[1] * chunk >= in_f and (grid[1] - 1) * chunk < in_f


@pytest.mark.gpu
@pytest.mark.parametrize("one_row", ONE_ROW)  # the one-row kernel, the general one
@pytest.mark.parametrize("k", [256, 257, 2048])  # uint8 tables, uint16 tables, codebook windows
@pytest.mark.parametrize("side", WIDTHS)
def test_packed_kernels_match_the_stored_head_on_every_path(k, side, one_row):
    """Every row count boundary (one row, the tensor cores' 64-row blocks, the slabs from
    64 rows), split and unsplit inputs, partial groups (70 and 24 outputs), inputs inside and outside
    the grid, poisoned outputs: fp32 at one row, fp16 hi/lo products from 2 rows."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from sharekan.lutham.module import LuthamKAN
    from sharekan.lutham.validate import validate

    if k > 1024 and one_row == "lut":
        pytest.skip("K > 1,024 gathers codebook windows at one row either way")
    for sizes in ([300, 70, 24], [1024, 24], [6000, 1024]):  # the last: several phases a block at one row
        vq = packed_vq(sizes, k, side, device="cuda", seed=2)
        head = LuthamKAN(vq, max_rows=300 if sizes[0] < 6000 else 1, records="auto", one_row=one_row)
        assert head.records == "packed"
        # split table layers (6000 → 1024 at K ≤ 1,024) in clusters of chunks on sm_90: packed_row1_lutc
        assert head.lut.cluster == (ROW1_CLUSTER if torch.cuda.get_device_capability() >= (9, 0) else 1)
        report = validate(head, vq)
        assert report["all_written"], report
        assert report["max_rel_error"] < 2e-4, [c for c in report["cases"] if c["max_rel_error"] >= 2e-4]


@pytest.mark.gpu
def test_the_packed_head_holds_what_storage_keeps():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from sharekan.lutham.packed_head import PackedHead

    vq = packed_vq([512, 64, 24], 256, "int4", device="cuda")
    head = PackedHead(vq, max_rows=8)
    assert head.plan.edge_bytes() == 2.5 and "workspace" not in head.plan.by_component
    x = torch.randn(8, 512, device="cuda")
    with torch.no_grad():
        ref = vq(x)
    assert float((head.run_torch(x) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_the_record_format_is_chosen_by_what_the_head_stores():
    from sharekan.lutham.module import DEFAULT_RECORDS, resolve_records

    assert resolve_records(packed_vq([6, 4], 16, "int4"), "auto") == "packed"
    assert resolve_records(packed_vq([6, 4], 16, "fp32"), "auto") == "v12"  # fp32 side data: no packed width
    assert resolve_records(packed_vq([6, 4], 16, "int4")) == DEFAULT_RECORDS
    with pytest.raises(ValueError, match="records must be one of"):
        resolve_records(packed_vq([6, 4], 16, "int4"), "v3")


@pytest.mark.parametrize("rows", [2, 8, 9, 49, 63, 64, 65, 300, 3136])
@pytest.mark.parametrize("in_f,out_f", [(12_544, 1024), (1024, 1024), (300, 70), (64, 24), (5, 3)])
@pytest.mark.parametrize("ib,sb,p", [(1, 4, 1), (1, 8, 3), (2, 16, 3), (2, 4, 2)])
def test_the_tensor_core_launch_covers_every_row_output_and_input_within_shared_memory(rows, in_f, out_f, ib, sb, p):
    chunk, grid, block, smem, wide = packed_tc_launch(rows, in_f, out_f, 132, ib, sb, p)
    assert f"packed_tc_i{ib}_s{sb}_p{p}" in PACKED_KERNELS
    warps = THREADS // 32
    assert block == (THREADS,) and grid[0] * warps * 16 >= out_f > (grid[0] - 1) * warps * 16
    assert chunk % PACKED_TC_STEP == 0 and grid[1] * chunk >= in_f > (grid[1] - 1) * chunk
    assert grid[2] * 64 >= rows > (grid[2] - 1) * 64  # 64-row blocks
    assert smem <= 227 << 10  # an H100's shared memory a block
    groups = -(-out_f // 8)  # 16-byte copies exactly where every block's run of words in every plane is 16-byte aligned
    aligned = all((i * groups + 2 * warps * bx) * wb % 16 == 0 for i in range(min(in_f, 8)) for bx in range(grid[0])
                  for wb in (8 * ib, sb))
    assert wide == aligned and (wide or out_f != 1024)
    assert packed_tc_partials([(in_f, out_f)], rows, 132, ib, sb, p) == (grid[1] * rows * out_f if grid[1] > 1 else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["high", "medium", "low"])
@pytest.mark.parametrize("k,side", [(256, "int4"), (257, "int8"), (2048, "fp16")])
def test_the_tensor_core_path_matches_the_stored_head_at_every_precision(k, side, precision):
    """``packed_tc`` at every row count of ``validate`` (slabs never: 64-row blocks past 64 rows), every
    width, uint8 and uint16 indices, 16-byte copies (1,024 outputs) and 4-byte ones (70), split and
    unsplit inputs, partial tiles, inputs inside and outside the grid, poisoned outputs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from sharekan.lutham.packed_head import PackedHead
    from sharekan.lutham.validate import ROWS, validate

    vq = packed_vq([300, 1024, 70], k, side, device="cuda", seed=3)
    head = PackedHead(vq, max_rows=max(ROWS), precision=precision, slab_from=1 << 30)
    assert head.tc and "workspace" not in head.plan.by_component
    report = validate(head, vq)
    # hi/lo weights and bases: near fp32; fp16 ones carry a dense fp16 head's rounding
    bound = 2e-4 if precision == "high" else 1e-2
    assert report["all_written"] and report["max_rel_error"] <= bound, (bound, report)
    lut = PackedHead(vq, max_rows=max(ROWS), few_rows="lut", slab_from=1 << 30)  # the table path, for comparison
    assert not lut.tc and validate(lut, vq)["max_rel_error"] < 2e-4
