import pytest
import torch

from sharekan.kan import KAN
from sharekan.quant import quantize
from sharekan.vq import decode, decompose, index_dtype, nearest
from sharekan.vq_kan import VQKANLinear, compress_kan, encode_layer

from .conftest import randomize


def test_decompose_properties_and_flat_edges():
    c = torch.randn(50, 13) * 3 + 1
    c[7] = 2.5  # a flat edge: g = 0
    shapes, gains, biases = decompose(c)
    assert torch.isfinite(shapes).all() and torch.isfinite(gains).all()
    live = torch.arange(50) != 7
    assert torch.allclose(shapes[live].norm(dim=1), torch.ones(49), atol=1e-6)
    assert torch.allclose(shapes.mean(dim=1), torch.zeros(50), atol=1e-6)
    assert gains[7] == 0 and torch.all(shapes[7] == 0) and biases[7] == 2.5
    recon = gains[:, None] * shapes + biases[:, None]
    assert torch.allclose(recon, c, atol=1e-5)


def test_decompose_refuses_non_finite():
    c = torch.randn(4, 13)
    c[1, 2] = float("inf")
    with pytest.raises(ValueError, match="spline coefficients.*non-finite"):
        decompose(c)


def test_vq_is_exact_when_every_shape_is_its_own_codeword():
    model = randomize(KAN([5, 6, 3]))
    for layer in model.layers:
        shapes, _, _ = decompose(layer.scaled_spline_weight())
        vq = encode_layer(layer, shapes.reshape(-1, layer.n_coef), gain_dtype="fp32")
        assert torch.equal(vq.indices.to(torch.int64).reshape(-1), torch.arange(layer.out_features * layer.in_features))
        assert torch.allclose(vq.coefficients(), layer.scaled_spline_weight(), atol=1e-5)
        x = torch.randn(40, layer.in_features) * 1.5
        assert torch.allclose(vq(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("grid_size", [3, 5, 10])
@pytest.mark.parametrize("gain_dtype", ["fp32", "fp16", "int8", "int4"])
def test_vq_forward_equals_decode_then_dense(grid_size, gain_dtype):
    model = randomize(KAN([7, 11, 4], grid_size=grid_size, grid_range=(-2.0, 1.0)))
    vq = compress_kan(model, 16, gain_dtype=gain_dtype, seed=1)
    dense = vq.decoded()
    x = torch.randn(300, 7) * 2.0 - 0.5  # inside, extension region and outside the knots
    ref = dense(x)
    out = vq(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - ref).norm() / ref.norm() < 1e-6


def test_vq_forward_chunks_over_outputs(monkeypatch):
    import sharekan.vq_kan as vk
    model = randomize(KAN([9, 40]))
    vq = compress_kan(model, 32, gain_dtype="fp32")
    x = torch.randn(17, 9)
    whole = vq(x)
    monkeypatch.setattr(vk, "_CHUNK_ELEMENTS", 17 * 9 * 3)  # 3 output rows per step
    assert torch.allclose(vq(x), whole, atol=1e-6)


def test_codebook_scope_head_shares_one_codebook_and_layer_scope_does_not():
    model = randomize(KAN([8, 8, 8]))
    head = compress_kan(model, 8, scope="head")
    assert len(head.codebooks()) == 1
    assert head.layers[0].codebook is head.layers[1].codebook
    per_layer = compress_kan(model, 8, scope="layer")
    assert len(per_layer.codebooks()) == 2


def test_fp16_codebook_halves_codebook_bytes_and_stays_exact_to_its_decode():
    model = randomize(KAN([8, 8]))
    full = compress_kan(model, 8, codebook_dtype="fp32")
    half = compress_kan(model, 8, codebook_dtype="fp16")
    assert half.layers[0].codebook.dtype == torch.float16
    assert half.storage_components()["codebook"] * 2 == full.storage_components()["codebook"]
    x = torch.randn(20, 8)
    assert torch.allclose(half(x), half.decoded()(x), atol=1e-5)


def test_index_dtype_and_decode():
    assert index_dtype(256) == torch.uint8
    assert index_dtype(257) == torch.uint16
    assert index_dtype(65_536) == torch.uint16
    cb = torch.randn(4, 13)
    idx = torch.tensor([[3, 0]])
    out = decode(cb, idx, torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, -1.0]]))
    assert torch.allclose(out[0, 0], 2 * cb[3] + 1) and torch.allclose(out[0, 1], 0.5 * cb[0] - 1)


def test_nearest_matches_brute_force():
    pts, cb = torch.randn(500, 13), torch.randn(37, 13)
    brute = torch.cdist(pts.double(), cb.double()).argmin(dim=1)
    assert torch.equal(nearest(pts, cb, chunk=64), brute)  # torch path, chunked
    assert torch.equal(nearest(pts, cb), brute)            # FAISS path


