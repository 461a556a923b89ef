"""Exact resume: a run killed after step k and resumed from checkpoint-k continues as if never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_dataset
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from pancapchain.config import load_recipe
from pancapchain.train.run import Run, build_run

TOTAL_STEPS, KILL_AFTER = 6, 3  # 16 stage rows, 2 x 2 accumulated per step -> 4 steps/epoch: crosses an epoch


class Killed(Exception):
    pass


class KillAfter(TrainerCallback):
    """Dies at the start of step k+1, i.e. after checkpoint-k was written (like a pre-empted job)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


def _build(data, out) -> Run:
    return build_run(load_recipe(None, tiny_overrides(data, out, **{
        "train.max_steps": str(TOTAL_STEPS), "train.save_steps": str(KILL_AFTER), "train.warmup_ratio": "0.2",
        "train.per_device_batch_size": "2", "train.grad_accum": "2", "train.resume": "auto"})))


def _consumed(run: Run) -> list[tuple[int, list[str]]]:
    """(optimizer step, sample ids) for every micro-batch the training step consumed."""
    seen: list[tuple[int, list[str]]] = []
    compute = run.trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        if model.training:
            seen.append((run.trainer.state.global_step + 1, list(inputs["sample_ids"])))
        return compute(model, inputs, *args, **kwargs)

    run.trainer.compute_loss = recording
    return seen


def _logged(run: Run) -> dict[int, tuple[float, float]]:
    return {h["step"]: (h["loss"], h["learning_rate"]) for h in run.trainer.state.log_history if "loss" in h}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_dataset(root / "data", n=4)
    straight = _build(data, root / "straight")
    straight_ids = _consumed(straight)
    straight.trainer.train()

    killed = _build(data, root / "killed")
    killed.trainer.add_callback(KillAfter(KILL_AFTER))
    with pytest.raises(Killed):
        killed.trainer.train()
    checkpoint = get_last_checkpoint(str(root / "killed"))  # what train.resume=auto picks

    resumed = _build(data, root / "killed")
    resumed_ids = _consumed(resumed)
    resumed.trainer.train(resume_from_checkpoint=checkpoint)
    return {"straight": (straight, straight_ids), "resumed": (resumed, resumed_ids), "checkpoint": checkpoint}


def test_resume_picks_the_last_complete_checkpoint(runs):
    assert runs["checkpoint"].endswith(f"checkpoint-{KILL_AFTER}")
    resumed, _ = runs["resumed"]
    assert resumed.trainer.state.global_step == TOTAL_STEPS


def test_losses_and_learning_rates_continue_identically(runs):
    straight, resumed = _logged(runs["straight"][0]), _logged(runs["resumed"][0])
    later = range(KILL_AFTER + 1, TOTAL_STEPS + 1)
    assert sorted(resumed) == list(range(1, TOTAL_STEPS + 1))  # steps 1-3 come back with trainer_state.json
    for step in range(1, TOTAL_STEPS + 1):
        assert resumed[step][0] == pytest.approx(straight[step][0], abs=1e-5), step
        assert resumed[step][1] == pytest.approx(straight[step][1], abs=1e-12), step
    assert len({straight[s][1] for s in later}) > 1  # the schedule really moves over these steps


def test_sample_order_continues_identically(runs):
    straight = [b for b in runs["straight"][1] if b[0] > KILL_AFTER]
    resumed = runs["resumed"][1]
    assert resumed == straight
    assert len(resumed) == 2 * (TOTAL_STEPS - KILL_AFTER)  # 2 accumulated micro-batches per step
    first_epoch = {sid for _, ids in runs["straight"][1][:8] for sid in ids}
    assert len(first_epoch) == 16  # every stage row once per epoch


def test_checkpoint_holds_everything_resume_needs(runs):
    folder = Path(runs["straight"][0].trainer.args.output_dir) / f"checkpoint-{KILL_AFTER}"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "adapter_model.safetensors",
                 "pancap_meta.json", "recipe.yaml", "processor_config.json"):
        assert (folder / name).is_file(), name
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == KILL_AFTER and state["epoch"] == pytest.approx(KILL_AFTER / 4)
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert any("multi_modal_projector" in k for k in keys)  # the trained projector is part of the checkpoint
