import pytest
import torch

from sharekan.baselines import Int8KAN, edge_norms, prune_edges
from sharekan.kan import KAN

from .conftest import randomize


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5])
def test_global_pruning_is_exact_and_removes_the_smallest_edges(sparsity):
    model = randomize(KAN([10, 12, 5]))
    pruned = prune_edges(model, sparsity)
    total = 10 * 12 + 12 * 5
    removed = sum(int((~m).sum()) for m in pruned.masks)
    assert removed == round(sparsity * total)
    norms = torch.cat([edge_norms(layer).reshape(-1) for layer in model.layers])
    mask = torch.cat([m.reshape(-1) for m in pruned.masks])
    assert norms[~mask].max() <= norms[mask].min()
    for layer, m in zip(pruned.model.layers, pruned.masks):
        assert torch.all(layer.base_weight[~m] == 0) and torch.all(layer.spline_weight[~m] == 0)
    # the original is untouched
    assert all(bool((layer.base_weight != 0).all()) for layer in model.layers)


def test_per_layer_pruning_is_exact_in_every_layer():
    model = randomize(KAN([10, 12, 5]))
    pruned = prune_edges(model, 0.25, scope="layer")
    for layer, m in zip(model.layers, pruned.masks):
        assert int((~m).sum()) == round(0.25 * layer.in_features * layer.out_features)
        n = edge_norms(layer)
        assert n[~m].max() <= n[m].min()


def test_zero_sparsity_is_identity():
    model = randomize(KAN([4, 3]))
    x = torch.randn(8, 4)
    assert torch.equal(prune_edges(model, 0.0)(x), model(x))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        prune_edges(randomize(KAN([4, 3])), bad)


def test_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        prune_edges(randomize(KAN([4, 3])), 0.1, scope="row")


def test_int8_error_bound_and_output_close():
    model = randomize(KAN([6, 8, 3]))
    q = Int8KAN(model)
    for layer, ql in zip(model.layers, q.layers):
        base, coef = ql.weights()
        assert ql.base.dtype == torch.int8 and ql.coef.dtype == torch.int8
        assert torch.all((base - layer.base_weight).abs() <= ql.base_scale[:, None] / 2 + 1e-7)
        c = layer.scaled_spline_weight()
        assert torch.all((coef - c).abs() <= ql.coef_scale[:, None, None] / 2 + 1e-6)
    # the output error is bounded by the weight errors: Σ_i scale/2·(|silu(x_i)| + ΣB(x_i))
    single = randomize(KAN([6, 4]))
    layer, ql = single.layers[0], Int8KAN(single).layers[0]
    x = torch.randn(50, 6) * 1.5
    err = (ql(x) - layer(x)).abs()
    basis_sum = layer.b_splines(x).sum(-1)
    bound = (ql.base_scale[None, :] / 2 * torch.nn.functional.silu(x).abs().sum(1, keepdim=True)
             + ql.coef_scale[None, :] / 2 * basis_sum.sum(1, keepdim=True))
    assert torch.all(err <= bound + 1e-5)
    assert err.max() > 0


def test_dense_kan_is_the_kan_forward_and_compiles_without_graph_breaks():
    from sharekan.baselines import DenseKAN

    kan = randomize(KAN([12, 6, 5]))
    x = torch.rand(7, 3, 12) * 2.4 - 1.2  # inside and outside the grid
    assert torch.allclose(DenseKAN(kan, torch.float32)(x), kan(x), atol=1e-5)
    half = DenseKAN(kan)  # fp16 weights: the deployment baseline
    assert half.w0.dtype == torch.float16 and half(x).dtype == torch.float32
    explained = torch._dynamo.explain(DenseKAN(kan, torch.float32))(x.reshape(-1, 12))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
