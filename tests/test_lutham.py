"""LUTHAM: the arena planner, NVRTC compiles for sm_80/sm_90 (no GPU needed), the no-GPU path,
and — on a CUDA machine — the kernels against the torch reference."""

import itertools

import numpy as np
import pytest
import torch

from sharekan.kan import KAN
from sharekan.lutham.compile import KERNELS, PACKED_KERNELS, kernel_names, nvrtc_compile
from sharekan.lutham.plan import ALIGN, L2_BYTES, LayerSpec, plan_arena
from sharekan.vq_kan import VQKAN, encode_layer

from .conftest import randomize


def test_plan_is_aligned_without_overlap_and_adds_up():
    plan = plan_arena([LayerSpec(1024, 64, 17), LayerSpec(64, 24, 17)], 4096, max_rows=144)
    blocks = sorted(plan.blocks, key=lambda b: b.offset)
    assert all(b.offset % ALIGN == 0 for b in blocks)
    assert all(a.offset + a.nbytes <= b.offset for a, b in zip(blocks, blocks[1:]))
    assert plan.total >= blocks[-1].offset + blocks[-1].nbytes and plan.total % ALIGN == 0
    assert plan.by_component["edges"] == 8 * (1024 * 64 + 64 * 32)  # 8 bytes an edge, 24 outputs padded to 32
    assert plan.by_component["codebook"] == 4096 * 16 * 16  # 16 windows of 4 float32 coefficients
    assert plan.block("act2").shape == (144, 24) and "prep" not in plan.by_component  # no scratch
    frags = plan_arena([LayerSpec(1024, 64, 17)], 4096, max_rows=144, bases=1 << 20).block("bases")
    assert frags.nbytes == 1 << 20 and frags.component == "bases"
    assert sum(plan.by_component.values()) == sum(b.nbytes for b in plan.blocks)
    assert blocks[0].component == "codebook"  # hot prefix first, for the L2 window
    hot = plan.hot_bytes()
    assert all(b.offset >= hot for b in blocks if b.component == "edges")
    summary = plan.summary()
    assert summary["residency_order"][0] == "codebook" and set(summary["fits_l2"]) == set(L2_BYTES)


def test_plan_l2_fit_matches_sizes():
    mid = plan_arena([LayerSpec(4096, 1024, 17), LayerSpec(1024, 256, 17)], 65_536, max_rows=49)
    large = plan_arena([LayerSpec(12_544, 1024, 17), LayerSpec(1024, 1024, 17)], 65_536, max_rows=49)
    assert mid.fits(L2_BYTES["H200"])["arena"] and not mid.fits(L2_BYTES["Jetson Orin"])["arena"]
    assert not large.fits(L2_BYTES["H200"])["arena"] and large.fits(L2_BYTES["H200"])["hot"]


def test_plan_refuses_bad_heads():
    with pytest.raises(ValueError, match="layer 0 has 64 outputs"):
        plan_arena([LayerSpec(8, 64, 17), LayerSpec(32, 4, 17)], 16, 4)
    with pytest.raises(ValueError, match="coefficients per edge"):
        plan_arena([LayerSpec(8, 4, 24)], 16, 4)
    with pytest.raises(ValueError, match="max_rows"):
        plan_arena([LayerSpec(8, 4, 17)], 16, 0)


@pytest.mark.parametrize("rows,in_f,out_f", [(1, 12_544, 1024), (1, 64, 24), (15, 1024, 24), (16, 64, 24),
                                             (49, 12_544, 1024), (3136, 1024, 1024), (17, 5, 3), (200, 12_544, 1024),
                                             (129, 40, 8), (256, 300, 70)])
@pytest.mark.parametrize("p", [3, 2, 1])
def test_launch_geometry_covers_every_row_output_and_input(rows, in_f, out_f, p):
    from sharekan.lutham import geometry as g

    plan = g.launches(rows, in_f, out_f, n_sm=132, p=p)
    assert [r0 for _, r0, *_ in plan] == list(itertools.accumulate([0] + [r for _, _, r, *_ in plan[:-1]]))
    assert sum(r for _, _, r, *_ in plan) == rows
    for kernel, _, r, chunk, (gx, gy, gz), (block,) in plan:
        assert kernel in g.KERNELS
        assert gx * block // 32 * g.TILE_O >= out_f and block <= g.THREADS  # a warp per 16-output tile
        assert gz * chunk >= in_f > (gz - 1) * chunk and chunk % 8 == 0
        if rows == 1:
            assert kernel == "lutham_row1" and chunk <= g.ROW1_MAX_CHUNK
        else:
            nt, kp = map(int, kernel.removeprefix("lutham_tc").split("p"))
            assert (gy - 1) * nt * 8 < r <= gy * nt * 8 and nt in g.TC_TILES and kp == p


