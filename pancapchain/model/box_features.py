"""Box features: every ``</box>`` the language model reads carries the image's mean feature inside that box.

A small language model reads a box as text, and to name what is inside a box it has to learn which image tokens
the coordinates cover: measured in docs/learning_quality.md, the tiny chain's label stage names the shapes of its
given boxes at chance. Region-aware LLaVA variants (GPT4RoI, Osprey, Ferret) hand the model the region's features
next to its coordinates instead. Here the input embedding of each ``</box>`` token, in the prompt and in the
answer alike, gets the mean of the projected image features over the patches its box group covers (weighted by the
share of each patch inside a box). So a prompt's given boxes show their content, and an answer that writes a box
sees what it boxed before it writes the next word. With ``data.box_feature_span`` N > 0 the words right after a
``</box>`` (up to N, until a separator) get its feature too, scaled to each word's own embedding norm: a 2-layer
model then names a box's shape from the word it is writing instead of reaching back to the ``</box>``.

Two forward pre-hooks (:class:`BoxFeatures`) do it; the weights, the saved folder and ``generate`` stay plain
transformers. During generation the hooks keep the row's tokens and image features from the prefill, so a
``</box>`` written at a decoding step gets the same feature a full forward gives it. The recipe key
``data.box_features`` turns it on and the checkpoint's ``pancap_meta.json`` records it for inference; a model loaded
without the hooks reads ``</box>`` as the ordinary token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pancapchain.constants import BOX_CLOSE, BOX_GRID, BOX_OPEN, LOC_BINS, LOC_TOKENS
from pancapchain.data.boxes import find_box_groups

META_KEY = "box_features"  # pancap_meta.json: true when the model was trained with these hooks
SPAN_KEY = "box_feature_span"  # pancap_meta.json: tokens after each </box> that carry its feature too


# Tokens that end a span: punctuation, a newline or a bare space as byte-level BPE (GPT-2, Llama 3, the tiny
# tokenizer) and SentencePiece (Llama 2, Vicuna) write them, and the next box.
SPAN_STOPS = (",", ".", "\u010a", "\u0120", "<0x0A>", "\u2581", "\u2581,", "\u2581.", "\n", BOX_OPEN)


def span_stop_ids(tokenizer) -> torch.Tensor:
    """(K,) sorted ids of the tokenizer's SPAN_STOPS it knows, plus all its special tokens."""
    ids = tokenizer.convert_tokens_to_ids(list(SPAN_STOPS))
    known = {i for i in ids if i is not None and i != tokenizer.unk_token_id}
    return torch.tensor(sorted(known | set(tokenizer.all_special_ids)))


def patch_weights(boxes: Sequence[Sequence[float]], grid: int) -> torch.Tensor:
    """(grid*grid,) share of each patch (row-major) inside the union of ``boxes``.

    Boxes are (x1, y1, x2, y2) in [0, 1] on the padded square the image processor feeds the tower. A box too thin
    to cover any patch area reads the patch under its centre."""
    if not boxes:
        return torch.zeros(grid * grid)
    return group_patch_weights(torch.tensor(boxes, dtype=torch.float32), torch.zeros(len(boxes), dtype=torch.long),
                               1, grid)[0]


def group_patch_weights(boxes: torch.Tensor, groups: torch.Tensor, n_groups: int, grid: int) -> torch.Tensor:
    """:func:`patch_weights` of many box groups at once.

    boxes: (M, 4) float xyxy in [0, 1]; groups: (M,) long, the group of each box, every group in [0, n_groups)
    present and its boxes in their written order. Returns (n_groups, grid*grid): per group, each patch's largest
    share inside one of its boxes; a group that covers no area reads the patch under its first box's centre."""
    edges = torch.arange(grid + 1, dtype=boxes.dtype) / grid
    lo, hi = edges[:-1], edges[1:]
    wx = (torch.minimum(hi, boxes[:, 2:3]) - torch.maximum(lo, boxes[:, 0:1])).clamp(min=0)  # (M, grid)
    wy = (torch.minimum(hi, boxes[:, 3:4]) - torch.maximum(lo, boxes[:, 1:2])).clamp(min=0)
    per_box = (wy[:, :, None] * wx[:, None, :]).flatten(1) * grid * grid  # (M, grid*grid)
    weights = per_box.new_zeros((n_groups, grid * grid))
    weights.scatter_reduce_(0, groups[:, None].expand_as(per_box), per_box, reduce="amax")
    empty = (weights.sum(1) <= 0).nonzero().flatten()
    if len(empty):
        first = torch.full((n_groups,), len(groups), dtype=torch.long).scatter_reduce(
            0, groups, torch.arange(len(groups)), reduce="amin")
        centre = boxes[first[empty]]
        col = ((centre[:, 0] + centre[:, 2]) / 2 * grid).long().clamp(0, grid - 1)
        row = ((centre[:, 1] + centre[:, 3]) / 2 * grid).long().clamp(0, grid - 1)
        weights[empty, row * grid + col] = 1.0
    return weights


