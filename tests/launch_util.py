"""Cleanup shared by the tests that start ``torchrun`` / ``accelerate launch``: a hang must not outlive its test."""

from __future__ import annotations

import subprocess

import psutil


def stop_launch(launcher: subprocess.Popen) -> None:
    """Kill the launcher and every rank it started, if it is still running (torchrun gives each rank its own
    session, so killing the launcher's process group would miss them)."""
    if launcher.poll() is not None:
        return
    try:
        family = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for process in [launcher, *family]:
        try:
            process.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    psutil.wait_procs(family, timeout=30)
    launcher.wait(timeout=60)
