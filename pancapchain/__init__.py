"""pancapchain: fine-tune LLaVA-style models for panoptic captioning (PancapChain + mask heads)."""

__version__ = "0.1.0"
