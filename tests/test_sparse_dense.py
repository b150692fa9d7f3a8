"""The sparse-basis dense kernel (the dense baseline that reads only the weight rows an input
needs): its logic in Triton's interpreter on the CPU, and on a CUDA device against eager fp32."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharekan.kan import KAN

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = """
import json, torch
from sharekan.kan import KAN
from sharekan.sparse_dense import SparseBasisKAN
torch.manual_seed(0)
model = KAN([40, 20, 6], grid_size={g})
with torch.no_grad():
    for lay in model.layers:
        lay.spline_weight.normal_(0, 0.5)
x = torch.randn(3, 40) * 1.5
x[0, :5] = 10.0    # right of every knot: only the SiLU term
x[1, 5:9] = -0.999  # inside, near the left end: some of the four bases do not exist
ref = model(x)
y = SparseBasisKAN(model, torch.float32)(x)
print(json.dumps(float((y - ref).abs().max() / ref.abs().max())))
"""


@pytest.mark.parametrize("grid_size", [5, 10])
def test_the_kernel_equals_the_kan_in_triton_s_interpreter(grid_size):
    """fp32 weights, three rows (one outside the grid): the kernel's bases, intervals and its
    atomically added input splits give the KAN's forward to float32 rounding."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", INTERPRETED.format(g=grid_size)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) < 1e-5


def test_the_weights_are_laid_out_input_major_with_the_base_row_first():
    from sharekan.sparse_dense import sparse_basis_layer

    layer = KAN([7, 3]).layers[0]
    sparse = sparse_basis_layer(layer, torch.float32)
    assert sparse.weight.shape == (7, 14, 3)  # [in, C + 1, out]
    assert torch.equal(sparse.weight[:, 0, :], layer.base_weight.detach().T)
    assert torch.equal(sparse.weight[:, 1:, :], layer.scaled_spline_weight().detach().permute(1, 2, 0))
    layer.grid.data[0, 2] += 0.3  # not uniform: refused, not silently wrong
    layer._uniform_key = None
    with pytest.raises(ValueError, match="uniform grid"):
        sparse_basis_layer(layer)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2, 7, 300])
def test_the_kernel_is_as_accurate_as_the_dense_fp16_head(rows):
    """fp16 weights: error against eager fp32 no worse than the fp16 ``DenseKAN``'s on the same
    inputs, inside and outside the grid, every output written."""
    from sharekan.baselines import DenseKAN
    from sharekan.sparse_dense import SparseBasisKAN

    torch.manual_seed(0)
    model = KAN([1000, 130, 24]).cuda()
    with torch.no_grad():
        for lay in model.layers:
            lay.spline_weight.normal_(0, 0.5)
    x = torch.randn(rows, 1000, device="cuda") * 1.5
    x[0, :50] = 4.0  # outside the grid range [-1, 1] and its extension
    with torch.no_grad():
        ref = model(x)
        y = SparseBasisKAN(model).eval()(x)
        dense = DenseKAN(model, torch.float16).eval()(x)
    err = float((y - ref).abs().max() / ref.abs().max())
    dense_err = float((dense - ref).abs().max() / ref.abs().max())
    assert torch.isfinite(y).all() and y.shape == (rows, 24)
    assert err <= 1.1 * dense_err + 1e-6, (err, dense_err)
