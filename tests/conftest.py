"""Shared fixtures: seeded RNG and small random KANs."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


def randomize(model, spline_scale: float = 0.5):
    """Give a KAN non-trivial weights (its init is near zero splines)."""
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.normal_(0, spline_scale)
            layer.base_weight.normal_(0, 0.3)
            if layer.enable_standalone_scale_spline:
                layer.spline_scaler.uniform_(0.5, 1.5)
    return model


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where CUDA is absent (CI); they run on the device machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
