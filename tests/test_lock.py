"""The environment that scripts/setup.sh built equals the committed lock (pip freeze == lock)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_lock)


def installed_lock() -> Path:
    marker = Path(sys.prefix) / ".pancapchain-lock"
    if not marker.exists():
        pytest.skip("this environment was not built by scripts/setup.sh (no .venv/.pancapchain-lock)")
    return ROOT / marker.read_text().strip()


def test_pip_freeze_equals_the_lock():
    assert check_lock.differences(installed_lock()) == []


def test_the_check_reports_a_moved_and_an_extra_package(tmp_path):
    lock = installed_lock()
    lines = lock.read_text().splitlines()
    moved = [line.replace("==", "==0.0.0.dev0+", 1) if line.startswith("numpy==") else line for line in lines]
    dropped = [line for line in moved if not line.startswith("pyyaml==")]
    fake = tmp_path / "fake.lock"
    fake.write_text("\n".join(dropped) + "\n")
    problems = check_lock.differences(fake)
    assert any(p.startswith("numpy: lock 0.0.0.dev0+") for p in problems), problems
    assert any(p.startswith("pyyaml: installed") and p.endswith("not in the lock") for p in problems), problems


def test_pins_normalizes_names_and_skips_options():
    text = ["--find-links /opt/wheels", "PyYAML==6.0.2", "markupsafe==3.0  # via jinja2", "-e file:///x",
            "    # via torch", "Foo_Bar.baz==1 ; python_version > '3'"]
    assert check_lock.pins(text) == {"pyyaml": "6.0.2", "markupsafe": "3.0", "foo-bar-baz": "1"}
