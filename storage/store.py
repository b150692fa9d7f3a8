"""Versioned artifact store on Icechunk (a transactional, versioned Zarr v3 store).

Every artifact is a Zarr group ``/{version}`` of arrays plus attributes recording its
stage, parameters, input versions (lineage) and code version. A version id is a content hash of
``(stage, parameters, input versions, code version)``: the same inputs and parameters always give
the same id, so a stage that finds its id already stored does no work.

Atomicity comes from Icechunk: an artifact is written in one session and becomes visible with
one commit; a writer killed before its commit leaves nothing visible and the earlier versions
intact. Sharded artifacts (written by parallel workers through ``Session.fork``/``merge``) need
the arrays created in a first commit, so their group carries ``complete = False`` until the
commit that merges the workers' data; readers treat incomplete groups as absent and a re-run
finishes them. Concurrent committers are rebased onto the new branch head (Icechunk's
``ConflictDetector``). On local disk commits are serialised with a file lock, since a filesystem
has no conditional writes, and each version has a lock of its own held from the check "is it
stored?" to its commit: of two writers of the same version the second waits, then finds the
first one's artifact (identical by construction) and writes nothing; runs opening a new store at
once wait on a lock of its folder while the first creates it. On object storage, a writer that
loses a commit to the same version returns the version that landed, and one that loses the
store's creation opens the store that was made.

Integrity: every chunk carries a CRC-32C checksum (Zarr's ``crc32c`` codec) written with it and
verified when read; a flipped or missing byte is a :class:`CorruptArtifact` error naming the
artifact and array, never silent numbers.

Location: a local folder (default ``artifacts/store``) or S3-compatible object storage
(``S3Location``), e.g. MinIO or any S3 endpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import icechunk
import numpy as np
import zarr
import zarr.errors
from zarr.codecs import Crc32cCodec, ZstdCodec

from .leases import PREFIX as LEASE_PREFIX, STALE, is_lease, leases

__all__ = ["S3Location", "StoreError", "StoreBusy", "CorruptArtifact", "CommitConflict", "VersionNotFound", "Artifact", "ArtifactStore", "version_id",
           "open_artifact_group", "parse_location", "location_problem", "code_version"]

# Icechunk's I/O runs on native (tokio) threads that call back into Python; session objects left in
# reference cycles until interpreter finalisation let such a thread re-enter a finalising interpreter,
# which aborts (exit 134, "Fatal Python error: Aborted" from a non-Python thread; ~10 % of CLI
# runs under load). Collecting them at exit, while the interpreter and zarr's loop still run,
# prevents it (tests/test_faults.py runs the CLI many times, concurrently). Registered after
# zarr's own exit handler, so it runs first.
atexit.register(gc.collect)

BRANCH = "main"
FORMAT = "sharekan-artifacts/1"
if "ICECHUNK_LOG" not in os.environ:
    # commits to local disk are serialised by our file lock: Icechunk's warning does not apply
    icechunk.set_logs_filter("warn,icechunk::storage::object_store=error")


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message names the store or version."""


class CorruptArtifact(StoreError):
    """Stored bytes that fail their checksum or cannot be decoded; names the artifact and array."""


class CommitConflict(StoreError):
    """A commit lost to a concurrent writer that changed the same arrays (worth a retry)."""


class StoreBusy(StoreError):
    """The store is in use by a live run (gc refuses)."""


class VersionNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = "sharekan"
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    allow_http: bool = False

    def __str__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def version_id(stage: str, params: dict, inputs: list[str], code: str) -> str:
    """Content hash of what determines an artifact: 20 hex digits prefixed by the stage."""
    digest = hashlib.sha256(_canonical([stage, params, sorted(inputs), code]).encode()).hexdigest()
    return f"{stage}-{digest[:20]}"


@dataclass
class Artifact:
    """A stored version: its attributes and lazily-read arrays."""

    version: str
    stage: str
    params: dict
    inputs: list[str]
    code: str
    meta: dict
    created: str
    group: zarr.Group = field(repr=False)

    def array(self, name: str) -> CheckedArray:
        if name not in self.group:
            raise KeyError(f"artifact {self.version} has no array {name!r} "
                           f"(has {sorted(self.group.array_keys())})")
        return CheckedArray(self.group[name], f"artifact {self.version} array {name!r}")

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name)[...] for name in sorted(self.group.array_keys())}


