"""Flow parameters as pydantic models: validated when a run is created, rendered as the UI's form."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DataParams", "TrainParams", "CompressParams", "PipelineParams"]

_SPLITS = r"^\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*(,\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*)*$"


class _Params(BaseModel):
    # strict: "yes" is no boolean and true no integer (JSON numbers still fill float fields)
    model_config = ConfigDict(extra="forbid", strict=True)


class DataParams(_Params):
    data: str | None = Field(None, description="VOCdevkit root; empty = the embedded synthetic data set")
    train_splits: str = Field("2007:train", pattern=_SPLITS, description="YEAR:SET[,YEAR:SET]")
    test_splits: str = Field("2007:val", pattern=_SPLITS)
    n_train: int = Field(1000, ge=8, le=100_000, description="synthetic training images")
    n_test: int = Field(200, ge=4, le=100_000, description="synthetic test images")
    skip_bad: bool = Field(False, description="skip (and count) unreadable samples instead of failing")


class TrainParams(_Params):
    size: int = Field(192, ge=64, le=1024, multiple_of=32, description="input image side, pixels")
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    layer: Literal["layer3", "layer4"] = "layer3"
    weights: str | None = Field(None, description="torchvision checkpoint; empty = cached weights or random")
    hidden: int = Field(64, ge=1, le=4096)
    grid_size: int = Field(10, ge=1, le=64, description="B-spline grid intervals G")
    epochs: int = Field(6, ge=1, le=1000)
    lr: float = Field(5e-3, gt=0, le=1)
    batch_size: int = Field(2048, ge=1, le=1 << 20)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    use_07: bool = Field(False, description="VOC07 11-point AP instead of all-points")


class CompressParams(_Params):
    ks: list[int] | None = Field(None, description="codebook sizes; empty = 256, 4096 and min(edges, 65536)")
    kmeans_mode: Literal["full", "minibatch", "two-level"] = "full"
    kmeans_niter: int = Field(25, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("ks")
    @classmethod
    def _ks(cls, v):
        if v is not None and (not v or any(k < 1 or k > 65_536 for k in v)):
            raise ValueError("each K must be in [1, 65536]")
        return v


class PipelineParams(_Params):
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    compress: CompressParams = CompressParams()
    store: str | None = Field(None, description="artifact store folder or s3://bucket/prefix; "
                                                "empty = $SHAREKAN_STORE or artifacts/store")
    out: str = Field("artifacts/detection", description="report folder")
    lutham: bool = Field(True, description="compile and validate the LUTHAM kernel (needs a GPU worker)")
    lutham_k: int | None = Field(None, ge=1, le=65_536,
                                 description="codebook size LUTHAM runs; empty = the best-mAP VQ variant "
                                             "at least 2x smaller than dense")

    @model_validator(mode="after")
    def _lutham_k(self):
        k, ks = self.lutham_k, self.compress.ks
        if k is not None and ks is not None and k not in ks:
            raise ValueError(f"lutham_k={k} is not among compress.ks {ks}")
        if k is not None and ks is None and k not in (256, 4096, 65_536):
            raise ValueError(f"lutham_k={k} is not a default codebook size (256, 4096, min(edges, 65536)); "
                             "list it in compress.ks")
        return self