def location_bin_lookup(tokenizer) -> torch.Tensor:
    """(V,) long: the bin i of each <loc_i> token id, -1 for every other id (V covers the tokenizer's ids)."""
    ids = tokenizer.convert_tokens_to_ids(list(LOC_TOKENS))
    known = [(i, b) for b, i in enumerate(ids) if i is not None and i != tokenizer.unk_token_id]
    lookup = torch.full((max([len(tokenizer)] + [i + 1 for i, _ in known]),), -1, dtype=torch.long)
    for token_id, b in known:
        lookup[token_id] = b
    return lookup


class BoxFeatures:
    """Forward pre-hooks on a llava-hf model (or its peft wrapper) that add box features to ``</box>`` embeddings.

    The hook on the inner ``LlavaModel`` keeps the tokens of the call (B, T) (appending decoding steps to the
    prefill's); the hook on its language model sees ``inputs_embeds`` (B, L, D), the last L of those T tokens,
    with the image features scattered in, and adds at each ``</box>`` the weighted mean of that row's N image
    features (a sqrt(N) x sqrt(N) grid, kept from the prefill for later steps)."""

    def __init__(self, model, tokenizer, span: int = 0):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.llava = base.model
        self.image_id = int(base.config.image_token_id)
        self.open_id, self.close_id = tokenizer.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE])
        self.tokenizer = tokenizer
        self.span = span
        self._stop_ids = span_stop_ids(tokenizer)
        self._bin_of_id = location_bin_lookup(tokenizer)
        self._ids: torch.Tensor | None = None  # (B, T) tokens of the sequence so far
        self._images: list[torch.Tensor] = []  # per row: (N, D) image features of the prefill
        self._handles = [
            self.llava.register_forward_pre_hook(self._keep_ids, with_kwargs=True),
            self.llava.language_model.register_forward_pre_hook(self._fill, with_kwargs=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep_ids(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache")
        seen = cache.get_seq_length() if cache is not None else 0
        if not isinstance(ids, torch.Tensor):
            self._ids = None
        elif seen == 0 or self._ids is None or self._ids.shape != (ids.shape[0], seen):
            self._ids, self._images = ids, []  # a new sequence (training, or a generation's prefill)
        else:
            self._ids = torch.cat([self._ids, ids], dim=1)

    def _fill(self, module, args, kwargs):
        embeds, ids = kwargs.get("inputs_embeds"), self._ids
        if embeds is None or ids is None or ids.shape[0] != embeds.shape[0] or ids.shape[1] < embeds.shape[1]:
            return None
        offset = ids.shape[1] - embeds.shape[1]
        if offset == 0:
            self._images = [embeds[b][ids[b] == self.image_id] for b in range(len(ids))]
        rows, cols, closes = self._carriers(ids, offset)
        if len(rows) == 0:
            return None
        keys = list(zip(rows.tolist(), closes.tolist()))
        groups = list(dict.fromkeys(keys))  # each box group once, in order of first use
        pooled = self._pool_groups(groups, embeds)
        index = {key: i for i, key in enumerate(groups)}
        values = pooled[[index[key] for key in keys]]
        # a word after the box keeps its identity: its feature is scaled to the word's own embedding norm
        # (image features are ~18x larger than token embeddings and would drown the word)
        after = cols != closes
        if after.any():
            words = embeds[rows[after], cols[after] - offset]
            scale = words.norm(dim=-1, keepdim=True) / values[after].norm(dim=-1, keepdim=True).clamp(min=1e-6)
            values = values.clone()
            values[after] = values[after] * scale
        delta = torch.zeros_like(embeds).index_put((rows, cols - offset), values.to(embeds.dtype))
        return args, {**kwargs, "inputs_embeds": embeds + delta}

    def _carriers(self, ids: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, closes) of the tokens at or after ``offset`` that carry a box feature: each ``</box>``
        and, with ``span`` > 0, up to ``span`` tokens after it before a separator (``,`` ``.`` newline, the next
        box, a special token); ``closes`` is the ``</box>`` whose feature each one carries. ids: (B, T)."""
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        last = torch.where(ids == self.close_id, pos, -1).cummax(dim=1).values
        stops = torch.isin(ids, self._stop_ids).cumsum(dim=1)
        since_stop = stops - stops.gather(1, last.clamp(min=0))
        carry = (last >= 0) & (pos - last <= self.span) & (since_stop == 0)
        carry[:, :offset] = False
        rows, cols = carry.nonzero(as_tuple=True)
        return rows, cols, last[rows, cols]

    def _pool_groups(self, groups: list[tuple[int, int]], embeds: torch.Tensor) -> torch.Tensor:
        """(G, D) mean image feature of each box group ``(row, position of its </box>)``; zeros without boxes."""
        last_open = torch.where(self._ids == self.open_id, torch.arange(self._ids.shape[1]), -1).cummax(dim=1).values
        bins = self._location_bins(self._ids)
        boxes, owners, grid = [], [], 0
        for g, (row, close) in enumerate(groups):
            image = self._images[row] if row < len(self._images) else embeds[row][:0]
            found = self._group_boxes(row, close, int(last_open[row, close]), bins) if len(image) else None
            if found is None or len(found) == 0:
                continue
            grid = math.isqrt(len(image))
            if grid * grid != len(image):
                raise ValueError(f"box features need a square patch grid; this row has {len(image)} image tokens "
                                 "(one image, vision_feature_select_strategy 'default')")
            boxes.append(found)
            owners.append(torch.full((len(found),), g))
        pooled = embeds.new_zeros((len(groups), embeds.shape[-1]))
        if not boxes:
            return pooled
        owner = torch.cat(owners)
        used = owner.unique()  # groups with boxes, ascending: renumbered 0..U-1 below
        weights = group_patch_weights(torch.cat(boxes), torch.searchsorted(used, owner), len(used), grid)
        images = torch.stack([self._images[groups[g][0]] for g in used.tolist()])  # (U, N, D)
        weights = weights.to(images.device, images.dtype)
        means = torch.bmm(weights[:, None, :], images)[:, 0] / weights.sum(1, keepdim=True)
        return pooled.index_put((used,), means.to(pooled.dtype))

    def _location_bins(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) the bin of each <loc_i> token, -1 for every other token (all -1 without location tokens)."""
        lookup = self._bin_of_id
        return torch.where(ids < len(lookup), lookup[ids.clamp(0, len(lookup) - 1)], -1)

    def _group_boxes(self, row: int, close: int, open_at: int, bins: torch.Tensor) -> torch.Tensor | None:
        """(n, 4) boxes in [0, 1] (padded square) of the group ``<box>..</box>`` closed at ``close``, or None.

        A group of location tokens only is read from their bins directly (the tiny recipe's every box; decoding
        its text costs more than the rest of this hook); any other group is parsed from its text."""
        if open_at < 0:
            return None
        span = bins[row, open_at + 1 : close]
        if len(span) and len(span) % 4 == 0 and bool((span >= 0).all()):
            return (span.view(-1, 4).float() / LOC_BINS).clamp(0.0, 1.0)
        found = self._boxes(self._ids[row], open_at, close)
        return torch.tensor(found, dtype=torch.float32).reshape(-1, 4) if found else None

    def _boxes(self, ids: torch.Tensor, open_at: int, close: int) -> list[tuple[float, ...]]:
        """Boxes in [0, 1] (padded square) parsed from the text of ``ids[open_at : close + 1]``, the group opened by
        the ``<box>`` at ``open_at`` and closed by the ``</box>`` at ``close``."""
        groups = find_box_groups(self.tokenizer.decode(ids[open_at : close + 1].tolist()))
        if not groups or not groups[-1].tagged:  # plain [[x, ..]] groups are normalized to the image, not the square
            return []
        scale = LOC_BINS if groups[-1].binned else BOX_GRID
        return [tuple(min(max(v / scale, 0.0), 1.0) for v in quad) for quad in groups[-1].values]


def attach_box_features(model, tokenizer, enabled: bool, span: int = 0) -> BoxFeatures | None:
    """Hooks on ``model`` when ``enabled`` (the recipe's ``data.box_features`` / the checkpoint's meta)."""
    return BoxFeatures(model, tokenizer, span) if enabled else None
