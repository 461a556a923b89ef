#!/usr/bin/env bash
# Create .venv/ at the repo root and install exactly the committed lock, then pancapchain itself (idempotent).
#   CPU machines: requirements-cpu.lock (torch's CPU build; a plain `torch` would pull a multi-GB CUDA build)
#   GPU machines (nvidia-smi present) or PANCAPCHAIN_LOCK=gpu: requirements-gpu.lock (CUDA torch + flash-attn)
# pip only bootstraps uv (its version pinned in the lock); uv installs the lock in parallel and then checks
# that the environment equals the lock (scripts/check_lock.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${PANCAPCHAIN_LOCK:-auto}" in
  cpu) kind=cpu ;;
  gpu) kind=gpu ;;
  auto) if command -v nvidia-smi >/dev/null 2>&1; then kind=gpu; else kind=cpu; fi ;;
  *) echo "PANCAPCHAIN_LOCK must be cpu, gpu or auto, not '${PANCAPCHAIN_LOCK}'" >&2; exit 2 ;;
esac
lock=requirements-$kind.lock
stamp=.venv/.pancapchain-installed
want=$(cat "$lock" pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
start=$(date +%s)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
uv_version=$(sed -n 's/^uv==//p' "$lock")
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$uv_version" 2> >(grep -v "is ignored" >&2)
UV=(.venv/bin/uv pip --quiet)
export UV_PYTHON=.venv/bin/python
if [ "$kind" = cpu ]; then
  # torch's +cpu wheel: on this project's machines it lies in /opt/wheels; elsewhere PyTorch's CPU index has it
  if [ -d /opt/wheels ]; then sources=(--find-links /opt/wheels)
  else sources=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match); fi
  "${UV[@]}" sync "${sources[@]}" "$lock"
else
  # flash-attn compiles against the installed torch, so it is built without isolation after everything else
  grep -v '^flash-attn==' "$lock" > .venv/lock-without-flash-attn.txt
  "${UV[@]}" sync .venv/lock-without-flash-attn.txt
  "${UV[@]}" install --no-build-isolation "$(grep '^flash-attn==' "$lock")"
fi
# uv's sync removes what the lock does not list, pip included; pip stays for users (and `pip freeze`)
.venv/bin/python -m ensurepip --default-pip >/dev/null 2>&1 || true
"${UV[@]}" install --no-deps -e .
# Bytecode once, here: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) every process
# would otherwise recompile torch/transformers/peft on import, ~13 s per command (measured: 23 s -> 10 s)
.venv/bin/python -m compileall -q -j 0 .venv/lib pancapchain >/dev/null 2>&1 || true
.venv/bin/python scripts/check_lock.py "$lock"
echo "$lock" > .venv/.pancapchain-lock
echo "$want" > "$stamp"
echo "set-up: installed $lock into .venv in $(( $(date +%s) - start )) s"
