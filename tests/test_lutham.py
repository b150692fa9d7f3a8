"""LUTHAM: the arena planner, NVRTC compiles for sm_80/sm_90 (no GPU needed), the no-GPU path,
and — on a CUDA machine — the kernels against the torch reference."""

import pytest
import torch

from sharekan.kan import KAN
from sharekan.lutham.compile import KERNELS, nvrtc_compile
from sharekan.lutham.plan import ALIGN, L2_BYTES, LayerSpec, plan_arena
from sharekan.vq_kan import VQKAN, encode_layer

from .conftest import randomize


def test_plan_is_aligned_without_overlap_and_adds_up():
    plan = plan_arena([LayerSpec(1024, 64, 17), LayerSpec(64, 24, 17)], 4096, max_rows=144)
    blocks = sorted(plan.blocks, key=lambda b: b.offset)
    assert all(b.offset % ALIGN == 0 for b in blocks)
    assert all(a.offset + a.nbytes <= b.offset for a, b in zip(blocks, blocks[1:]))
    assert plan.total >= blocks[-1].offset + blocks[-1].nbytes and plan.total % ALIGN == 0
    edges = 1024 * 64 + 64 * 24
    assert plan.by_component["indices"] == 2 * edges and plan.by_component["gains"] == 2 * edges
    assert plan.by_component["codebook"] == 4096 * 20 * 4  # 13 coefficients padded to 3 + 13 + 4 floats
    assert plan.block("prep").shape == (144, 1024, 8) and plan.block("act2").shape == (144, 24)
    assert sum(plan.by_component.values()) == sum(b.nbytes for b in plan.blocks)
    assert blocks[0].component == "codebook"  # hot prefix first, for the L2 window
    hot = plan.hot_bytes()
    assert all(b.offset + b.nbytes <= hot + ALIGN * len(blocks) for b in blocks if b.component == "prep")
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


@pytest.mark.parametrize("rows,in_f,out_f", [(1, 12_544, 1024), (15, 1024, 24), (16, 64, 24), (3136, 1024, 1024),
                                             (17, 5, 3), (200, 12_544, 1024)])
def test_launch_geometry_covers_every_row_output_and_input(rows, in_f, out_f):
    from sharekan.lutham import geometry as g

    (blocks,), (threads,) = g.prep_launch(rows, in_f, out_f)
    assert blocks * threads >= rows * max(in_f, out_f)
    launches = g.gather_launches(rows, in_f, out_f, n_sm=132)
    assert [r0 for _, r0, *_ in launches] == list(range(0, rows, 16)) and sum(r for _, _, r, *_ in launches) == rows
    for kernel, _, r, chunk, (grid,), (block,) in launches:
        assert int(kernel.removeprefix("lutham_gather")) >= r and chunk % g.GATHER_STEP == 0
        assert grid * block // 32 >= out_f * -(-in_f // chunk)  # a warp per (output, split)
    chunk, (gx, gy, gz), (block,) = g.mma_launch(rows, in_f, out_f, n_sm=132)
    assert gx * g.TN >= out_f and gy * g.TM >= rows and gz * chunk >= in_f > (gz - 1) * chunk
    assert block == g.MMA_THREADS


def test_the_kernels_refuse_to_compile_without_the_geometry(monkeypatch):
    from sharekan.lutham import compile as c

    monkeypatch.setattr(c, "OPTIONS", tuple(o for o in c.OPTIONS if not o.startswith("-DTM=")))
    with pytest.raises(RuntimeError, match="-D options of sharekan.lutham.geometry"):
        c.nvrtc_compile("sm_90")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_with_nvrtc(arch):
    cubin = nvrtc_compile(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name.encode() in cubin


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
@pytest.mark.parametrize("gain_dtype", ["fp16", "int8", "int4"])
def test_lutham_matches_the_reference_inside_and_outside_the_grid(gain_dtype):
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import validate

    model = vq_head([300, 70, 24], 256, gain_dtype=gain_dtype)
    head = LuthamHead(model, max_rows=100)
    report = validate(head, model)
    assert report["all_written"] and report["max_rel_error"] <= 1e-3, report
    assert {c["inputs"] for c in report["cases"]} == {"inside", "outside"}


@pytest.mark.gpu
@pytest.mark.parametrize("grid_size", [1, 5, 11, 12])
def test_lutham_handles_every_codeword_width(grid_size):
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import validate

    model = vq_head([130, 40, 8], 64, grid_size=grid_size)
    report = validate(LuthamHead(model, max_rows=64), model)
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
    from sharekan.kmeans import assign_stats, init_centroids, lloyd
    from sharekan.lutham.module import LuthamKAN
    from sharekan.lutham.validate import detector_map
    from sharekan.vq_kan import compress_kan, edge_shapes

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
    vq = compress_kan(head.kan, 256, codebooks=[torch.from_numpy(cb)] * len(head.kan.layers)).eval()
    lut = LuthamKAN(vq, max_rows=512)
    samples, feats = split["val"]
    maps = detector_map(head, vq, lut, feats, samples, size)
    assert maps["map50_reference"] > 0.01, maps  # the head detects something, so the check means something
    assert abs(maps["map50_lutham"] - maps["map50_reference"]) <= 0.001, maps
