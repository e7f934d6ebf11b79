#!/usr/bin/env bash
# The GPU check on a lent GPU machine, from the carried bundle alone
# (deploy/gpu_bundle.py builds it; `make gpu-bundle`):
#
#   bash deploy/gpu_check.sh [BUNDLE] [gpu_check.py options...]
#
# Unpacks BUNDLE (default build/gpu_bundle.tar.xz) into a fresh folder, then
# runs its gpu_check.py with the machine's torch interpreter: the gpu profile
# on the GPU beside the cpu profile on the CPUs, parity, latency. Results go
# to $OUT/results/gpu.json and the server logs to $OUT/logs when $OUT is set
# (the device tool's output folder), else to results/ here. Exit status 1
# when a server fails, parity fails or a latency cell only errored.
#
# Environment: PINRANK_GPU_PYTHON (default /opt/torch/.venv/bin/python3, else
# python3), PINRANK_GPU_WORK (default /tmp/pinrank-gpu; emptied first).
set -euo pipefail
BUNDLE=build/gpu_bundle.tar.xz
if [[ $# -gt 0 && $1 != -* ]]; then BUNDLE=$1; shift; fi
PY=${PINRANK_GPU_PYTHON:-/opt/torch/.venv/bin/python3}
[[ -x $PY ]] || PY=$(command -v python3)
WORK=${PINRANK_GPU_WORK:-/tmp/pinrank-gpu}
[[ -f $BUNDLE ]] || { echo "no bundle at $BUNDLE: build it with deploy/gpu_bundle.py and carry it" >&2; exit 2; }
export PYTHONUNBUFFERED=1
start=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK"
echo "unpacking $BUNDLE ($(du -m "$BUNDLE" | cut -f1) MiB) into $WORK with $PY"
# Python's tarfile, not tar: the machine's tar may lack xz; 'data' refuses links out of the folder.
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$BUNDLE" "$WORK"
echo "unpacked in $(( $(date +%s) - start ))s"
exec "$PY" "$WORK/pinrank-gpu-bundle/gpu_check.py" --python "$PY" "$@"
