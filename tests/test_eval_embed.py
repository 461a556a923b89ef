"""Embeddings: the real packaged all-MiniLM-L6-v2 (offline, local path), caching, the model-free fallback."""

from __future__ import annotations

import numpy as np
import pytest

from pancapchain.eval.embed import (
    CachedEmbedder,
    HashingEmbedder,
    cosine_matrix,
    default_model_path,
    get_embedder,
)


def test_packaged_model_path_is_local():
    path = default_model_path()
    assert path.is_dir() and (path / "model.safetensors").is_file() and (path / "modules.json").is_file()


@pytest.mark.timeout(120)
def test_real_model_ranks_synonyms_above_unrelated_words():
    emb = get_embedder()  # the packaged MiniLM, loaded once per process
    sim = cosine_matrix(emb, ["dog"], ["puppy", "car", "dog"])
    assert sim[0, 0] > sim[0, 1]
    assert sim[0, 0] >= 0.5 > sim[0, 1]  # with the official threshold: dog~puppy match, dog~car do not
    assert sim[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert get_embedder() is emb


def test_missing_model_folder_is_a_clear_error(tmp_path):
    emb = get_embedder(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="never a hub id"):
        emb.encode(["dog"])


class CountingEmbedder:
    name = "counting"

    def __init__(self):
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        return HashingEmbedder().encode(texts)


def test_cache_encodes_each_text_once():
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner)
    first = cached.encode(["a b", "c"])
    second = cached.encode(["c", "a b", "d"])
    assert inner.seen == [["a b", "c"], ["d"]]
    np.testing.assert_array_equal(first[0], second[1])


def test_hashing_embedder_is_deterministic_and_normalised():
    vecs = HashingEmbedder().encode(["red car", "car", "", "red car"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vecs[0], vecs[3])
    assert float(vecs[0] @ vecs[1]) == pytest.approx(1 / np.sqrt(2), rel=1e-6)
