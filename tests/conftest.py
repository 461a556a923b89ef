"""Shared fixtures: a hand-made panoptic dataset on disk and tiny recipes (nothing is downloaded)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A one-layer LLaVA on a 32-px image (4 x 4 patches of 8 px), for the hook and decoding tests
MICRO_LLAVA = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                   vision_hidden_size=16, vision_layers=1, vision_heads=1, image_size=32, patch_size=8,
                   vocab_size=300)


# The synthetic scenes' scale before the fifteenth session (smaller things, up to 8 of them). Values recorded on
# those scenes (pinned losses, the golden prediction rows) check training and writing code, not the generator's
# scale, so they are replayed on the scenes they were recorded on.
RECORDED_SCENE_SCALE = {"_AREA_RANGE": (0.012, 0.1), "_MIN_RADIUS": 4.0, "MAX_THINGS": 8,
                        "SIZE_THRESHOLDS": (0.0244, 0.049)}


@contextmanager
def recorded_scene_scale() -> Iterator[None]:
    """Inside, ``pancapchain.data.synth`` draws scenes at :data:`RECORDED_SCENE_SCALE`."""
    from pancapchain.data import synth_scene

    with pytest.MonkeyPatch.context() as patch:
        for name, value in RECORDED_SCENE_SCALE.items():
            patch.setattr(synth_scene, name, value)
        yield


def micro_llava(tokenizer):
    """(model in eval mode, processor) of :data:`MICRO_LLAVA` around ``tokenizer`` (vocabulary <= 300)."""
    from pancapchain.config import TinyModelConfig
    from pancapchain.model.tiny import build_processor, build_tiny_model

    cfg = TinyModelConfig(**MICRO_LLAVA)
    return build_tiny_model(tokenizer, cfg).eval(), build_processor(tokenizer, cfg)


SHAPES = [
    ("red square", (0.10, 0.10, 0.45, 0.50), (220, 30, 30)),
    ("blue square", (0.55, 0.40, 0.90, 0.90), (30, 30, 220)),
    ("green square", (0.20, 0.60, 0.40, 0.95), (30, 200, 30)),
]


def make_sample(index: int, width: int = 48, height: int = 32, n_entities: int = 2) -> tuple[dict, Image.Image]:
    """One hand-made sample: colored rectangles on gray, with an SA-Pancap-style caption."""
    img = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    entities, parts = [], []
    for ent_id, (tag, box, color) in enumerate(SHAPES[:n_entities]):
        x1, y1, x2, y2 = box
        draw.rectangle([x1 * width, y1 * height, x2 * width - 1, y2 * height - 1], fill=color)
        entities.append({"id": ent_id, "tag": tag, "box": list(box), "is_thing": True})
        parts.append(f"a {tag} [[{x1:.3f}, {y1:.3f}, {x2:.3f}, {y2:.3f}]]")
    caption = "The image shows " + " and ".join(parts) + "." if parts else "The image is empty."
    record = {
        "id": f"s{index}",
        "image": f"images/s{index}.png",
        "width": width,
        "height": height,
        "entities": entities,
        "caption": caption,
    }
    return record, img


def write_dataset(root: Path, n: int = 4, name: str = "samples.jsonl", **kwargs) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        record, img = make_sample(i, **kwargs)
        img.save(root / record["image"])
        lines.append(json.dumps(record))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_synth_scenes(root: Path, n: int, seed: int) -> Path:
    """``root/train.jsonl`` with ``n`` generated 64-px synthetic scenes of ``seed`` and their images."""
    from pancapchain.data.synth import generate_scene

    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        sample, image = generate_scene(i, seed=seed, size=64)
        image.save(root / sample.image)
        lines.append(json.dumps(sample.to_dict()))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Path to a 4-sample JSONL with images next to it."""
    return write_dataset(tmp_path / "data")


def tiny_overrides(train: Path, out: Path, **extra: str) -> list[str]:
    """key=value overrides for a fast tiny run (2-layer, 32-px images)."""
    values = {
        "model.tiny.hidden_size": "32",
        "model.tiny.intermediate_size": "64",
        "model.tiny.vision_hidden_size": "16",
        "model.tiny.image_size": "32",
        "model.tiny.patch_size": "8",
        "model.tiny.vocab_size": "400",
        "lora.r": "4",
        "lora.alpha": "8",
        "lora.dropout": "0.0",
        "data.train": str(train),
        "data.max_length": "512",
        "train.output_dir": str(out),
        "train.per_device_batch_size": "4",
        "train.logging_steps": "1",
        "train.report_to": "[]",
        "train.learning_rate": "0.01",
        "train.projector_lr": "0.01",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster than two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on the hand-made dataset (shared by the inference tests)."""
    from pancapchain.config import load_recipe
    from pancapchain.train.run import run_training

    root = tmp_path_factory.mktemp("tiny_ckpt")
    train = write_dataset(root / "data", n=6)
    out = root / "run"
    run_training(load_recipe(None, tiny_overrides(train, out, **{"train.max_steps": "3"})))
    return out
