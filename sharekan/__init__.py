"""SHARe-KAN core library: KAN layers, Gain-Shape-Bias VQ, baselines, memory accounting, the
compressed head's file format (``sharekan.load``).

Pure torch/numpy; FAISS and CuPy are imported lazily where needed; never Prefect or Ray.
"""

from .baselines import Int8KAN, PrunedKAN, prune_edges
from .encoded import CompressedHead, load
from .kan import KAN, KANLinear
from .vq_kan import VQKAN, VQKANLinear, compress_kan, encode_layer

__all__ = ["KAN", "KANLinear", "VQKAN", "VQKANLinear", "compress_kan", "encode_layer",
           "Int8KAN", "PrunedKAN", "prune_edges",
           "CompressedHead", "load"]
