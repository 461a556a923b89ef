#!/usr/bin/env bash
# Move the lock forward on purpose: re-resolve both locks to the newest releases pyproject.toml allows, show
# which versions moved, reinstall .venv from the new CPU lock and run the suite against it. If the suite fails,
# the old locks are put back (and .venv reinstalled from them) and the exit code is non-zero.
# Run it when you want newer dependencies (say monthly, or for a fix upstream), never as part of CI.
# Extra arguments go to pytest, e.g. ./scripts/update-lock.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
backup=$(mktemp -d)
cp requirements-cpu.lock requirements-gpu.lock "$backup/"
./scripts/lock.sh --upgrade
echo "== versions that moved (cpu lock):"
diff <(grep '==' "$backup/requirements-cpu.lock") <(grep '==' requirements-cpu.lock) | grep '^[<>]' || echo "   none"
echo "== versions that moved (gpu lock):"
diff <(grep '==' "$backup/requirements-gpu.lock") <(grep '==' requirements-gpu.lock) | grep '^[<>]' || echo "   none"
./scripts/setup.sh
if ./scripts/test.sh "$@"; then
  echo "== suite green on the new lock: review and commit requirements-*.lock"
else
  echo "== suite red on the new lock: the old locks are restored; fix the code or cap the range in pyproject.toml" >&2
  cp "$backup"/requirements-*.lock .
  ./scripts/setup.sh
  exit 1
fi
