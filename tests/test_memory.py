import torch

from sharekan.baselines import Int8KAN, prune_edges
from sharekan.kan import KAN
from sharekan.memory import PeakTracker, runtime_bytes, storage_bytes, storage_components
from sharekan.vq_kan import compress_kan

from .conftest import randomize

# one layer, in=6, out=5 → 30 edges, G=10 cubic → C=13; its uniform grid [6, 17] stored as (lo, h)
IN, OUT, C, KNOTS = 6, 5, 13, 17
E = IN * OUT
GRID = 2 * 4


def layer_model():
    return randomize(KAN([IN, OUT]))


def test_dense_storage_by_hand():
    assert storage_components(layer_model()) == {
        "base_weights": E * 4, "spline_coefficients": E * C * 4, "grid": GRID}


def test_pruned_storage_by_hand():
    pruned = prune_edges(layer_model(), 0.5)  # 15 edges kept
    assert storage_components(pruned) == {
        "base_weights": 15 * 4, "spline_coefficients": 15 * C * 4, "mask": 4, "grid": GRID}


def test_int8_storage_by_hand():
    assert storage_components(Int8KAN(layer_model())) == {
        "base_weights": E, "spline_coefficients": E * C, "scales": 2 * OUT * 4, "grid": GRID}


def test_vq_storage_by_hand():
    model = layer_model()
    fp16 = compress_kan(model, 8, gain_dtype="fp16")
    assert storage_components(fp16) == {
        "codebook": 8 * C * 4, "indices": E, "gains": E * 2, "biases": E * 2,
        "base_weights": E * 2, "grid": GRID}
    int8 = compress_kan(model, 8, gain_dtype="int8")
    assert storage_components(int8) == {
        "codebook": 8 * C * 4, "indices": E, "gains": E + OUT * 4, "biases": E + OUT * 4,
        "base_weights": E + OUT * 4, "grid": GRID}
    assert storage_bytes(int8) == sum(storage_components(int8).values())


def test_head_codebook_counted_once_and_uint16_indices():
    model = randomize(KAN([20, 20, 20]))  # 800 edges
    vq = compress_kan(model, 300, scope="head", gain_dtype="fp32")
    comp = storage_components(vq)
    assert comp["codebook"] == 300 * C * 4
    assert comp["indices"] == 800 * 2  # K > 256 → uint16


def test_peak_tracker_counts_live_allocations_not_views():
    a = torch.randn(1000)
    with PeakTracker() as t:
        b = a * 2           # +4000
        v = b.view(10, 100)  # a view: nothing new
        v.add_(1)            # in place: nothing new
        c = b + 1            # +4000, peak 8000
        del b, v, c
        d = a * 3            # +4000 after the others were freed
        del d
    assert t.peak == 8000 and t.live == 0


def test_vq_forward_never_builds_a_dense_weight_tensor(monkeypatch):
    import sharekan.vq_kan as vk
    model = randomize(KAN([256, 128]))
    vq = compress_kan(model, 64, gain_dtype="int8")
    dense_weight = 256 * 128 * C * 4
    x = torch.randn(2, 256)
    monkeypatch.setattr(vk, "_CHUNK_ELEMENTS", 2 * 256 * 8)  # 8 output rows per step
    # transients scale with the chunk (8 of 128 rows), never with out·in·C
    assert runtime_bytes(vq, x)["peak_transient"] < dense_weight / 10
    # whereas the efficient-kan style dense forward does materialise scaled weights
    assert runtime_bytes(model, x)["peak_transient"] >= dense_weight


def test_runtime_resident_matches_stored_tensors():
    model = layer_model()
    r = runtime_bytes(model, torch.randn(4, IN))
    assert r["resident"] == E * 4 + E * C * 4 + E * 4 + IN * KNOTS * 4  # base, spline, scaler, the whole grid
    assert r["total"] == r["resident"] + r["peak_transient"]
