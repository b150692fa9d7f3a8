"""Flow parameters as pydantic models: validated when a run is created, rendered as the UI's form.

The form is built from the stage specs (``tasks.specs``): a field's type, bounds, title and
description are written once, and each form section hands the stages their typed specs
(:meth:`TrainParams.features`, :meth:`TrainParams.head`, :meth:`CompressParams.codebook`, ...).
Rules across fields (a codebook size against the head's edge count, ``lutham_k`` among the fitted
sizes) are checked by ``flows.preflight``, the flow's first step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sharekan.detection.backbone import resolve_weights
from sharekan.kmeans import BACKENDS, DEFAULT_KS
from sharekan.vq_kan import DTYPES, GAIN_DTYPES
from tasks.specs import (AssignmentSpec, BackboneSpec, CodebookSpec, CompressionSpec, DatasetSpec, EvaluationSpec,
                         FeaturesSpec, HeadSpec, K, Mode, Seed, Spec)

__all__ = ["DataParams", "TrainParams", "CompressParams", "PipelineParams"]


class _Params(Spec):
    """Strict like the specs: "yes" is no boolean and true no integer (JSON numbers fill float fields)."""


class DataParams(_Params):
    """Where the images come from."""

    root: str | None = Field(None, title="VOC root", description="folder holding VOCdevkit/VOC2007 (and VOC2012); "
                             "empty = the embedded synthetic VOC-format data set")
    train_splits: str = DatasetSpec.model_fields["train_splits"]
    test_splits: str = DatasetSpec.model_fields["test_splits"]
    n_train: int = Field(1000, ge=8, le=100_000, title="synthetic training images",
                         description="images generated when no VOC root is given")
    n_test: int = Field(200, ge=4, le=100_000, title="synthetic test images",
                        description="images generated when no VOC root is given")
    skip_bad: bool = DatasetSpec.model_fields["skip_bad"]


class TrainParams(EvaluationSpec, HeadSpec, BackboneSpec, _Params):
    """The frozen backbone and the KAN detection head trained on its features."""

    def features(self, split: str) -> FeaturesSpec:
        fields = self.model_dump(include=set(BackboneSpec.model_fields))
        return FeaturesSpec(**{**fields, "weights": resolve_weights(self.backbone, self.weights)}, split=split)

    def head(self) -> HeadSpec:
        return HeadSpec(**self.model_dump(include=set(HeadSpec.model_fields)))

    def evaluation(self) -> EvaluationSpec:
        return EvaluationSpec(use_07=self.use_07)


class CompressParams(_Params):
    """Gain-shape-bias VQ: codebooks by distributed k-means."""

    ks: list[K] | None = Field(None, min_length=1, title="codebook sizes K",
                               description="each 1..65,536 and at most the head's edge count; "
                                           "empty = 256, 4,096 and min(edges, 65,536)")
    kmeans_mode: Mode = Field("full", title="k-means mode",
                              description="full Lloyd, the paper's mini-batch, or coarse-then-fine")
    kmeans_niter: int = Field(CodebookSpec.model_fields["niter"].default, ge=1, le=1000, title="k-means iterations",
                              description="Lloyd iterations at most")
    seed: Seed = Field(0, title="k-means seed", description="initial centroids")
    gain_dtypes: list[Literal[DTYPES]] = Field(list(GAIN_DTYPES), min_length=1, title="side-data widths",
                                               description="how each VQ variant stores its per-edge gains, "
                                                           "biases and base weights (int8/int4: per-row scales)")
    kmeans_backend: Literal["auto", *BACKENDS] = Field(
        "auto", title="k-means backend", description="where points are assigned: auto = the Ray workers' GPUs "
        "when the cluster has any (FAISS GPU if installed, else torch CUDA), else CPU FAISS")

    def codebook(self, k: int) -> CodebookSpec:
        return CodebookSpec(k=k, seed=self.seed, niter=self.kmeans_niter, mode=self.kmeans_mode)

    def assignment(self, k: int) -> AssignmentSpec:
        return AssignmentSpec(k=k)

    def compression(self, ks: list[int]) -> CompressionSpec:
        return CompressionSpec(ks=tuple(ks), gain_dtypes=tuple(self.gain_dtypes))


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

