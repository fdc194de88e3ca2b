# Offload-server image: CUDA runtime with torch, running `python -m workloads.server`.
# Build from the repository root:
#   docker build -f images/server.Dockerfile -t splittest-server:0.1.0 .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

# torch built for CUDA 12.4, matching the base image's runtime.
RUN pip install --index-url https://download.pytorch.org/whl/cu124 "torch==2.5.1" "torchvision==0.20.1"

WORKDIR /opt/splittest
COPY pyproject.toml README.md ./
COPY workloads ./workloads
COPY testbed ./testbed
COPY analysis ./analysis
RUN pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin splittest
USER 10001
WORKDIR /home/splittest
EXPOSE 5555
ENTRYPOINT ["python", "-m", "workloads.server"]
