#!/usr/bin/env bash
# Build both images and run `testbed run`'s arms in them as the chart runs its pods.
#
#   images/build-and-run.sh [testbed run options]     (default: a 2-source none,filter run, tiny)
#
# Run from anywhere, as root (or rootless podman), with the testbed installed on this
# machine (pip install -e ".[k8s]": the chart is rendered by Helm's library). Steps:
#   1. a base image: $BASE_IMAGE if given; else the Dockerfiles' own (python:3.11-slim,
#      nvidia/cuda) when a registry answers; else one made here with debootstrap (Debian
#      bookworm with python3.11) and `podman import`ed as localhost/splittest-base:bookworm;
#   2. both images (images/source.Dockerfile, images/server.Dockerfile), torch from
#      $TORCH_INDEX if given, else PyTorch's index when it answers, else PyPI (whose Linux
#      torch is the CUDA build: both images then carry CUDA's libraries);
#   3. their sizes: uncompressed (the engine's) and compressed (podman save | gzip);
#   4. the run: python images/container_run.py (the chart's pods as containers, --network
#      host), into runs/<id>/ (summary.json, report/); `testbed report DIR` reads it.
# Settings (environment): ENGINE (podman), BASE_IMAGE, SERVER_BASE_IMAGE, TORCH_INDEX,
# PIP_INDEX_URL, CA_BUNDLE (a CA bundle for a TLS-intercepting proxy: mounted into the
# builds; default: the host's when pip is configured with one), TAG (0.1.0), SKIP_BUILD=1,
# SKIP_SIZES=1, SKIP_RUN=1, ENGINE_RUN_ARGS (options for every `podman run` and build;
# default: --runtime runc and lowered ulimits where crun cannot run, as on hosts with
# hybrid cgroups).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
ENGINE=${ENGINE:-podman}
TAG=${TAG:-0.1.0}
SOURCE_IMAGE=localhost/splittest-source:$TAG
SERVER_IMAGE=localhost/splittest-server:$TAG
LOCAL_BASE=localhost/splittest-base:bookworm
say() { printf '== %s\n' "$*" >&2; }

# Options for every build and run: runc where crun refuses the host's cgroups (hybrid
# cgroup v1/v2), and ulimits the host can grant.
if [[ -z ${ENGINE_RUN_ARGS+x} ]]; then
    ENGINE_RUN_ARGS=""
    if [[ $ENGINE == podman ]] && command -v runc >/dev/null \
        && [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]]; then
        ENGINE_RUN_ARGS="--runtime runc"
    fi
    [[ $ENGINE == podman ]] && ENGINE_RUN_ARGS+=" --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
fi
read -r -a RUN_ARGS <<<"$ENGINE_RUN_ARGS"

reachable() { curl -s -o /dev/null -m 10 -w '%{http_code}' "$1" | grep -qv '^000$'; }

make_local_base() {
    if $ENGINE image exists "$LOCAL_BASE" 2>/dev/null; then return; fi
    say "no registry: making $LOCAL_BASE with debootstrap (Debian bookworm, python3.11)"
    local root
    root=$(mktemp -d)
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,passwd \
        bookworm "$root" http://deb.debian.org/debian >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | $ENGINE import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >&2
    rm -rf "$root"
}

build() {  # build ROLE IMAGE BASE TORCH_INDEX
    local role=$1 image=$2 base=$3 index=$4 args=()
    [[ -n $base ]] && args+=(--build-arg "BASE_IMAGE=$base")
    [[ -n $index ]] && args+=(--build-arg "TORCH_INDEX=$index")
    [[ -n ${PIP_INDEX_URL:-} ]] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
    if [[ -n $CA_BUNDLE ]]; then
        args+=(-v "$CA_BUNDLE:/run/build-ca.pem:ro" --build-arg PIP_CERT=/run/build-ca.pem)
    fi
    say "building $image (images/$role.Dockerfile${base:+, base $base}${index:+, torch from $index})"
    local start=$SECONDS
    $ENGINE build "${RUN_ARGS[@]}" --network host --ignorefile "$HERE/dockerignore" \
        -f "$HERE/$role.Dockerfile" "${args[@]}" -t "$image" "$REPO" >&2
    say "built $image in $((SECONDS - start)) s"
}