@pytest.mark.parametrize("dtype,qmax", [("int8", 127), ("int4", 7)])
def test_integer_gain_storage_error_bound(dtype, qmax):
    g = (torch.rand(6, 21) - 0.3) * torch.arange(1, 7)[:, None]
    q = quantize("gains", g, dtype)
    assert q.scale.shape == (6,) and torch.allclose(q.scale, g.abs().amax(dim=1) / qmax)
    assert torch.all((q.dequantize() - g).abs() <= q.scale[:, None] / 2 + 1e-7)
    assert q.nbytes == 6 * (21 if dtype == "int8" else 11) + 6 * 4  # int4: two values a byte, odd row padded


def test_int4_packing_round_trips_every_value_bit_exactly():
    from sharekan.quant import pack_int4, unpack_int4

    for n in (1, 2, 15, 16):
        q = torch.randint(-8, 8, (5, n), dtype=torch.int8)
        packed = pack_int4(q)
        assert packed.dtype == torch.uint8 and packed.shape == (5, -(-n // 2))
        assert torch.equal(unpack_int4(packed, n), q)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([[9]], dtype=torch.int8))


@pytest.mark.parametrize("gain_dtype", ["fp32", "fp16", "int8", "int4"])
def test_every_stored_form_round_trips_through_its_state_dict(gain_dtype):
    model = randomize(KAN([9, 5, 3]))
    vq = compress_kan(model, 8, gain_dtype=gain_dtype, seed=0)
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    again = compress_kan(randomize(KAN([9, 5, 3])), 8, gain_dtype=gain_dtype, seed=3)  # other values
    again.load_state_dict(state)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())  # bit-exact
    x = torch.randn(4, 9)
    assert torch.equal(again(x), vq(x))
    assert all(torch.equal(a.grid, b.grid) for a, b in zip(again.layers, vq.layers))  # rebuilt from (lo, h)


@pytest.mark.parametrize("gain_dtype", ["fp32", "fp16", "int8", "int4"])
def test_storage_accounting_is_exactly_the_stored_state(gain_dtype):
    """What the accounting counts is what a state dict holds (the shared codebook once), and the
    uniform grid is 2 fp32 per layer."""
    from sharekan.memory import storage_components

    vq = compress_kan(randomize(KAN([9, 5, 3])), 8, gain_dtype=gain_dtype, seed=0)
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in vq.state_dict().values()}
    comps = storage_components(vq)
    assert sum(comps.values()) == sum(unique.values())
    assert comps["grid"] == 2 * 2 * 4 and "layers.0.grid" not in vq.state_dict()


def test_int4_side_data_is_smaller_than_int8():
    from sharekan.memory import storage_components

    model = randomize(KAN([32, 16, 4]))
    sizes = {dt: storage_components(compress_kan(model, 16, gain_dtype=dt, seed=0)) for dt in ("int8", "int4")}
    for part in ("gains", "biases", "base_weights"):
        values = {dt: sizes[dt][part] - (16 + 4) * 4 for dt in sizes}  # less the per-row scales
        assert values["int4"] * 2 == values["int8"], part
    assert sizes["int4"]["indices"] == sizes["int8"]["indices"] and sizes["int4"]["codebook"] == sizes["int8"]["codebook"]


@pytest.mark.parametrize("k,match", [(0, "positive integer"), (-3, "positive integer"),
                                     (200, "larger than the number of edges"),
                                     (70_000, "exceeds the maximum")])
def test_bad_k(k, match):
    model = randomize(KAN([4, 5]))  # 20 edges
    k = 21 if k == 200 else k
    with pytest.raises(ValueError, match=match):
        compress_kan(model, k)


def test_layer_scope_k_larger_than_a_layer_names_it():
    model = randomize(KAN([4, 10, 2]))  # layer 1 has 20 edges
    with pytest.raises(ValueError, match="layer 1"):
        compress_kan(model, 30, scope="layer")


@pytest.mark.parametrize("kwargs,name", [({"gain_dtype": "int3"}, "gain_dtype"),
                                         ({"base_dtype": "bf16"}, "base_dtype"),
                                         ({"codebook_dtype": "int8"}, "codebook_dtype"),
                                         ({"scope": "model"}, "scope")])
def test_unknown_names_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        compress_kan(randomize(KAN([4, 5])), 4, **kwargs)


def test_non_finite_coefficients_refused_before_any_work():
    model = randomize(KAN([4, 5]))
    with torch.no_grad():
        model.layers[0].spline_weight[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        compress_kan(model, 4)


def test_vq_layer_shape_mismatch_named():
    model = randomize(KAN([4, 5]))
    layer = model.layers[0]
    shapes, g, b = decompose(layer.scaled_spline_weight())
    cb = shapes.reshape(-1, 13)[:4]
    with pytest.raises(ValueError, match="gains has shape"):
        VQKANLinear(cb, torch.zeros(5, 4, dtype=torch.long), quantize("g", g[:, :3], "fp32"),
                    quantize("b", b, "fp32"), quantize("w", layer.base_weight, "fp32"), layer.grid)
    with pytest.raises(ValueError, match="codebook has 12"):
        VQKANLinear(cb[:, :12], torch.zeros(5, 4, dtype=torch.long), quantize("g", g, "fp32"),
                    quantize("b", b, "fp32"), quantize("w", layer.base_weight, "fp32"), layer.grid)
    with pytest.raises(ValueError, match="last dimension 4"):
        encode_layer(layer, cb)(torch.randn(2, 3))
