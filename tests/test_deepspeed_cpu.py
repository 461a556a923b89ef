"""DeepSpeed ZeRO-2/3 on CPU: 2 ranks (gloo) launched with the shipped accelerate configs, trained, saved,
reloaded in one process; plus the "no rank without an image" guarantee that keeps ZeRO-3 from hanging.

The launches take ~15-25 s each on 2 cores. DeepSpeed JIT-compiles its CPU shared-memory comm op once per
machine (~100 s, cached in ~/.cache/torch_extensions); the fixture does that before the timed launches.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides, write_dataset
from launch_util import stop_launch
from PIL import Image
from safetensors.torch import load_file

from pancapchain.config import TinyModelConfig, active_stages, load_recipe
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import SkipReport
from pancapchain.data.prompts import load_prompts
from pancapchain.model.checkpoint import load_checkpoint
from pancapchain.model.tiny import build_processor, build_tokenizer
from pancapchain.train.collator import PancapCollator
from pancapchain.train.dataset import build_stage_dataset, collect_stage_examples, image_problem
from pancapchain.train.trainer import token_losses

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _launch(log: Path, accelerate_config: str, overrides: list[str]) -> tuple[int | None, str, float]:
    """``accelerate launch --num_processes 2 train.py`` with a hard timeout; returns (rc or None, log, seconds).

    The recipe is the defaults plus ``overrides`` (a one-line YAML next to the log), not a shipped recipe.
    """
    recipe = log.with_suffix(".recipe.yaml")
    recipe.write_text("model: {base: tiny}\n")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch",
           "--config_file", str(REPO / "recipes" / "accelerate" / accelerate_config),
           "--num_processes", "2", "--main_process_port", str(_free_port()),
           str(REPO / "train.py"), "--recipe", str(recipe), *overrides]
    started = time.time()
    with open(log, "w") as sink:
        # cwd=REPO: the accelerate configs name recipes/deepspeed/*.json relative to the repository root
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                stop_launch(proc)
    return rc, log.read_text(errors="replace"), time.time() - started


def _warm_deepspeed_cpu_op() -> None:
    code = ("from deepspeed.accelerator import get_accelerator\n"
            "b = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
            "b is None or b.load()\n")
    subprocess.run([sys.executable, "-c", code], env=_env(), timeout=600, check=True, capture_output=True)


def _overrides(data: Path, out: Path, **extra: str) -> list[str]:
    values = {"train.per_device_batch_size": "2", "train.max_steps": "2", "data.val": str(data),
              "train.eval_batch_size": "8", **extra}
    return tiny_overrides(data, out, **values)


@pytest.fixture(scope="module")
def ds_runs(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("deepspeed")
    data = write_dataset(root / "data", n=4)
    _warm_deepspeed_cpu_op()
    outs = {}
    for stage in (2, 3):
        out = root / f"zero{stage}"
        rc, log, seconds = _launch(root / f"zero{stage}.log", f"multi_gpu_zero{stage}.yaml", _overrides(data, out))
        assert rc == 0, f"ZeRO-{stage} launch rc={rc} after {seconds:.0f}s:\n{log[-4000:]}"
        outs[stage] = out
    return outs


def _ds_state(out: Path) -> dict:
    # ZeRO-2: mp_rank_00_model_states.pt; ZeRO-3: one zero_pp_rank_<r>_mp_rank_00_model_states.pt per rank
    shard = sorted((out / "checkpoint-2" / "global_step2").glob("*mp_rank_00_model_states.pt"))[0]
    return torch.load(shard, map_location="cpu", weights_only=False)


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_train_with_auto_values_resolved(ds_runs, stage):
    out = ds_runs[stage]
    state = _ds_state(out)
    cfg = state["ds_config"]
    assert state["dp_world_size"] == 2 and cfg["zero_optimization"]["stage"] == stage
    # "auto" filled by the Trainer from the recipe: 2 ranks x 2 per device x 1 accumulation
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (
        4, 2, 1)
    assert cfg["gradient_clipping"] == 1.0 and not cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 32 * 32  # hidden_size^2
    for rank in (0, 1):
        assert (out / "checkpoint-2" / f"rng_state_{rank}.pth").is_file()
        assert (out / "checkpoint-2" / "global_step2" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_epoch"] == 0.5  # 16 rows, 2 steps x 4 rows: both ranks consumed distinct rows
    assert metrics["eval_loss_end"] < metrics["eval_loss_start"]


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_saves_a_gathered_adapter_with_zero2_shapes(ds_runs):
    zero2 = load_file(ds_runs[2] / "adapter_model.safetensors")
    zero3 = load_file(ds_runs[3] / "adapter_model.safetensors")
    assert zero3.keys() == zero2.keys()
    assert {k: v.shape for k, v in zero3.items()} == {k: v.shape for k, v in zero2.items()}
    assert all(v.numel() > 0 for v in zero3.values())
    lora_a = [v for k, v in zero3.items() if "lora_A" in k]
    assert lora_a and all(v.shape[0] == 4 for v in lora_a)  # rank r=4
    assert any("multi_modal_projector" in k for k in zero3)
    assert all(float(v.norm()) > 0 for k, v in zero3.items() if "lora_B" in k)  # trained, not the zero init


def _eval_loss_in_one_process(checkpoint: Path, eval_batch: int = 8) -> float:
    """The Trainer's eval loss (per-batch token mean, averaged over rows), recomputed from the saved folder."""
    loaded = load_checkpoint(checkpoint)
    cfg = load_recipe(checkpoint / "recipe.yaml")
    prompts = load_prompts(cfg.data.prompt_version)
    pairs, report = collect_stage_examples(cfg.data.val, None, prompts, BoxCodec(cfg.data.box_format),
                                           stages=active_stages(cfg), discover_ratio=tuple(cfg.data.discover_ratio),
                                           seed=cfg.train.seed)
    rows = build_stage_dataset(pairs, loaded.processor, prompts.system, cfg.data.max_length, report)
    collate = PancapCollator(loaded.processor, prompts.system, cfg.data.stages)
    total, count = 0.0, 0
    for start in range(0, len(rows), eval_batch):
        batch = collate([rows[i] for i in range(start, min(start + eval_batch, len(rows)))])
        with torch.no_grad():
            logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  pixel_values=batch["pixel_values"]).logits
        losses, mask = token_losses(logits, batch["labels"])
        batch_loss = (losses * batch["loss_weights"][:, None] * mask).sum() / mask.sum()
        total += float(batch_loss) * len(batch["sample_ids"])
        count += len(batch["sample_ids"])
    return total / count


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_single_process_reload_reproduces_the_eval_loss(ds_runs, stage):
    out = ds_runs[stage]
    expected = json.loads((out / "metrics.json").read_text())["eval_loss_end"]
    assert _eval_loss_in_one_process(out) == pytest.approx(expected, abs=1e-4)


