"""Leases: a run's claim on a store, so ``gc`` never deletes a version a live run writes or reads.

A process that runs stages against a store holds one lease on it for as long as it lives
(:func:`hold`; the flows take it with their first stage). The lease is a tag of the store's own
repository — so it works on a folder and on object storage alike — named
``_lease.<host>.<pid>.<token>.<epoch>``: a heartbeat thread replaces it with a fresh ``<epoch>``
every :data:`HEARTBEAT` seconds, and the process removes it when it exits. A lease is stale once
its epoch is :data:`STALE` seconds old, or at once when its process is gone from this host (a
killed run); ``gc`` refuses to run while a live lease exists, naming its holder, and removes
stale ones.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import psutil

__all__ = ["PREFIX", "HEARTBEAT", "STALE", "Lease", "hold", "leases", "is_lease"]

PREFIX = "_lease."
HEARTBEAT = 20.0  # seconds between a lease's renewals
STALE = 90.0  # seconds without a renewal after which a lease no longer counts
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def is_lease(tag: str) -> bool:
    return tag.startswith(PREFIX)


@dataclass(frozen=True)
class Lease:
    """One lease tag, parsed."""

    tag: str
    host: str
    pid: int
    token: str
    epoch: float

    @classmethod
    def parse(cls, tag: str) -> Lease | None:
        m = re.fullmatch(re.escape(PREFIX) + r"([A-Za-z0-9-]+)\.(\d+)\.([0-9a-f]+)\.(\d+)", tag)
        return cls(tag, m[1], int(m[2]), m[3], float(m[4])) if m else None

    def stale(self, now: float | None = None) -> bool:
        if (now or time.time()) - self.epoch > STALE:
            return True
        return self.host == _HOST and not psutil.pid_exists(self.pid)

    def describe(self, now: float | None = None) -> str:
        return f"process {self.pid} on {self.host}, renewed {(now or time.time()) - self.epoch:.0f} s ago"


def leases(repo) -> list[Lease]:
    """Every lease tag of the repository ``repo`` (live and stale)."""
    return [lease for t in repo.list_tags() if is_lease(t) and (lease := Lease.parse(t)) is not None]


class _Held:
    """This process's lease on one repository: renewed by a daemon thread, removed at exit."""

    def __init__(self, repo, branch: str):
        self.repo, self.branch = repo, branch
        self.token, self.tag = uuid.uuid4().hex[:12], None
        self.stop = threading.Event()
        self._renew()
        threading.Thread(target=self._beat, name="store-lease", daemon=True).start()
        atexit.register(self.release)

    def _renew(self) -> None:
        old = self.tag
        self.tag = f"{PREFIX}{_HOST}.{os.getpid()}.{self.token}.{int(time.time())}"
        if self.tag == old:
            return
        self.repo.create_tag(self.tag, self.repo.lookup_branch(self.branch))
        if old:
            self.repo.delete_tag(old)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            try:
                self._renew()
            except Exception:  # a store briefly unreachable: the next beat tries again
                pass

    def release(self) -> None:
        self.stop.set()
        if self.tag:
            try:
                self.repo.delete_tag(self.tag)
            except Exception:  # already gone, or the store unreachable: it goes stale
                pass
            self.tag = None


_HELD: dict[str, _Held] = {}
_LOCK = threading.Lock()


def hold(store) -> None:
    """Take this process's lease on ``store`` (an :class:`~storage.store.ArtifactStore`) once; it is
    held until the process exits."""
    from .store import BRANCH

    key = str(store.location)
    with _LOCK:
        if key not in _HELD:
            _HELD[key] = _Held(store.repo, BRANCH)
