# Offload-server image: CUDA runtime with torch and the workload's dependencies
# (images/workloads.txt) only, running `python -m workloads.server`.
# Build from the repository root:
#   docker build -f images/server.Dockerfile -t splittest-server:0.1.0 .
# A site with its own mirror, or a machine that reaches no registry (images/build-and-run.sh):
#   --build-arg BASE_IMAGE=... --build-arg TORCH_INDEX=... --build-arg PIP_INDEX_URL=...
# BASE_IMAGE must be Debian or Ubuntu, with apt sources that offer python3.11.
ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

# torch built for CUDA 12.4 by default, matching the default base image's runtime.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
ARG PIP_INDEX_URL=https://pypi.org/simple
# Behind a TLS-intercepting proxy: its CA bundle, mounted for the build only (podman build
# -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.pem:ro --build-arg PIP_CERT=/run/build-ca.pem).
ARG PIP_CERT

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/splittest

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

RUN pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

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
EXPOSE 5555
ENTRYPOINT ["python", "-m", "workloads.server"]