def _png_that_verifies_but_does_not_decode(path: Path) -> None:
    """Valid chunk structure and CRCs (PIL's verify() passes), garbage instead of zlib data in IDAT."""
    Image.new("RGB", (48, 32), (10, 20, 30)).save(path)
    data, out, pos = path.read_bytes(), bytearray(path.read_bytes()[:8]), 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            payload = b"\x00not-zlib-data" * 4
        out += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        pos += 12 + length
    path.write_bytes(bytes(out))


@pytest.mark.multiproc
@pytest.mark.slow
def test_a_rank_left_without_any_image_fails_fast_under_zero3_instead_of_hanging(tmp_path):
    data = write_dataset(tmp_path / "data", n=4)
    _png_that_verifies_but_does_not_decode(tmp_path / "data" / "images" / "s1.png")
    assert image_problem(tmp_path / "data" / "images" / "s1.png") is None  # passes the pre-flight check
    overrides = tiny_overrides(data, tmp_path / "out", **{"train.per_device_batch_size": "1", "train.max_steps": "8",
                                                          "data.val": '""'})
    rc, log, seconds = _launch(tmp_path / "launch.log", "multi_gpu_zero3.yaml", overrides)
    # one rank's batch has no decodable image: it stops with the record named, torchrun ends the other rank
    assert rc not in (0, None), f"rc={rc} after {seconds:.0f}s:\n{log[-3000:]}"
    assert "no decodable image in batch (s1/" in log
    assert seconds < LAUNCH_TIMEOUT


