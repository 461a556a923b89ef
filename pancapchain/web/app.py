"""The Gradio page of ``pancapchain serve``: components and events over ``DemoActions`` (handlers.py).

Imported only by the serve command, so the core install needs no gradio (extra ``demo``). Every event has an
``api_name`` (``/load_image``, ``/load_example``, ``/next_stage``, ``/run_all``, ``/regenerate``,
``/apply_table``, ``/apply_text``, ``/show_stage``), so ``gradio_client`` can drive the same actions as the page.
All events share one queue slot (``concurrency_id="model"``): requests are queued, one runs at a time.
"""

from __future__ import annotations

import gradio as gr

from pancapchain.web import view
from pancapchain.web.handlers import DemoActions, Page

INTRO = """## pancapchain: panoptic captioning, stage by stage
Load an image (or a bundled synthetic example), then run the four stages **localize -> label -> discover ->
caption** one by one or all at once. Pick a stage to see it; edit its table (tag, box) or its raw text and
apply: every later stage is generated again from your edit. Boxes are normalized `x1, y1, x2, y2` in [0, 1].
"""


def build_app(actions: DemoActions) -> gr.Blocks:
    """The page; ``actions`` holds the loaded chain (shared by every browser session)."""
    with gr.Blocks(title="pancapchain demo", delete_cache=(3600, 3600)) as app:
        session = gr.State(None, time_to_live=3600, delete_callback=actions.close)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image", type="filepath", elem_id="upload")
                example = gr.Dropdown(list(view.EXAMPLES), value=None, label="or a bundled example",
                                      elem_id="example")
                with gr.Row():
                    next_button = gr.Button("next stage", variant="primary", elem_id="next-stage")
                    all_button = gr.Button("run all", elem_id="run-all")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    sample_button = gr.Button("regenerate with sampling", elem_id="regenerate")
                status = gr.Markdown(label="status", elem_id="status")
                stage = gr.Radio([], label="stage shown (edits apply to it; later stages rerun)", elem_id="stage")
                table = gr.Dataframe(headers=view.COLUMNS, datatype=["str", "str"], type="array",
                                     interactive=True, column_count=2, label="items", elem_id="items")
                table_button = gr.Button("apply table edits", elem_id="apply-table")
                raw = gr.Textbox(label="raw stage output (model format)", lines=4, elem_id="raw")
                raw_button = gr.Button("apply raw text", elem_id="apply-raw")
            with gr.Column(scale=1):
                picture = gr.Image(label="overlay", type="pil", format="png", interactive=False, elem_id="overlay")
                caption = gr.HighlightedText(label="caption (phrases in their box colour)", combine_adjacent=False,
                                             show_legend=False, show_inline_category=False, elem_id="caption")
                with gr.Row():
                    json_button = gr.DownloadButton("download session JSON", elem_id="download-json")
                    png_button = gr.DownloadButton("download overlay PNG", elem_id="download-png")
        outputs = [session, status, stage, table, raw, picture, caption, json_button, png_button]
        events = [
            (upload.upload, actions.load_image, [upload], "load_image"),
            (example.input, actions.load_example, [example], "load_example"),
            (next_button.click, actions.next_stage, [], "next_stage"),
            (all_button.click, actions.run_all, [], "run_all"),
            (sample_button.click, actions.regenerate, [stage, seed], "regenerate"),
            (table_button.click, actions.apply_table, [stage, table], "apply_table"),
            (raw_button.click, actions.apply_text, [stage, raw], "apply_text"),
            (stage.input, actions.show_stage, [stage], "show_stage"),
        ]
        for listener, action, inputs, name in events:
            listener(_rendered(action), [session, *inputs], outputs, api_name=name, concurrency_id="model",
                     concurrency_limit=1)
    return app


def _rendered(action):
    """``action`` with its ``Page`` turned into the values of ``outputs`` (same order)."""

    def event(*args):
        return _outputs(action(*args))

    event.__name__ = action.__name__
    event.__doc__ = action.__doc__
    return event


def _outputs(page: Page) -> tuple:
    return (
        page.session,
        page.status,
        gr.Radio(choices=page.stages, value=page.stage),
        page.rows,
        page.raw,
        page.picture,
        gr.HighlightedText(value=page.caption, color_map=page.colors),
        page.session_json,
        page.overlay_png,
    )
