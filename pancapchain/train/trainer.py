"""``PancapTrainer``: a small ``transformers.Trainer`` subclass (see docs/design.md for why a subclass).

What it adds to the Trainer (resume, logging, accumulation, mixed precision, ZeRO-aware saving come with it):
- the loss: token-level cross-entropy weighted per stage, normalised over the whole accumulated batch;
  auxiliary losses (e.g. a mask head) plug in through ``aux_losses`` (the :class:`AuxLoss` protocol: batch keys,
  a context around the forward, extra checkpoint state), so this file knows nothing about masks;
- per-task losses in the logs (``loss_localize`` ... ``loss_segcap``, ``loss_region``, and ``eval_loss_...``),
  summed over every rank before the division (so the logged value is the global one, not rank 0's);
- a separate learning rate for the multimodal projector;
- a non-finite guard on the loss and the gradient norm (stop with the step and sample ids, or skip the step:
  its gradients are dropped so the optimizer leaves every weight and moment untouched);
- checkpoints that load on their own: adapter + projector + processor + recipe + metadata (+ tiny base).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer

from pancapchain.constants import IGNORE_INDEX, TASKS
from pancapchain.model.soft_bins import gaussian_bin_targets
from pancapchain.train.aux import AuxLoss
from pancapchain.train.budget import WallClockBudget


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN/inf and the recipe says stop (``train.nonfinite_loss=stop``)."""


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor, loc_ids: torch.Tensor | None = None, loc_sigma: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy per position.

    Args:
        logits: (B, L, V); labels: (B, L) with IGNORE_INDEX where unsupervised.
        loc_ids: (K,) vocabulary ids of <loc_0> .. <loc_K-1>; with ``loc_sigma`` > 0 a position whose label is a
            location token is scored against a Gaussian of ``loc_sigma`` bins around its bin (see
            :func:`soft_location_losses`).
    Returns:
        losses (B, L-1) float32 (0 where ignored) and mask (B, L-1) bool of supervised positions.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    if loc_ids is not None and loc_sigma > 0:
        losses = soft_location_losses(shift_logits, shift_labels, losses, loc_ids, loc_sigma)
    return losses, shift_labels != IGNORE_INDEX


def first_scored_position(labels: torch.Tensor) -> int:
    """labels (B, L) -> the first position whose logits a loss reads: one before the earliest supervised label of
    any row (0 when nothing is supervised)."""
    supervised = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return max(int(supervised[0]) - 1, 0) if len(supervised) else 0


