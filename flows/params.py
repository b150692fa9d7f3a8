"""Flow parameters as pydantic models: validated when a run is created, rendered as the UI's form.

Every field has a title, a description and its bounds in the JSON schema the Prefect UI renders,
so the form refuses a bad value in the field itself. Rules across fields (a codebook size against
the head's edge count, ``lutham_k`` among the fitted sizes) are checked by ``flows.preflight``,
the flow's first step."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sharekan.kmeans import MAX_K

__all__ = ["DataParams", "TrainParams", "CompressParams", "PipelineParams", "DEFAULT_KS"]

_SPLITS = r"^\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*(,\s*[0-9A-Za-z_]+:[0-9A-Za-z_]+\s*)*$"
DEFAULT_KS = (256, 4096, MAX_K)  # the last is min(edges, MAX_K) for a given head
K = Annotated[int, Field(ge=1, le=MAX_K)]


class _Params(BaseModel):
    # strict: "yes" is no boolean and true no integer (JSON numbers still fill float fields)
    model_config = ConfigDict(extra="forbid", strict=True)


class DataParams(_Params):
    """Where the images come from."""

    root: str | None = Field(None, title="VOC root", description="folder holding VOCdevkit/VOC2007 (and VOC2012); "
                             "empty = the embedded synthetic VOC-format data set")
    train_splits: str = Field("2007:train", pattern=_SPLITS, title="training splits",
                              description="YEAR:SET[,YEAR:SET], e.g. 2007:trainval,2012:trainval")
    test_splits: str = Field("2007:val", pattern=_SPLITS, title="test splits", description="YEAR:SET[,YEAR:SET]")
    n_train: int = Field(1000, ge=8, le=100_000, title="synthetic training images",
                         description="images generated when no VOC root is given")
    n_test: int = Field(200, ge=4, le=100_000, title="synthetic test images",
                        description="images generated when no VOC root is given")
    skip_bad: bool = Field(False, title="skip bad samples",
                           description="skip, count and list unreadable samples instead of failing the run")


class TrainParams(_Params):
    """The frozen backbone and the KAN detection head trained on its features."""

    size: int = Field(192, ge=64, le=1024, multiple_of=32, title="image size", description="input image side, pixels")
    backbone: Literal["resnet18", "resnet34", "resnet50"] = Field("resnet50", title="backbone",
                                                                  description="frozen torchvision ResNet")
    layer: Literal["layer3", "layer4"] = Field("layer3", title="feature layer",
                                               description="layer3 = C4 (stride 16), layer4 = C5 (stride 32)")
    weights: str | None = Field(None, title="backbone weights",
                                description="torchvision checkpoint file; empty = torchvision's cache or random init")
    hidden: int = Field(64, ge=1, le=4096, title="hidden width", description="KAN [channels, hidden, 24]")
    grid_size: int = Field(10, ge=1, le=64, title="grid size G", description="cubic B-spline grid intervals")
    epochs: int = Field(6, ge=1, le=1000, title="epochs", description="passes over every feature-map location")
    lr: float = Field(5e-3, gt=0, le=1, title="learning rate", description="AdamW peak rate (one-cycle schedule)")
    batch_size: int = Field(2048, ge=1, le=1 << 20, title="batch size", description="locations per step")
    seed: int = Field(0, ge=0, le=2**31 - 1, title="seed", description="backbone init, head init and batch order")
    use_07: bool = Field(False, title="VOC07 11-point AP", description="instead of all-points AP")


class CompressParams(_Params):
    """Gain-shape-bias VQ: codebooks by distributed k-means."""

    ks: list[K] | None = Field(None, min_length=1, title="codebook sizes K",
                               description="each 1..65,536 and at most the head's edge count; "
                                           "empty = 256, 4,096 and min(edges, 65,536)")
    kmeans_mode: Literal["full", "minibatch", "two-level"] = Field("full", title="k-means mode",
                                                                   description="full Lloyd, the paper's "
                                                                               "mini-batch, or coarse-then-fine")
    kmeans_niter: int = Field(25, ge=1, le=1000, title="k-means iterations", description="Lloyd iterations at most")
    seed: int = Field(0, ge=0, le=2**31 - 1, title="k-means seed", description="initial centroids")


class PipelineParams(_Params):
    """Everything one pipeline run needs."""

    data: DataParams = Field(DataParams(), title="data")
    train: TrainParams = Field(TrainParams(), title="training")
    compress: CompressParams = Field(CompressParams(), title="compression")
    store: str | None = Field(None, title="artifact store", description="folder or s3://bucket/prefix; "
                                                                        "empty = $SHAREKAN_STORE or artifacts/store")
    out: str = Field("artifacts/detection", title="report folder",
                     description="each run writes runs/<run name>/ here; the newest is copied to the folder itself")
    lutham: bool = Field(True, title="LUTHAM", description="compile and validate the LUTHAM kernel (needs a GPU worker)")
    lutham_k: K | None = Field(None, title="LUTHAM codebook size",
                               description="one of the codebook sizes; empty = the best-mAP VQ variant at least "
                                           "2x smaller than dense")

    @model_validator(mode="after")
    def _lutham_k(self):
        k, ks = self.lutham_k, self.compress.ks
        if k is not None and ks is not None and k not in ks:
            raise ValueError(f"lutham_k={k} is not among compress.ks {ks}")
        if k is not None and ks is None and k not in DEFAULT_KS:
            raise ValueError(f"lutham_k={k} is not a default codebook size (256, 4096, min(edges, 65536)); "
                             "list it in compress.ks")
        return self
