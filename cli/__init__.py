"""The ``sharekan`` command (``main``) and the local services it starts (``services``: a Prefect
server, work pool and worker, a Ray head) — kept apart from the flows, which only compose stages."""
