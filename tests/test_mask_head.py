"""Mask head: shapes, the dot-product logits, the zero-entity guard, save/load, overfit, SAM back-end."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from pancapchain.mask import (
    MASK_HEAD_CONFIG,
    MASK_HEAD_WEIGHTS,
    MaskHead,
    MaskHeadConfig,
    MaskHeadError,
    dice_loss,
    load_mask_head,
    sam_head_config,
    save_mask_head,
    sigmoid_bce_loss,
)

D_LLM, CV, GRID, DIM = 32, 16, 4, 8
TINY_SAM = {
    "vision_config": {
        "hidden_size": 32,
        "output_channels": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": 16,
        "mlp_dim": 64,
    },
    "prompt_encoder_config": {"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 8},
    "mask_decoder_config": {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "mlp_dim": 64,
        "iou_head_hidden_dim": 32,
    },
    "initializer_range": 0.2,  # the default 0.02 gives ~1e-4 logits, too small to compare meaningfully
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def light_head(seed: int = 0, **overrides) -> MaskHead:
    torch.manual_seed(seed)
    cfg = {"hidden_size": D_LLM, "vision_size": CV, "grid": GRID, "dim": DIM, "upsample": 2, **overrides}
    return MaskHead(MaskHeadConfig(**cfg))


def test_config_validates_and_gives_the_mask_side():
    assert MaskHeadConfig(8, 8, grid=6, upsample=3).mask_side == 48
    with pytest.raises(ValueError, match="backend"):
        MaskHeadConfig(8, 8, 4, backend="maskformer")
    with pytest.raises(ValueError, match="sam_path"):
        MaskHeadConfig(8, 8, 4, backend="sam")
    with pytest.raises(ValueError, match="grid"):
        MaskHeadConfig(8, 8, 0)


def test_pixel_features_and_queries_shapes():
    head = light_head()
    side = GRID * 4
    assert head.pixel_features(torch.randn(2, GRID * GRID, CV)).shape == (2, DIM, side, side)
    assert head.queries(torch.randn(5, D_LLM)).shape == (5, DIM)
    assert head.queries(torch.randn(0, D_LLM)).shape == (0, DIM)
    with pytest.raises(ValueError, match="grid\\*grid"):
        head.pixel_features(torch.randn(2, GRID * GRID + 1, CV))  # CLS token left in
    with pytest.raises(ValueError, match="entity states"):
        head.queries(torch.randn(5, D_LLM + 1))


def test_logits_are_the_dot_product_of_queries_and_pixel_features():
    head = light_head()
    patches, states = torch.randn(2, GRID * GRID, CV), [torch.randn(3, D_LLM), torch.randn(2, D_LLM)]
    logits = head(patches, states)
    feats = head.pixel_features(patches)
    for b in range(2):
        q = head.queries(states[b])
        for n in range(q.shape[0]):
            expected = (q[n][:, None, None] * feats[b]).sum(0)
            torch.testing.assert_close(logits[b][n], expected, rtol=1e-5, atol=1e-5)


def test_bf16_states_are_cast_to_the_head_dtype():
    head = light_head()
    out = head(torch.randn(1, GRID * GRID, CV).bfloat16(), [torch.randn(2, D_LLM).bfloat16()])
    assert out[0].dtype == torch.float32 and out[0].shape == (2, GRID * 4, GRID * 4)


def test_zero_entity_image_gives_empty_logits_and_backward_works():
    head = light_head()
    side = GRID * 4
    logits = head(torch.randn(2, GRID * GRID, CV), [torch.randn(3, D_LLM), torch.zeros(0, D_LLM)])
    assert [tuple(x.shape) for x in logits] == [(3, side, side), (0, side, side)]
    assert logits[1].requires_grad
    targets = (torch.rand(3, side, side) > 0.5).float()
    loss = sigmoid_bce_loss(logits[0], targets) + sigmoid_bce_loss(logits[1], torch.zeros(0, side, side))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_batch_without_any_entity_still_touches_every_parameter():
    head = light_head(word_proj=True)
    logits = head(torch.randn(2, GRID * GRID, CV), [torch.zeros(0, D_LLM), torch.zeros(0, D_LLM)])
    loss = sum(dice_loss(x, torch.zeros_like(x)) for x in logits)
    assert float(loss.detach()) == 0.0
    loss.backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None for g in grads)  # DDP/ZeRO see every parameter used
    assert all(float(g.abs().sum()) == 0.0 for g in grads)


def test_forward_checks_the_batch():
    head = light_head()
    with pytest.raises(ValueError, match="2 images"):
        head(torch.randn(2, GRID * GRID, CV), [torch.randn(1, D_LLM)])
    with pytest.raises(ValueError, match="image 1"):
        head(torch.randn(2, GRID * GRID, CV), [torch.randn(1, D_LLM), torch.randn(1, 3)])


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    head = light_head(seed=3, word_proj=True).eval()
    patches, states = torch.randn(2, GRID * GRID, CV), [torch.randn(3, D_LLM), torch.randn(0, D_LLM)]
    save_mask_head(head, tmp_path)
    assert json.loads((tmp_path / MASK_HEAD_CONFIG).read_text())["dim"] == DIM
    loaded = load_mask_head(tmp_path)
    assert loaded is not None and loaded.cfg == head.cfg and not loaded.training
    with torch.no_grad():
        for a, b in zip(head(patches, states), loaded(patches, states)):
            assert torch.equal(a, b)
        words = torch.randn(4, D_LLM)
        assert torch.equal(head.word_embeddings(words), loaded.word_embeddings(words))


def test_load_mask_head_none_partial_and_mismatch(tmp_path):
    assert load_mask_head(tmp_path) is None
    save_mask_head(light_head(), tmp_path)
    (tmp_path / MASK_HEAD_CONFIG).unlink()
    with pytest.raises(MaskHeadError, match="partial"):
        load_mask_head(tmp_path)
    save_mask_head(light_head(), tmp_path)
    raw = json.loads((tmp_path / MASK_HEAD_CONFIG).read_text())
    (tmp_path / MASK_HEAD_CONFIG).write_text(json.dumps({**raw, "dim": DIM * 2}))
    with pytest.raises(MaskHeadError, match="does not fit"):
        load_mask_head(tmp_path)


def test_light_head_overfits_three_masks():
    """200 Adam steps on fixed random patch features reach IoU > 0.9 on 3 fixed shapes."""
    head = light_head(seed=0, grid=8, dim=32)
    side = head.cfg.mask_side
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    targets = torch.stack(
        [
            (yy - 10) ** 2 + (xx - 12) ** 2 <= 49,  # disc
            (yy >= 18) & (yy < 30) & (xx >= 3) & (xx < 14),  # rectangle
            (xx >= 18) & (yy >= xx - 14) & (yy < 28),  # triangle
        ]
    ).float()
    patches, states = torch.randn(1, 64, CV), torch.randn(3, D_LLM)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(200):
        logits = head(patches, [states])[0]
        loss = sigmoid_bce_loss(logits, targets) + dice_loss(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert time.perf_counter() - start < 10.0
    with torch.no_grad():
        pred = head(patches, [states])[0] > 0
    ious = [
        float((pred[i] & targets[i].bool()).sum() / (pred[i] | targets[i].bool()).sum()) for i in range(3)
    ]
    assert min(ious) > 0.9, ious


def rectangles_in_pixels(n: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 3, 2*side, 2*side): a bright rectangle at a random place on a dark ground, and its mask on
    the head's (side x side) grid, (n, side, side)."""
    gen = torch.Generator().manual_seed(seed)
    images, masks = torch.full((n, 3, 2 * side, 2 * side), -1.0), torch.zeros(n, side, side)
    for i in range(n):
        x0, y0 = torch.randint(0, side - 4, (2,), generator=gen).tolist()
        w, h = torch.randint(3, side - max(x0, y0), (2,), generator=gen).tolist()
        images[i, :, 2 * y0 : 2 * (y0 + h), 2 * x0 : 2 * (x0 + w)] = 1.0
        masks[i, y0 : y0 + h, x0 : x0 + w] = 1.0
    return images, masks


