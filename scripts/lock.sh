#!/usr/bin/env bash
# Write requirements-cpu.lock and requirements-gpu.lock from pyproject.toml with uv (Python 3.11, Linux x86_64).
#   ./scripts/lock.sh            keep every version already pinned; add/remove only what pyproject.toml changed
#   ./scripts/lock.sh --upgrade  take the newest releases pyproject.toml allows (use scripts/update-lock.sh,
#                                which also runs the suite against them)
# cpu: torch's CPU build (+cpu) and every extra but gpu; gpu: torch's CUDA build from PyPI + flash-attn.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
UV=${UV:-$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || command -v uv || true )}
[ -n "$UV" ] || { echo "lock.sh needs uv: run ./scripts/setup.sh first (it installs the pinned uv)" >&2; exit 2; }
cpu_sources=(--find-links /opt/wheels)
[ -d /opt/wheels ] || cpu_sources=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet "$@")

echo "torch==${TORCH_VERSION}+cpu" > "$tmp/cpu.txt"
"$UV" pip compile pyproject.toml --extra dev --extra demo -c "$tmp/cpu.txt" "${cpu_sources[@]}" \
  --no-emit-find-links --no-emit-index-url "${common[@]}" -o requirements-cpu.lock
echo "torch==${TORCH_VERSION}" > "$tmp/gpu.txt"
"$UV" pip compile pyproject.toml --extra dev --extra demo --extra gpu -c "$tmp/gpu.txt" \
  "${common[@]}" -o requirements-gpu.lock
# uv annotates the torch pin with the constraint file's path; name it stably so a re-run with nothing moved
# rewrites the locks byte for byte
sed -i "s#-c $tmp/#-c scripts/lock.sh:#" requirements-cpu.lock requirements-gpu.lock
echo "wrote requirements-cpu.lock ($(grep -c '==' requirements-cpu.lock) pins), requirements-gpu.lock ($(grep -c '==' requirements-gpu.lock) pins)"
