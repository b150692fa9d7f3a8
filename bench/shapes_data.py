"""The k-means benches' data: ``n`` unit shape vectors (d = 13) a trained head's edges resemble.

8,192 smooth random cubic-spline coefficient vectors (cumulative sums of Gaussian steps); each edge
is one of them scaled by a random gain, shifted by a random bias and perturbed by 10 % noise, then
split by ``sharekan.vq.decompose`` into bias, gain and the unit shape that is clustered."""

from __future__ import annotations

import numpy as np
import torch

from sharekan.vq import decompose

D = 13


def shapes(n: int, seed: int = 0, modes: int = 8192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.cumsum(rng.standard_normal((modes, D)), axis=1)
    pick = rng.integers(0, modes, n)
    coef = centres[pick] * rng.uniform(0.2, 2.0, (n, 1)) + rng.standard_normal((n, 1))
    coef += 0.1 * np.abs(coef).mean() * rng.standard_normal((n, D))
    return decompose(torch.from_numpy(coef.astype(np.float32)))[0].numpy()
