"""LUTHAM on a GPU worker: plan the arena, compile the kernels, validate against the torch
reference and store the compiled binary and plan as a versioned artifact.

Validation, all on the worker's GPU: random inputs inside and outside the grid range and real
test-set rows (relative error ≤ 1e-3, every output element written), and the detector's mAP@0.5
with LUTHAM in place of the head's KAN against the torch VQ reference (within 0.1 point).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import ray
import torch

import sharekan.lutham.compile
import sharekan.lutham.plan
import sharekan.lutham.runtime
import sharekan.lutham.validate
from storage.store import ArtifactStore, code_version, version_id

__all__ = ["NO_GPU", "MAX_REL_ERROR", "MAX_MAP_DELTA", "gpu_available", "compile_and_validate"]

NO_GPU = "skipped: no GPU worker"
MAX_REL_ERROR = 1e-3
MAX_MAP_DELTA = 0.001  # 0.1 point of mAP@0.5
CODE = code_version(sys.modules[__name__], sharekan.lutham.compile, sharekan.lutham.plan, sharekan.lutham.runtime,
                    sharekan.lutham.validate)


def gpu_available() -> bool:
    """Whether the Ray cluster has a GPU to give a ``num_gpus=1`` task."""
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


def compile_and_validate(loc, head_version: str, codebook_version: str, features_version: str,
                         dataset_version: str, max_rows: int = 4096) -> dict:
    from sharekan.lutham.compile import nvrtc_compile, source_hash
    from sharekan.lutham.runtime import LuthamHead
    from sharekan.lutham.validate import detector_map, validate
    from sharekan.vq_kan import compress_kan

    from .stages import _voc, load_head

    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        raise RuntimeError(f"the LUTHAM stage needs a GPU; Ray placed it on a worker without one ({NO_GPU})")
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    store = ArtifactStore(loc)
    params = {"arch": arch, "source": source_hash(), "max_rows": max_rows, "gain_dtype": "fp16"}
    inputs = [head_version, codebook_version, features_version, dataset_version]
    version = version_id("lutham", params, inputs, CODE)
    if store.has(version):
        art = store.get(version)
        return {"version": version, "created": False, "seconds": time.perf_counter() - t0, **art.meta["summary"]}
    head = load_head(store.get(head_version))
    cb = torch.from_numpy(store.get(codebook_version).array("codebook")[...])
    vq = compress_kan(head.kan, len(cb), codebooks=[cb] * len(head.kan.layers)).eval()
    lut = LuthamHead(vq.cuda(), max_rows=max_rows)
    ds = store.get(dataset_version)
    samples = _voc(ds.meta["root_path"], ds.params["test"], ds.meta["skip_bad"]).samples
    feats = torch.from_numpy(store.get(features_version).array("feats")[...]).float()
    size = store.get(head_version).meta["size"]
    real = head.standardise(feats[:8].permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    check = validate(lut, vq, real=real.cuda())
    maps = detector_map(head, vq.cpu(), lut, feats, samples, size)
    map_ref, map_lut = maps["map50_reference"], maps["map50_lutham"]
    summary = {"arch": arch, "device": torch.cuda.get_device_name(), "max_rel_error": check["max_rel_error"],
               "all_written": check["all_written"], "map50_reference": map_ref, "map50_lutham": map_lut,
               "plan_summary": f"{lut.plan.total:,} B arena, hot {lut.plan.hot_bytes():,} B; "
                               f"L2 window {lut.plan.l2_persisting}"}
    failed = [m for m, bad in (
        (f"max relative error {check['max_rel_error']:.2e} > {MAX_REL_ERROR}", check["max_rel_error"] > MAX_REL_ERROR),
        ("some outputs were never written", not check["all_written"]),
        (f"mAP {map_lut:.4f} vs reference {map_ref:.4f}", abs(map_lut - map_ref) > MAX_MAP_DELTA)) if bad]
    if failed:
        raise RuntimeError("LUTHAM validation failed: " + "; ".join(failed))
    plan = {k: v for k, v in lut.plan.summary().items() if k != "blocks"}
    art, created = store.put("lutham", params, inputs, CODE,
                             {f"cubin_{arch}": np.frombuffer(nvrtc_compile(arch), dtype=np.uint8)},
                             meta={"summary": summary, "plan": plan, "validation": check})
    return {"version": art.version, "created": created, "seconds": time.perf_counter() - t0, **summary}
