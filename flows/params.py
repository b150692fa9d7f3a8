"""Flow parameters as pydantic models: validated when a run is created, rendered as the UI's form.

The form is built from the stage specs (``tasks.specs``): a field's type, bounds, title and
description are written once. ``flows.plan`` resolves a form into the stages' typed specs and
checks every rule across fields (a codebook size against the head's edge count, ``lutham_k``
among the fitted sizes, ...) there, once."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_serializer, model_validator

from sharekan.detection.backbone import resolve_weights
from sharekan.kmeans_steps import BACKENDS
from sharekan.vq_kan import SIDE_DTYPES
from tasks.specs import (BACKBONES, BackboneSpec, CodebookDtype, CodebookSpec, DatasetSpec, EvaluationSpec, FeaturesSpec,
                         FinetuneSpec, HeadSpec, K, Mode, PretrainSpec, Seed, SideDtype, Spec)

__all__ = ["DataParams", "TrainParams", "CompressParams", "PipelineParams", "ParetoParams", "SharedParams"]


def _bounds(prop: dict) -> str:
    """A field's bounds as the form shows them: "1–64", "≥ 0", "≤ 1", "1 or more items"."""
    for branch in [prop, *prop.get("anyOf", [])]:
        lo = branch.get("minimum", branch.get("exclusiveMinimum"))
        hi = branch.get("maximum", branch.get("exclusiveMaximum"))
        if lo is not None and hi is not None:
            return f"{lo:,}–{hi:,}"
        if lo is not None or hi is not None:
            return f"≥ {lo:,}" if lo is not None else f"≤ {hi:,}"
        if branch.get("minItems"):
            return f"{branch['minItems']} or more items"
    return ""


def _form(schema: dict, _cls) -> None:
    """The UI's form: each field's bounds written into its description (the form enforces them but
    does not show them), and an optional field (default None: "empty = …") as a plain input of its
    type — the form leaves an empty input out, so the default applies — instead of a switch between
    its type and "None"."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf", [])
        if prop.get("default", 0) is None and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            del prop["anyOf"], prop["default"]
            prop.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        if bounds := _bounds(prop):
            prop["description"] = f"{prop.get('description', '').rstrip()} ({bounds})".lstrip()


class _Params(Spec):
    """Strict like the specs: "yes" is no boolean and true no integer (JSON numbers fill float fields).
    The form shows each field's bounds in its description; an optional field left empty is left out
    (its JSON leaves out None values too, so the form's defaults hold no null its inputs could not
    show)."""

    model_config = ConfigDict(**Spec.model_config, json_schema_extra=_form)

    @model_serializer(mode="wrap")
    def _without_none(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


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
    seed: Seed | None = Field(None, title="synthetic data seed", description="empty = the training seed")
    n_ood: int = Field(100, ge=0, le=100_000, title="synthetic out-of-distribution images",
                       description="a shifted test split generated when no VOC root is given (colours, contrast, "
                                   "striped backgrounds, noise, smaller objects); 0 = none")
    ood_splits: str = DatasetSpec.model_fields["ood_splits"]
    skip_bad: bool = DatasetSpec.model_fields["skip_bad"]
    shifted: bool = Field(False, title="shifted synthetic domain",
                          description="draw the synthetic training and test images in the shifted split's style "
                                      "(another domain of the same classes)")


class TrainParams(EvaluationSpec, HeadSpec, BackboneSpec, _Params):
    """The frozen backbone and the KAN detection head trained on its features.

    Backbone "auto": ResNet-50 (the paper's) when weights are given or in torchvision's cache, else a
    ResNet-18 pretrained on the training split by the backbone stage."""

    backbone: Literal["auto", *BACKBONES] = Field(
        "auto", title="backbone", description="frozen torchvision ResNet; auto = resnet50 with weights given or "
        "cached, else resnet18 pretrained on the training split")
    backbone_seed: Seed | None = Field(None, title="backbone seed",
                                       description="the backbone's initialisation and pretraining; empty = seed")
    pretrain_epochs: int = Field(PretrainSpec.model_fields["epochs"].default, ge=0, le=200,
                                 title=PretrainSpec.model_fields["epochs"].title,
                                 description=PretrainSpec.model_fields["epochs"].description)
    pretrain_crop: int = PretrainSpec.model_fields["crop"]

    def backbone_name(self) -> str:
        """The concrete ResNet: ``backbone`` unless it is ``auto`` (see the class)."""
        if self.backbone != "auto":
            return self.backbone
        return "resnet50" if resolve_weights("resnet50", self.weights) else "resnet18"

    def pretrain(self) -> PretrainSpec | None:
        """The backbone stage's spec, or ``None`` when weights exist or pretraining is off."""
        name = self.backbone_name()
        if self.pretrain_epochs == 0 or resolve_weights(name, self.weights):
            return None
        return PretrainSpec(backbone=name, layer=self.layer, size=self.size, seed=self._backbone_seed(),
                            epochs=self.pretrain_epochs, crop=min(self.pretrain_crop, self.size))

    def _backbone_seed(self) -> int:
        return self.seed if self.backbone_seed is None else self.backbone_seed

    def features(self, split: str) -> FeaturesSpec:
        fields = self.model_dump(include=set(BackboneSpec.model_fields))
        name = self.backbone_name()
        return FeaturesSpec(**{**fields, "backbone": name, "weights": resolve_weights(name, self.weights),
                               "seed": self._backbone_seed()}, split=split)

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
    side_dtypes: list[SideDtype] = Field(list(SIDE_DTYPES), min_length=1, title="side-data widths",
                                         description="how each encoded head stores its per-edge gains, biases and "
                                                     "base weights (int8/int4: per-row scales)")
    codebook_dtype: CodebookDtype = Field("fp32", title="codebook storage",
                                          description="fp16 halves the codebook's bytes (rounded once, after k-means; "
                                                      "fine-tuning keeps the width)")
    kmeans_backend: Literal["auto", *BACKENDS] = Field(
        "auto", title="k-means backend", description="where points are assigned: auto = the Ray workers' GPUs "
        "when the cluster has any (FAISS GPU if installed, else torch CUDA), else CPU FAISS")

    finetune_epochs: int = Field(FinetuneSpec.model_fields["epochs"].default, ge=0, le=100,
                                 title=FinetuneSpec.model_fields["epochs"].title,
                                 description=FinetuneSpec.model_fields["epochs"].description + " (0 = no fine-tuning)")
    finetune_side_dtypes: list[SideDtype] = Field(["int8", "int4"], title="fine-tuned side-data widths",
                                                  description="which of the side-data widths get a fine-tuned "
                                                              "encoded head at every K")
    finetune_lr: float = FinetuneSpec.model_fields["lr"]
    finetune_codebook: bool = FinetuneSpec.model_fields["train_codebook"]


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
                               description="one of the codebook sizes; empty = the best-mAP encoded head (of the "
                                           "width below) at least 2x smaller than dense")
    lutham_side_dtype: SideDtype = Field("fp16", title="LUTHAM side-data width",
                                         description="the encoded head LUTHAM runs: one of the side-data widths")
    lutham_finetuned: bool = Field(False, title="LUTHAM runs the fine-tuned head",
                                   description="the fine-tuned encoded head of that width (it must be fine-tuned)")


