"""The demo page in a real browser: headless Chromium (DevTools protocol) uploads an image, clicks "next stage"
four times and saves a screenshot. Skipped where Chromium is absent.

``PANCAPCHAIN_SCREENSHOT=path.png`` keeps the screenshot there; ``PANCAPCHAIN_SERVE_MODEL=DIR`` serves another
model (e.g. a demo run) instead of the 3-step test checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_util import DevTools, running_server

from pancapchain.data.synth import generate_scene

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1400,1100", "--hide-scrollbars"]
STATUS = "document.querySelector('#status') ? document.querySelector('#status').innerText : ''"

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"), pytest.mark.timeout(420)]


def _browser(profile: Path) -> tuple[subprocess.Popen, DevTools]:
    """Chromium with a fresh profile; a DevTools connection to its first page."""
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    active = profile / "DevToolsActivePort"
    deadline = time.time() + 60
    while not (active.is_file() and active.read_text().strip()):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
        time.sleep(0.2)
    port = active.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        pages = [t for t in json.load(response) if t["type"] == "page"]
    return proc, DevTools(pages[0]["webSocketDebuggerUrl"])


def _click(tools: DevTools, button: str) -> None:
    tools.evaluate(f"document.querySelector('#{button}').click()")


def test_page_uploads_runs_the_stages_and_shows_boxes_and_caption(tiny_checkpoint, tmp_path):
    model = Path(os.environ.get("PANCAPCHAIN_SERVE_MODEL") or tiny_checkpoint)
    budget = [] if os.environ.get("PANCAPCHAIN_SERVE_MODEL") else ["--max-new-tokens", "12"]
    image = tmp_path / "scene.png"
    generate_scene(1, 0, 64, "val")[1].save(image)
    shot = Path(os.environ.get("PANCAPCHAIN_SCREENSHOT") or tmp_path / "serve.png")
    with running_server(model, tmp_path / "serve.log", *budget) as url:
        proc, tools = _browser(tmp_path / "profile")
        try:
            tools.call("Page.navigate", url=url)
            tools.wait_for("document.querySelector('#upload input[type=file]') !== null", 60, "the upload input")
            root = tools.call("DOM.getDocument")["root"]["nodeId"]
            node = tools.call("DOM.querySelector", nodeId=root, selector="#upload input[type=file]")["nodeId"]
            tools.call("DOM.setFileInputFiles", files=[str(image)], nodeId=node)
            tools.wait_for(f"({STATUS}).includes('loaded scene (64x48)')", 60, "the image to load")
            for k, stage in enumerate(("localize", "label", "discover", "caption"), start=1):
                _click(tools, "next-stage")
                tools.wait_for(f"({STATUS}).includes('ran stage {k}/4 ({stage})')", 120, f"stage {k}")
            tools.wait_for("document.querySelector('#overlay img') && "
                           "document.querySelector('#overlay img').naturalWidth > 0", 30, "the overlay image")
            radios = tools.evaluate("document.querySelectorAll('#stage input[type=radio]').length")
            caption = tools.evaluate("document.querySelector('#caption').innerText")
            png = base64.b64decode(tools.call("Page.captureScreenshot", format="png",
                                              captureBeyondViewport=True)["data"])
        finally:
            tools.ws.close()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(png)
    assert radios == 4  # the stage picker offers the four stages that ran
    assert caption.strip()  # the caption box shows text (label + phrases)
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[1] >= 1000 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a drawn page
