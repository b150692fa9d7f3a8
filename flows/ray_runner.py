"""The flows' task runner: ``prefect-ray``'s, connecting to Ray only when a flow starts.

Nothing happens at import: the cluster address (``$SHAREKAN_RAY_ADDRESS``, else a local cluster
of the flow's own) and the workers' environment (the Prefect API URL, the store) are read when
the flow run enters the runner, so a deployment run and a CLI run use the same code path."""

from __future__ import annotations

from prefect_ray import RayTaskRunner

from tasks.cluster import init_kwargs

__all__ = ["ClusterTaskRunner"]


class ClusterTaskRunner(RayTaskRunner):
    """A ``RayTaskRunner`` that resolves its Ray address and init arguments on entry; a Ray already
    initialised in this process (``tasks.cluster.connect``) is used as it is."""

    def __init__(self, address: str | None = None, init_kwargs: dict | None = None):
        super().__init__(address=address, init_kwargs=init_kwargs)

    def __enter__(self):
        if self.address is None and not self.init_kwargs.keys() - {"namespace"}:
            kw = init_kwargs()
            address = kw.pop("address")
            if address != "local":  # "local" stays a ray.init argument: always a cluster of our own
                self.address = address
            else:
                kw["address"] = address
            self.init_kwargs = {"namespace": self.init_kwargs.get("namespace", "prefect"), **kw}
        return super().__enter__()
