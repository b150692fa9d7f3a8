"""The k-means choices a user makes — clustering modes and assignment backends — with no heavy
imports, so forms and the command line offer them without loading torch."""

from __future__ import annotations

__all__ = ["MODES", "BACKENDS"]

MODES = ("full", "minibatch", "two-level")
BACKENDS = ("cpu", "cuda", "faiss-gpu")
