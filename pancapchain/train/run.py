"""Training entry point: ``accelerate launch train.py --recipe RECIPE.yaml [key=value ...]``.

Reads the recipe, validates the data (every skip reported by name), builds base + LoRA, evaluates at the start,
trains with ``PancapTrainer`` (resuming from the latest checkpoint when one exists), evaluates at the end, and
writes ``metrics.json``, ``data_report.json`` and the final checkpoint into ``train.output_dir``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from pancapchain.config import (
    ConfigError,
    RecipeConfig,
    active_stages,
    add_recipe_arguments,
    describe_recipe,
    load_recipe,
    save_recipe,
)
from pancapchain.constants import LOC_TOKENS
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.io import SkipReport, atomic_write_json, load_samples
from pancapchain.data.prompts import recipe_prompts
from pancapchain.errors import ArgumentParser, TrainingInterrupted, debug_requested, run_guarded
from pancapchain.infer.references import REFERENCE_TAGS_KEY, entity_tags
from pancapchain.mask.attach import attach_mask_head
from pancapchain.mask.supervision import MaskLoss
from pancapchain.model.box_features import attach_box_features
from pancapchain.model.build import build_trainable, projector_parameter_names, runtime_choices, select_dtype
from pancapchain.model.checkpoint import CheckpointWriter, checkpoint_meta
from pancapchain.train.budget import WallClockBudget
from pancapchain.train.collator import PancapCollator
from pancapchain.train.dataset import build_stage_dataset, collect_stage_examples
from pancapchain.train.interrupt import StopOnInterrupt
from pancapchain.train.trainer import NonFiniteLossError, PancapTrainer

log = logging.getLogger("pancapchain.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    return parser.parse_args(argv)


def training_arguments(cfg: RecipeConfig, has_eval: bool) -> TrainingArguments:
    t = cfg.train
    dtype = select_dtype(cfg.model.precision)
    if t.deepspeed and _cpu_distributed_backend():
        raise ConfigError(
            "invalid recipe:\n  - train.deepspeed on a multi-process launch without CUDA: accelerate would count "
            "1 process; pass the DeepSpeed JSON through the accelerate config instead (accelerate launch "
            "--config_file recipes/accelerate/multi_gpu_zero2.yaml ... train.deepspeed='')"
        )
    return TrainingArguments(
        output_dir=t.output_dir,
        num_train_epochs=t.epochs,
        # under a wall-clock budget the epochs bound the steps; the budget callback stops the run
        max_steps=t.max_steps if t.max_seconds <= 0 or t.max_steps > 0 else -1,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a fraction of the total steps (transformers 5)
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if (has_eval and t.eval_steps > 0) else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps > 0 else "epoch",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        prediction_loss_only=True,
        dataloader_num_workers=t.dataloader_workers,
        report_to=list(t.report_to),
        deepspeed=t.deepspeed or None,
        ddp_backend=_cpu_distributed_backend(),
        # without it accelerate treats a multi-process launch on CPU as one process: no DDP, every rank trained its
        # own copy of the model (parameters differed after 3 steps; tests/test_ddp_cpu.py)
        use_cpu=not torch.cuda.is_available(),
        # the mask head runs on the model's outputs, outside its forward: without a static graph DDP stops with
        # "Expected to mark a variable ready only once"; every parameter takes part in every step (the head's zero
        # anchor), which is what a static graph asks
        ddp_static_graph=True,
        disable_tqdm=False,
        save_only_model=False,
    )


def _cpu_distributed_backend() -> str | None:
    """``gloo`` for a multi-process launch without CUDA, else None (the launcher's default, e.g. nccl).

    Without an explicit backend, accelerate's state on a CPU-only host counts 1 process even under a 2-rank
    DeepSpeed launch, so DeepSpeed's batch-size check fails (train_batch_size 2 != 2 * 1 * 2).
    """
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return "gloo"


def _data(cfg: RecipeConfig, prompts, codec, path: str, max_samples: int = 0, rates=None, loaded=None):
    return collect_stage_examples(
        path,
        cfg.data.image_root or None,
        prompts,
        codec,
        stages=active_stages(cfg),
        discover_ratio=tuple(cfg.data.discover_ratio),
        seed=cfg.train.seed,
        strict=cfg.data.strict,
        max_samples=max_samples,
        mask_stages=list(cfg.mask.stages) if cfg.mask.enabled else (),
        item_order=cfg.data.item_order,
        label_answer=cfg.data.label_answer,
        caption_mentions=cfg.data.caption_mentions,
        rates=rates,
        loaded=loaded,
        chain_rows=cfg.data.chain_rows,
    )


@dataclass
class Run:
    """Everything a training run is made of (tests and other entry points reuse the pieces)."""

    cfg: RecipeConfig
    trainer: PancapTrainer
    processor: object
    train_ds: datasets.Dataset
    val_ds: datasets.Dataset | None
    reports: list[SkipReport]


def build_run(cfg: RecipeConfig) -> Run:
    """Validate data, build base + LoRA and the trainer; writes data_report.json and recipe.yaml."""
    if not cfg.data.train:
        raise ConfigError("invalid recipe:\n  - data.train is empty: give a JSONL of panoptic samples")
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.train.seed)
    prompts = recipe_prompts(cfg.data.prompt_version, cfg.data.system_prompt)
    codec = BoxCodec(cfg.data.box_format)
    train_samples = load_samples(cfg.data.train, strict=cfg.data.strict)  # read once: examples + checkpoint tags
    train_pairs, train_report = _data(cfg, prompts, codec, cfg.data.train, rates=cfg.data.stage_rates,
                                      loaded=train_samples)
    val_pairs, val_report = ([], None)
    if cfg.data.val:
        val_pairs, val_report = _data(cfg, prompts, codec, cfg.data.val, cfg.data.max_val_samples)
    texts = [prompts.system] + [ex.prompt + " " + ex.target for ex, *_ in train_pairs]
    tiny_base_dir = out / "tiny_base" if cfg.model.base == "tiny" else None
    # Every rank builds the same seeded tiny base; only global rank 0 (the Trainer's saving rank) writes it.
    # The model is built before TrainingArguments on purpose: a ZeRO-3 config makes transformers construct
    # models under zero.Init from then on, which partitions (and breaks the init of) the tiny base.
    save_base = tiny_base_dir if int(os.environ.get("RANK", "0")) == 0 else None
    model, processor = build_trainable(cfg, texts, save_base_to=save_base)
    head = attach_mask_head(model, cfg.mask) if cfg.mask.enabled else None
    attach_box_features(model, processor.tokenizer, cfg.data.box_features, cfg.data.box_feature_span)
    strict, max_len, system = cfg.data.strict, cfg.data.max_length, prompts.system
    train_ds = build_stage_dataset(train_pairs, processor, system, max_len, train_report, strict)
    val_ds = None
    if val_report is not None:
        val_ds = build_stage_dataset(val_pairs, processor, system, max_len, val_report, strict)
    reports = [r for r in (train_report, val_report) if r is not None]
    for report in reports:
        (log.warning if report.n_skipped else log.info)(report.summary())
    atomic_write_json(out / "data_report.json", {"reports": [r.to_dict() for r in reports]})
    save_recipe(cfg, out / "recipe.yaml")
    base_ref = "tiny" if tiny_base_dir is not None else str(Path(cfg.model.base).resolve())
    meta = {**checkpoint_meta(cfg, prompts.version, system, base_ref), **runtime_choices(cfg)}
    if cfg.data.caption_mentions == "box_first":  # the known tags of the chain's NamedReferences decoding rule
        meta[REFERENCE_TAGS_KEY] = entity_tags(train_samples[0])
    writer = CheckpointWriter(cfg, meta, tiny_base_dir)
    trainer = PancapTrainer(
        model=model,
        args=training_arguments(cfg, val_ds is not None),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=PancapCollator(processor, system, cfg.data.stages, head.cfg.mask_side if head else 0),
        processing_class=processor,
        projector_lr=cfg.train.projector_lr,
        projector_param_names=projector_parameter_names(model),
        nonfinite_loss=cfg.train.nonfinite_loss,
        checkpoint_writer=writer,
        aux_losses=[MaskLoss(model, cfg.mask)] if head else [],
        time_budget=_time_budget(cfg),
        loc_token_ids=processor.tokenizer.convert_tokens_to_ids(list(LOC_TOKENS)) if cfg.data.box_format == "bins" else (),
        loc_label_sigma=cfg.train.loc_label_sigma,
    )
    return Run(cfg, trainer, processor, train_ds, val_ds, reports)


def _time_budget(cfg: RecipeConfig) -> WallClockBudget | None:
    t = cfg.train
    if t.max_seconds <= 0:
        return None
    log.info("wall-clock budget: %.0f s of training (time-based %s schedule)", t.max_seconds, t.scheduler)
    return WallClockBudget(t.max_seconds, t.warmup_ratio, t.scheduler)


def _budget_end(budget: WallClockBudget, cfg: RecipeConfig) -> dict:
    """The budget's end report; a warning when the epoch or step cap ended the run first (its LR not annealed)."""
    report = budget.end_report()
    if report["stopped_by"] != "wall_budget":
        log.warning("training ended at its epoch/step cap (train.epochs=%g, train.max_steps=%d) before the %.0f s "
                    "budget, with the learning rate still at %.0f%% of its peak: the time-based schedule did not "
                    "finish. Raise train.epochs so that train.max_seconds ends the run.", cfg.train.epochs,
                    cfg.train.max_steps, cfg.train.max_seconds, 100 * report["lr_factor_end"])
    return report


def run_training(cfg: RecipeConfig) -> dict:
    """Train per the recipe; returns the metrics also written to ``output_dir/metrics.json``."""
    run = build_run(cfg)
    trainer, out = run.trainer, Path(cfg.train.output_dir)
    metrics: dict = {"train_stage_rows": len(run.train_ds), "val_stage_rows": len(run.val_ds or [])}
    metrics.update(runtime_choices(cfg))  # attention backend, dtype, quantization actually used
    metrics["skipped_records"] = sum(r.n_skipped for r in run.reports)
    resume = _resume_point(cfg, out)
    # The start eval runs inside train() (eval_on_start): an evaluate() before train() would wrap the model in a
    # DeepSpeed inference engine, and train() would then never create the training engine.
    start_eval = run.val_ds is not None and resume is None
    trainer.args.eval_on_start = start_eval
    if resume is not None:
        print(f"resuming from {resume} (train.resume={cfg.train.resume}; train.resume=never starts over)", flush=True)
    started = time.time()
    stopper = StopOnInterrupt()
    trainer.add_callback(stopper)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stopper.restore()
    if stopper.requested:
        stop = TrainingInterrupted(
            f"training stopped by Ctrl-C after step {stopper.step} of {trainer.state.max_steps}; checkpoint "
            f"{out / f'checkpoint-{stopper.step}'} is complete: rerun the same command to resume from it")
        stop.quiet = not trainer.is_world_process_zero()  # one line per launch, from the saving rank
        raise stop
    if start_eval:
        metrics["eval_loss_start"] = next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    metrics.update({"train_" + k.removeprefix("train_"): v for k, v in result.metrics.items()})
    metrics["train_wall_seconds"] = round(time.time() - started, 1)
    if trainer.time_budget is not None:
        metrics.update(_budget_end(trainer.time_budget, cfg))
    if run.val_ds is not None:
        metrics["eval_loss_end"] = trainer.evaluate()["eval_loss"]
        if "eval_loss_start" in metrics:
            drop = 1.0 - metrics["eval_loss_end"] / metrics["eval_loss_start"]
            metrics["eval_loss_drop"] = round(drop, 4) if math.isfinite(drop) else None
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _resume_point(cfg: RecipeConfig, out: Path) -> str | None:
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        return get_last_checkpoint(str(out)) if out.is_dir() else None
    if not Path(mode).is_dir():
        raise ConfigError(f"invalid recipe:\n  - train.resume={mode!r} is not a checkpoint directory")
    return mode


def main(argv: list[str] | None = None, prog: str = "train.py", debug: bool = False) -> int:
    """Parse, pre-flight, train; user errors and Ctrl-C follow :mod:`pancapchain.errors` (exit 2 / 130)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv, debug_flag = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_parsed(parse_args(argv), prog, debug or debug_flag)


def run_parsed(args: argparse.Namespace, prog: str, debug: bool) -> int:
    """Run the command line of :func:`pancapchain.config.add_recipe_arguments` (train.py and pancapchain train)."""
    return run_guarded(lambda: _train(args.recipe, args.overrides, args.print_recipe), prog, debug)


def _train(recipe: str, overrides: list[str], print_only: bool = False) -> int:
    from pancapchain.cli import preflight

    cfg = load_recipe(preflight.recipe_file(recipe), overrides)
    if print_only:
        print(describe_recipe(cfg), end="")
        return 0
    preflight.training_paths(cfg)
    try:
        metrics = run_training(cfg)
    except NonFiniteLossError as err:  # the message names the step and the samples; no NaN weight was saved
        log.error("%s", err)
        return 3
    for key in ("eval_loss_start", "eval_loss_end", "eval_loss_drop", "train_wall_seconds"):
        if key in metrics:
            print(f"{key}: {metrics[key]}")
    return 0
