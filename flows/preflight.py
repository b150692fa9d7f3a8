"""Checks of a run's parameters that need no work (and no Prefect): run by the CLI before any
service starts and again as the pipeline flow's first step, so a run from the UI fails at once too."""

from __future__ import annotations

from pathlib import Path

from .params import PipelineParams

__all__ = ["PreflightError", "preflight"]


class PreflightError(ValueError):
    """Parameters that cannot work, found before any stage runs; the message names each field."""


def preflight(params: PipelineParams) -> int:
    """Checks that need no work, run first so a run fails at once naming the field: the data and
    report folders, and every codebook size against the edge count of the head the parameters
    describe. Returns that edge count."""
    from sharekan.detection.backbone import backbone_channels
    from sharekan.kmeans import default_ks
    from sharekan.detection.head import HeadConfig

    t, problems = params.train, []
    if params.data.root and not (Path(params.data.root) / "VOCdevkit").is_dir():
        problems.append(f"data.root: {params.data.root} has no VOCdevkit folder")
    if Path(params.out).exists() and not Path(params.out).is_dir():
        problems.append(f"out: {params.out} is a file, not a folder")
    edges = HeadConfig(in_channels=backbone_channels(t.backbone_name(), t.layer), hidden=t.hidden).edges
    ks = params.compress.ks or default_ks(edges)
    too_big = [k for k in ks if k > edges]
    if too_big:
        problems.append(f"compress.ks: {too_big} exceed the {edges:,} edges of a {t.backbone_name()}/{t.layer} head "
                        f"with hidden={t.hidden}")
    if params.lutham_k is not None and params.lutham_k not in ks:
        problems.append(f"lutham_k: {params.lutham_k} is not among the codebook sizes fitted ({ks})")
    if problems:
        raise PreflightError("; ".join(problems))
    return edges
