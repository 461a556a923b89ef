"""MaskFormer-style mask head: entity queries from the LLM dotted with per-pixel embeddings.

Notation: B images, Np = grid * grid vision patches of width Cv (CLS dropped), LLM width d, mask embedding
width D, mask side S = grid * 2**upsample, N_b entities in image b.

* Pixel branch (``backend="light"``): patch tokens ``(B, Np, Cv)`` -> grid ``(B, Cv, g, g)`` -> Conv1x1(Cv->D),
  GroupNorm, GELU -> ``upsample`` x [ConvTranspose2x2 stride 2, GroupNorm, GELU] -> Conv3x3(D->D) ->
  per-pixel embeddings ``(B, D, S, S)``. The final 3x3 mixes neighbouring patches, so masks are not
  blocky at patch borders.
* Query branch: the LLM hidden state of each entity ``(N, d)`` -> Linear(d, d), ReLU, Linear(d, D) ->
  mask embeddings ``(N, D)`` (LISA's ``text_hidden_fcs``).
* Word side of MECL (``word_proj=True``): Linear(d, D) of caption-token states -> ``(L, D)``.
* Logits: ``einsum("nd,dhw->nhw")`` of image b's queries with image b's pixel embeddings -> ``(N_b, S, S)``
  on the padded square the vision tower saw (see :mod:`pancapchain.mask.rle` for the frame).
* ``backend="sam"``: the first input is SAM ``pixel_values`` instead of patch tokens and the queries are
  decoded by SAM's mask decoder (:mod:`pancapchain.mask.sam_head`); D and grid come from the SAM config
  (use :func:`sam_head_config`) and ``upsample`` is 2.

Inputs of any float dtype are cast to the head's dtype (keep the head in float32 under bf16 training).
An image with N_b = 0 gets a ``(0, S, S)`` tensor carrying ``0.0 * sum(trainable params)``, so every
parameter takes part in the graph even for a batch without entities (DDP/ZeRO never see unused params).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pancapchain.data.io import atomic_write_json
from pancapchain.mask.sam_head import FROZEN_PREFIXES, SAM_UPSAMPLE, MaskHeadError, SamBackend, sam_geometry

BACKENDS = ("light", "sam")
MASK_HEAD_WEIGHTS = "mask_head.safetensors"
MASK_HEAD_CONFIG = "mask_head.json"
MASK_HEAD_FORMAT = "pancapchain-mask-head/1"


@dataclass
class MaskHeadConfig:
    """Geometry of a mask head; stored as ``mask_head.json`` beside its weights."""

    hidden_size: int  # LLM width d
    vision_size: int  # vision tower width Cv (unused by backend="sam")
    grid: int  # patch grid side (image_size // patch_size); SAM: its image-embedding side
    dim: int = 64  # mask embedding width D (256 for real models; SAM: its prompt width)
    upsample: int = 2  # number of x2 stages: mask side S = grid * 2**upsample (SAM: 2)
    backend: str = "light"  # "light" | "sam"
    sam_path: str = ""  # local SamModel checkpoint folder for backend="sam"
    word_proj: bool = False  # add Linear(d -> D) for MECL word embeddings (``MaskHead.word_embeddings``)
    box_prior: bool = False  # add a learned gain x (+1 inside / -1 outside the entity's box) to the logits
    pixel_skip: int = 0  # light: channels of a conv branch on the image pixels, joined before the last conv (0: off)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "vision_size", "grid", "dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MaskHeadConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.upsample, int) or self.upsample < 0:
            raise ValueError(f"MaskHeadConfig.upsample must be an int >= 0, got {self.upsample!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"MaskHeadConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.word_proj, bool):
            raise ValueError(f"MaskHeadConfig.word_proj must be true/false, got {self.word_proj!r}")
        if not isinstance(self.pixel_skip, int) or self.pixel_skip < 0:
            raise ValueError(f"MaskHeadConfig.pixel_skip must be an int >= 0, got {self.pixel_skip!r}")
        if self.backend == "sam" and self.pixel_skip:
            raise ValueError("MaskHeadConfig.pixel_skip is for backend='light' (SAM reads the pixels itself)")
        if self.backend == "sam" and not self.sam_path:
            raise ValueError("MaskHeadConfig.backend='sam' needs sam_path (a local SamModel folder)")

    @property
    def mask_side(self) -> int:
        """Side S of the square mask logits."""
        return self.grid * 2**self.upsample

    @classmethod
    def from_dict(cls, raw: dict, where: str = "mask head config") -> MaskHeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - {"format"})
        if unknown:
            raise MaskHeadError(f"{where}: unknown keys {unknown}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as err:
            raise MaskHeadError(f"{where}: {err}") from None


def sam_head_config(
    sam_path: str, hidden_size: int, vision_size: int = 1, word_proj: bool = False
) -> MaskHeadConfig:
    """A ``backend="sam"`` config whose dim/grid/upsample match the SAM checkpoint at ``sam_path``."""
    dim, grid = sam_geometry(sam_path)
    return MaskHeadConfig(hidden_size, vision_size, grid, dim, SAM_UPSAMPLE, "sam", str(sam_path), word_proj)


def _group_count(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class PixelDecoder(nn.Module):
    """Patch-token grid ``(B, Cv, g, g)`` -> per-pixel embeddings ``(B, D, S, S)``, S = g * 2**upsample.

    ``skip`` > 0: the image the tower saw, ``(B, 3, H, W)`` (the processor's pixel_values), resampled to S x S,
    goes through two 3x3 convolutions of ``skip`` channels that are concatenated with the upsampled patch features
    before the last 3x3 convolution. Why: the patch tokens place an edge only to within a patch, while the shapes'
    edges are in the pixels (the skip connection of U-Net; SAM's and Mask2Former's decoders read high-resolution
    features the same way).
    """

    def __init__(self, vision_size: int, dim: int, upsample: int, skip: int = 0):
        super().__init__()
        groups = _group_count(dim)
        layers: list[nn.Module] = [nn.Conv2d(vision_size, dim, 1), nn.GroupNorm(groups, dim), nn.GELU()]
        for _ in range(upsample):
            layers += [nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.GroupNorm(groups, dim), nn.GELU()]
        self.skip: nn.Sequential | None = None
        if skip:
            self.layers = nn.Sequential(*layers)
            g = _group_count(skip)
            self.skip = nn.Sequential(nn.Conv2d(3, skip, 3, padding=1), nn.GroupNorm(g, skip), nn.GELU(),
                                      nn.Conv2d(skip, skip, 3, padding=1), nn.GroupNorm(g, skip), nn.GELU())
            self.out = nn.Conv2d(dim + skip, dim, 3, padding=1)
        else:  # one Sequential, as the heads saved before the skip branch existed
            layers.append(nn.Conv2d(dim, dim, 3, padding=1))
            self.layers = nn.Sequential(*layers)

    def forward(self, grid_features: Tensor, pixels: Tensor | None = None) -> Tensor:
        if self.skip is None:
            return self.layers(grid_features)
        if pixels is None:
            raise ValueError("this mask head reads the image pixels (pixel_skip): pass pixels (B, 3, H, W)")
        x = self.layers(grid_features)
        image = nn.functional.interpolate(pixels.to(x.dtype), size=x.shape[-2:], mode="area")
        return self.out(torch.cat([x, self.skip(image)], dim=1))


class MaskHead(nn.Module):
    """Entity queries x per-pixel embeddings -> one mask per entity (module docstring has the shapes)."""

    def __init__(self, cfg: MaskHeadConfig):
        super().__init__()
        self.cfg = cfg
        d, dim = cfg.hidden_size, cfg.dim
        self.query_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, dim))
        self.pixel_decoder: PixelDecoder | None = None
        self.sam: SamBackend | None = None
        self.word_proj = nn.Linear(d, dim) if cfg.word_proj else None
        # The entity's box is in the text the queries come from; a box prompt (as SAM takes one) lets the head
        # spend its capacity on the shape inside the box instead of re-deriving the box from digits.
        self.box_gain = nn.Parameter(torch.tensor(1.0)) if cfg.box_prior else None
        if cfg.backend == "light":
            self.pixel_decoder = PixelDecoder(cfg.vision_size, dim, cfg.upsample, cfg.pixel_skip)
        else:
            self.sam = SamBackend(cfg.sam_path)
            want = (self.sam.dim, self.sam.grid, SAM_UPSAMPLE)
            if (cfg.dim, cfg.grid, cfg.upsample) != want:
                raise MaskHeadError(
                    f"SAM at {cfg.sam_path} needs (dim, grid, upsample) = {want}, config has "
                    f"{(cfg.dim, cfg.grid, cfg.upsample)}; build the config with sam_head_config()"
                )

    @property
    def dtype(self) -> torch.dtype:
        return self.query_mlp[0].weight.dtype

    def _grid(self, patch_features: Tensor) -> Tensor:
        g, cv = self.cfg.grid, self.cfg.vision_size
        if patch_features.dim() != 3 or tuple(patch_features.shape[1:]) != (g * g, cv):
            raise ValueError(
                f"patch_features must be (B, {g * g}, {cv}) = (B, grid*grid, vision_size) without CLS, "
                f"got {tuple(patch_features.shape)}"
            )
        b = patch_features.shape[0]
        return patch_features.to(self.dtype).transpose(1, 2).reshape(b, cv, g, g)

    def pixel_features(self, patch_features: Tensor, pixels: Tensor | None = None) -> Tensor:
        """Light: patch tokens ``(B, Np, Cv)`` (and, with ``cfg.pixel_skip``, the tower's input ``pixels``
        ``(B, 3, H, W)``) -> ``(B, D, S, S)``. SAM: pixel_values -> upsampled image embeddings ``(B, D, S, S)``
        (what MECL pools over; SAM's own decoder features are per prompt)."""
        if self.sam is not None:
            return self.sam.pixel_features(self.sam.image_embeddings(patch_features))
        assert self.pixel_decoder is not None
        return self.pixel_decoder(self._grid(patch_features), pixels)

    def queries(self, entity_states: Tensor) -> Tensor:
        """LLM hidden states ``(N, d)`` -> mask embeddings ``(N, D)`` (N may be 0)."""
        if entity_states.dim() != 2 or entity_states.shape[1] != self.cfg.hidden_size:
            raise ValueError(
                f"entity states must be (N, {self.cfg.hidden_size}), got {tuple(entity_states.shape)}"
            )
        return self.query_mlp(entity_states.to(self.dtype))

    def word_embeddings(self, word_states: Tensor) -> Tensor:
        """MECL word side: LLM states of caption tokens ``(L, d)`` -> ``(L, D)`` (needs ``cfg.word_proj``).

        A projection separate from the query MLP, so the contrast is not the query compared with itself.
        When enabled, call it in every training step (on a ``(0, d)`` tensor if a batch has no caption
        words) so DDP/ZeRO see the projection used.
        """
        if self.word_proj is None:
            raise ValueError(
                "this mask head has no word projection; build it with MaskHeadConfig(word_proj=True)"
            )
        if word_states.dim() != 2 or word_states.shape[1] != self.cfg.hidden_size:
            raise ValueError(
                f"word states must be (L, {self.cfg.hidden_size}), got {tuple(word_states.shape)}"
            )
        return self.word_proj(word_states.to(self.dtype))

    def graph_anchor(self) -> Tensor:
        """``0.0 * sum of trainable parameters``: zero, but every trainable parameter is in its graph."""
        total = sum(
            (p.sum() for p in self.parameters() if p.requires_grad), torch.zeros((), dtype=self.dtype)
        )
        return total * 0.0

    def _split_queries(self, entity_states: list[Tensor], batch: int) -> list[Tensor]:
        if len(entity_states) != batch:
            raise ValueError(f"got {len(entity_states)} entity-state tensors for {batch} images")
        for b, states in enumerate(entity_states):
            if states.dim() != 2 or states.shape[1] != self.cfg.hidden_size:
                raise ValueError(
                    f"image {b}: entity states must be (N_b, {self.cfg.hidden_size}), got {tuple(states.shape)}"
                )
        counts = [int(s.shape[0]) for s in entity_states]
        if sum(counts) == 0:
            return [s.new_zeros((0, self.cfg.dim), dtype=self.dtype) for s in entity_states]
        return list(self.queries(torch.cat(entity_states)).split(counts))

    def forward_features(
        self, patch_features: Tensor, entity_states: list[Tensor], boxes: list[Tensor] | None = None,
        pixels: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Both outputs at once: pixel features ``(B, D, S, S)`` and per-image logits ``[(N_b, S, S)]``.

        ``boxes[b]`` ``(N_b, 4)``: the entities' xyxy boxes normalized on the padded square (used with
        ``cfg.box_prior``; ignored otherwise). ``pixels`` ``(B, 3, H, W)``: the images the tower saw (needed with
        ``cfg.pixel_skip``; ignored otherwise).
        """
        side = self.cfg.mask_side
        if self.sam is not None:
            embeddings = self.sam.image_embeddings(patch_features)
            feats = self.sam.pixel_features(embeddings)
        else:
            embeddings = feats = self.pixel_features(patch_features, pixels)
        queries = self._split_queries(entity_states, feats.shape[0])
        logits = []
        for b, q in enumerate(queries):
            if q.shape[0] == 0:
                logits.append(feats.new_zeros((0, side, side)) + self.graph_anchor())
            elif self.sam is not None:
                logits.append(self.sam.decode(embeddings[b : b + 1], q))
            else:
                logits.append(torch.einsum("nd,dhw->nhw", q, feats[b]))
        if self.box_gain is not None and boxes is not None:
            logits = [lg + self.box_gain * box_prior(bx.to(lg), side) if lg.shape[0] else lg
                      for lg, bx in zip(logits, boxes)]
        return feats, logits

    def forward(
        self, patch_features: Tensor, entity_states: list[Tensor], boxes: list[Tensor] | None = None,
        pixels: Tensor | None = None,
    ) -> list[Tensor]:
        """``entity_states[b]`` ``(N_b, d)`` -> list of B mask logits ``(N_b, S, S)``; N_b = 0 -> ``(0, S, S)``."""
        return self.forward_features(patch_features, entity_states, boxes, pixels)[1]

    def saved_state_dict(self) -> dict[str, Tensor]:
        """Weights that ``save_mask_head`` writes: everything except SAM's frozen parts (reloaded from sam_path)."""
        frozen = tuple(f"sam.model.{p}" for p in FROZEN_PREFIXES)
        return {
            k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith(frozen)
        }


def box_prior(boxes: Tensor, side: int) -> Tensor:
    """``(N, 4)`` xyxy boxes in [0, 1] -> ``(N, side, side)``: +1 where a pixel centre is inside the box, else -1."""
    centres = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / side
    inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])  # (N, side)
    inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).to(boxes.dtype) * 2 - 1


