"""pancapchain: fine-tune LLaVA-style models for panoptic captioning (PancapChain + mask heads)."""

import logging


class _NoHubKernelNotice(logging.Filter):
    """Drop bitsandbytes' notice that it could not fetch its CPU 4-bit kernel from the Hub.

    On CPUs with AVX512-BF16, importing bitsandbytes (peft and transformers do) tries the ``kernels`` package,
    which would download code at run time; without it bitsandbytes logs a warning and uses its built-in CPU
    path, which is what this project wants (no downloads). The line then showed on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelNotice())

__version__ = "0.1.0"
