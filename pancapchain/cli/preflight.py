"""Checks every command makes before any compute: paths exist, outputs are writable, numbers are in range,
the model folder is a complete checkpoint or export. Nothing here creates a file or a folder.

Each check raises :class:`pancapchain.errors.PreflightError` with one line naming the argument, the value
and the fix; the top-level handler (``pancapchain.errors.run_guarded``) prints it and exits with code 2.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from pancapchain.errors import PreflightError

META_FILE = "pancap_meta.json"  # = pancapchain.model.checkpoint.META_FILE (not imported: it pulls in torch)


def existing_file(path: str | Path, flag: str) -> Path:
    """``path`` as a readable regular file."""
    path = Path(path)
    if not path.exists():
        raise PreflightError(f"{flag} {path} does not exist (check the path)")
    if path.is_dir():
        raise PreflightError(f"{flag} {path}: is a folder, a file was expected")
    if not os.access(path, os.R_OK):
        raise PreflightError(f"{flag} {path}: not readable (check its permissions)")
    return path


def existing_dir(path: str | Path, flag: str) -> Path:
    """``path`` as an existing folder."""
    path = Path(path)
    if not path.is_dir():
        what = ": is a file, a folder was expected" if path.exists() else " does not exist (check the path)"
        raise PreflightError(f"{flag} {path}{what}")
    return path


def existing_path(path: str | Path, flag: str) -> Path:
    """A file or a folder that exists (e.g. ``infer --data`` takes either)."""
    path = Path(path)
    if not path.exists():
        raise PreflightError(f"{flag} {path} does not exist (check the path)")
    return path


def _writable_ancestor(path: Path, flag: str, create_parents: bool) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not create_parents and not parent.is_dir():
        raise PreflightError(f"{flag} {path}: folder {parent} does not exist (create it first)")
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PreflightError(f"{flag} {path}: {ancestor} is a file, so no folder can be created under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PreflightError(f"{flag} {path}: folder {ancestor} is not writable (choose another path)")


def output_file(path: str | Path, flag: str, create_parents: bool = True) -> Path:
    """A file the command may create or append to: not a folder, writable, under a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise PreflightError(f"{flag} {path}: is a folder, give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise PreflightError(f"{flag} {path}: the file is not writable (check its permissions or choose another)")
    _writable_ancestor(path, flag, create_parents)
    return path


def output_dir(path: str | Path, flag: str) -> Path:
    """A folder the command may create or write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{flag} {path}: is a file, a folder was expected (choose another path)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PreflightError(f"{flag} {path}: folder is not writable (choose another path)")
        return path
    _writable_ancestor(path, flag, create_parents=True)
    return path


def at_least(value: float, minimum: float, flag: str) -> None:
    if value < minimum:
        raise PreflightError(f"{flag} {value}: must be >= {minimum}")


def in_range(value: float, low: float, high: float, flag: str) -> None:
    if not low <= value <= high:  # also refuses NaN
        raise PreflightError(f"{flag} {value}: must be between {low} and {high}")


def image_file(path: str | Path, flag: str) -> Path:
    """An image file PIL can identify (header only; the pixels are decoded later)."""
    from PIL import Image, UnidentifiedImageError

    path = existing_file(path, flag)
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise PreflightError(f"{flag} {path}: not a readable image ({type(err).__name__}: {err})") from None
    return path


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (truncated, bad header), from its header only; None when fine."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return f"truncated: the header needs {header_len} bytes, the file has {size}"
            header = json.loads(fh.read(header_len))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        return f"not a safetensors file ({type(err).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"truncated: {size} bytes of {expected}"
    return None


def _check_weights(folder: Path, flag: str, root: Path) -> None:
    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise PreflightError(f"{flag} {root}: {weights.name} is {problem} (copy or export the model again)")


def model_dir(path: str | Path, flag: str = "--model") -> Path:
    """A training checkpoint or an export that looks complete: metadata, config files, intact weights."""
    path = existing_dir(path, flag)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise PreflightError(f"{flag} {path}: not a pancapchain checkpoint or export (no {META_FILE}); give a "
                             "training output folder (e.g. runs/x or runs/x/checkpoint-N) or an export")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PreflightError(f"{flag} {path}: {META_FILE} is not readable JSON ({err})") from None
    if not isinstance(meta, dict):
        raise PreflightError(f"{flag} {path}: {META_FILE} must hold a JSON object")
    if (path / "adapter_config.json").is_file():
        if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise PreflightError(f"{flag} {path}: adapter_config.json without adapter weights (incomplete copy?)")
        base = path / meta["base_in_checkpoint"] if meta.get("base_in_checkpoint") else Path(str(meta.get("base_model")))
        if not (base / "config.json").is_file():
            raise PreflightError(f"{flag} {path}: its base model {base} is missing (moved? see pancap_meta.json)")
        if base.is_relative_to(path):
            _check_weights(base, flag, path)
    elif not (path / "config.json").is_file():
        raise PreflightError(f"{flag} {path}: neither adapter_config.json (checkpoint) nor config.json (export)")
    _check_weights(path, flag, path)
    return path


def load_chain(path: str | Path, device: str, flag: str = "--model"):
    """Check ``path`` with :func:`model_dir`, then load it as a PancapChain; unreadable weights are a user error."""
    from safetensors import SafetensorError

    from pancapchain.infer.chain import PancapChain

    model_dir(path, flag)
    try:
        return PancapChain.from_pretrained(str(path), device=device)
    except SafetensorError as err:
        raise PreflightError(f"{flag} {path}: unreadable weights ({err}); copy or export the model again") from None


def recipe_file(path: str | Path) -> Path:
    """A recipe YAML that exists and parses safely into a mapping (tags such as !!python/... are refused)."""
    import yaml

    path = existing_file(path, "--recipe")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise PreflightError(f"--recipe {path}: not valid plain YAML{where} ({problem}); recipes hold plain "
                             "keys and values, no !!tags") from None
    except UnicodeDecodeError:
        raise PreflightError(f"--recipe {path}: not a UTF-8 text file") from None
    if data is not None and not isinstance(data, dict):
        raise PreflightError(f"--recipe {path}: must be a mapping of sections (model, lora, data, train, mask), "
                             f"got {type(data).__name__}")
    return path


def training_paths(cfg) -> None:
    """The recipe's files and folders (``RecipeConfig``), checked before output_dir is created."""
    data = cfg.data
    if not data.train:
        raise PreflightError("data.train is empty: give a JSONL of panoptic samples (data.train=PATH)")
    existing_file(data.train, "data.train")
    if data.val:
        existing_file(data.val, "data.val")
    if data.image_root:
        existing_dir(data.image_root, "data.image_root")
    output_dir(cfg.train.output_dir, "train.output_dir")
    if cfg.train.resume not in ("auto", "never"):
        resume = existing_dir(cfg.train.resume, "train.resume")
        if not (resume / "trainer_state.json").is_file():
            raise PreflightError(f"train.resume {resume}: not a training checkpoint (no trainer_state.json); give "
                                 "a checkpoint-N folder of a run, or train.resume=auto to continue its latest one")
