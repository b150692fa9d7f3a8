"""VQ-aware fine-tuning: what is trained is what is stored, and training reduces the loss."""

import pytest
import torch

from sharekan.finetune import fake_quant, trainable
from sharekan.kan import KAN
from sharekan.quant import quantize
from sharekan.vq_kan import compress_kan

from .conftest import randomize


@pytest.mark.parametrize("dtype", ["fp16", "int8", "int4"])
def test_fake_quant_rounds_like_storage_and_passes_gradients(dtype):
    t = torch.randn(5, 9, requires_grad=True)
    out = fake_quant("t", t, dtype)
    assert torch.equal(out.detach(), quantize("t", t.detach(), dtype).dequantize())
    out.sum().backward()
    assert torch.equal(t.grad, torch.ones_like(t))


@pytest.mark.parametrize("dtype", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("train_codebook", [False, True])
def test_finetuning_reduces_the_error_and_encodes_exactly_what_it_trained(dtype, train_codebook):
    teacher = randomize(KAN([12, 10, 4], grid_size=5))
    vq = compress_kan(teacher, 8, gain_dtype=dtype, niter=10)
    x = torch.randn(512, 12)
    target = teacher(x).detach()
    model = trainable(vq, train_codebook)
    start = model.encoded()
    assert torch.allclose(start(x), vq(x), atol=1e-5)  # before training: the very same compressed head
    assert torch.allclose(model(x), vq(x), atol=1e-4)
    before = float(((vq(x) - target) ** 2).mean())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned = model.encoded()
    after = float(((tuned(x) - target) ** 2).mean())
    assert after < 0.8 * before
    assert torch.allclose(tuned(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(tuned.layers, vq.layers))
    assert [lay.gain_dtype for lay in tuned.layers] == [dtype] * 2
    assert torch.equal(tuned.layers[0].codebook, vq.layers[0].codebook) != train_codebook
    assert tuned.storage_components() == vq.storage_components()
