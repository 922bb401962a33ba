# syntax=docker/dockerfile:1
# PMMTalk Server images (docs/deploy.md):
#   docker build --target cpu -t pmmtalk-server:cpu .   ONNX Runtime on the CPU
#   docker build --target gpu -t pmmtalk-server:gpu .   TensorRT and ONNX Runtime on an NVIDIA GPU
# Both serve the bundled default model from its ONNX export, which the `export` stage makes at
# build time. Serving an export imports no PyTorch, so neither image carries it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The CUDA major version follows the `gpu` extra's newest releases, which pip resolves: today
# onnxruntime-gpu 1.31, TensorRT 11 (tensorrt_cu13) and cuda-python 13, all CUDA 13 builds.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04

# ---- export: the whole project with CPU PyTorch; exports the model and builds the wheel ------
FROM ${PYTHON_IMAGE} AS export
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PMMTALK_CACHE_DIR=/export-cache
WORKDIR /src
# The Makefile's install lines, in its order (tests/deploy/test_docker.py holds them equal). Only
# PyTorch's index differs: PyPI's Linux wheel is the CUDA build, gigabytes this stage never uses.
RUN python -m pip install --quiet --upgrade pip \
    && python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md LICENSE ./
COPY pmmtalk pmmtalk
COPY models models
COPY export export
COPY server server
COPY clients clients
RUN python -m pip install --quiet -e ".[dev]"
# The export, for the server's default stream window, lands in $PMMTALK_CACHE_DIR after its
# parity check against PyTorch; the wheel holds the code and the bundled model (models/default).
COPY deploy/docker/image.py deploy/docker/image.py
RUN python deploy/docker/image.py export \
    && python -m pip wheel --quiet --no-deps --wheel-dir /wheels .

# ---- gpu: CUDA 13 + cuDNN 9, onnxruntime-gpu and TensorRT; engines built on first start --------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Ubuntu 22.04's own Python 3.11 (the CUDA images come on Ubuntu, not on python:3.11).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/requirements /tmp/requirements
RUN python -m pip install --quiet -r /tmp/requirements/gpu.txt
COPY --from=export /wheels /tmp/wheels
RUN python -m pip install --quiet --no-deps /tmp/wheels/pmmtalk_server-*.whl \
    && rm -rf /tmp/wheels /tmp/requirements \
    && groupadd --system --gid 10001 pmmtalk \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pmmtalk \
    && mkdir /cache \
    && chown pmmtalk:pmmtalk /cache
COPY --from=export /export-cache /opt/pmmtalk/cache
COPY deploy/docker/healthcheck.py /usr/local/bin/pmmtalk-healthcheck
COPY deploy/docker/image.py /usr/local/bin/pmmtalk-image
USER 10001:10001
# /cache is a volume: the engines built there on the first start outlive the container.
ENV PMMTALK_CACHE_DIR=/cache \
    PMMTALK_BAKED_CACHE=/opt/pmmtalk/cache \
    PMMTALK_MODEL__BACKEND=tensorrt \
    PMMTALK_HOST=0.0.0.0 \
    PMMTALK_PORT=8000
VOLUME ["/cache"]
EXPOSE 8000
# Building the engines on a first start takes minutes; failed checks count only after this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "/usr/local/bin/pmmtalk-healthcheck"]
CMD ["python", "/usr/local/bin/pmmtalk-image", "start-gpu"]

# ---- cpu: the server on ONNX Runtime, without PyTorch. The last stage, so the default target --
FROM ${PYTHON_IMAGE} AS cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY deploy/requirements /tmp/requirements
RUN python -m pip install --quiet -r /tmp/requirements/cpu.txt
COPY --from=export /wheels /tmp/wheels
RUN python -m pip install --quiet --no-deps /tmp/wheels/pmmtalk_server-*.whl \
    && rm -rf /tmp/wheels /tmp/requirements \
    && groupadd --system --gid 10001 pmmtalk \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pmmtalk
# Owned by root and read-only to the server: a cache hit only reads (export/cache.py).
COPY --from=export /export-cache /opt/pmmtalk/cache
COPY deploy/docker/healthcheck.py /usr/local/bin/pmmtalk-healthcheck
USER 10001:10001
ENV PMMTALK_CACHE_DIR=/opt/pmmtalk/cache \
    PMMTALK_MODEL__BACKEND=onnx \
    PMMTALK_HOST=0.0.0.0 \
    PMMTALK_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/pmmtalk-healthcheck"]
CMD ["pmmtalk", "serve"]
