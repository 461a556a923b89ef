"""``pancapchain serve`` through gradio_client against a real server on 127.0.0.1 (tiny model).

Run all; edit a stage-2 tag and see it reach the stage-4 prompt; bad inputs give a message, never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_sample
from serve_util import running_server

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
LABEL_TEXT = "lynx <box>[[100, 200, 500, 500]]</box>, walrus <box>[[550, 300, 900, 800]]</box>"
FIELDS = ("status", "stage", "table", "raw", "overlay", "caption", "session_json", "overlay_png")


@pytest.fixture(scope="module")
def url(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # 40x40 px = 1600: the square test image passes, anything above 2500 px is "huge" here.
    with running_server(tiny_checkpoint, log, "--max-new-tokens", "12", "--max-pixels", "2500") as address:
        yield address


@pytest.fixture
def client(url):
    return Client(url, verbose=False, download_files=False)


def _call(client: Client, api: str, *args) -> dict:
    """One request; the page's outputs by name (update dicts unwrapped to their values)."""
    values = client.predict(*args, api_name=api)
    page = dict(zip(FIELDS, values))
    page["stages"] = [c[0] for c in page["stage"].get("choices", [])] if isinstance(page["stage"], dict) else []
    for key in ("stage", "caption"):
        if isinstance(page[key], dict):
            page[key + "_update"], page[key] = page[key], page[key].get("value")
    return page


def _square_png(tmp_path: Path, size: int = 40) -> Path:
    _, image = make_sample(0, width=size, height=size)
    path = tmp_path / f"square{size}.png"
    image.save(path)
    return path


def _session(page: dict) -> dict:
    source = page["session_json"]
    return json.loads(Path(source["path"] if isinstance(source, dict) else source).read_text())


def test_run_all_then_a_stage2_tag_edit_reaches_stage4(client, tmp_path):
    loaded = _call(client, "/load_image", handle_file(str(_square_png(tmp_path))))
    assert loaded["status"].startswith("loaded square40 (40x40)"), loaded["status"]
    assert loaded["stages"] == [] and loaded["overlay"]

    done = _call(client, "/run_all")
    assert done["status"] == "ran localize, label, discover, caption"
    assert done["stages"] == ["localize", "label", "discover", "caption"] and done["stage"] == "caption"
    assert set(_session(done)["stages"]) == {"localize", "label", "discover", "caption"}

    # Rewrite stage 2, then change one tag in its table: stages 3 and 4 are generated again from the edit.
    rewritten = _call(client, "/apply_text", "label", LABEL_TEXT)
    assert rewritten["status"].startswith("stage label rewritten (2 items)"), rewritten["status"]
    shown = _call(client, "/show_stage", "label")
    rows = shown["table"]["data"]
    assert rows == [["lynx", "0.100, 0.200, 0.500, 0.500"], ["walrus", "0.550, 0.300, 0.900, 0.800"]]
    rows[0][0] = "zebra"
    edited = _call(client, "/apply_table", "label", {"headers": shown["table"]["headers"], "data": rows})
    assert edited["status"] == "stage label edited (2 items); reran discover, caption", edited["status"]
    saved = _session(edited)
    caption_prompt = saved["stages"]["caption"]["prompt"]
    assert "zebra <box>[[100, 200, 500, 500]]</box>" in caption_prompt and "lynx" not in caption_prompt
    assert saved["stages"]["discover"]["prompt"].endswith(
        "zebra <box>[[100, 200, 500, 500]]</box>, walrus <box>[[550, 300, 900, 800]]</box>")
    assert saved["edited_stages"] == ["label"]
    assert Path(edited["overlay_png"] if isinstance(edited["overlay_png"], str)
                else edited["overlay_png"]["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Sampling with a seed is reproducible: the same seed twice gives the same stage-1 text.
    first = _call(client, "/regenerate", "localize", 7)
    again = _call(client, "/regenerate", "localize", 7)
    assert first["status"] == "stage localize sampled with seed 7; reran label, discover, caption"
    assert _session(first)["stages"]["localize"]["raw"] == _session(again)["stages"]["localize"]["raw"]


def test_bad_inputs_get_a_message_and_keep_the_session(client, tmp_path):
    early = _call(client, "/next_stage")
    assert early["status"] == "**error:** no image loaded: upload an image or pick an example"

    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n")
    bad = _call(client, "/load_image", handle_file(str(notes)))
    assert bad["status"].startswith("**error:** notes.png is not a readable image"), bad["status"]

    huge = _call(client, "/load_image", handle_file(str(_square_png(tmp_path, size=60))))
    assert huge["status"].startswith("**error:** square60.png is 60x60 = 3,600 pixels; the limit is 2,500")

    _call(client, "/load_image", handle_file(str(_square_png(tmp_path))))
    _call(client, "/next_stage")
    headers = ["tag", "box"]
    outside = _call(client, "/apply_table", "localize", {"headers": headers, "data": [["", "0.1, 0.2, 1.5, 0.5"]]})
    assert outside["status"].startswith("**error:** row 1: bad box '0.1, 0.2, 1.5, 0.5'"), outside["status"]
    assert "outside [0, 1]" in outside["status"] and outside["stages"] == ["localize"]
    flipped = _call(client, "/apply_table", "localize", {"headers": headers, "data": [["", "0.5, 0.2, 0.1, 0.5"]]})
    assert "x2 < x1" in flipped["status"]
    assert "Traceback" not in json.dumps([early, bad, huge, outside, flipped], default=str)
