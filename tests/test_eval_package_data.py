"""The WordNet table and its licence are package data: found through importlib.resources, and inside a wheel."""

from __future__ import annotations

import gzip
import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pancapchain.eval.wordnet_table import HEADER, TABLE_PATH

REPO = Path(__file__).resolve().parents[1]
DATA_FILES = ("data/wordnet_noun_lemmas.txt.gz", "data/WORDNET-LICENSE.txt")


def test_importlib_resources_finds_the_table_and_licence():
    package = importlib.resources.files("pancapchain.eval")
    for name in DATA_FILES:
        assert package.joinpath(name).is_file(), name
    with importlib.resources.as_file(package.joinpath(DATA_FILES[0])) as table:
        assert table.resolve() == TABLE_PATH.resolve()
        with gzip.open(table, "rt", encoding="utf-8") as fh:
            assert fh.readline().rstrip("\n") == HEADER
    assert "WordNet" in package.joinpath(DATA_FILES[1]).read_text(encoding="utf-8")


@pytest.mark.timeout(240)
def test_a_built_wheel_carries_the_table(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "pancapchain", src / "pancapchain", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(tmp_path / "dist"), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("pancapchain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in DATA_FILES:
        assert f"pancapchain/eval/{name}" in names
