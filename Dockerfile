# The image a Ray cluster runs SHARe-KAN on: two targets of one build.
#   docker build --target cpu -t ghcr.io/sharekan/sharekan:0.1.0-cpu .   # head and CPU workers
#   docker build --target gpu -t ghcr.io/sharekan/sharekan:0.1.0-gpu .   # GPU workers (k-means, LUTHAM)
# Both hold the project installed as a package (its wheel, with the versions pyproject.toml pins),
# Ray 2.60.0 (the `ray` CLI KubeRay starts), `sharekan` on PATH, and run as the non-root user
# `sharekan` (uid 1000). No secret is baked in: the Ray token comes from a Kubernetes Secret at run
# time (RAY_AUTH_TOKEN, set by KubeRay's authOptions), the store's credentials likewise.
# The GPU target adds nothing to the wheel: torch's pip wheels bring the CUDA runtime, cuBLAS, NVRTC
# and the headers LUTHAM's NVRTC compile needs (cuda_fp16.h, mma.h); cupy-cuda13x comes with the
# project. Its base is NVIDIA's CUDA runtime image, for the driver hooks of the NVIDIA container runtime.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# --- the project's wheel (pure Python: the same for both targets) -----------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sharekan/ sharekan/
COPY storage/ storage/
COPY tasks/ tasks/
COPY flows/ flows/
COPY cli/ cli/
RUN pip install --no-cache-dir build==1.6.1 \
    && python -m build --wheel --outdir /wheels .

# --- CPU: the Ray head and CPU workers ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/sharekan PATH=/opt/sharekan/bin:$PATH RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
RUN useradd --create-home --uid 1000 sharekan \
    && python -m venv /opt/sharekan
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/sharekan-*.whl && rm -rf /tmp/wheels
COPY deployments/ /opt/sharekan/deployments/
USER 1000:1000
WORKDIR /home/sharekan
CMD ["sharekan", "--help"]

# --- GPU: workers with an NVIDIA GPU --------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/sharekan PATH=/opt/sharekan/bin:$PATH RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04's Python (3.12: the pinned packages all have 3.12 wheels); the base has uid 1000 as
# `ubuntu`, which is renamed to `sharekan`
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.* python3.12-venv=3.12.* \
    && rm -rf /var/lib/apt/lists/* \
    && usermod --login sharekan --move-home --home /home/sharekan ubuntu \
    && groupmod --new-name sharekan ubuntu \
    && python3.12 -m venv /opt/sharekan
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/sharekan-*.whl && rm -rf /tmp/wheels
COPY deployments/ /opt/sharekan/deployments/
USER 1000:1000
WORKDIR /home/sharekan
CMD ["sharekan", "--help"]
