"""SHARe-KAN core library: KAN layers, Gain-Shape-Bias VQ, baselines, memory accounting, the
compressed head's file format (``sharekan.load``).

Pure torch/numpy; FAISS and CuPy are imported lazily where needed; never Prefect or Ray.
"""

from importlib import import_module

# name -> the module that defines it, imported on first use (``import sharekan.kmeans_options``, as
# the command line does, loads no torch)
_HOME = {"KAN": "kan", "KANLinear": "kan", "VQKAN": "vq_kan", "VQKANLinear": "vq_kan", "compress_kan": "vq_kan",
         "encode_layer": "vq_kan", "Int8KAN": "baselines", "PrunedKAN": "baselines", "prune_edges": "baselines",
         "CompressedHead": "encoded", "load": "encoded"}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
