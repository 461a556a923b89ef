"""``pancapchain serve --model CKPT_OR_EXPORT [--port 7860] [--host 127.0.0.1]``: the browser demo (Gradio).

Needs the optional extra ``demo`` (gradio); the core install does not. The model is loaded once and shared
by every browser session; requests are queued and run one at a time. See docs/web_demo.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from pancapchain.cli.infer import (
    add_generation_args,
    check_chain_options,
    check_generation_args,
    generation_options,
)

MISSING_GRADIO = ("error: `pancapchain serve` needs gradio, which the core install leaves out: "
                  "pip install 'pancapchain[demo]' (or ./scripts/setup.sh, which installs the locked extras)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="browser demo: the chain stage by stage, with editable stages (Gradio)")
    parser.add_argument("--model", required=True, help="a training checkpoint or an export directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096,
                        help="refuse uploaded images larger than this many pixels")
    parser.add_argument("--max-file-size", default="25mb", help="refuse uploads larger than this (Gradio syntax)")
    add_generation_args(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _preflight(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine unless asked
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(MISSING_GRADIO, file=sys.stderr)
        return 2
    from pancapchain.cli.preflight import load_chain

    chain = load_chain(args.model, args.device)
    check_chain_options(chain, generation_options(args))
    loaded = time.perf_counter() - started
    workdir = Path(tempfile.mkdtemp(prefix="pancapchain-serve-"))
    try:
        return _serve(args, chain, workdir, started, loaded)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _preflight(args: argparse.Namespace) -> None:
    """Every argument checked before gradio or the model is imported (one line, exit 2, on a mistake)."""
    from pancapchain.cli import preflight
    from pancapchain.errors import PreflightError

    if not 0 < args.port < 65536:
        raise PreflightError(f"--port {args.port} is not a TCP port (1-65535)")
    preflight.at_least(args.max_pixels, 1, "--max-pixels")
    check_generation_args(args)
    preflight.model_dir(args.model)


def _serve(args: argparse.Namespace, chain, workdir: Path, started: float, loaded: float) -> int:
    from pancapchain.web.app import build_app
    from pancapchain.web.handlers import DemoActions

    app = build_app(DemoActions(chain, generation_options(args), workdir, args.max_pixels))
    app.queue(default_concurrency_limit=1, max_size=64)
    # SIGTERM (e.g. from a test or a process manager) stops like Ctrl-C, so the download folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, show_error=False,
                   allowed_paths=[str(workdir)], max_file_size=args.max_file_size, ssr_mode=False, quiet=True)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    # CPU seconds next to wall seconds: on a busy machine the wall time says little about the start-up cost.
    print(f"pancapchain serve: model loaded in {loaded:.1f} s; ready in {time.perf_counter() - started:.1f} s "
          f"(CPU {time.process_time():.1f} s) at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