@pytest.mark.parametrize("rows,in_f,out_f", [(2, 5, 3), (49, 12_544, 1024), (392, 12_544, 1024),
                                             (3136, 12_544, 1024), (3136, 1024, 24), (300, 300, 70)])
@pytest.mark.parametrize("p", [3, 2, 1])
@pytest.mark.parametrize("budget", [1 << 18, 64 << 20])
def test_slabs_cover_every_input_once_within_the_workspace(rows, in_f, out_f, p, budget):
    from sharekan.lutham import geometry as g

    ws = g.slab_workspace([(in_f, out_f)], rows, p, 13, budget)
    slabs = g.slab_launches(rows, in_f, out_f, p, 13, ws)
    n_pads = {n_pad for _, n_pad, *_ in slabs}
    assert len(n_pads) == 1 and n_pads.pop() % 8 == 0  # equal slabs, half2- and cuBLAS-aligned K
    assert [i0 for i0, *_ in slabs] == list(range(0, in_f, slabs[0][1])) and slabs[-1][0] + slabs[0][1] >= in_f
    sw, sb = g.slab_sections(p)
    assert sw * sb >= p and sw + sb <= p + 1  # the products' pairs of sections; no section written twice
    for _, n_pad, wblocks, (blocks,), b_off in slabs:
        k = n_pad * g.slab_slots(13)
        assert b_off >= out_f * sw * k * 2 and b_off % 256 == 0 and b_off + rows * sb * k * 2 <= ws
        assert wblocks * 16 * g.SLAB_IN >= out_f * n_pad
        assert (blocks - wblocks) * g.SLAB_ROWS * g.SLAB_IN >= rows * n_pad
    assert ws <= max(budget, sum(g._slab_parts(8, out_f, rows, p, 13)) + 256) + 256
    with pytest.raises(ValueError, match="plan it for"):
        g.slab_launches(rows * 4, in_f, out_f, p, 13, sum(g._slab_parts(8, out_f, rows, p, 13)))


