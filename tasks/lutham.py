"""LUTHAM on a GPU worker: plan the arena, compile the kernels, validate against the torch
reference and store the compiled binary and plan as a versioned artifact.

Validation, all on the worker's GPU: random inputs inside and outside the grid range and real
test-set rows (relative error ≤ 1e-3, every output element written), and the detector's mAP@0.5
with LUTHAM in place of the head's KAN against the torch VQ reference (within 0.1 point).
"""

from __future__ import annotations

import copy

import numpy as np
import ray
import torch

import sharekan.lutham.compile
import sharekan.lutham.geometry
import sharekan.lutham.l2
import sharekan.lutham.module
import sharekan.lutham.plan
import sharekan.lutham.runtime
import sharekan.lutham.timing
import sharekan.lutham.validate
from .compress import load_encoded
from .data import load_split
from .head import load_head
from .runner import Run, StageResult, stage, task
from .specs import LuthamSpec

__all__ = ["NO_GPU", "MAX_REL_ERROR", "MAX_MAP_DELTA", "ValidationFailed", "gpu_available", "compile_and_validate"]

NO_GPU = "skipped: no GPU worker"
MAX_REL_ERROR = 1e-3
MAX_MAP_DELTA = 0.001  # 0.1 point of mAP@0.5


class ValidationFailed(RuntimeError):
    """The compiled kernels disagree with the reference; the message names every failing case."""


def gpu_available() -> bool:
    """Whether the Ray cluster has a GPU to give a ``num_gpus=1`` task."""
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


@task({"num_gpus": 1, "num_cpus": 1})
def compile_and_validate(loc, head_version: str, encoded_version: str, features_version: str,
                         dataset_version: str, max_rows: int = 4096) -> StageResult:
    """On a GPU worker: the LUTHAM build for this GPU's architecture (see :func:`lutham`)."""
    from sharekan.lutham.compile import source_hash

    if not torch.cuda.is_available():
        raise RuntimeError(f"the LUTHAM stage needs a GPU; Ray placed it on a worker without one ({NO_GPU})")
    major, minor = torch.cuda.get_device_capability()
    spec = LuthamSpec(arch=f"sm_{major}{minor}", source=source_hash(), max_rows=max_rows)
    return lutham(loc, spec, head_version, encoded_version, features_version, dataset_version)


@stage("lutham", {"num_gpus": 1, "num_cpus": 1},
       uses=(load_head, load_split, load_encoded, sharekan.lutham.compile, sharekan.lutham.geometry, sharekan.lutham.l2, sharekan.lutham.module, sharekan.lutham.plan, sharekan.lutham.runtime,
             sharekan.lutham.packed, sharekan.lutham.packed_head, sharekan.lutham.timing, sharekan.lutham.validate))
def lutham(run: Run, spec: LuthamSpec, head_version: str, encoded_version: str, features_version: str,
           dataset_version: str) -> StageResult:
    """Compile for this GPU, validate that very binary on the stored encoded head (at its K and
    side-data width, fine-tuned or not), time it, and store it with its plan.

    The result's meta holds the summary: validation cases and figures, detector mAP with LUTHAM
    and with the torch reference, quick timings against the dense and torch-VQ heads. A failed
    check raises one message per failing case and stores nothing."""
    from sharekan.lutham.compile import load_cubin, nvrtc_compile
    from sharekan.lutham.module import LuthamKAN, resolve_records
    from sharekan.lutham.timing import compare
    from sharekan.lutham.validate import detector_map, failures, validate

    head = load_head(run.store.get(head_version))
    enc = load_encoded(run.store, encoded_version)
    vq = enc.kan
    records = resolve_records(vq)  # the format LuthamKAN runs it in by default
    cubin = nvrtc_compile(spec.arch, "lutham" if records == "v12" else "packed")
    lut = LuthamKAN(vq, max_rows=spec.max_rows, records=records,  # validate the binary that is stored
                    module=load_cubin(cubin, "lutham" if records == "v12" else "packed"))
    samples = load_split(run.store, dataset_version, "test").samples
    feats_art = run.store.get(features_version)
    feats = torch.from_numpy(feats_art.array("feats")[...]).float()
    per_image = feats.shape[2] * feats.shape[3]
    real = head.standardise(feats[:8].permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    check = validate(lut, vq.cuda(), real=real.cuda())
    maps = detector_map(head, vq.cpu(), lut, feats, samples, feats_art.params["size"])
    failed = failures(check, maps, MAX_REL_ERROR, MAX_MAP_DELTA)
    if failed:
        raise ValidationFailed(f"LUTHAM validation failed on {torch.cuda.get_device_name()} ({spec.arch}), "
                               "nothing stored: " + "; ".join(failed))
    dense = head.kan.cuda().eval()
    timings = compare({"dense fp32": dense, "dense fp16": copy.deepcopy(dense).half(), "torch VQ": vq.cuda(),
                       "LUTHAM": lut}, lut.in_features, rows=(1, per_image, 8 * per_image))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():  # eager dense fp32 on one image's rows: its weights and what its forward allocates
        dense(real[:per_image].cuda())
    dense_peak = torch.cuda.max_memory_allocated() - base + sum(t.numel() * t.element_size()
                                                                 for t in dense.state_dict().values())
    summary = {"arch": spec.arch, "device": torch.cuda.get_device_name(), "validated": True, "records": records,
               "arena_bytes": lut.plan.total, "edge_bytes": lut.plan.edge_bytes(),
               "dense_fp32_peak_bytes": dense_peak,
               "max_rel_error": check["max_rel_error"], "all_written": check["all_written"],
               "cases": check["cases"], "map50_reference": maps["map50_reference"],
               "map50_lutham": maps["map50_lutham"], "timings_us": timings, "variant": enc.meta["variant"],
               "plan_summary": f"{lut.plan.total:,} B arena, hot {lut.plan.hot_bytes():,} B; "
                               f"L2 window {lut.plan.l2_persisting}"}
    plan = {k: v for k, v in lut.plan.summary().items() if k != "blocks"}
    return run.put({f"cubin_{spec.arch}": np.frombuffer(cubin, dtype=np.uint8)},
                   meta={"summary": summary, "plan": plan, "blocks": lut.plan.summary()["blocks"]})
