"""The browser demo of ``pancapchain serve`` (Gradio; optional extra ``demo``): see docs/web_demo.md."""
