#!/usr/bin/env bash
# Entrypoint of the pinrank fleet image (deploy/Dockerfile): starts tritonserver
# on the `gpu` repository baked into the image. Everything a deployment decides
# comes from the environment, so the Kubernetes manifests (deploy/k8s/) and not
# the image own ports, bind address and the admin key:
#
#   PINRANK_ADMIN_KEY         required; value of the header that unlocks the
#                             restricted APIs (fed from a Secret in Kubernetes)
#   PINRANK_ADMIN_HEADER      header name             (pinrank-admin-key)
#   PINRANK_RESTRICTED_APIS   APIs behind the header  (see RESTRICTED below)
#   PINRANK_MODEL_REPOSITORY  repository path         (/models, where the Dockerfile copies it)
#   PINRANK_HTTP_PORT / PINRANK_GRPC_PORT / PINRANK_METRICS_PORT   (8000 / 8001 / 8002)
#   PINRANK_BIND_ADDRESS      (127.0.0.1: clients go through the proxy sidecar,
#                             deploy/k8s/triton; 0.0.0.0 exposes Triton 2.51's
#                             crash defects to the network, docs/security.md)
#   PINRANK_PRINT_COMMAND=1   print the command, one argument a line, and exit
#                             (tests/deploy use it; the output holds the key)
#
# Arguments are appended to tritonserver's (the Deployment adds gRPC connection
# ageing that way). Model control mode is `none`: the image is the release unit,
# a new model version is a new image rolled out by the Deployment, and nothing
# can load or unload models in a running pod.
set -euo pipefail

# The same APIs as `pinrank serve` restricts (pinrank.serving.tritonserver.
# RESTRICTED_APIS). Health, metadata, inference and statistics stay open:
# kubelet probes carry no header, and the SDK's rank / health / check_contract
# use only the first three.
RESTRICTED="model-repository,shared-memory,trace,logging"

repo=${PINRANK_MODEL_REPOSITORY:-/models}
addr=${PINRANK_BIND_ADDRESS:-127.0.0.1}
http=${PINRANK_HTTP_PORT:-8000}
grpc=${PINRANK_GRPC_PORT:-8001}
metrics=${PINRANK_METRICS_PORT:-8002}
header=${PINRANK_ADMIN_HEADER:-pinrank-admin-key}
apis=${PINRANK_RESTRICTED_APIS:-$RESTRICTED}
key=${PINRANK_ADMIN_KEY:-}

die() { echo "pinrank entrypoint: $*" >&2; exit 2; }

# An open admin API on a fleet is worse than a pod that does not start.
[ -n "$key" ] || die "PINRANK_ADMIN_KEY is empty: set it from the Secret (deploy/k8s/common/secret.yaml)"
case "$key" in
  REPLACE_ME*) die "PINRANK_ADMIN_KEY is still the placeholder of deploy/k8s/common/secret.yaml: put a real key in the Secret" ;;
esac
# Triton parses the flag as APIS:HEADER=VALUE, so ':', '=' and ',' in the key
# would be cut at the wrong place; hex or base64url keys never contain them.
[[ "$key" =~ ^[A-Za-z0-9._~+/-]{16,256}$ ]] || die "PINRANK_ADMIN_KEY must be 16-256 characters of [A-Za-z0-9._~+/-] (e.g. openssl rand -hex 32)"
[[ "$header" =~ ^[A-Za-z0-9-]+$ ]] || die "PINRANK_ADMIN_HEADER must be a plain header name"
[[ "$apis" =~ ^[a-z-]+(,[a-z-]+)*$ ]] || die "PINRANK_RESTRICTED_APIS must be a comma-separated list of API names"
for port in "$http" "$grpc" "$metrics"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "ports must be numbers, got '$port'"
done
[ -f "$repo/pinrank/config.pbtxt" ] || [ -n "${PINRANK_PRINT_COMMAND:-}" ] \
  || die "no pinrank ensemble under $repo (the image is built from 'pinrank export --target gpu' output)"

cmd=(
  tritonserver
  --model-repository="$repo"
  --model-control-mode=none
  # Ready only once every model of the ensemble is loaded: the readiness probe
  # must not send traffic to a pod that would answer "model not ready".
  --strict-readiness=true
  --exit-on-error=true
  # In-flight requests get this long after SIGTERM (the pod's grace period is longer).
  --exit-timeout-secs=30
  --http-address="$addr" --http-port="$http"
  --grpc-address="$addr" --grpc-port="$grpc"
  --metrics-address="$addr" --metrics-port="$metrics"
  # Unused by the fleet, and separate frontends with their own endpoint
  # handling: off, so the restricted-API flags above cover every way in.
  --allow-sagemaker=false --allow-vertex-ai=false
  --http-restricted-api="$apis:$header=$key"
  --grpc-restricted-protocol="$apis:$header=$key"
)
cmd+=("$@")

if [ -n "${PINRANK_PRINT_COMMAND:-}" ]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
