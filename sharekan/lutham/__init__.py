"""LUTHAM: the compressed head's runtime — a static arena plan and fused CUDA kernels (CuPy)."""
