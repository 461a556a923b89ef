"""``pancapchain validate-data --data JSONL [--image-root DIR] [--strict]``: the pre-flight check of training.

Reads every record through the data contract, resolves every image inside the declared root, opens and
verifies it, and prints (and writes next to the data, as ``<name>.validation.json``) what would be skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate-data", help="check a panoptic JSONL and its images before training")
    parser.add_argument("--data", required=True, help="JSONL of panoptic samples")
    parser.add_argument("--image-root", default="", help="image root (default: the JSONL's directory)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any record would be skipped")
    parser.set_defaults(func=_run)


def size_problem(path: Path, width: int, height: int) -> str | None:
    """A mismatch between the image's real size and the record's width/height (masks and boxes use them)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.size != (width, height):
            return f"image size {img.width}x{img.height} differs from the record's width x height {width}x{height}"
    return None


def _run(args: argparse.Namespace) -> int:
    from pancapchain.cli import preflight
    from pancapchain.data.io import atomic_write_json, load_samples
    from pancapchain.data.schema import SampleError, resolve_image
    from pancapchain.train.dataset import image_problem

    data = preflight.existing_file(args.data, "--data")
    root = preflight.existing_dir(args.image_root, "--image-root") if args.image_root else data.parent
    preflight.output_file(data.with_suffix(".validation.json"), "report file")
    samples, report = load_samples(data)
    kept = 0
    for sample in samples:
        try:
            path = resolve_image(root, sample.image, sample.id)
            problem = image_problem(path) or size_problem(path, sample.width, sample.height)
        except SampleError as err:
            problem = f"bad image path: {err.problem}"
        if problem:
            report.skip(sample.id, problem)
        else:
            kept += 1
    report.kept = kept
    print(report.summary(limit=50))
    atomic_write_json(data.with_suffix(".validation.json"), report.to_dict())
    return 1 if (args.strict and report.n_skipped) else 0
