import pytest
import torch

from sharekan.kan import KAN
from sharekan.metrics import layer_report, r2, relative_error
from sharekan.vq import decompose
from sharekan.vq_kan import VQKAN, compress_kan, encode_layer

from .conftest import randomize


def test_r2_and_relative_error_known_values():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert r2(ref, ref) == 1.0
    assert r2(ref, torch.full((4,), 2.5)) == pytest.approx(0.0)
    approx = ref + torch.tensor([0.5, -0.5, 0.5, -0.5])
    assert r2(ref, approx) == pytest.approx(1 - 1.0 / 5.0)
    assert relative_error(ref, approx) == pytest.approx(1.0 / 30 ** 0.5)


def test_layer_report_perfect_for_exact_codebook_and_lower_for_small_k():
    model = randomize(KAN([6, 8, 3]))
    exact = VQKAN([encode_layer(layer, decompose(layer.scaled_spline_weight())[0].reshape(-1, 13), "fp32")
                   for layer in model.layers])
    x = torch.randn(64, 6)
    for row in layer_report(model, exact, x):
        assert row["coef_r2"] > 0.999999 and row["out_r2"] > 0.999999
    coarse = layer_report(model, compress_kan(model, 2, gain_dtype="fp32"), x)
    assert len(coarse) == 2
    assert all(row["coef_r2"] < 0.99 for row in coarse)
    assert all(0 < row["coef_rel_err"] for row in coarse)
