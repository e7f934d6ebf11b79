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
# release 24.10), REPO (default model_repository/gpu), HTTP/GRPC/METRICS ports,
# BIND (host address the ports publish on; default 127.0.0.1, docs/security.md),
# PINRANK_ADMIN_KEY (the key for model control; default: the one in
# ADMIN_KEY_FILE, generated there with mode 0600 on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
REPO=${REPO:-$PWD/model_repository/gpu}
HTTP=${HTTP_PORT:-8000}; GRPC=${GRPC_PORT:-8001}; METRICS=${METRICS_PORT:-8002}
BIND=${BIND:-127.0.0.1}
ADMIN_KEY_FILE=${ADMIN_KEY_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/pinrank/admin-key}
# Same restricted APIs as `pinrank serve` (pinrank.serving.tritonserver.RESTRICTED_APIS).
RESTRICTED=model-repository,shared-memory,trace,logging
if [ ! -f "$REPO/pinrank/config.pbtxt" ]; then
  echo "no repository at $REPO: run 'make export' first" >&2; exit 2
fi
if ! command -v docker >/dev/null; then
  echo "docker is not installed; on a GPU host install Docker and the NVIDIA Container Toolkit" >&2; exit 2
fi
KEY=${PINRANK_ADMIN_KEY:-}
if [ -z "$KEY" ]; then
  if [ ! -f "$ADMIN_KEY_FILE" ]; then
    mkdir -p -m 700 "$(dirname "$ADMIN_KEY_FILE")"
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ADMIN_KEY_FILE")
    echo "generated an admin key in $ADMIN_KEY_FILE" >&2
  fi
  KEY=$(cat "$ADMIN_KEY_FILE")
fi
if ! [[ "$KEY" =~ ^[A-Za-z0-9._~+/-]{16,256}$ ]]; then
  echo "admin key must be 16-256 characters of letters, digits and ._~+/-" >&2; exit 2
fi
# Triton binds 0.0.0.0 inside the container; what the host exposes is BIND.
# The key travels in the environment (`-e NAME` copies it from ours), not on
# docker's command line, where any local user could read it.
export PINRANK_ADMIN_KEY="$KEY"
exec docker run --rm --gpus all --shm-size=1g \
  -p "$BIND:$HTTP:8000" -p "$BIND:$GRPC:8001" -p "$BIND:$METRICS:8002" \
  -v "$(cd "$REPO" && pwd):/models:ro" \
  -e PINRANK_ADMIN_KEY \
  "$IMAGE" \
  sh -c 'exec tritonserver --model-repository=/models --strict-readiness=true --exit-on-error=true \
    --http-restricted-api='"$RESTRICTED"':pinrank-admin-key="$PINRANK_ADMIN_KEY" \
    --grpc-restricted-protocol='"$RESTRICTED"':pinrank-admin-key="$PINRANK_ADMIN_KEY"'