class CheckedArray:
    """A stored Zarr array read through its chunks' checksums: a read that fails them raises
    :class:`CorruptArtifact` naming the array; everything else is the Zarr array's."""

    def __init__(self, array: zarr.Array, what: str):
        self._array, self._what = array, what

    def __getitem__(self, key):
        try:
            return self._array[key]
        except (ValueError, RuntimeError, OSError, icechunk.IcechunkError) as e:
            raise CorruptArtifact(f"{self._what}: stored bytes are corrupt "
                                  f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None

    def __getattr__(self, name):
        return getattr(self._array, name)

    def __len__(self) -> int:
        return len(self._array)


class ArtifactStore:
    """Open (or create) the store at ``location``: a folder path or an :class:`S3Location`."""

    def __init__(self, location: str | Path | S3Location = "artifacts/store", create: bool = True):
        self.location = location
        self._lock_path: Path | None = None
        if isinstance(location, S3Location):
            storage = icechunk.s3_storage(
                bucket=location.bucket, prefix=location.prefix, endpoint_url=location.endpoint_url,
                region=location.region, allow_http=location.allow_http, force_path_style=True,
                access_key_id=location.access_key_id, secret_access_key=location.secret_access_key)
        else:
            path = Path(location).resolve()
            if (problem := _folder_problem(path)) is not None:
                raise StoreError(problem)
            if not create and not path.is_dir():
                raise StoreError(f"artifact store {path} does not exist")
            path.mkdir(parents=True, exist_ok=True)
            storage = icechunk.local_filesystem_storage(str(path))
            self._lock_path = path / ".commit.lock"
        # two runs opening a new local store at once: one creates it and writes its format marker
        # while the other waits on a lock of the folder (Icechunk creates only in an empty one)
        with self._flock(self._lock_path.parent if create and self._lock_path else None):
            self.repo = self._open_repository(storage, create)
            try:
                self._check_format()
            except icechunk.IcechunkError as e:
                raise StoreError(f"artifact store {location} is damaged or unreadable: {e}") from None

    def _open_repository(self, storage, create: bool) -> icechunk.Repository:
        try:
            return icechunk.Repository.open_or_create(storage) if create else icechunk.Repository.open(storage)
        except Exception as e:
            if create:  # object storage: another writer created the repository since we looked
                with contextlib.suppress(Exception):
                    return icechunk.Repository.open(storage)
            raise StoreError(f"cannot open artifact store {self.location}: {e}") from None

    # -- reading ---------------------------------------------------------------------------
    def _root(self, snapshot: str | None = None) -> zarr.Group:
        try:
            session = (self.repo.readonly_session(snapshot_id=snapshot) if snapshot
                       else self.repo.readonly_session(branch=BRANCH))
            return zarr.open_group(session.store, mode="r")
        except icechunk.IcechunkError as e:
            raise StoreError(f"cannot read artifact store {self.location}"
                             f"{f' at snapshot {snapshot}' if snapshot else ''}: {e}") from None

    def _check_format(self) -> None:
        try:
            root = self._root()
        except zarr.errors.GroupNotFoundError:  # a new, empty repository
            root = None
        fmt = root.attrs.get("format") if root is not None else None
        if fmt is None:
            if root is not None and (list(root.group_keys()) or list(root.array_keys())):
                raise StoreError(f"{self.location}: an Icechunk repository but not a SHARe-KAN "
                                 f"artifact store (no format marker)")
            try:
                with self._writing("initialise artifact store", {"format": FORMAT}) as g:
                    g.attrs["format"] = FORMAT
            except CommitConflict:  # object storage: another writer initialised it first
                if self._root().attrs.get("format") != FORMAT:
                    raise
        elif fmt != FORMAT:
            raise StoreError(f"{self.location}: unsupported store format {fmt!r} (expected {FORMAT!r})")

    def _find(self, version: str, root: zarr.Group) -> zarr.Group | None:
        try:
            group = root[version]
        except (KeyError, FileNotFoundError):
            return None
        return group if isinstance(group, zarr.Group) and group.attrs.get("complete") else None

    def has(self, version: str) -> bool:
        return self._find(version, self._root()) is not None

    def get(self, version: str, snapshot: str | None = None) -> Artifact:
        """The artifact ``version`` (at the branch head, or at an older ``snapshot``)."""
        return self._artifact(version, self._root(snapshot))

    def _artifact(self, version: str, root: zarr.Group) -> Artifact:
        group = self._find(version, root)
        if group is None:
            raise VersionNotFound(f"artifact version {version!r} not found in {self.location}")
        a = dict(group.attrs)
        try:
            return Artifact(version, a["stage"], a["params"], list(a["inputs"]), a["code"],
                            a.get("meta", {}), a["created"], group)
        except KeyError as e:
            raise StoreError(f"artifact {version} in {self.location} is corrupt: attribute {e} missing") from None

    def ls(self, stage: str | None = None) -> list[Artifact]:
        """Complete versions (of ``stage``), oldest first."""
        root = self._root()
        out = [self._artifact(v, root) for v in sorted(root.group_keys())
               if root[v].attrs.get("complete") and (stage is None or root[v].attrs.get("stage") == stage)]
        return sorted(out, key=lambda a: a.created)

    def verify(self, versions: list[str] | None = None) -> dict[str, list[str]]:
        """Read every chunk of every array of ``versions`` (default: every complete version);
        ``{version: [problem, ...]}`` with one line per corrupt array (empty: intact)."""
        out = {}
        for version in versions or [a.version for a in self.ls()]:
            art, problems = self.get(version), []
            for name in sorted(art.group.array_keys()):
                try:
                    art.array(name)[...]
                except CorruptArtifact as e:
                    problems.append(str(e))
            out[version] = problems
        return out

    def lineage(self, version: str) -> dict:
        """``{"version", "stage", "inputs": [lineage of each input]}``, recursively."""
        root, seen = self._root(), {}

        def walk(v: str) -> dict:  # one snapshot read once; a shared input's tree built once
            if v not in seen:
                a = self._artifact(v, root)
                seen[v] = {"version": v, "stage": a.stage, "inputs": [walk(i) for i in a.inputs]}
            return seen[v]
        return walk(version)

    def history(self) -> list[icechunk.SnapshotInfo]:
        return list(self.repo.ancestry(branch=BRANCH))

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, path: Path | None) -> Iterator[None]:
        """An exclusive lock on the file or folder ``path`` (released if the holder dies); none on
        object storage."""
        if path is None:
            yield
            return
        if not path.is_dir():
            path.parent.mkdir(exist_ok=True)
            path.touch()
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _commit_lock(self):
        return self._flock(self._lock_path)

    def _version_lock(self, version: str):
        return self._flock(None if self._lock_path is None else self._lock_path.parent / ".locks" / f"{version}.lock")

    def _commit(self, session: icechunk.Session, message: str, metadata: dict) -> str:
        with self._commit_lock():
            try:
                return session.commit(message, metadata=metadata,
                                      rebase_with=icechunk.ConflictDetector(), rebase_tries=10)
            except (icechunk.ConflictError, icechunk.RebaseFailedError) as e:
                raise CommitConflict(f"commit '{message}' to {self.location} conflicts with a concurrent "
                                 f"writer that changed the same arrays: {e}") from None

    @contextlib.contextmanager
    def _writing(self, message: str, metadata: dict) -> Iterator[zarr.Group]:
        session = self.repo.writable_session(BRANCH)
        yield zarr.open_group(session.store, mode="a")
        self._commit(session, message, metadata)

    def _attrs(self, stage, version, params, inputs, code, meta, complete) -> dict:
        return {"stage": stage, "version": version, "params": json.loads(_canonical(params)),
                "inputs": list(inputs), "code": code, "meta": json.loads(_canonical(meta or {})),
                "created": datetime.now(timezone.utc).isoformat(), "complete": complete}

    def _check_inputs(self, inputs: list[str]) -> None:
        root = self._root()
        for v in inputs:
            if self._find(v, root) is None:
                raise VersionNotFound(f"input artifact version {v!r} not found in {self.location}")

    def put(self, stage: str, params: dict, inputs: list[str], code: str,
            arrays: dict[str, np.ndarray], meta: dict | None = None,
            chunks: dict[str, tuple[int, ...]] | None = None) -> tuple[Artifact, bool]:
        """Store an artifact in one commit; returns ``(artifact, created)``. An existing version
        is returned as is (``created = False``) without writing anything."""
        version = version_id(stage, params, inputs, code)
        with self._version_lock(version):
            return self._put(stage, version, params, inputs, code, arrays, meta, chunks)

    def _put(self, stage, version, params, inputs, code, arrays, meta, chunks) -> tuple[Artifact, bool]:
        if self.has(version):
            return self.get(version), False
        self._check_inputs(inputs)
        for name, arr in arrays.items():
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"array {name!r} of stage {stage!r} must be a numpy array, got {type(arr).__name__}")
        session = self.repo.writable_session(BRANCH)
        root = zarr.open_group(session.store, mode="a")
        group = root.create_group(version, overwrite=True)
        for name, arr in arrays.items():
            ch = (chunks or {}).get(name, arr.shape or None)
            z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=ch or "auto",
                                   compressors=(ZstdCodec(level=0), Crc32cCodec()))
            z[...] = arr
        group.attrs.update(self._attrs(stage, version, params, inputs, code, meta, True))
        return self._commit_new(session, stage, version)

    def _commit_new(self, session, stage: str, version: str) -> tuple[Artifact, bool]:
        try:
            self._commit(session, f"{stage} {version}", {"stage": stage, "version": version})
        except CommitConflict:
            if self.has(version):  # the same version landed from another writer (object storage)
                return self.get(version), False
            raise
        return self.get(version), True

    def put_sharded(self, stage: str, params: dict, inputs: list[str], code: str,
                    layout: dict[str, tuple[tuple[int, ...], str]], rows: int, chunk_rows: int,
                    chunks_per_shard: int, write_shards: Callable[[icechunk.Session, list[tuple[int, int]]], list],
                    meta: dict | None = None) -> tuple[Artifact, bool]:
        """Store arrays sharded along their first axis, written in parallel.

        ``layout`` maps each array name to ``(trailing shape, dtype)``; arrays are
        ``[rows, *trailing]``, chunked by ``chunk_rows`` rows with ``chunks_per_shard`` chunks per
        shard file (Zarr's sharding codec; with 1, each chunk is its own file, which reads about 3×
        faster here — bench/NOTES.md), uncompressed (spline coefficients barely compress) but checksummed. ``write_shards(session, ranges)`` receives a clean writable session and the
        shard-aligned row ranges, forks the session for its workers (each writes whole shards of
        the group's arrays through :func:`open_artifact_group`) and returns their fork sessions,
        which are merged and committed once.
        """
        version = version_id(stage, params, inputs, code)
        with self._version_lock(version):
            if self.has(version):
                return self.get(version), False
            return self._put_sharded(stage, version, params, inputs, code, layout, rows, chunk_rows,
                                     chunks_per_shard, write_shards, meta)

    def _put_sharded(self, stage, version, params, inputs, code, layout, rows, chunk_rows, chunks_per_shard,
                     write_shards, meta) -> tuple[Artifact, bool]:
        self._check_inputs(inputs)
        shard_rows = chunk_rows * chunks_per_shard
        with self._writing(f"{stage} {version} (create arrays)",
                           {"stage": stage, "version": version, "complete": False}) as root:
            group = root.create_group(version, overwrite=True)
            for name, (trailing, dtype) in layout.items():
                group.create_array(name, shape=(rows, *trailing), dtype=dtype, compressors=(Crc32cCodec(),),
                                   chunks=(chunk_rows, *trailing),
                                   shards=(shard_rows, *trailing) if chunks_per_shard > 1 else None)
            group.attrs.update(self._attrs(stage, version, params, inputs, code, meta, False))
        ranges = [(s, min(s + shard_rows, rows)) for s in range(0, rows, shard_rows)]
        session = self.repo.writable_session(BRANCH)
        forks = write_shards(session, ranges)
        session.merge(*forks)
        group = zarr.open_group(session.store, mode="a")[version]
        group.attrs["complete"] = True
        return self._commit_new(session, stage, version)

    def tag(self, version: str, name: str) -> str:
        """Tag the snapshot in which ``version`` became complete (its commit's metadata says so; a
        sharded artifact's first commit, which only creates its arrays, says ``complete: False``);
        returns the snapshot id. A name is letters, digits, ``.``, ``_`` and ``-``, not ``.`` or ``..``."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", "..") or is_lease(name):
            raise ValueError(f"tag name {name!r}: use letters, digits, '.', '_' and '-' (not '.' or '..', "
                             f"nor starting {LEASE_PREFIX!r}: the runs' leases)")
        self.get(version)
        for snap in self.history():
            if snap.metadata.get("version") == version and snap.metadata.get("complete", True):
                self.repo.create_tag(name, snap.id)
                return snap.id
        raise StoreError(f"no commit of {version} found in the history of {self.location}")

    def tags(self) -> dict[str, str]:
        """The user's tags (not the runs' leases) and their snapshots."""
        return {t: self.repo.lookup_tag(t) for t in sorted(self.repo.list_tags()) if not is_lease(t)}

    def gc(self, keep: list[str] | None = None, dry_run: bool = False) -> dict:
        """Delete versions that are not tagged, not in ``keep`` and no input of a kept version
        (incomplete groups included), then expire old snapshots and delete unreachable chunks.
        Refused (:class:`StoreBusy`) while a run holds a live lease on the store
        (:mod:`storage.leases`); stale leases are removed."""
        now = time.time()
        held = leases(self.repo)
        if live := [lease for lease in held if not lease.stale(now)]:
            raise StoreBusy(f"gc: {len(live)} run(s) hold {self.location} — " +
                            "; ".join(lease.describe(now) for lease in live) +
                            f" — and may write or read any version; run gc once they end (a killed run's lease "
                            f"lapses when its process is gone, or {STALE:.0f} s after its last renewal)")
        if not dry_run:
            for lease in held:
                self.repo.delete_tag(lease.tag)
        keep_set: set[str] = set(keep or [])
        for snap in self.tags().values():
            root = self._root(snap)
            keep_set.update(v for v in root.group_keys() if root[v].attrs.get("complete"))
        closure, todo = set(), list(keep_set)
        while todo:
            v = todo.pop()
            if v in closure:
                continue
            closure.add(v)
            if self.has(v):
                todo.extend(self.get(v).inputs)
        root = self._root()
        doomed = [v for v in root.group_keys() if v not in closure]
        summary = {"deleted_versions": sorted(doomed), "kept": sorted(closure)}
        if dry_run or not doomed:
            return summary
        session = self.repo.writable_session(BRANCH)
        root = zarr.open_group(session.store, mode="a")
        for p in doomed:
            del root[p]
            if self._lock_path is not None:
                (self._lock_path.parent / ".locks" / f"{p}.lock").unlink(missing_ok=True)
        self._commit(session, f"gc: delete {len(doomed)} versions", {"gc": True})
        cutoff = datetime.now(timezone.utc)
        self.repo.expire_snapshots(older_than=cutoff)
        result = self.repo.garbage_collect(cutoff)
        summary["bytes_deleted"] = int(getattr(result, "bytes_deleted", 0))
        return summary


def open_artifact_group(session, version: str) -> zarr.Group:
    """The artifact's group inside a (forked) session, for workers of :meth:`ArtifactStore.put_sharded`."""
    return zarr.open_group(session.store, mode="a")[version]



