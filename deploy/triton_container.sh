#!/usr/bin/env bash
# Serve the `gpu` profile of the exported repository in NVIDIA's Triton
# container on a GPU host. The repository is self-contained: the Python-backend
# steps (preprocess/postprocess) carry their numpy-only code in `_vendor/`, and
# the ranker runs on the container's native pytorch_libtorch backend (KIND_GPU).
#
#   make export                         # writes model_repository/{cpu,gpu}
#   deploy/triton_container.sh          # then: pinrank-client rank --url localhost:8001 ...
#
# Environment: TRITON_IMAGE (default matches the bundled server, Triton 2.51 =
# release 24.10), REPO (default model_repository/gpu), HTTP/GRPC/METRICS ports.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
REPO=${REPO:-$PWD/model_repository/gpu}
HTTP=${HTTP_PORT:-8000}; GRPC=${GRPC_PORT:-8001}; METRICS=${METRICS_PORT:-8002}
if [ ! -f "$REPO/pinrank/config.pbtxt" ]; then
  echo "no repository at $REPO: run 'make export' first" >&2; exit 2
fi
if ! command -v docker >/dev/null; then
  echo "docker is not installed; on a GPU host install Docker and the NVIDIA Container Toolkit" >&2; exit 2
fi
exec docker run --rm --gpus all --shm-size=1g \
  -p "$HTTP:8000" -p "$GRPC:8001" -p "$METRICS:8002" \
  -v "$(cd "$REPO" && pwd):/models:ro" \
  "$IMAGE" \
  tritonserver --model-repository=/models --strict-readiness=true --exit-on-error=true
