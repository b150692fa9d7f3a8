"""Connecting to Ray: a local cluster of this process's own (``address="local"``: never one that a
``ray start`` or a stale ``ray_current_cluster`` file of Ray's left on the machine), ``"auto"`` (a
running ``ray start --head`` on this machine) or ``ray://host:port``. Ray's token authentication
stays on: Ray enables it for a new local cluster (making ``~/.ray/auth_token``) unless
``RAY_AUTH_MODE`` says otherwise, and nothing here says otherwise; some of Ray's servers listen on
every interface whatever the node address, so the token is what keeps others out.
:func:`ensure_token` makes the token before a local cluster starts and names its file in
``RAY_AUTH_TOKEN_PATH``, so every Ray process finds it even where ``$HOME`` is unset or differs
(on a fresh machine Ray's own servers otherwise fail to start). The Prefect API URL (and the store
location) are passed to every worker, so task runs on Ray report to the flow's API."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import ray

__all__ = ["connect", "worker_env", "init_kwargs", "ensure_token", "alive_nodes", "check_reachable", "address_problem",
           "head_address", "resolve_auto"]

_FORWARD = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_SERVER_ANALYTICS_ENABLED", "SHAREKAN_STORE",
            "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
IDLE_WORKER_S = 120  # how long our clusters keep an idle worker (Ray's default: 1 s past the CPU count)
SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_S * 1000}  # a local cluster's and ray_head's


def ensure_token(env: dict | None = None) -> None:
    """Token authentication (Ray's default for a new cluster, and ours): unless ``RAY_AUTH_MODE`` turns
    it off or ``RAY_AUTH_TOKEN`` holds the token, make sure the token file exists (``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``: 32 random bytes, hex, readable by its owner alone) and name it in
    ``env`` (default ``os.environ``) as ``RAY_AUTH_TOKEN_PATH``."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE", "token") != "token" or env.get("RAY_AUTH_TOKEN"):
        return
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not (path.is_file() and path.read_text().strip()):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)  # atomically: a concurrent start reads a whole token or none
    env["RAY_AUTH_TOKEN_PATH"] = str(path)


def worker_env() -> dict[str, str]:
    """Environment every Ray worker needs from the driver."""
    return {k: os.environ[k] for k in _FORWARD if os.environ.get(k)}


def init_kwargs(address: str | None = None, num_cpus: int | None = None) -> dict:
    """``ray.init`` arguments: a cluster ``address`` (else ``$SHAREKAN_RAY_ADDRESS``) or a local
    cluster on 127.0.0.1 without dashboard; the workers get :func:`worker_env`. A local cluster
    keeps idle workers for ``IDLE_WORKER_S``, so the stages of a run (and the shard tasks a stage
    starts) reuse warm workers instead of starting new ones that import torch again."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("SHAREKAN_RAY_ADDRESS") or None
    kw = {"log_to_driver": True, "runtime_env": {"env_vars": worker_env()}}  # task progress in the console
    if address:
        # inside `ray job submit` the job's runtime env may name the same variables: merge them
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        return kw | {"address": address}
    # "local": always a new cluster of our own, never one a `ray start` (or a stale
    # ray_current_cluster file) left on this machine; attaching happens only by address.
    return kw | {"address": "local", "num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False,
                 "_node_ip_address": "127.0.0.1",
                 "_system_config": SYSTEM_CONFIG}


def address_problem(address: str, timeout: float = 5) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``; ``None``: something
    listens there)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as e:
        return str(e)


def check_reachable(address: str, timeout: float = 5) -> None:
    """Refuse at once a cluster ``address`` (``host:port``, ``ray://host:port``, or ``auto``:
    :func:`resolve_auto`) where nothing listens: Ray itself would retry for minutes."""
    if address == "local":
        return
    if address == "auto":
        address = resolve_auto()
    if problem := address_problem(address, timeout):
        raise ConnectionError(f"no Ray cluster answers at {address} ({problem}): start its head (`ray start --head` "
                              "or `sharekan server`) or check the address")


def resolve_auto() -> str:
    """The cluster Ray's ``auto`` would attach to (``RAY_ADDRESS``, the last ``ray start`` here, or a
    GCS running on this host), refused at once with a named error where there is none or it is
    another user's (Ray would retry its token for 20 s, then fail with a traceback)."""
    import getpass

    import psutil
    from ray._private.services import get_ray_address_from_environment

    try:
        address = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise ConnectionError("`auto` finds no Ray cluster on this machine: start one (`ray start --head` or "
                              "`sharekan server`) or give its address") from None
    for proc in psutil.process_iter(["cmdline", "username"]):  # the cluster's own processes name its GCS
        if f"--gcs-address={address}" in (proc.info["cmdline"] or []):
            if proc.info["username"] != getpass.getuser():
                raise ConnectionError(f"`auto` finds the Ray cluster at {address}, started by user "
                                      f"{proc.info['username']!r}, not by you: give the address of a cluster of "
                                      "your own (and its token)")
    return address


def head_address(address: str | None = None) -> str:
    """Where the connected cluster's head answers: the client server of a ``ray://`` address, else
    the head's GCS (a local cluster's too)."""
    if address and address.startswith("ray://"):
        return address
    return ray.get_runtime_context().gcs_address


def connect(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Initialise Ray once per process; returns the cluster's resources."""
    if not ray.is_initialized():
        kwargs = init_kwargs(address, num_cpus)
        if kwargs["address"] == "auto":
            kwargs["address"] = resolve_auto()
        if kwargs["address"] != "local":
            check_reachable(kwargs["address"])
        if kwargs["address"] == "local":
            ensure_token()
            kwargs["runtime_env"]["env_vars"] = worker_env()
        ray.init(**kwargs)
    return ray.cluster_resources()


def alive_nodes() -> set[str]:
    """The Ray nodes alive now (:func:`~tasks.runner.node_name`'s short ids); empty outside Ray."""
    if not ray.is_initialized():
        return set()
    return {n["NodeID"][:12] for n in ray.nodes() if n.get("Alive")}