def _folder_problem(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return f"artifact store {path} is a file, not a store folder"
    if path.is_dir() and any(path.iterdir()) and \
            not any((path / name).exists() for name in ("repo", "refs", "snapshots")):
        return f"{path} is not an artifact store (no Icechunk repository there)"
    return None


def location_problem(text: str | None) -> str | None:
    """Why the store at ``text`` (as :func:`parse_location` reads it) cannot be used, found without
    opening or creating anything; ``None`` when it can. Object storage is checked for its form only."""
    try:
        loc = parse_location(text)
    except ValueError as e:
        return str(e)
    if isinstance(loc, S3Location):
        return None
    path = Path(loc).resolve()
    if (problem := _folder_problem(path)) is not None:
        return problem
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"cannot create artifact store {path}: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"artifact store {path}: {existing} is not writable"
    return None


def parse_location(text: str | None = None) -> str | S3Location:
    """A store location from ``text`` or ``$SHAREKAN_STORE`` (default ``artifacts/store``).

    ``s3://bucket/prefix`` selects object storage; the endpoint, region and credentials come from
    ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``.
    """
    text = text or os.environ.get("SHAREKAN_STORE") or "artifacts/store"
    if not text.startswith("s3://"):
        return text
    bucket, _, prefix = text[5:].partition("/")
    if not bucket:
        raise ValueError(f"store location {text!r} names no bucket (expected s3://BUCKET/PREFIX)")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return S3Location(bucket=bucket, prefix=prefix.strip("/") or "sharekan", endpoint_url=endpoint,
                      region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                      access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                      secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                      allow_http=bool(endpoint and endpoint.startswith("http://")))


def code_version(*modules) -> str:
    """Hash of the source of the modules that implement a stage (its "code version")."""
    import inspect

    h = hashlib.sha256()
    for m in modules:
        h.update(inspect.getsource(m).encode())
    return h.hexdigest()[:12]
