import pytest
import torch

from sharekan.detection.head import (HeadConfig, KANDetectionHead, assign_targets, decode, head_loss,
                                     location_centres)
from sharekan.detection.train import train_head


def test_location_centres_row_major():
    c = location_centres(2, 3, 16)
    assert c.shape == (6, 2)
    assert c[0].tolist() == [8.0, 8.0] and c[2].tolist() == [40.0, 8.0] and c[3].tolist() == [8.0, 24.0]


def test_assign_targets_smallest_box_wins_and_tiny_box_gets_a_location():
    centres = location_centres(6, 6, 16)
    big = [0.0, 0.0, 96.0, 96.0]
    small = [40.0, 40.0, 72.0, 72.0]
    tiny = [81.0, 1.0, 85.0, 5.0]  # contains no location centre
    cls, tgt = assign_targets(centres, torch.tensor([big, small, tiny]), torch.tensor([3, 7, 9]), 16)
    loc = lambda x, y: int(y // 16) * 6 + int(x // 16)
    assert cls[loc(56, 56)] == 7 and tgt[loc(56, 56)].tolist() == small
    assert cls[loc(8, 88)] == -1 or cls[loc(8, 88)] == 3
    assert (cls == 9).sum() == 1  # the nearest location to the tiny box
    assert cls[loc(40, 40)] in (3, 7)
    none_cls, _ = assign_targets(centres, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 16)
    assert torch.all(none_cls == -1)


def test_head_forward_shapes_and_prior():
    head = KANDetectionHead(HeadConfig(in_channels=12, hidden=8))
    out = head(torch.randn(2, 5, 5, 12))
    assert out.shape == (2, 5, 5, 24)
    assert torch.allclose(torch.sigmoid(head.out_bias[:20]), torch.full((20,), 0.01), atol=1e-6)


def test_loss_decreases_on_a_tiny_set():
    torch.manual_seed(0)
    centres = location_centres(4, 4, 16).repeat(8, 1)
    x = torch.randn(128, 10)
    cls = torch.where(x[:, 0] > 0.5, (x[:, 1] > 0).long() * 3, torch.full((128,), -1))
    box = torch.cat([centres - 20 - 5 * x[:, 2:3], centres + 20 + 5 * x[:, 3:4]], dim=1)
    head = KANDetectionHead(HeadConfig(in_channels=10, hidden=8))
    head.fit_standardisation(x)
    cfg = head.cfg
    before = head_loss(head(x), cls, box, centres, cfg.num_classes, cfg.stride)[0].item()
    saved = []
    history = train_head(head, x, cls, box, centres, epochs=30, batch_size=32, lr=1e-2, progress=False,
                         on_epoch=lambda e, sd: saved.append(e))
    after = head_loss(head(x), cls, box, centres, cfg.num_classes, cfg.stride)[0].item()
    assert after < 0.5 * before
    assert history[-1]["loss"] < history[0]["loss"]
    assert saved == list(range(30))


def _tiny_training_set():
    g = torch.Generator().manual_seed(0)
    centres = location_centres(4, 4, 16).repeat(8, 1)
    x = torch.randn(128, 10, generator=g)
    cls = torch.where(x[:, 0] > 0.5, (x[:, 1] > 0).long() * 3, torch.full((128,), -1))
    box = torch.cat([centres - 20 - 5 * x[:, 2:3], centres + 20 + 5 * x[:, 3:4]], dim=1)
    return x, cls, box, centres


def _fresh_head(x):
    torch.manual_seed(7)
    head = KANDetectionHead(HeadConfig(in_channels=10, hidden=8))
    head.fit_standardisation(x)
    return head


def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    x, cls, box, centres = _tiny_training_set()
    kw = dict(epochs=6, batch_size=32, lr=1e-2, seed=3, progress=False)
    straight = _fresh_head(x)
    history = train_head(straight, x, cls, box, centres, **kw)

    class Killed(Exception):
        pass

    def die_after_epoch_4(epoch, _):
        if epoch == 3:
            raise Killed
    state = tmp_path / "head.resume.pt"
    with pytest.raises(Killed):
        train_head(_fresh_head(x), x, cls, box, centres, on_epoch=die_after_epoch_4, resume_path=state, **kw)
    assert torch.load(state, weights_only=True)["epoch"] == 4
    resumed = _fresh_head(x)  # a new process: fresh weights, the state file left behind
    epochs_run = []
    again = train_head(resumed, x, cls, box, centres, resume_path=state,
                       on_epoch=lambda e, sd: epochs_run.append(e), **kw)
    assert epochs_run == [4, 5]  # only the epochs after the checkpoint
    assert again == history
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    ran = []  # the state file now holds epoch 6; a run with other settings must not resume from it
    train_head(_fresh_head(x), x, cls, box, centres, resume_path=state, on_epoch=lambda e, sd: ran.append(e),
               **{**kw, "lr": 5e-3})
    assert ran == list(range(6))


def test_decode_maps_back_to_pixels_and_suppresses_duplicates():
    centres = location_centres(2, 2, 16)
    out = torch.full((4, 24), -10.0)
    out[0, 5] = 5.0   # class 5 at location (8, 8)
    out[1, 5] = 4.0   # the same object seen from the next location: suppressed by NMS
    out[:, 20:] = torch.log(torch.tensor(8.0 / 16))  # 8-pixel distances to each side
    out[1, 20] = torch.log(torch.tensor(24.0 / 16))  # box (0, 0, 28, 16): IoU 0.57 with the first
    out[1, 22] = torch.log(torch.tensor(4.0 / 16))
    boxes, scores, labels = decode(out, centres, 20, 16, (2.0, 1.0), (64, 32))
    assert labels.tolist() == [5] and scores[0] > 0.99
    assert boxes[0].tolist() == pytest.approx([0.0, 0.0, 32.0, 16.0])


def test_bad_training_arguments():
    head = KANDetectionHead(HeadConfig(in_channels=4, hidden=2))
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="epochs"):
        train_head(head, x, torch.full((8,), -1), torch.zeros(8, 4), torch.zeros(8, 2), epochs=0)
