"""One typed spec per stage: what determines its artifact, hashed as ``spec.model_dump()``.

The Prefect form (``flows.params``) is built from these fields, so a field's type, bounds, title and
description are written once and the value a user types is the value hashed. Specs are frozen and
strict (``"yes"`` is no boolean, ``1`` no float).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sharekan.clustering import MODES
from sharekan.codebook_size import MAX_K
from sharekan.vq_kan import DTYPES

__all__ = ["Spec", "K", "Seed", "DatasetSpec", "BackboneSpec", "PretrainSpec", "FeaturesSpec", "HeadSpec",
           "EvaluationSpec",
           "SplinesSpec", "CodebookSpec", "AssignmentSpec", "EncodeSpec", "FinetuneSpec", "CompressionSpec", "LuthamSpec",
           "SideDtype"]

K = Annotated[int, Field(ge=1, le=MAX_K)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Mode = Literal[MODES]
SideDtype = Literal[DTYPES]  # how an encoded head stores its per-edge gains, biases and base weights
CodebookDtype = Literal["fp32", "fp16"]  # how an encoded head stores its codebook
SPLITS = r"^\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*(,\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*)*$"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetSpec(Spec):
    """A data set as its content: where it is named from, its splits, and a fingerprint of each
    split (ids, boxes, labels, image file sizes)."""

    label: str  # "synthetic" or the VOC root the user gave
    train_splits: str = Field("2007:train", pattern=SPLITS, title="training splits",
                              description="YEAR:SET[,YEAR:SET], e.g. 2007:trainval,2012:trainval")
    test_splits: str = Field("2007:val", pattern=SPLITS, title="test splits", description="YEAR:SET[,YEAR:SET]")
    ood_splits: str = Field("", pattern=r"^$|" + SPLITS, title="out-of-distribution splits",
                            description="YEAR:SET[,YEAR:SET] scored beside the test split (a domain shift); "
                                        "empty = none")
    skip_bad: bool = Field(False, title="skip bad samples",
                           description="skip, count and list unreadable samples instead of failing the run")
    train_manifest: str = ""
    test_manifest: str = ""
    ood_manifest: str = ""


BACKBONES = ("resnet18", "resnet34", "resnet50")


class BackboneSpec(Spec):
    """The frozen backbone and the image size it sees."""

    size: int = Field(192, ge=64, le=1024, multiple_of=32, title="image size", description="input image side, pixels")
    backbone: Literal[BACKBONES] = Field("resnet50", title="backbone", description="frozen torchvision ResNet")
    layer: Literal["layer3", "layer4"] = Field("layer3", title="feature layer",
                                               description="layer3 = C4 (stride 16), layer4 = C5 (stride 32)")
    weights: str | None = Field(None, title="backbone weights",
                                description="torchvision checkpoint file; empty = torchvision's cache or random init")
    seed: Seed = Field(0, title="seed", description="backbone init, head init and batch order")


class PretrainSpec(Spec):
    """Supervised pretraining of a backbone on the training split (when no weights exist)."""

    backbone: Literal[BACKBONES]
    layer: Literal["layer3", "layer4"]
    size: int = Field(ge=64, le=1024)
    seed: Seed
    epochs: int = Field(6, ge=1, le=200, title="backbone pretraining epochs",
                        description="when no weights are given or cached: epochs of supervised training of the "
                                    "backbone on the training split (0 = keep the random initialisation)")
    crop: int = Field(128, ge=32, le=1024, multiple_of=16, title="pretraining crop",
                      description="side of the random window each pretraining step sees (capped at the image size)")
    lr: float = Field(3e-3, gt=0, le=1)
    batch_size: int = Field(32, ge=1, le=4096)


class FeaturesSpec(BackboneSpec):
    """Backbone features of one split (``weights`` resolved to the file actually loaded)."""

    split: Literal["train", "test", "ood"]
    shard_images: int = Field(64, ge=1)


class HeadSpec(Spec):
    """The KAN detection head and its training."""

    hidden: int = Field(64, ge=1, le=4096, title="hidden width", description="KAN [channels, hidden, 24]")
    grid_size: int = Field(10, ge=1, le=64, title="grid size G", description="cubic B-spline grid intervals")
    epochs: int = Field(6, ge=1, le=1000, title="epochs", description="passes over every feature-map location")
    lr: float = Field(5e-3, gt=0, le=1, title="learning rate", description="AdamW peak rate (one-cycle schedule)")
    batch_size: int = Field(2048, ge=1, le=1 << 20, title="batch size", description="locations per step")
    lipschitz: float = Field(0.0, ge=0, le=100, title="Lipschitz penalty",
                             description="weight of the mean squared slope of every edge's spline (LipKAN-style "
                                         "smoothness, for robustness out of distribution); 0 = off")
    seed: Seed = Field(0, title="seed", description="backbone init, head init and batch order")


class EvaluationSpec(Spec):
    use_07: bool = Field(False, title="VOC07 11-point AP", description="instead of all-points AP")


class SplinesSpec(Spec):
    """Spline coefficients and their gain/shape/bias split (nothing to choose)."""


class CodebookSpec(Spec):
    k: K
    seed: Seed = 0
    niter: int = Field(25, ge=1, le=1000)
    mode: Mode = "full"
    spherical: bool = True


class AssignmentSpec(Spec):
    k: K


class EncodeSpec(Spec):
    """A head encoded against a codebook: every edge's index (from the assignment) and its gain, bias
    and base weight stored at ``side_dtype`` (int8/int4: per-row scales); the codebook stored at
    ``codebook_dtype``."""

    k: K
    side_dtype: SideDtype
    codebook_dtype: CodebookDtype = "fp32"


class FinetuneSpec(Spec):
    """VQ-aware fine-tuning of one encoded head (codebook indices fixed)."""

    k: K
    side_dtype: SideDtype
    epochs: int = Field(2, ge=1, le=100, title="fine-tuning epochs",
                        description="passes over the training locations after compression")
    lr: float = Field(1e-3, gt=0, le=1, title="fine-tuning learning rate", description="AdamW peak rate")
    batch_size: int = Field(2048, ge=1, le=1 << 20)
    train_codebook: bool = Field(False, title="fine-tune codewords",
                                 description="train the shared codewords too (MetaCluster-style), not only the "
                                             "per-edge gains, biases and base weights")
    seed: Seed = 0


class CompressionSpec(Spec):
    """The compression table on one split: the dense head, int8 PTQ, magnitude pruning at
    ``sparsities`` and every encoded head the stage is given (post-training and fine-tuned)."""

    sparsities: tuple[float, ...] = (0.1, 0.3, 0.5)
    split: Literal["test", "ood"] = "test"


class LuthamSpec(Spec):
    """A LUTHAM build of an encoded head: the GPU architecture, the kernels' source hash and the rows
    it serves."""

    arch: str
    source: str
    max_rows: int = Field(4096, ge=1)
