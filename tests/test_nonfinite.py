"""Non-finite loss / gradient norm: stop (default) naming the step and samples, or skip the step exactly."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_overrides, write_dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from pancapchain.config import load_recipe
from pancapchain.train.aux import FunctionLoss
from pancapchain.train.run import Run, build_run
from pancapchain.train.run import main as train_main
from pancapchain.train.trainer import NonFiniteLossError


def _run(tmp_path, mode: str, steps: int) -> Run:
    train = write_dataset(tmp_path / "data", n=2)  # 8 stage rows -> 2 steps per epoch at batch 4
    return build_run(load_recipe(None, tiny_overrides(train, tmp_path / "out", **{
        "train.max_steps": str(steps), "train.save_steps": "1", "train.warmup_ratio": "0.0",
        "train.nonfinite_loss": mode})))


class InjectAt(FunctionLoss):
    """An auxiliary loss that is NaN on the given (1-based) optimizer steps and 0 otherwise."""

    def __init__(self, trainer, steps: set[int]):
        super().__init__(self.inject)
        self.trainer, self.steps = trainer, steps

    def inject(self, outputs, batch) -> dict[str, torch.Tensor]:
        bad = self.trainer.state.global_step + 1 in self.steps
        return {"inject": torch.tensor(float("nan") if bad else 0.0)}


class NanGradient(torch.autograd.Function):
    """Adds 0 to the loss; its backward puts NaN into one parameter's gradient (an overflow in backward)."""

    @staticmethod
    def forward(ctx, param):
        ctx.shape = param.shape
        return param.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"))


class Snapshots(TrainerCallback):
    """Trainable tensors and Adam moments after each optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.params, self.moments = trainer, {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        model = self.trainer.model
        self.params[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        optimizer_state = self.trainer.optimizer.optimizer.state
        self.moments[state.global_step] = {
            n: optimizer_state[p]["exp_avg"].clone() for n, p in model.named_parameters() if p in optimizer_state}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _batch_ids(run: Run) -> list[list[str]]:
    seen: list[list[str]] = []
    compute = run.trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append(list(inputs["sample_ids"]))
        return compute(model, inputs, *args, **kwargs)

    run.trainer.compute_loss = recording
    return seen


def test_stop_names_step_and_samples_and_saves_nothing_after(tmp_path):
    run = _run(tmp_path, "stop", steps=3)
    run.trainer.aux_losses.append(InjectAt(run.trainer, {2}))
    snaps = Snapshots(run.trainer)
    run.trainer.add_callback(snaps)
    batches = _batch_ids(run)
    with pytest.raises(NonFiniteLossError) as err:
        run.trainer.train()
    message = str(err.value)
    assert "non-finite loss nan at step 2" in message and str(batches[1]) in message
    out = tmp_path / "out"
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    weights = {n: p for n, p in run.trainer.model.named_parameters() if p.requires_grad}
    assert _equal({n: p.detach() for n, p in weights.items()}, snaps.params[1])  # no update from the bad step
    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoint-1" / "adapter_model.safetensors").values())


def test_skip_leaves_weights_and_adam_moments_untouched_then_training_goes_on(tmp_path):
    run = _run(tmp_path, "skip", steps=4)
    run.trainer.aux_losses.append(InjectAt(run.trainer, {2, 3}))
    snaps = Snapshots(run.trainer)
    run.trainer.add_callback(snaps)
    run.trainer.train()
    assert run.trainer.state.global_step == 4
    assert _equal(snaps.params[1], snaps.params[2]) and _equal(snaps.params[2], snaps.params[3])
    assert _equal(snaps.moments[1], snaps.moments[3])
    assert not _equal(snaps.params[3], snaps.params[4])  # a finite step updates again
    logs = {h["step"]: h for h in run.trainer.state.log_history if "loss" in h}
    assert all(math.isfinite(h["loss"]) for h in logs.values())  # NaN never reaches the logged loss
    assert logs[3]["nonfinite_skipped_steps"] == 2 and "nonfinite_skipped_steps" not in logs[1]
    kept = sorted((tmp_path / "out").glob("checkpoint-*"))  # save_total_limit=3: steps 2-4, two of them skipped
    assert [f.name for f in kept] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    for folder in kept:
        tensors = load_file(folder / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values())


def test_skip_gives_up_after_k_consecutive_bad_steps(tmp_path):
    run = _run(tmp_path, "skip", steps=6)
    run.trainer.max_skipped_steps = 2
    run.trainer.aux_losses.append(InjectAt(run.trainer, {2, 3, 4, 5, 6}))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite steps .*step 4"):
        run.trainer.train()
    assert run.trainer.state.global_step == 3


def test_nonfinite_gradient_norm_with_finite_loss_stops_before_the_update(tmp_path):
    run = _run(tmp_path, "stop", steps=2)
    lora_b = next(p for n, p in run.trainer.model.named_parameters() if "lora_B" in n)
    before = {n: p.detach().clone() for n, p in run.trainer.model.named_parameters() if p.requires_grad}
    run.trainer.aux_losses.append(FunctionLoss(lambda outputs, batch: {"nan_grad": NanGradient.apply(lora_b)}))
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm nan at step 1"):
        run.trainer.train()
    after = {n: p.detach() for n, p in run.trainer.model.named_parameters() if p.requires_grad}
    assert _equal(before, after)


def test_nan_weights_are_never_saved(tmp_path):
    run = _run(tmp_path, "stop", steps=1)
    with torch.no_grad():
        next(p for n, p in run.trainer.model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="refusing to save non-finite weights"):
        run.trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "adapter_model.safetensors").exists()
    with pytest.raises(NonFiniteLossError, match="'w'"):
        run.trainer._save(str(tmp_path / "saved"), state_dict={"w": torch.tensor([1.0, float("inf")])})


def test_divergence_from_a_huge_learning_rate_exits_with_code_3(tmp_path, caplog):
    train = write_dataset(tmp_path / "data", n=2)
    out = tmp_path / "out"
    overrides = tiny_overrides(train, out, **{"train.max_steps": "4", "train.save_steps": "1",
                                              "train.warmup_ratio": "0.0", "train.learning_rate": "1e30",
                                              "train.projector_lr": "1e30"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {base: tiny}\n")
    assert train_main(["--recipe", str(recipe), *overrides]) == 3
    assert any("non-finite" in r.getMessage() and "samples [" in r.getMessage() for r in caplog.records)
    assert not (out / "metrics.json").exists()
    for folder in out.glob("checkpoint-*"):  # whatever was saved before the blow-up is finite
        tensors = load_file(folder / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values()), folder
