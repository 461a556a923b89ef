"""Importing pancapchain silences one bitsandbytes notice (a Hub kernel it must not download) and nothing else."""

from __future__ import annotations

import logging

import pancapchain  # noqa: F401  (installs the filter)


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("bitsandbytes.backends.cpu.ops", logging.WARNING, __file__, 1, msg, None, None)


def test_the_hub_kernel_notice_is_dropped_and_other_warnings_pass():
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert not logger.filter(_record("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please"))
    assert logger.filter(_record("some other bitsandbytes warning"))
    # only that logger: the same words elsewhere pass
    assert logging.getLogger("bitsandbytes").filter(_record("Failed to load CPU gemm_4bit_forward"))
