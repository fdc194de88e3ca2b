# Data-source image: slim Python with CPU-only torch, running `python -m workloads.source`.
# Build from the repository root:
#   docker build -f images/source.Dockerfile -t splittest-source:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch from PyTorch's CPU wheel index: a fraction of the CUDA build's size.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.5.1" "torchvision==0.20.1"

WORKDIR /opt/splittest
COPY pyproject.toml README.md ./
COPY workloads ./workloads
COPY testbed ./testbed
COPY analysis ./analysis
RUN pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin splittest
USER 10001
WORKDIR /home/splittest
ENTRYPOINT ["python", "-m", "workloads.source"]
