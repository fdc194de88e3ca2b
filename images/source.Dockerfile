# Data-source image: Python with CPU-only torch and the workload's dependencies
# (images/workloads.txt) only, running `python -m workloads.source`.
# Build from the repository root:
#   docker build -f images/source.Dockerfile -t splittest-source:0.1.0 .
# A site with its own mirror, or a machine that reaches no registry (images/build-and-run.sh):
#   --build-arg BASE_IMAGE=... --build-arg TORCH_INDEX=... --build-arg PIP_INDEX_URL=...
# BASE_IMAGE must be Debian-like, with python3.11 and its venv module (ensurepip).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The wheel index torch comes from (default: PyTorch's CPU index, a fraction of the CUDA
# build's size; PyPI's Linux torch is the CUDA build) and the one for everything else.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
ARG PIP_INDEX_URL=https://pypi.org/simple
# Behind a TLS-intercepting proxy: its CA bundle, mounted for the build only (podman build
# -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.pem:ro --build-arg PIP_CERT=/run/build-ca.pem).
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/splittest

RUN python3.11 -m venv /opt/venv \
    && pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# The workload's dependencies, declared once (pyproject.toml reads the same file); torch
# is already there, so nothing here replaces it.
COPY images/workloads.txt /opt/splittest/workloads.txt
RUN pip install --index-url "$PIP_INDEX_URL" -r /opt/splittest/workloads.txt

# Only the workloads package: testbed and analysis run on the machine that drives the runs.
COPY workloads /opt/splittest/workloads
RUN python -m compileall -q /opt/splittest/workloads \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin splittest
USER 10001
WORKDIR /home/splittest
ENTRYPOINT ["python", "-m", "workloads.source"]
