import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import VOCDetection

from sharekan.detection.synthetic import generate_voc
from sharekan.detection.voc import VOC_CLASSES, BadSampleError, VOCData


def _digest(base: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(base.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(base)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    generate_voc(root, n_train=12, n_test=4, seed=3)
    return root


def test_generator_is_deterministic(tmp_path, voc_root):
    generate_voc(tmp_path, n_train=12, n_test=4, seed=3)
    assert _digest(tmp_path / "VOCdevkit") == _digest(voc_root / "VOCdevkit")
    other = tmp_path / "other"
    generate_voc(other, n_train=12, n_test=4, seed=4)
    assert _digest(other / "VOCdevkit") != _digest(voc_root / "VOCdevkit")


def test_the_shifted_domain_draws_the_same_classes_darker_and_smaller(tmp_path, voc_root):
    from sharekan.detection.synthetic import SHIFTED

    generate_voc(tmp_path, n_train=12, n_test=4, seed=3, style=SHIFTED)
    shifted, default = (VOCData(root, [("2007", "train")]).samples for root in (tmp_path, voc_root))
    assert _digest(tmp_path / "VOCdevkit") != _digest(voc_root / "VOCdevkit")
    assert all(set(s.labels.tolist()) <= set(range(len(VOC_CLASSES))) for s in shifted)
    area = [np.median([np.prod(b[2:] - b[:2]) / (s.width * s.height) for s in ss for b in s.boxes])
            for ss in (shifted, default)]
    assert area[0] < area[1]  # objects about 40 % smaller
    jpg = "VOCdevkit/VOC2007/JPEGImages/000000.jpg"
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / jpg)).mean() < np.asarray(Image.open(voc_root / jpg)).mean()


def test_generated_set_is_valid_voc(voc_root):
    ds = VOCDetection(str(voc_root), year="2007", image_set="train", download=False)
    assert len(ds) == 12
    img, target = ds[0]
    ann = target["annotation"]
    assert int(ann["size"]["width"]) == img.width
    objs = ann["object"]
    assert all(o["name"] in VOC_CLASSES for o in objs)
    assert len(VOCDetection(str(voc_root), year="2007", image_set="val", download=False)) == 4
    data = VOCData(voc_root, [("2007", "train")])
    s = data.samples[0]
    assert s.boxes.dtype == np.float32 and s.boxes.shape[1] == 4
    assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] <= s.height)
    labels = np.concatenate([s.labels for s in data.samples])
    assert len(set(labels.tolist())) > 5  # several classes appear


@pytest.fixture
def broken(tmp_path, voc_root):
    root = tmp_path / "broken"
    shutil.copytree(voc_root, root)
    return root / "VOCdevkit" / "VOC2007"


def _edit(ann: Path, old: str, new: str):
    text = ann.read_text()
    assert old in text
    ann.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("case,match", [
    ("malformed", "malformed XML"),
    ("missing_image", "image missing"),
    ("zero_area", "zero-area box"),
    ("outside", "outside the"),
    ("unknown_class", "unknown class name 'unicorn'"),
    ("nan_coordinate", "non-finite coordinate"),
    ("size_mismatch", "annotated size 999x240 but 000002.jpg is"),
    ("garbage_jpeg", "not a readable image"),
    ("truncated_jpeg", "cannot decode image"),
    ("symlink_loop", "annotation not readable"),
    ("non_utf8_split", "line \\d+ is not UTF-8"),
])
def test_bad_samples_named_or_skipped(broken, case, match):
    ann = broken / "Annotations" / "000002.xml"
    jpg = broken / "JPEGImages" / "000002.jpg"
    if case == "malformed":
        ann.write_text(ann.read_text()[:-30])
    elif case == "missing_image":
        (broken / "JPEGImages" / "000002.jpg").unlink()
    elif case == "zero_area":
        text = ann.read_text()
        xmin = text.split("<xmin>")[1].split("</xmin>")[0]
        xmax = text.split("<xmax>")[1].split("</xmax>")[0]
        _edit(ann, f"<xmax>{xmax}</xmax>", f"<xmax>{int(xmin) - 1}</xmax>")
    elif case == "outside":
        text = ann.read_text()
        ymax = text.split("<ymax>")[1].split("</ymax>")[0]
        _edit(ann, f"<ymax>{ymax}</ymax>", "<ymax>5000</ymax>")
    elif case == "unknown_class":
        text = ann.read_text()
        name = text.split("<name>")[1].split("</name>")[0]
        _edit(ann, f"<name>{name}</name>", "<name>unicorn</name>")
    elif case == "nan_coordinate":
        text = ann.read_text()
        xmin = text.split("<xmin>")[1].split("</xmin>")[0]
        _edit(ann, f"<xmin>{xmin}</xmin>", "<xmin>nan</xmin>")
    elif case == "size_mismatch":
        text = ann.read_text()
        width = text.split("<width>")[1].split("</width>")[0]
        _edit(ann, f"<width>{width}</width>", "<width>999</width>")
        _edit(ann, f"<height>{text.split('<height>')[1].split('</height>')[0]}</height>", "<height>240</height>")
    elif case == "garbage_jpeg":
        jpg.write_bytes(b"\x00garbage" * 100)
    elif case == "truncated_jpeg":
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    elif case == "symlink_loop":
        ann.unlink()
        ann.symlink_to(ann)
    elif case == "non_utf8_split":
        split = broken / "ImageSets" / "Main" / "train.txt"
        lines = split.read_bytes().splitlines()
        n = lines.index(b"000002")
        split.write_bytes(b"\n".join(lines[:n] + [b"0000\xff2"] + lines[n + 1:]) + b"\n")
    root = broken.parent.parent
    decode = case == "truncated_jpeg"  # only a full decode finds a cut file (the dataset stage's check)
    with pytest.raises(BadSampleError, match=match) as err:
        VOCData(root, [("2007", "train")], verify_images=decode)
    assert "000002" in str(err.value) or case == "non_utf8_split"
    data = VOCData(root, [("2007", "train")], skip_bad=True, verify_images=decode)
    assert len(data) == 11 and len(data.skipped) == 1 and re.search(match, data.skipped[0])
    assert [s.image_id for s in VOCData(root, [("2007", "train")], skip_bad=True,
                                        exclude=frozenset(i for i in data.skipped_ids if i)).samples] == \
        [s.image_id for s in data.samples]  # what the dataset stage skipped stays out without re-checking


def test_missing_root_and_split_are_named(tmp_path, voc_root):
    with pytest.raises(FileNotFoundError, match="no VOCdevkit"):
        VOCData(tmp_path / "nowhere", [("2007", "train")])
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        VOCData(voc_root, [("2012", "train")])