def soft_location_losses(
    logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, loc_ids: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``losses`` (B, L) with the positions labelled <loc_k> replaced by -sum_j q_j log p(<loc_j>), where
    q ∝ exp(-(j - k)^2 / 2 sigma^2) over the K location tokens: the bins are ordered, one-hot targets are not.
    logits: (B, L, V) aligned with labels (B, L)."""
    lookup = torch.full((logits.size(-1),), -1, dtype=torch.long, device=labels.device)
    lookup[loc_ids.to(labels.device)] = torch.arange(len(loc_ids), device=labels.device)
    bins = torch.where(labels >= 0, lookup[labels.clamp_min(0)], -1)
    chosen = bins >= 0
    if not chosen.any():
        return losses
    log_p = logits[chosen].log_softmax(-1)[:, loc_ids.to(logits.device)]  # (N, K)
    target = gaussian_bin_targets(bins[chosen].to(log_p.dtype), len(loc_ids), sigma)
    out = losses.clone()
    out[chosen] = -(target * log_p).sum(-1)
    return out


class PancapTrainer(Trainer):
    def __init__(
        self,
        *args,
        projector_lr: float | None = None,
        projector_param_names: set[str] | None = None,
        nonfinite_loss: str = "stop",
        max_skipped_steps: int = 5,
        aux_losses: Sequence[AuxLoss] = (),
        checkpoint_writer: Callable[[str], None] | None = None,
        time_budget: WallClockBudget | None = None,
        loc_token_ids: Sequence[int] = (),
        loc_label_sigma: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loc_token_ids = torch.tensor(list(loc_token_ids), dtype=torch.long) if loc_token_ids else None
        self.loc_label_sigma = loc_label_sigma
        self.time_budget = time_budget
        if time_budget is not None:
            self.add_callback(time_budget)
        self.projector_lr = projector_lr
        self.projector_param_names = projector_param_names or set()
        self.nonfinite_loss = nonfinite_loss
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0  # consecutive
        self.skipped_total = 0
        self._window_ids: list[str] = []  # sample ids of the micro-batches of the current optimizer step
        self._window_nonfinite = False
        self.aux_losses = list(aux_losses)
        self.checkpoint_writer = checkpoint_writer
        self.loss_is_scaled_for_ga = True  # compute_loss normalises over the accumulated batch itself
        self._stage_sums = {True: torch.zeros(len(TASKS)), False: torch.zeros(len(TASKS))}  # index: stage_ids
        self._stage_counts = {True: torch.zeros(len(TASKS)), False: torch.zeros(len(TASKS))}
        self._aux_logs: dict[str, list[float]] = {}  # name -> [sum, count] of this rank's micro-batch values
        self._flops_parameters: int | None = None  # non-embedding parameter count, taken once
        if nonfinite_loss == "skip" and self.is_deepspeed_enabled:
            raise ValueError(
                "train.nonfinite_loss=skip is not supported under DeepSpeed (its engine steps the optimizer inside "
                "backward, before the step could be dropped); use train.nonfinite_loss=stop"
            )

    # ----------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        stage_ids = inputs.pop("stage_ids")
        token_stages = inputs.pop("token_stage_ids")
        weights = inputs.pop("loss_weights")
        sample_ids = inputs.pop("sample_ids", None)
        labels = inputs.pop("labels")
        extras = {k: inputs.pop(k) for aux in self.aux_losses for k in aux.batch_keys if k in inputs}
        # Logits only from the first position any row's loss reads: the lm_head and the softmax over the vocabulary
        # skip the system, image and prompt tokens (most of a stage row; with a 32k vocabulary the full (B, L, V)
        # logits are also the largest activation). transformers' logits_to_keep keeps the last N positions.
        start = first_scored_position(labels)
        if start > 0:
            inputs["logits_to_keep"] = labels.shape[1] - start
        with ExitStack() as hooks:
            for aux in self.aux_losses:
                hooks.enter_context(aux.capture())
            outputs = model(**inputs)
        soft = self.loc_label_sigma if model.training else 0.0  # the eval loss stays one-hot, comparable across runs
        losses, mask = token_losses(outputs.logits, labels[:, start:], self.loc_token_ids, soft)
        weighted = (losses * weights[:, None].to(losses.dtype) * mask).sum()
        if num_items_in_batch is not None:
            loss = weighted / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # num_items counts every rank's tokens
        else:
            loss = weighted / mask.sum().clamp(min=1)
            if model.training:
                loss = loss / self.args.gradient_accumulation_steps
        # Auxiliary losses are per-batch means: scale them like a per-batch LM loss under accumulation.
        aux_scale = 1.0 / self.args.gradient_accumulation_steps if model.training else 1.0
        batch = {**inputs, **extras, "labels": labels, "stage_ids": stage_ids}
        for aux in self.aux_losses:
            for name, value in aux(outputs, batch).items():
                loss = loss + aux_scale * value
                entry = self._aux_logs.setdefault(name, [0.0, 0])
                entry[0] += float(value.detach())
                entry[1] += 1
        self._record_stages(losses.detach(), mask, token_stages[:, start + 1 :], model.training)
        if model.training:  # eval reports a non-finite loss as it is
            self._window_ids.extend(sample_ids or [])
            loss = self._guard_nonfinite(loss)
        return (loss, outputs) if return_outputs else loss

    def _record_stages(self, losses, mask, token_stages, training: bool) -> None:
        """Add each supervised token's loss to its stage's sum. losses, mask, token_stages: (B, L - start - 1), the
        positions of ``labels[:, start + 1:]`` (``start``: the first scored position, see compute_loss)."""
        stages = token_stages[mask].cpu()
        self._stage_sums[training].index_add_(0, stages, losses[mask].float().cpu())
        self._stage_counts[training].index_add_(0, stages, torch.ones(len(stages)))

    def _where(self) -> str:
        return f"step {self.state.global_step + 1}, samples {self._window_ids or '?'}"

    def _guard_nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        if torch.isfinite(loss).all():
            return loss
        if self.nonfinite_loss == "stop":
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at {self._where()}; stopped before the optimizer step "
                "(set train.nonfinite_loss=skip to drop such steps instead)"
            )
        self._window_nonfinite = True
        # Backward still runs (its NaN gradients are dropped in _get_grad_norm) and the Trainer's
        # logging_nan_inf_filter keeps the NaN out of the logged loss.
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Called by the Trainer after clipping, right before ``optimizer.step()``: the last point to stop/skip."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        norm_ok = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)).all())
        bad = self._window_nonfinite or not norm_ok
        what = "non-finite loss" if self._window_nonfinite else f"non-finite gradient norm {grad_norm}"
        where = self._where()
        self._window_ids, self._window_nonfinite = [], False
        if not bad:
            self.skipped_steps = 0
            return grad_norm
        if self.nonfinite_loss == "stop":  # under DeepSpeed the engine has stepped already; nothing is saved
            when = "after DeepSpeed's optimizer step" if self.is_deepspeed_enabled else "before the optimizer step"
            raise NonFiniteLossError(f"{what} at {where}; stopped {when}")
        self.skipped_steps += 1
        self.skipped_total += 1
        if self.skipped_steps > self.max_skipped_steps:
            raise NonFiniteLossError(f"{self.skipped_steps} consecutive non-finite steps (last: {what} at {where})")
        for param in model.parameters():
            param.grad = None  # torch optimizers skip parameters without a gradient: no update, no moment change
        return grad_norm

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's estimate, 6 x input tokens x non-embedding parameters, with the parameters counted once
        (transformers walks every module on every step for it: ~3% of a tiny model's CPU step)."""
        if self._flops_parameters is None:
            count = getattr(self.model, "num_parameters", None)
            self._flops_parameters = int(count(exclude_embeddings=True)) if count is not None else 0
        ids = inputs.get("input_ids")
        return 6 * ids.numel() * self._flops_parameters if ids is not None else 0

    # ------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training = "loss" in logs
        if training or "eval_loss" in logs:
            prefix = "loss_" if training else "eval_loss_"
            sums, counts = self._global_sums(self._stage_sums[training], self._stage_counts[training])
            for i, stage in enumerate(TASKS):
                if counts[i] > 0:
                    logs[prefix + stage] = round(float(sums[i] / counts[i]), 4)
            self._stage_sums[training].zero_()
            self._stage_counts[training].zero_()
        if training:
            names = sorted(self._aux_logs)  # every rank reports the same names: they follow the recipe, not the data
            values = torch.tensor([self._aux_logs[n][0] for n in names], dtype=torch.float64)
            seen = torch.tensor([self._aux_logs[n][1] for n in names], dtype=torch.float64)
            values, seen = self._global_sums(values, seen)
            for i, name in enumerate(names):
                logs[name] = round(float(values[i] / seen[i]), 4)
            self._aux_logs.clear()
            if self.skipped_total:
                logs["nonfinite_skipped_steps"] = self.skipped_total
        super().log(logs, start_time)

    def _global_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums, counts) added over all ranks (``log`` runs on every rank); a single process returns them as is."""
        if self.accelerator.num_processes <= 1 or sums.numel() == 0:
            return sums, counts
        both = torch.stack([sums, counts]).to(self.args.device)
        both = self.accelerator.reduce(both, reduction="sum").cpu()
        return both[0], both[1]

    # ----------------------------------------------------------------------------------- optimizer
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's step-based schedule, or a time-based one under ``train.max_seconds``."""
        if self.time_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.time_budget.lr_factor)
        return self.lr_scheduler

    def create_optimizer(self, model=None):
        """Like the Trainer's, plus a parameter group for the projector with its own learning rate."""
        if self.optimizer is not None or not self.projector_param_names or self.projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((name in self.projector_param_names, name in decay), []).append(param)
        param_groups = []
        for (is_projector, has_decay), params in groups.items():
            group = {"params": params, "weight_decay": self.args.weight_decay if has_decay else 0.0}
            if is_projector:
                group["lr"] = self.projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # -------------------------------------------------------------------------------------- saving
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The Trainer restores the adapter; each auxiliary loss restores its own extra state."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for aux in self.aux_losses:
            aux.restore(resume_from_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None:
            bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        else:
            bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[:3]})")
        super()._save(output_dir, state_dict=state_dict)
        for aux in self.aux_losses:
            aux.save(output_dir, state_dict)
        if self.checkpoint_writer is not None and self.args.should_save:  # one writer under multi-process
            self.checkpoint_writer(output_dir)