@pytest.mark.parametrize("skip", [0, 4])
def test_pixel_skip_segments_what_only_the_pixels_show(skip):
    """The patch features and the query are the same for every image; only the pixels say where the rectangle
    is. With ``pixel_skip`` the head learns to segment it on held-out images; without it, it cannot."""
    head = light_head(seed=0, pixel_skip=skip)
    side = head.cfg.mask_side
    train_images, train_masks = rectangles_in_pixels(16, side, seed=0)
    test_images, test_masks = rectangles_in_pixels(8, side, seed=1)
    patches, query = torch.zeros(16, GRID * GRID, CV), [torch.ones(1, D_LLM)] * 16
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        logits = torch.cat(head(patches, query, pixels=train_images if skip else None))
        loss = sigmoid_bce_loss(logits, train_masks) + dice_loss(logits, train_masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = torch.cat(head(patches[:8], query[:8], pixels=test_images if skip else None)) > 0
    target = test_masks.bool()
    iou = float(((pred & target).sum((1, 2)) / (pred | target).sum((1, 2)).clamp(min=1)).mean())
    if skip:
        assert iou > 0.9, iou
    else:
        assert iou < 0.5, iou


def test_pixel_skip_needs_pixels_and_round_trips(tmp_path):
    head = light_head(seed=4, pixel_skip=4).eval()
    patches, states = torch.randn(2, GRID * GRID, CV), [torch.randn(2, D_LLM), torch.randn(1, D_LLM)]
    with pytest.raises(ValueError, match="pixel_skip"):
        head(patches, states)
    pixels = torch.randn(2, 3, 32, 32)
    save_mask_head(head, tmp_path)
    assert json.loads((tmp_path / MASK_HEAD_CONFIG).read_text())["pixel_skip"] == 4
    loaded = load_mask_head(tmp_path)
    with torch.no_grad():
        for a, b in zip(head(patches, states, pixels=pixels), loaded(patches, states, pixels=pixels)):
            assert torch.equal(a, b)
        moved = head(patches, states, pixels=pixels.flip(-1))
    assert not torch.equal(moved[0], head(patches, states, pixels=pixels)[0])  # the pixels are read
    with pytest.raises(ValueError, match="pixel_skip"):
        MaskHeadConfig(8, 8, 4, backend="sam", sam_path="x", pixel_skip=4)


# ---------------------------------------------------------------------------------------------- SAM back-end


@pytest.fixture(scope="module")
def tiny_sam_path(tmp_path_factory):
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_sam")
    SamModel(SamConfig(**TINY_SAM)).save_pretrained(str(path))
    return str(path)


def sam_head(path: str, seed: int = 0) -> MaskHead:
    torch.manual_seed(seed)
    return MaskHead(sam_head_config(path, hidden_size=D_LLM))


def test_sam_config_is_read_from_the_checkpoint(tiny_sam_path):
    cfg = sam_head_config(tiny_sam_path, hidden_size=D_LLM)
    assert (cfg.dim, cfg.grid, cfg.upsample, cfg.mask_side, cfg.backend) == (32, 8, 2, 32, "sam")
    with pytest.raises(MaskHeadError, match="sam_head_config"):
        MaskHead(MaskHeadConfig(D_LLM, 1, grid=8, dim=16, backend="sam", sam_path=tiny_sam_path))
    with pytest.raises(MaskHeadError, match="config.json"):
        MaskHead(MaskHeadConfig(D_LLM, 1, grid=8, dim=32, backend="sam", sam_path=tiny_sam_path + "-missing"))


def test_sam_backend_decodes_queries_as_sparse_prompts(tiny_sam_path):
    head = sam_head(tiny_sam_path)
    pixels, states = torch.randn(2, 3, 64, 64), [torch.randn(3, D_LLM), torch.zeros(0, D_LLM)]
    feats, logits = head.forward_features(pixels, states)
    assert feats.shape == (2, 32, 32, 32)
    assert [tuple(x.shape) for x in logits] == [(3, 32, 32), (0, 32, 32)]
    sam = head.sam.model
    with torch.no_grad():  # reference: SamModel's own decoder called with the queries as sparse prompts
        emb = sam.get_image_embeddings(pixels[:1])
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 8, 8)
        ref, _ = sam.mask_decoder(
            image_embeddings=emb,
            image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=head.queries(states[0])[None, :, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    assert ref.abs().mean() > 0.1
    torch.testing.assert_close(logits[0].detach(), ref[0, :, 0], rtol=1e-5, atol=1e-6)


def test_sam_backend_trains_decoder_and_queries_only(tiny_sam_path):
    head = sam_head(tiny_sam_path).train()
    assert not head.sam.model.vision_encoder.training
    logits = head(torch.randn(2, 3, 64, 64), [torch.randn(2, D_LLM), torch.zeros(0, D_LLM)])
    loss = sigmoid_bce_loss(logits[0], torch.ones(2, 32, 32)) + dice_loss(logits[1], torch.zeros(0, 32, 32))
    loss.backward()
    assert head.query_mlp[0].weight.grad.abs().sum() > 0
    assert head.sam.model.mask_decoder.upscale_conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in head.sam.model.vision_encoder.parameters())
    assert all(not p.requires_grad for p in head.sam.model.prompt_encoder.parameters())


def test_sam_head_save_load_round_trip(tiny_sam_path, tmp_path):
    head = sam_head(tiny_sam_path, seed=5).eval()
    with torch.no_grad():
        head.sam.model.mask_decoder.output_hypernetworks_mlps[0].proj_out.weight.mul_(
            2.0
        )  # a "trained" decoder differs from the SAM file
    save_mask_head(head, tmp_path)
    keys = load_file(str(tmp_path / MASK_HEAD_WEIGHTS)).keys()
    assert any(k.startswith("sam.model.mask_decoder.") for k in keys)
    assert not any(k.startswith("sam.model.vision_encoder.") for k in keys)  # frozen: reloaded from sam_path
    loaded = load_mask_head(tmp_path, sam_path=tiny_sam_path)
    pixels, states = torch.randn(1, 3, 64, 64), [torch.randn(2, D_LLM)]
    with torch.no_grad():
        assert torch.equal(head(pixels, states)[0], loaded(pixels, states)[0])