def _collator_fixture(tmp_path):
    texts = ["Please localize all entities in this image.", "red square <box>[[1, 2, 3, 4]]</box>"] * 10
    processor = build_processor(build_tokenizer(texts, vocab_size=350), TinyModelConfig(image_size=32, patch_size=8))
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    _png_that_verifies_but_does_not_decode(bad)

    def row(name, image):
        return {"sample_id": name, "stage": "localize", "image": str(image), "width": 40, "height": 30,
                "prompt": "Please localize all entities in this image.", "target": "red square", "length": 0}

    return PancapCollator(processor), row, good, bad


def test_every_collated_row_carries_its_image_tokens_and_pixels(tmp_path):
    collate, row, good, bad = _collator_fixture(tmp_path)
    batch = collate([row("a", good), row("b", bad), row("c", good)])
    image_id = collate.tokenizer.convert_tokens_to_ids("<image>")
    assert batch["sample_ids"] == ["a/localize", "c/localize"]  # the undecodable row is dropped, not text-only
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 2
    assert ((batch["input_ids"] == image_id).sum(dim=1) == 16).all()  # (32/8)^2 image tokens in every row
    with pytest.raises(RuntimeError, match=r"no decodable image in batch \(b/localize\)"):
        collate([row("b", bad)])  # never a batch without an image: the vision tower runs on every rank


def test_a_record_without_an_image_never_becomes_a_training_row(tmp_path):
    path = write_dataset(tmp_path / "data", n=2)
    record = json.loads(path.read_text().splitlines()[0])
    lines = path.read_text().splitlines() + [json.dumps({**{k: v for k, v in record.items() if k != "image"},
                                                         "id": "textonly"})]
    path.write_text("\n".join(lines) + "\n")
    prompts = load_prompts("v1")
    pairs, report = collect_stage_examples(path, None, prompts, BoxCodec("asmv2"))
    assert {ex.sample_id for ex, *_ in pairs} == {"s0", "s1"}
    assert all(image.is_file() for _, image, *_ in pairs)
    assert any("textonly" in record for record, _ in report.skipped)
    assert isinstance(report, SkipReport)


def test_cpu_multiprocess_launch_uses_gloo_and_rejects_the_recipe_deepspeed_path(monkeypatch, tmp_path):
    from pancapchain.config import ConfigError
    from pancapchain.train.run import _cpu_distributed_backend, training_arguments

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _cpu_distributed_backend() is None  # single process: no process group at all
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _cpu_distributed_backend() == "gloo"  # else accelerate counts 1 process under DeepSpeed on CPU
    cfg = load_recipe(None, [f"train.deepspeed={REPO / 'recipes' / 'deepspeed' / 'zero2.json'}",
                             f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="through the accelerate config"):
        training_arguments(cfg, has_eval=False)


def test_shipped_accelerate_configs_load_and_point_at_existing_deepspeed_jsons():
    from accelerate.commands.config.config_args import load_config_from_file

    stages = {}
    for path in sorted((REPO / "recipes" / "accelerate").glob("*.yaml")):
        cfg = load_config_from_file(str(path))
        ds_file = cfg.deepspeed_config.get("deepspeed_config_file")
        if ds_file:
            stages[path.stem] = json.loads((REPO / ds_file).read_text())["zero_optimization"]["stage"]
        else:
            assert str(cfg.distributed_type) == "DistributedType.NO" and cfg.num_processes == 1
    assert stages == {"multi_gpu_zero2": 2, "multi_gpu_zero3": 3, "multi_node_zero2": 2}
    zero3 = json.loads((REPO / "recipes" / "deepspeed" / "zero3.json").read_text())
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