@pytest.mark.parametrize("max_rows,in_f", [(2, 5), (49, 12_544), (64, 300), (255, 12_544), (3136, 1024)])
@pytest.mark.parametrize("p", [3, 2, 1])
@pytest.mark.parametrize("budget", [1 << 16, 16 << 20])
def test_tc_slabs_cover_every_input_once_within_the_bases_scratch(max_rows, in_f, p, budget):
    from sharekan.lutham import geometry as g

    scratch = g.bases_scratch([in_f, 7], max_rows, p, budget=budget)
    top = min(max_rows, g.SLAB_FROM_ROWS[p] - 1)  # the most rows the tensor-core kernels run
    assert scratch % 256 == 0 and scratch >= min(8, max(in_f, 7)) * g.fragment_bytes(top, p)
    assert scratch <= max(budget, 8 * g.fragment_bytes(top, p)) and scratch <= max(in_f, 7) * g.fragment_bytes(top, p)
    for rows in sorted(r for r in {2, 9, top // 2, top} if 2 <= r <= top):
        slabs = g.tc_slabs(rows, in_f, p, scratch)
        assert [i0 for i0, _ in slabs] == list(itertools.accumulate([0] + [n for _, n in slabs[:-1]]))
        assert sum(n for _, n in slabs) == in_f and all(n % 8 == 0 for _, n in slabs[:-1])
        assert max(n for _, n in slabs) * g.fragment_bytes(rows, p) <= scratch
        assert len(slabs) == 1 or len(slabs) == -(-in_f // (scratch // g.fragment_bytes(rows, p) // 8 * 8))
    with pytest.raises(ValueError, match="plan the head for"):
        g.tc_slabs(top + 64, max(in_f, 9), p, 8 * g.fragment_bytes(top, p))
    assert g.bases_scratch([in_f], 1, p) == 0 and g.bases_scratch([in_f], max_rows, p, slab_from=2) == 0


def test_precision_names_are_checked():
    from sharekan.lutham import geometry as g

    assert [g.products(k) for k in ("high", "medium", "low")] == [3, 2, 1]
    with pytest.raises(ValueError, match="precision must be one of"):
        g.products("fp8")
    assert not g.uses_slab(1, 1, slab_from=1) and g.uses_slab(2, 3, slab_from=2)
    assert not g.uses_slab(g.SLAB_FROM_ROWS[3] - 1, 3) and g.uses_slab(g.SLAB_FROM_ROWS[3], 3)


def _arena_forward(model, x):
    """The kernels' arithmetic in numpy, on the arena's arrays: ``lutham_row1``'s window per edge,
    and ``lutham_tc``'s whole codeword (the first 4 windows) must both hold the codeword."""
    from sharekan.lutham.plan import n_windows, window_slot
    from sharekan.lutham.runtime import codebook_windows, edge_records

    lay0 = model.layers[0]
    n_coef = lay0.n_coef
    cbw = codebook_windows(lay0.codebook.numpy(), n_coef).astype(np.float32)
    whole = cbw[:, :4].reshape(len(cbw), 16)
    assert np.array_equal(whole[:, :n_coef], lay0.codebook.numpy()) and not whole[:, n_coef:].any()
    x = x.numpy().astype(np.float32)
    for lay in model.layers:
        vals = [lay.stored_values(q).float().numpy() for q in ("gain", "bias", "base")]
        rec = edge_records(lay.indices.numpy().astype(np.uint16), *vals)
        rec = rec.transpose(0, 2, 1, 3).reshape(-1, lay.in_features, 4)[:lay.out_features]  # back to [out, in]
        idx, (g, b, w) = rec[..., 0].astype(np.int64), (rec[..., j].view(np.float16).astype(np.float32) for j in (1, 2, 3))
        scale = [np.ones(lay.out_features) if getattr(lay, q + "_scale") is None
                 else getattr(lay, q + "_scale").float().numpy().reshape(-1) for q in ("gain", "bias", "base")]
        grid = lay.grid.float().numpy()
        u = (x - grid[:, 0]) / (grid[:, 1] - grid[:, 0])
        inside = (u >= 0) & (u < grid.shape[1] - 1)
        m = np.where(inside, np.floor(u), 0)
        f = u - m
        first = np.where(inside, m - 3, -3).astype(np.int64)
        basis = np.stack([(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6], -1)
        exists = (first[..., None] + np.arange(4) >= 0) & (first[..., None] + np.arange(4) < n_coef) & inside[..., None]
        basis = np.where(exists, basis, 0)
        slots = np.vectorize(window_slot)(first + 3)
        assert slots.max() < n_windows(n_coef)
        win = cbw[idx[None], slots[:, None, :]]  # [rows, out, in, 4]
        dot = (win * basis[:, None]).sum(-1)
        silu = x / (1 + np.exp(-x))
        x = (scale[0] * (g * dot).sum(-1) + scale[1] * (b * basis.sum(-1)[:, None]).sum(-1)
             + scale[2] * (w * silu[:, None]).sum(-1)).astype(np.float32)
    return x


@pytest.mark.parametrize("grid_size,gain_dtype", [(10, "fp16"), (10, "int8"), (1, "fp16"), (12, "int4")])
def test_arena_layout_reproduces_the_reference_on_the_cpu(grid_size, gain_dtype):
    model = vq_head([40, 21, 8], 64, device="cpu", gain_dtype=gain_dtype, grid_size=grid_size)
    torch.manual_seed(1)
    x = torch.cat([torch.rand(6, 40) * 2 - 1, (torch.rand(3, 40) * 2 - 1) * 6])  # inside and outside the grid
    with torch.no_grad():
        ref = model(x).numpy()
    err = np.abs(_arena_forward(model, x) - ref).max() / np.abs(ref).max()
    assert err < 1e-5  # fp32 throughout; a misplaced window is O(1)


def test_the_kernels_refuse_to_compile_without_the_geometry(monkeypatch):
    from sharekan.lutham import compile as c

    monkeypatch.setattr(c, "OPTIONS", tuple(o for o in c.OPTIONS if not o.startswith("-DTILE_O=")))
    with pytest.raises(RuntimeError, match="-D options of sharekan.lutham.geometry"):
        c.nvrtc_compile("sm_90")


COMPILES = [(source, arch) for source in ("packed", "lutham") for arch in ("sm_80", "sm_90")]  # longest first


@pytest.fixture(scope="module")
def compiles():
    """Every (source, arch) NVRTC compile, two at a time in spawned processes (each compile is single-threaded
    and takes up to half a minute; CI has two cores): a future each, so a failure belongs to its own test."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {job: pool.submit(nvrtc_compile, job[1], job[0]) for job in COMPILES}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source,names", [("lutham", KERNELS), ("packed", PACKED_KERNELS)])
def test_every_kernel_compiles_with_nvrtc(compiles, arch, source, names):
    cubin = compiles[(source, arch)].result()
    assert cubin[:4] == b"\x7fELF"
    assert set(kernel_names(source, arch)) >= set(names)
    for name in kernel_names(source, arch):
        assert name.encode() in cubin
    assert (b"packed_row1_lutc" in cubin) == (source == "packed" and arch == "sm_90")  # clusters: sm_90 only


def test_lutham_task_on_a_worker_without_a_gpu_refuses_instead_of_faking(tmp_path):
    pytest.importorskip("ray")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tasks.lutham import NO_GPU, compile_and_validate, gpu_available

    assert not gpu_available()  # no Ray cluster with a GPU here (the flow then marks the stage skipped)
    with pytest.raises(RuntimeError, match=NO_GPU):
        compile_and_validate(str(tmp_path / "store"), "head-x", "codebook-x", "features-x", "dataset-x")
    assert not (tmp_path / "store").exists()  # refused before touching the store


def test_validation_failures_name_every_failing_case():
    from sharekan.lutham.validate import failures

    ok = {"rows": 17, "inputs": "inside", "all_written": True, "unwritten": 0, "max_rel_error": 2e-4}
    report = {"cases": [ok, {**ok, "inputs": "outside", "max_rel_error": 3e-2},
                        {**ok, "rows": 5, "all_written": False, "unwritten": 4}]}
    maps = {"map50_reference": 0.41, "map50_lutham": 0.40}
    msgs = failures(report, maps, 1e-3, 0.001)
    assert msgs == ["case rows=17 inputs=outside: max relative error 3.00e-02 > 1e-03",
                    "case rows=5 inputs=inside: 4 output elements never written",
                    "detector mAP@0.5 with LUTHAM 0.4000 vs torch reference 0.4100: off by 0.0100 > 0.001"]
    assert failures({"cases": [ok]}, {**maps, "map50_lutham": 0.4105}, 1e-3, 0.001) == []
    assert failures({"cases": [ok]}, {**maps, "map50_lutham": float("nan")}, 1e-3, 0.001)  # NaN never passes


def vq_head(sizes, k, device="cuda", gain_dtype="fp16", grid_size=10):
    model = randomize(KAN(sizes, grid_size=grid_size)).to(device)
    shapes = torch.nn.functional.normalize(torch.randn(k, grid_size + 3, device=device), dim=1)
    return VQKAN([encode_layer(layer, shapes, gain_dtype) for layer in model.layers]).eval()


@pytest.mark.gpu
@pytest.mark.parametrize("gain_dtype,precision", [("fp16", "high"), ("int8", "high"), ("int4", "high"),
                                                  ("fp16", "medium"), ("fp16", "low")])
def test_lutham_kernels_match_the_reference_inside_and_outside_the_grid(gain_dtype, precision):
    """Every fused path (one row; tensor-core tiles of 8 to 128 rows at each precision; 128-row blocks
    plus a tail), partial output tiles (70 and 24 outputs), split and unsplit inputs, poisoned outputs."""
    from sharekan.lutham.geometry import PRECISIONS, launches
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import ROWS, validate

    model = vq_head([300, 70, 24], 256, gain_dtype=gain_dtype)
    head = LuthamHead(model, max_rows=max(ROWS), precision=precision, slab_from=10**9)  # no slabs here
    report = validate(head, model)
    # hi/lo bases: near fp32. fp16 bases (and weights) carry their rounding (measured 1.8e-3 with fp16
    # bases here); the accuracy rule for them is the dense fp16 head's error (the test below)
    bound = 1e-3 if precision == "high" else 1e-2
    assert report["all_written"] and report["max_rel_error"] <= bound, (bound, report)
    assert {c["inputs"] for c in report["cases"]} == {"inside", "outside"} and len(report["cases"]) == 2 * len(ROWS)
    p = PRECISIONS[precision]
    used = {k for r in ROWS for lay in head.plan.layers
            for k, *_ in launches(r, lay.in_features, lay.out_features, head._sms, p)}
    assert used >= {"lutham_row1", *(f"lutham_tc{n}p{p}" for n in (1, 2, 4, 8, 16))}, used


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["high", "medium", "low"])
def test_lutham_slabs_match_the_reference_inside_and_outside_the_grid(precision):
    """The cuBLAS slab path from 2 rows, its workspace bounded to 256 KB: the 300 inputs of layer 1 in
    many slabs of 8 to 16 inputs (the last one padded), each added into the output by the GEMM."""
    from sharekan.lutham.geometry import BLAS_BYTES, slab_launches
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import ROWS, validate

    model = vq_head([300, 70, 24], 256)
    head = LuthamHead(model, max_rows=max(ROWS), precision=precision, slab_from=2, slab_bytes=1 << 18)
    ws = head.plan.block("workspace").nbytes - BLAS_BYTES
    assert len(slab_launches(max(ROWS), 300, 70, head.products, head.plan.n_coef, ws)) > 10
    report = validate(head, model)
    bound = 1e-3 if precision == "high" else 1e-2
    assert report["all_written"] and report["max_rel_error"] <= bound, (bound, report)
    assert head.use_graphs  # the GEMMs are captured into the row count's graph


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["high", "low"])
def test_lutham_tensor_core_slabs_match_the_reference(precision):
    """The tensor-core path with its B-fragment scratch at its floor (8 inputs at the most rows): layer
    1's 300 inputs in many slabs, each built by the bases kernel and added into the output."""
    from sharekan.lutham.geometry import tc_slabs
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import ROWS, validate

    model = vq_head([300, 70, 24], 256)
    head = LuthamHead(model, max_rows=max(ROWS), precision=precision, slab_from=10**9, bases_bytes=1)
    assert len(tc_slabs(max(ROWS), 300, head.products, head.plan.block("bases").nbytes)) > 10
    report = validate(head, model)
    bound = 1e-3 if precision == "high" else 1e-2
    assert report["all_written"] and report["max_rel_error"] <= bound, (bound, report)


@pytest.mark.gpu
def test_tensor_core_fragments_share_the_slab_workspace():
    """Planned past the slab threshold, a head keeps the tensor-core kernels' B fragments in the slab
    workspace's first bytes (a call runs one path): no separate scratch; both paths match."""
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import ROWS, validate

    model = vq_head([300, 70, 24], 256)
    head = LuthamHead(model, max_rows=max(ROWS), precision="low")  # slabs from 128 rows, tensor cores below
    assert "bases" not in head.plan.by_component and head._frags.data.ptr == head.view("workspace").data.ptr
    report = validate(head, model)
    assert report["all_written"] and report["max_rel_error"] <= 1e-2, report


@pytest.mark.gpu
@pytest.mark.parametrize("slab_from", [10**9, 2])
def test_fp16_lutham_is_as_accurate_as_the_dense_fp16_head(slab_from, monkeypatch):
    """The accuracy rule for ``precision="low"``: its error against the fp32 VQ head is no larger than
    the dense fp16 head's (the same decoded weights) against dense fp32, on the same inputs."""
    from sharekan.baselines import DenseKAN
    from sharekan.lutham.runtime import LuthamHead

    model = vq_head([300, 70, 24], 256)
    dense32 = model.decoded().eval()
    dense16 = DenseKAN(dense32, torch.float16).eval()
    head = LuthamHead(model, max_rows=200, precision="low", slab_from=slab_from)
    torch.manual_seed(0)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the references in true fp32
    for rows in (9, 49, 200):
        x = torch.rand(rows, 300, device="cuda") * 2 - 1
        with torch.no_grad():
            ref, ref_dense = model(x), dense32(x)
            mine = float((head.run_torch(x) - ref).abs().max() / ref.abs().max())
            dense = float((dense16(x).float() - ref_dense).abs().max() / ref_dense.abs().max())
        assert mine <= dense, (rows, mine, dense)


@pytest.mark.gpu
@pytest.mark.parametrize("grid_size", [1, 5, 11, 12])
def test_lutham_handles_every_codeword_width(grid_size):
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import validate

    model = vq_head([130, 40, 8], 64, grid_size=grid_size)
    report = validate(LuthamHead(model, max_rows=129), model)
    assert report["all_written"] and report["max_rel_error"] <= 1e-3, report


@pytest.mark.gpu
def test_lutham_runs_any_row_count_through_torch():
    from sharekan.lutham.runtime import LuthamHead

    model = vq_head([64, 32, 8], 64)
    head = LuthamHead(model, max_rows=20)
    x = torch.randn(57, 64, device="cuda")
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(head.run_torch(x), ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="≤ 20 rows"):
        head.forward(x)


@pytest.mark.gpu
def test_lutham_is_a_drop_in_module_for_any_leading_dimensions():
    from sharekan.lutham.module import LuthamKAN

    model = vq_head([64, 32, 8], 64)
    lut = LuthamKAN(model, max_rows=20)
    for shape in [(64,), (3, 64), (2, 37, 64), (2, 3, 5, 64), (0, 64)]:
        x = torch.randn(*shape, device="cuda")
        with torch.no_grad():
            ref = model(x)
        y = lut(x)
        assert y.shape == ref.shape == (*shape[:-1], 8) and y.device == x.device
        assert torch.allclose(y, ref, rtol=1e-3, atol=1e-3 * (float(ref.abs().max()) if ref.numel() else 1.0))
    cpu = lut(torch.randn(4, 64))  # CPU in, CPU out (computed on the GPU)
    assert cpu.device.type == "cpu" and cpu.shape == (4, 8)
    with pytest.raises(ValueError, match=r"expects \[\.\.\., 64\] inputs, got shape \(2, 63\)"):
        lut(torch.randn(2, 63, device="cuda"))


@pytest.mark.gpu
def test_detector_map_with_lutham_equals_the_reference(tmp_path):
    """A head trained on synthetic VOC (random ResNet-18 features), VQ-compressed: the detector's
    mAP@0.5 with LUTHAM in place of its KAN equals the torch reference's within 0.1 point."""
    from sharekan.detection.backbone import build_backbone, extract_features
    from sharekan.detection.head import HeadConfig, KANDetectionHead
    from sharekan.detection.synthetic import generate_voc
    from sharekan.detection.train import location_targets, train_head
    from sharekan.detection.voc import VOCData
    from sharekan.kmeans_steps import assign_stats, init_centroids, lloyd
    from sharekan.lutham.module import LuthamKAN
    from sharekan.lutham.validate import detector_map
    from sharekan.vq_kan import edge_shapes, encode_kan

    generate_voc(tmp_path, n_train=48, n_test=24, seed=0)
    body, info = build_backbone("resnet18", "layer3", seed=0)
    size, split = 128, {}
    for name in ("train", "val"):
        data = VOCData(tmp_path, [("2007", name)])
        images = [data.load_image(i) for i in range(len(data))]
        split[name] = (data.samples, extract_features(body, images, size, progress=False).float().cpu())
    torch.manual_seed(0)
    head = KANDetectionHead(HeadConfig(in_channels=info.channels, hidden=16, grid_size=10, stride=info.stride))
    x, cls, box, centres = location_targets(split["train"][1], split["train"][0], size, info.stride)
    head.fit_standardisation(x)
    train_head(head, x, cls, box, centres, epochs=20, batch_size=512, lr=5e-3, progress=False)
    head = head.eval()
    shapes = torch.cat(edge_shapes(head.kan)).numpy()  # k-means in numpy/torch: no faiss on GPU workers
    cb, _ = lloyd(lambda c: assign_stats(shapes, c)[:3] + (0,), init_centroids(shapes, 256, 0), niter=10)
    vq = encode_kan(head.kan, [torch.from_numpy(cb)] * len(head.kan.layers)).eval()
    lut = LuthamKAN(vq, max_rows=512)
    samples, feats = split["val"]
    maps = detector_map(head, vq, lut, feats, samples, size)
    assert maps["map50_reference"] > 0.01, maps  # the head detects something, so the check means something
    assert abs(maps["map50_lutham"] - maps["map50_reference"]) <= 0.001, maps
