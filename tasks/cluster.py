"""Connecting to Ray: a local cluster started on demand (127.0.0.1 only), ``"auto"`` (a running
``ray start --head`` on this machine) or ``ray://host:port``."""

from __future__ import annotations

import os

import ray

__all__ = ["connect"]


def connect(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Initialise Ray once per process; returns the cluster's resources."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False)
    return ray.cluster_resources()
