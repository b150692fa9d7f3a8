"""The stage runner: version → reuse → compute → store → typed result, with a stage's resources and
retries in one place.

A stage is a plain function ``fn(run, spec, *inputs, **options)`` decorated with :func:`stage`.
Called as ``fn(location, spec, *inputs, **options)``, the runner computes the version from the
stage's name, ``spec.model_dump()``, the input versions and the stage's own code (its function,
the helpers it names and the library modules it uses: an edit elsewhere re-runs nothing), returns
the stored artifact's :class:`StageResult` at once when that version exists, and otherwise calls
``fn`` with a :class:`Run` whose ``put`` stores the artifact under that very version. :func:`submit`
runs a stage as a Ray task with its resources, clamped to the cluster.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from pydantic import BaseModel

from storage.store import Artifact, ArtifactStore, StoreError, code_version, version_id

from .retry import ray_options

__all__ = ["StageResult", "Run", "Stage", "stage", "task", "submit", "clamped", "use_assigned_cpus", "node_name"]


def node_name() -> str:
    """The Ray node this process runs on (its id's first 12 hex digits), or "driver" outside Ray."""
    if ray.is_initialized():
        return ray.get_runtime_context().get_node_id()[:12]
    return "driver"


@dataclass(frozen=True)
class StageResult:
    """What a stage returns: its artifact version, whether this call created it, the seconds it took,
    the artifact's metadata (what later stages and the report need) and the node it ran on
    (:func:`node_name`)."""

    stage: str
    version: str
    created: bool
    seconds: float
    meta: dict = field(default_factory=dict)
    node: str = ""

    def summary(self) -> dict:
        return {"stage": self.stage, "version": self.version, "created": self.created, "seconds": self.seconds,
                "node": self.node}


class Run:
    """One computation of a stage whose version is not stored yet."""

    def __init__(self, stage: Stage, location, store: ArtifactStore | None, params: dict, inputs: list[str],
                 version: str):
        self.stage, self.location, self._store = stage, location, store
        self.params, self.inputs, self.version = params, inputs, version
        self.started = time.perf_counter()

    @property
    def store(self) -> ArtifactStore:
        """The artifact store, created on first use (a stage that fails first leaves no store behind)."""
        if self._store is None:
            self._store = ArtifactStore(self.location)
        return self._store

    @property
    def key(self) -> tuple[str, dict, list[str], str]:
        """``(stage, params, inputs, code)``: the arguments the store's writers take first."""
        return self.stage.name, self.params, self.inputs, self.stage.code

    def result(self, art: Artifact, created: bool) -> StageResult:
        if art.version != self.version:
            raise RuntimeError(f"stage {self.stage.name} stored {art.version}, expected {self.version}")
        return StageResult(self.stage.name, art.version, created, time.perf_counter() - self.started, dict(art.meta),
                           node_name())

    def put(self, arrays: dict, meta: dict | None = None) -> StageResult:
        """Store the artifact (arrays in memory) and return the stage's result."""
        art, created = self.store.put(self.stage.name, self.params, self.inputs, self.stage.code, arrays,
                                      meta=meta or {})
        return self.result(art, created)

    def put_sharded(self, layout: dict, rows: int, chunk_rows: int, write_shards, meta: dict | None = None
                    ) -> StageResult:
        """Store an artifact whose shards other tasks write (see ``ArtifactStore.put_sharded``)."""
        art, created = self.store.put_sharded(self.stage.name, self.params, self.inputs, self.stage.code, layout,
                                              rows, chunk_rows, 1, write_shards, meta)
        return self.result(art, created)


@dataclass
class Stage:
    name: str
    fn: Callable
    resources: dict
    uses: tuple = ()

    @functools.cached_property
    def code(self) -> str:
        return code_version(self.fn, *self.uses)

    def version(self, spec: BaseModel, inputs: list[str]) -> str:
        return version_id(self.name, spec.model_dump(mode="json"), inputs, self.code)


def stage(name: str, resources: dict, uses: tuple = ()):
    """Make ``fn(run, spec, *inputs, **options)`` a stage named ``name`` (its artifacts' stage) that
    needs ``resources`` (Ray: ``num_cpus``, ``memory``, ``num_gpus``) and whose code is ``fn`` plus
    ``uses`` (helper functions and library modules)."""

    def wrap(fn):
        st = Stage(name, fn, resources, uses)

        @functools.wraps(fn)
        def call(location, spec: BaseModel, *inputs: str, **options: Any) -> StageResult:
            t0 = time.perf_counter()
            store = _existing(location)
            version = st.version(spec, list(inputs))
            if store is not None and store.has(version):
                art = store.get(version)
                return StageResult(name, version, False, time.perf_counter() - t0, dict(art.meta), node_name())
            use_assigned_cpus()
            run = Run(st, location, store, spec.model_dump(mode="json"), list(inputs), version)
            return fn(run, spec, *inputs, **options)

        call.stage = st
        return call

    return wrap


def _existing(location) -> ArtifactStore | None:
    try:
        return ArtifactStore(location, create=False)
    except StoreError:
        return None


def use_assigned_cpus() -> None:
    """Torch threads = the CPUs Ray gave this task (workers are reused across tasks)."""
    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))


def clamped(resources: dict) -> dict:
    """``resources`` with CPUs and memory cut to the largest live node (a small cluster runs every
    stage, more slowly); GPUs are never cut."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    out = dict(resources)
    out["num_cpus"] = min(out.get("num_cpus", 1), max(n.get("CPU", 0) for n in nodes))
    if "memory" in out:
        out["memory"] = int(min(out["memory"], 0.5 * max(n.get("memory", 0) for n in nodes)))
    return ray_options(**out)


def task(resources: dict):
    """A helper Ray task of a stage (e.g. one shard's work) that needs ``resources``."""

    def wrap(fn):
        fn.resources = resources
        return fn

    return wrap


_REMOTE: dict[Callable, Any] = {}


def submit(fn, *args, **kwargs) -> ray.ObjectRef:
    """Run a :func:`stage` or a :func:`task` as a Ray task with its resources (clamped)."""
    resources = fn.stage.resources if hasattr(fn, "stage") else fn.resources
    if fn not in _REMOTE:
        _REMOTE[fn] = ray.remote(fn)
    return _REMOTE[fn].options(**clamped(resources)).remote(*args, **kwargs)
