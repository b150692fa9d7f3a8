import numpy as np
import pytest
import torch

from sharekan.clustering import fit_codebook
from sharekan.vq import nearest


def blobs(n_per=200, k=6, d=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=1)
    pts = centres.repeat_interleave(n_per, 0) + 0.02 * torch.randn(n_per * k, d, generator=gen)
    return torch.nn.functional.normalize(pts, dim=1), centres


def test_result_is_a_spherical_lloyd_fixed_point():
    pts, _ = blobs(n_per=150, k=8, seed=4)
    pts = torch.nn.functional.normalize(pts + 0.3 * torch.randn_like(pts), dim=1)
    cb = fit_codebook(pts, 8, seed=0, niter=100)
    assert cb.shape == (8, 13) and cb.dtype == torch.float32
    assert torch.allclose(cb.norm(dim=1), torch.ones(8), atol=1e-5)  # spherical
    idx = nearest(pts, cb)
    for j in range(8):  # each codeword is the normalised mean of the points it owns
        mean = torch.nn.functional.normalize(pts[idx == j].mean(dim=0), dim=0)
        assert torch.allclose(cb[j], mean, atol=1e-4)


def test_fit_beats_a_random_codebook():
    pts, _ = blobs(n_per=100, k=10, seed=5)
    cb = fit_codebook(pts, 10, seed=0)
    rand = pts[torch.randperm(len(pts))[:10]]
    def objective(c):
        return float(torch.cdist(pts, c).min(dim=1).values.pow(2).sum())
    assert objective(cb) < objective(rand)


def test_deterministic_given_seed():
    pts, _ = blobs(n_per=100, k=20, seed=1)
    a = fit_codebook(pts, 16, seed=7)
    b = fit_codebook(pts.numpy(), 16, seed=7)
    assert torch.equal(a, b)


def test_uses_every_point_no_subsampling():
    # 300 points per centroid would be subsampled to 256 by FAISS's default; the fitted
    # centroid must then be the mean of all points of its cluster, not of a subsample
    pts, _ = blobs(n_per=300, k=1, seed=2)
    cb = fit_codebook(pts, 1, seed=0, niter=2)
    mean = torch.nn.functional.normalize(pts.mean(dim=0, keepdim=True), dim=1)
    assert torch.allclose(cb, mean, atol=1e-5)


def test_errors_name_the_parameter():
    pts, _ = blobs(n_per=2, k=3)
    with pytest.raises(ValueError, match=r"K \(codebook size\) = 7 is larger than the number of edges \(6\)"):
        fit_codebook(pts, 7)
    with pytest.raises(ValueError, match="points must be 2-D"):
        fit_codebook(np.zeros(5, dtype=np.float32), 1)
    bad = pts.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="points.*non-finite"):
        fit_codebook(bad, 2)


def test_assignment_is_the_nearest_codeword():
    pts, _ = blobs(n_per=50, k=4, seed=3)
    cb = fit_codebook(pts, 4, seed=0)
    idx = nearest(pts, cb)
    assert torch.equal(idx, torch.cdist(pts, cb).argmin(dim=1))