_STUDY_DATA = {"n_test": 1000, "n_ood": 400}


def _study_base() -> PipelineParams:
    """A study's default base: test splits large enough for differences of a point (1,000 test and
    400 shifted images; one run's mAP moves ±2 points between machines), no LUTHAM."""
    return PipelineParams(lutham=False, data=DataParams(**_STUDY_DATA))


def _with_study_data(base):
    """A base given in part (``{"train": {...}}``) keeps the study's test-split sizes for what its
    ``data`` leaves out, not one pipeline run's smaller defaults."""
    if isinstance(base, dict) and isinstance(base.get("data", {}), dict):
        return {**base, "data": {**_STUDY_DATA, **base.get("data", {})}}
    return base


class ParetoParams(_Params):
    """The K×G sweep: every (grid size, data seed, seed) triple is one pipeline run of the base parameters
    with that G; the data seed picks the synthetic data set and the backbone's initialisation and
    pretraining, the seed the head, k-means and fine-tuning. Runs of one data seed share its data,
    backbone and features; rows are averaged over every (data seed, seed) pair, each paired against
    the dense head of its own run."""

    base: PipelineParams = Field(default_factory=_study_base, title="pipeline parameters",
                                 description="everything else, as for one pipeline run (its grid size, seeds, "
                                             "codebook sizes and side-data widths are the sweep's)")
    grid_sizes: list[int] = Field([5, 10, 20], min_length=1, title="grid sizes G")
    seeds: list[Seed] = Field([0, 1, 2, 3, 4], min_length=1, title="head seeds",
                              description="one head (and k-means, and fine-tuning) per seed and data seed")
    data_seeds: list[Seed] = Field([0, 1], min_length=1, title="data and backbone seeds",
                                   description="one synthetic data set and one backbone pretrained on it per seed "
                                               "(with real VOC data only the backbone changes)")
    ks: list[K] | None = Field(None, min_length=1, title="codebook sizes K",
                               description="empty = 64, 256, 1,024, ... up to the largest below the edge count")
    side_dtypes: list[SideDtype] = Field(["int8", "int4"], min_length=1, title="side-data widths")
    finetune: bool = Field(True, title="fine-tuned variants", description="also fine-tune every VQ variant")
    parallel: int = Field(1, ge=1, le=64, title="runs at once",
                          description="pipeline runs in flight together (their stages share the Ray cluster; "
                                      "k-means fits queue for it)")
    out: str = Field("artifacts/pareto", title="report folder")

    _base = field_validator("base", mode="before")(_with_study_data)


class SharedParams(_Params):
    """One codebook for many heads."""

    base: PipelineParams = Field(default_factory=_study_base, title="pipeline parameters",
                                 description="data, backbone and head as for one pipeline run")
    head_seeds: list[Seed] = Field([0, 1, 2, 3, 4, 5, 6, 7], min_length=2, title="head seeds",
                                   description="one head per seed, all on the same frozen backbone")
    transfer_seed: Seed = Field(100, title="unseen head's seed",
                                description="a head trained like the others, left out of the codebook")
    other_domain: bool = Field(True, title="an unseen head of another domain",
                               description="also a head trained on the shifted synthetic domain's images (features "
                                           "from the same frozen backbone), compressed with the shared codebook and "
                                           "with one of its own; synthetic data only")
    k: K = Field(256, title="codebook size K")
    side_dtypes: list[SideDtype] = Field(["int8", "int4"], min_length=1, title="side-data widths")
    finetune: bool = Field(True, title="fine-tuned variants")
    out: str = Field("artifacts/shared", title="report folder")

    _base = field_validator("base", mode="before")(_with_study_data)

    @model_validator(mode="after")
    def _transfer_unseen(self):
        if self.transfer_seed in self.head_seeds:
            raise ValueError(f"transfer_seed {self.transfer_seed} is one of head_seeds: the unseen head must be unseen")
        return self
