"""Which failures are worth a retry: a lost worker, node or actor, a lost object, a concurrent
commit that conflicted. Everything else (bad input, a K too large, a failed validation, a bug) is
deterministic, fails once and is reported once.

Ray retries a task whose worker died (``max_retries``, system failures only, never application
exceptions); Prefect retries a task run only when :func:`retry_transient` says its exception is
transient.
"""

from __future__ import annotations

import ray.exceptions

from storage.store import CommitConflict

__all__ = ["RETRIES", "TRANSIENT", "is_transient", "retry_transient", "ray_options"]

RETRIES = 2
TRANSIENT = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
             ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
             CommitConflict)


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or, for a Ray task error, its cause) can succeed on a retry."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        exc = exc.cause
    return isinstance(exc, TRANSIENT)


def retry_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry only transient failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # a result that cannot be read back is itself a lost-worker symptom
        exc = e
    return is_transient(exc if isinstance(exc, BaseException) else None)


def ray_options(**resources) -> dict:
    """Ray options for a stage: its resources, retried by Ray only if its worker dies."""
    return {**resources, "max_retries": RETRIES, "retry_exceptions": False}
