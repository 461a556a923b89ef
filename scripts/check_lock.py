"""Fail unless the running environment holds exactly the versions of a lock file (``pip freeze`` == lock).

Usage: python scripts/check_lock.py requirements-cpu.lock   (exit 1 listing every difference)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

IGNORED = {"pancapchain", "pip", "setuptools", "wheel"}  # the project itself, and the venv's own seed tools


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines as {normalized name: version}; comments, options and editables are skipped."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            if normalize(name) not in IGNORED:
                out[normalize(name)] = version.split(";")[0].strip()
    return out


def frozen() -> dict[str, str]:
    text = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                          check=True, capture_output=True, text=True).stdout
    return pins(text.splitlines())


def differences(lock: Path) -> list[str]:
    want, have = pins(lock.read_text().splitlines()), frozen()
    problems = [f"{n}: lock {v}, installed {have.get(n, 'nothing')}" for n, v in sorted(want.items())
                if have.get(n) != v]
    problems += [f"{n}: installed {v}, not in the lock" for n, v in sorted(have.items()) if n not in want]
    return problems


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements-cpu.lock")
    if not lock.is_file():
        print(f"check_lock.py: error: {lock}: no such lock file", file=sys.stderr)
        return 2
    problems = differences(lock)
    if problems:
        print(f"the environment differs from {lock}:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"environment == {lock} ({len(pins(lock.read_text().splitlines()))} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