if [[ ${SKIP_BUILD:-} != 1 ]]; then
    BASE_IMAGE=${BASE_IMAGE:-}
    SERVER_BASE_IMAGE=${SERVER_BASE_IMAGE:-$BASE_IMAGE}
    if [[ -z $BASE_IMAGE ]] && ! reachable https://registry-1.docker.io/v2/; then
        make_local_base
        BASE_IMAGE=$LOCAL_BASE
        SERVER_BASE_IMAGE=$LOCAL_BASE
    fi
    SOURCE_INDEX=${TORCH_INDEX:-} SERVER_INDEX=${TORCH_INDEX:-}
    if [[ -z ${TORCH_INDEX:-} ]] && ! reachable https://download.pytorch.org/whl/; then
        say "PyTorch's index is out of reach: torch from PyPI (the CUDA build, in both images)"
        SOURCE_INDEX=https://pypi.org/simple SERVER_INDEX=https://pypi.org/simple
    fi
    if [[ -z ${CA_BUNDLE+x} ]]; then  # the CA bundle pip is configured with here (an intercepting proxy's)
        CA_BUNDLE=$(pip config get global.cert 2>/dev/null || true)
        CA_BUNDLE=${PIP_CERT:-$CA_BUNDLE}
    fi
    started=$SECONDS
    build source "$SOURCE_IMAGE" "$BASE_IMAGE" "$SOURCE_INDEX"
    build server "$SERVER_IMAGE" "$SERVER_BASE_IMAGE" "$SERVER_INDEX"
    say "both images built in $((SECONDS - started)) s"
fi

if [[ ${SKIP_SIZES:-} != 1 ]]; then
    sizes=$(mktemp -d)
    for image in "$SOURCE_IMAGE" "$SERVER_IMAGE"; do  # compressed as a registry holds layers: gzip, side by side
        ($ENGINE save "$image" 2>/dev/null | gzip -c | wc -c >"$sizes/${image//[\/:]/_}") &
    done
    wait
    for image in "$SOURCE_IMAGE" "$SERVER_IMAGE"; do
        size=$($ENGINE image inspect --format '{{.Size}}' "$image")
        packed=$(cat "$sizes/${image//[\/:]/_}")
        read -r site_bytes packages < <($ENGINE run --rm "${RUN_ARGS[@]}" --network none --entrypoint sh "$image" -c \
            'echo $(du -sb /opt/venv/lib/python3.11/site-packages | cut -f1) $(pip list 2>/dev/null | tail -n +3 | wc -l)')
        awk -v i="$image" -v u="$size" -v c="$packed" -v s="$site_bytes" -v n="$packages" 'BEGIN {
            printf "%s: %.2f GB uncompressed, %.2f GB compressed (save | gzip), site-packages %.2f GB in %d distributions\n",
                   i, u / 1e9, c / 1e9, s / 1e9, n }'
    done
    rm -rf "$sizes"
fi

if [[ ${SKIP_RUN:-} != 1 ]]; then
    if [[ $# -eq 0 ]]; then  # a tiny 2-source run: the baseline arm and the filter arm
        set -- --sources 2 --module none,filter --model vgg11-slim --batches 4 --epochs 1 --eval-samples 64
    fi
    gpus=(--gpus 0)
    [[ " $* " == *" --gpus "* || " $* " == *" --gpus="* ]] && gpus=()
    engine_args=()
    for arg in "${RUN_ARGS[@]}"; do engine_args+=("--engine-arg=$arg"); done
    cd "$REPO"
    say "running: python images/container_run.py ... -- $* ${gpus[*]}"
    python "$HERE/container_run.py" --engine "$ENGINE" "${engine_args[@]}" --source-image "$SOURCE_IMAGE" \
        --server-image "$SERVER_IMAGE" -- "$@" "${gpus[@]}"
fi
