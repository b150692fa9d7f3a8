import pytest
import torch

from sharekan.bspline import bases, cox_de_boor, cubic_active, make_grid, scatter_active, uniform_grid_params


def textbook_basis(j: int, k: int, t: list[float], x: float) -> float:
    """Scalar Cox–de Boor recursion, written independently of the library."""
    if k == 0:
        return 1.0 if t[j] <= x < t[j + 1] else 0.0
    a = (x - t[j]) / (t[j + k] - t[j]) * textbook_basis(j, k - 1, t, x)
    b = (t[j + k + 1] - x) / (t[j + k + 1] - t[j + 1]) * textbook_basis(j + 1, k - 1, t, x)
    return a + b


@pytest.mark.parametrize("grid_size", [3, 5, 10])
def test_closed_form_equals_recursion_on_random_grids(grid_size):
    gen = torch.Generator().manual_seed(grid_size)
    for _ in range(3):
        lo = float(torch.empty(1).uniform_(-3, 0, generator=gen))
        hi = lo + float(torch.empty(1).uniform_(0.5, 4, generator=gen))
        grid = make_grid(2, grid_size, 3, (lo, hi)).double()
        knots = grid[0].tolist()
        span = knots[-1] - knots[0]
        # inside, extension region, outside every knot, and exactly on knots
        xs = torch.cat([torch.empty(300).uniform_(knots[0] - span, knots[-1] + span, generator=gen).double(),
                        torch.tensor(knots, dtype=torch.float64)])
        x = torch.stack([xs, xs.flip(0)], dim=1)
        t0, h = uniform_grid_params(grid)
        first, w = cubic_active(x, t0, h, grid.shape[1])
        closed = scatter_active(first, w, grid_size + 3)
        ref = torch.tensor([[[textbook_basis(j, 3, knots, float(v)) for j in range(grid_size + 3)]
                             for v in row] for row in x.tolist()], dtype=torch.float64)
        assert torch.allclose(closed, ref, atol=1e-6, rtol=0)
        assert torch.allclose(cox_de_boor(x, grid, 3), ref, atol=1e-12, rtol=0)


def test_float32_closed_form_matches_recursion():
    grid = make_grid(4, 10, 3, (-1, 1))
    x = torch.randn(2000, 4) * 1.5
    ref = cox_de_boor(x.double(), grid.double(), 3)
    assert (bases(x, grid, 3, uniform_grid_params(grid)).double() - ref).abs().max() < 1e-6


def test_basis_is_zero_outside_every_knot_and_sums_to_one_inside():
    grid = make_grid(1, 10, 3, (-1, 1))
    t0, h = uniform_grid_params(grid)
    outside = torch.tensor([[-1.61], [-5.0], [1.61], [7.0]])  # knots span [-1.6, 1.6)
    first, w = cubic_active(outside, t0, h, grid.shape[1])
    assert torch.all(w == 0)
    inside = torch.linspace(-1, 0.999, 101)[:, None]
    _, w = cubic_active(inside, t0, h, grid.shape[1])
    assert torch.allclose(w.sum(-1), torch.ones(101), atol=1e-6)
    # in the extension region the bases no longer sum to one: ΣB(x) < 1
    ext = torch.tensor([[-1.5], [1.5]])
    _, w = cubic_active(ext, t0, h, grid.shape[1])
    assert torch.all(w.sum(-1) < 0.99)
    assert torch.allclose(w.sum(-1, keepdim=True),
                          cox_de_boor(ext, grid, 3).sum(-1, keepdim=True), atol=1e-7)


def test_non_uniform_grid_is_detected():
    grid = make_grid(2, 5, 3)
    grid[1, 4] += 0.05
    assert uniform_grid_params(grid) is None


def test_bad_grid_range():
    with pytest.raises(ValueError, match="grid_range"):
        make_grid(2, 5, 3, (1.0, -1.0))


@pytest.mark.parametrize("grid_size,grid_range", [(10, (-3, 3)), (5, (-3, 3)), (20, (-3, 3)), (7, (-2.5, 1.3))])
def test_a_uniform_grid_is_stored_as_two_numbers_and_comes_back_bit_for_bit(grid_size, grid_range):
    from sharekan.bspline import compact_grid, expand_grid, grid_bytes

    grid = make_grid(6, grid_size, 3, grid_range)
    lo, h = compact_grid(grid)
    assert lo.shape == h.shape == (1,) and grid_bytes(grid) == 8
    assert torch.equal(expand_grid(lo, h, 6, grid.shape[1]), grid)
    per_input = torch.cat([grid[:3], make_grid(3, grid_size, 3, (-1.5, 2.0))])  # each input its own range
    lo, h = compact_grid(per_input)
    assert lo.shape == (6,) and torch.equal(expand_grid(lo, h, 6, grid.shape[1]), per_input)
    bent = grid.clone()
    bent[:, 5] += 0.01  # not uniform: stored whole
    assert compact_grid(bent) is None and grid_bytes(bent) == bent.numel() * 4


@pytest.mark.parametrize("grid_size", [3, 10])
def test_the_elementwise_cardinal_form_equals_the_closed_form_bases(grid_size):
    """``cardinal_cubic`` (no gather or scatter: what the compiled dense baseline fuses) gives the same
    bases as the interval-based closed form, inside the grid, on its knots and outside it."""
    from sharekan.bspline import bases, cardinal_cubic
    from sharekan.kan import KANLinear

    layer = KANLinear(6, 2, grid_size=grid_size)
    t0, h = layer.uniform_params()
    x = torch.cat([torch.tensor([-50.0, 50.0]), torch.linspace(-2.5, 2.5, 401), layer.grid[0]]).reshape(-1, 1).repeat(1, 6)
    want = bases(x, layer.grid, 3, (t0, h))
    got = cardinal_cubic(x, t0, h, layer.grid.shape[1] - 4)
    assert got.shape == want.shape and float((got - want).abs().max()) < 5e-6
    assert float(got[:2].abs().max()) == 0.0  # beyond every knot, either side: no basis
