"""Backbone pretraining on the training split: crop/flip targets, determinism, learning, bad input."""

import numpy as np
import pytest
import torch

from sharekan.detection.backbone import build_backbone, resized
from sharekan.detection.pretrain import _crop_targets, pretrain_backbone
from sharekan.detection.synthetic import generate_voc
from sharekan.detection.voc import Sample, VOCData


def _sample(boxes, labels):
    boxes = np.asarray(boxes, dtype=np.float32)
    return Sample("x", None, 128, 128, boxes, np.asarray(labels), np.zeros(len(labels), bool))


def test_crop_targets_shift_clip_flip_and_drop_mostly_cut_boxes():
    s = _sample([[16, 16, 48, 48], [100, 0, 128, 32]], [3, 7])  # the second lies outside the window
    cls, box = _crop_targets(s, 128, 16, 64, 16, 0, flip=False)
    assert set(cls[cls >= 0].tolist()) == {3}  # box 2 keeps none of its area in x ∈ [16, 80): dropped
    assert torch.allclose(box[cls == 3][0], torch.tensor([0.0, 16, 32, 48]))
    fcls, fbox = _crop_targets(s, 128, 16, 64, 16, 0, flip=True)
    # flipping the window mirrors the grid: location (r, c) ↔ (r, 3 − c)
    assert torch.equal(fcls.view(4, 4), cls.view(4, 4).flip(1))
    assert torch.allclose(fbox[fcls == 3][0], torch.tensor([32.0, 16, 64, 48]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    generate_voc(root, n_train=12, n_test=2, seed=3, min_size=64, max_size=96)
    d = VOCData(root, [("2007", "train")])
    return d, torch.stack([resized(d.load_image(i), 64) for i in range(len(d))])


def _pretrained(data, seed=0, epochs=3):
    d, images = data
    body, info = build_backbone("resnet18", "layer3", seed=seed)
    hist = pretrain_backbone(body, images, d.samples, 64, 16, info.channels, epochs=epochs, crop=48, batch_size=6,
                             seed=seed, progress=False)
    return body, hist


@pytest.mark.filterwarnings("ignore:no pretrained weights")
def test_pretraining_learns_is_seeded_and_loads_back(data):
    body, hist = _pretrained(data)
    assert hist[-1]["loss"] < hist[0]["loss"] and not any(p.requires_grad for p in body.parameters())
    again, _ = _pretrained(data)
    assert all(torch.equal(a, b) for a, b in zip(body.state_dict().values(), again.state_dict().values()))
    other, _ = _pretrained(data, seed=1)
    assert not torch.equal(body[0].weight, other[0].weight)
    loaded, info = build_backbone("resnet18", "layer3", state=body.state_dict(), trained_on="the test split")
    assert info.pretrained and info.weights == "trained on the test split"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), body(x))


@pytest.mark.filterwarnings("ignore:no pretrained weights")
def test_bad_input_is_refused_before_training(data):
    d, images = data
    body, info = build_backbone("resnet18", "layer3")
    with pytest.raises(ValueError, match="crop must be a multiple of the stride 16"):
        pretrain_backbone(body, images, d.samples, 64, 16, info.channels, crop=40)
    with pytest.raises(ValueError, match="images must be uint8"):
        pretrain_backbone(body, images.float(), d.samples, 64, 16, info.channels, crop=48)