def save_mask_head(head: MaskHead, directory: str | Path) -> None:
    """Write ``mask_head.safetensors`` (weights) and ``mask_head.json`` (config + format), both atomically."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MASK_HEAD_WEIGHTS}.", dir=folder)
    os.close(fd)
    try:
        save_file(head.saved_state_dict(), tmp, metadata={"format": MASK_HEAD_FORMAT})
        os.replace(tmp, folder / MASK_HEAD_WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(folder / MASK_HEAD_CONFIG, {"format": MASK_HEAD_FORMAT, **asdict(head.cfg)})


def load_mask_head(directory: str | Path, sam_path: str | None = None) -> MaskHead | None:
    """The mask head saved in ``directory`` (float32, eval mode), or None when the folder has none.

    ``sam_path`` overrides the stored SAM location (e.g. the checkpoint moved to another machine).
    A half-present head (one of the two files) or weights that do not fit the config raise MaskHeadError.
    """
    folder = Path(directory)
    weights, config = folder / MASK_HEAD_WEIGHTS, folder / MASK_HEAD_CONFIG
    if not weights.is_file() and not config.is_file():
        return None
    if not (weights.is_file() and config.is_file()):
        missing = config.name if weights.is_file() else weights.name
        raise MaskHeadError(f"{folder} has a partial mask head: {missing} is missing")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MaskHeadError(f"{config} is not readable JSON: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != MASK_HEAD_FORMAT:
        raise MaskHeadError(
            f"{config}: expected format {MASK_HEAD_FORMAT!r}, got {raw.get('format') if isinstance(raw, dict) else raw!r}"
        )
    if sam_path is not None:
        raw = {**raw, "sam_path": sam_path}
    head = MaskHead(MaskHeadConfig.from_dict(raw, str(config)))
    _load_weights(head, weights)
    return head.eval()


def _load_weights(head: MaskHead, weights: Path) -> None:
    try:
        state = load_file(str(weights))
    except (OSError, ValueError) as err:
        raise MaskHeadError(f"{weights} is not a readable safetensors file: {err}") from None
    expected = set(head.saved_state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise MaskHeadError(
            f"{weights} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    try:
        head.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise MaskHeadError(f"{weights} does not fit its config: {err}") from None
