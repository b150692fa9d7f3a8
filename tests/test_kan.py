import io

import pytest
import torch
import torch.nn.functional as F

from sharekan.kan import KAN, KANLinear

from .conftest import randomize


def efficient_kan_forward(sd: dict, prefix: str, x: torch.Tensor, order: int = 3) -> torch.Tensor:
    """efficient-kan's KANLinear.forward, transcribed: recursion bases, scaler multiplied in."""
    grid = sd[prefix + "grid"]
    xe = x.unsqueeze(-1)
    b = ((xe >= grid[:, :-1]) & (xe < grid[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        b = ((xe - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * b[:, :, :-1]) + (
            (grid[:, k + 1:] - xe) / (grid[:, k + 1:] - grid[:, 1:(-k)]) * b[:, :, 1:])
    w = sd[prefix + "spline_weight"] * sd[prefix + "spline_scaler"].unsqueeze(-1)
    out = F.linear(F.silu(x), sd[prefix + "base_weight"])
    return out + F.linear(b.reshape(x.shape[0], -1), w.reshape(w.shape[0], -1))


def efficient_kan_state_dict(widths, grid_size=10, order=3, lo=-1.0, hi=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    h = (hi - lo) / grid_size
    for n, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        grid = (torch.arange(-order, grid_size + order + 1) * h + lo).expand(i, -1).contiguous()
        sd[f"layers.{n}.grid"] = grid
        sd[f"layers.{n}.base_weight"] = torch.randn(o, i, generator=gen) * 0.3
        sd[f"layers.{n}.spline_weight"] = torch.randn(o, i, grid_size + order, generator=gen) * 0.5
        sd[f"layers.{n}.spline_scaler"] = torch.rand(o, i, generator=gen) + 0.5
    return sd


@pytest.mark.parametrize("grid_size", [5, 10])
def test_efficient_kan_state_dict_loads_and_matches(grid_size):
    widths = [6, 9, 4]
    sd = efficient_kan_state_dict(widths, grid_size)
    model = KAN(widths, grid_size=grid_size)
    model.load_state_dict(sd)
    x = torch.randn(64, 6) * 1.3  # in range, extension region and outside
    ref = x
    for n in range(len(widths) - 1):
        ref = efficient_kan_forward(sd, f"layers.{n}.", ref)
    assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)


def test_non_uniform_grid_uses_recursion_and_matches():
    sd = efficient_kan_state_dict([5, 3], grid_size=6, seed=3)
    grid = sd["layers.0.grid"].clone()
    grid[:, 1:] += torch.linspace(0, 0.3, grid.shape[1] - 1)  # still sorted, no longer uniform
    sd["layers.0.grid"] = grid
    model = KAN([5, 3], grid_size=6)
    model.load_state_dict(sd)
    assert model.layers[0].uniform_params() is None
    x = torch.randn(50, 5)
    assert torch.allclose(model(x), efficient_kan_forward(sd, "layers.0.", x), atol=1e-5)


def test_state_dict_round_trip():
    model = randomize(KAN([4, 7, 2], grid_size=8))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = KAN([4, 7, 2], grid_size=8)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(33, 4)
    assert torch.equal(model(x), other(x))
    assert set(model.state_dict()) == {f"layers.{n}.{k}" for n in range(2)
                                       for k in ("grid", "base_weight", "spline_weight", "spline_scaler")}


def test_spline_order_and_grid_size_configurable():
    layer = KANLinear(3, 2, grid_size=7, spline_order=2)
    assert layer.spline_weight.shape == (2, 3, 9)
    assert layer.grid.shape == (3, 7 + 2 * 2 + 1)
    assert layer(torch.randn(5, 3)).shape == (5, 2)


def test_spline_term_vanishes_outside_every_knot():
    layer = randomize(KAN([3, 2])).layers[0]
    x = torch.full((4, 3), 5.0)  # knots span [-1.6, 1.6)
    expected = F.silu(x) @ layer.base_weight.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_missing_key_is_named():
    sd = efficient_kan_state_dict([3, 2])
    del sd["layers.0.spline_scaler"]
    with pytest.raises(KeyError, match="layers.0.spline_scaler"):
        KAN([3, 2]).load_state_dict(sd)


def test_shape_mismatch_is_named():
    sd = efficient_kan_state_dict([3, 2], grid_size=5)
    with pytest.raises(ValueError, match=r"layers.0.grid"):
        KAN([3, 2], grid_size=10).load_state_dict(sd)


def test_non_finite_state_dict_is_refused_and_model_untouched():
    model = KAN([3, 4, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = efficient_kan_state_dict([3, 4, 2])
    sd["layers.1.spline_weight"][0, 0, 0] = float("nan")  # layer 0 is fine and must not load
    with pytest.raises(ValueError, match="layers.1.spline_weight.*non-finite"):
        model.load_state_dict(sd)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_input_width_mismatch_is_named():
    with pytest.raises(ValueError, match="last dimension 3"):
        KAN([3, 2])(torch.randn(4, 5))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="grid_size"):
        KANLinear(3, 2, grid_size=bad)


def test_slope_penalty_is_the_mean_squared_control_polygon_slope():
    layer = KAN([3, 2], grid_size=5, grid_range=(-1, 1)).layers[0]  # h = 0.4
    with torch.no_grad():
        layer.spline_scaler.fill_(1.0)
        layer.spline_weight.copy_(torch.arange(8.0).expand(2, 3, 8) * 0.2)  # every slope 0.2 / 0.4 = 0.5
    assert torch.isclose(layer.slope_penalty(), torch.tensor(0.25))
    penalty = layer.slope_penalty()
    penalty.backward()
    assert layer.spline_weight.grad.abs().sum() > 0


def test_the_lipschitz_penalty_makes_trained_edges_smoother():
    from sharekan.detection.head import HeadConfig, KANDetectionHead
    from sharekan.detection.train import train_head

    x = torch.randn(512, 6)
    cls = torch.where(x[:, 0] > 0.5, 1, -1)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]]).expand(512, 4)
    centres = torch.full((512, 2), 24.0)
    slopes = []
    for lam in (0.0, 10.0):
        torch.manual_seed(0)
        head = KANDetectionHead(HeadConfig(in_channels=6, num_classes=2, hidden=4, grid_size=5))
        randomize(head.kan, 0.3)  # rough edges to start from
        train_head(head, x, cls, box, centres, epochs=10, batch_size=64, lr=1e-2, progress=False, lipschitz=lam)
        slopes.append(float(head.kan.slope_penalty().detach()))
    assert slopes[1] < 0.5 * slopes[0]
