"""The training loop: a small explicit loop on ``accelerate``, not a ``Trainer`` subclass.

Why not the HF/sentence-transformers ``Trainer``: its data path fights the recipe at every step. Accelerate's
dataloader sharding hands *whole* batches of a batch sampler to different ranks (rank ``r`` gets batches ``r,
r+W, ...``), so one step would mix datasets across ranks unless ``split_batches`` is forced; its resume replays
the dataloader to skip batches instead of seeking; sentence-transformers' collator tokenises every column with
one ``max_seq_length`` and picks losses through an added ``dataset_name`` column; and throughput logging needs
callbacks. Overriding ``get_train_dataloader``, ``compute_loss``, ``_save``, the collator and the logging would
leave little of it. Accelerate still does the parts worth sharing: DDP (and DeepSpeed through ``accelerate
launch``) and autocast with a grad scaler; checkpoints are ours (see ``checkpoint``: no pickles); this module owns
the step loop, the sampler position and the logs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from tqdm.auto import tqdm
from transformers import get_scheduler

from piccolo_embed import distributed
from piccolo_embed.atomic import write_text_atomic
from piccolo_embed.hardware import cpu_has_amx
from piccolo_embed.training.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    TrainingObjects,
    intact_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from piccolo_embed.types import Precision

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from piccolo_embed.data.collator import TrainBatch
    from piccolo_embed.data.sampler import OneDatasetBatchSampler
    from piccolo_embed.losses import HybridLoss

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class LoopOptions:
    """Optimisation and bookkeeping settings of :func:`fit` (see ``TrainingConfig`` for each one's meaning)."""

    output_dir: Path
    max_steps: int
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    log_every: int = 10
    save_every: int = 0
    save_total_limit: int = 2
    eval_every: int = 0
    tensorboard: bool = False
    progress: bool = True
    run_config: Mapping[str, Any] | None = None  # recorded in every checkpoint, for resume to compare against


class StepEvaluator(Protocol):
    """Scores the model at a step (main process only); see :class:`~piccolo_embed.training.dev_eval.DevEvaluator`."""

    def __call__(self, model: SentenceTransformer, step: int) -> Mapping[str, float]:
        """Named scores to log; the model must be back in train mode afterwards."""
        ...


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint, so a resumed run seeks the sampler instead of replaying."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        """The sampler position, recorded in ``checkpoint.json``."""
        return {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]


def make_accelerator(
    precision: Precision, *, deepspeed_config: str | None = None, micro_batch_size: int | None = None
) -> Accelerator:
    """One Accelerator per run: autocast per :func:`mixed_precision`, DDP without buffer broadcasts (BERT has none).

    With a DeepSpeed JSON, its micro batch size is set from ours: accelerate can only infer it from a dataloader
    it prepares, and ours stays unprepared (the sampler shards by rank itself).
    """
    mixed = mixed_precision(precision, cuda=torch.cuda.is_available(), amx=cpu_has_amx())
    plugin = None
    if deepspeed_config:
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config)
        if micro_batch_size:
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=False)
    # cpu=True without CUDA: only then does accelerate treat a torchrun launch on CPUs as distributed (gloo).
    return Accelerator(
        mixed_precision=mixed,
        cpu=not torch.cuda.is_available(),
        deepspeed_plugin=plugin,
        kwargs_handlers=[ddp],
    )


def mixed_precision(precision: Precision, *, cuda: bool, amx: bool) -> str:
    """Accelerate's ``mixed_precision`` for what :meth:`Precision.resolve` picks; weights and AdamW stay fp32.

    Raises:
        ValueError: fp16 without CUDA, or bf16 on a CPU without AMX.
    """
    resolved = precision.resolve("cuda" if cuda else "cpu", fast_bf16=None if cuda else amx)
    return {Precision.FP32: "no", Precision.FP16: "fp16", Precision.BF16: "bf16"}[resolved]


def fit(
    accelerator: Accelerator,
    model: SentenceTransformer,
    loss: HybridLoss,
    loader: Callable[[int, int], torch.utils.data.DataLoader],
    sampler: OneDatasetBatchSampler,
    options: LoopOptions,
    *,
    resume: bool = False,
    evaluator: StepEvaluator | None = None,
) -> SentenceTransformer:
    """Train ``model`` for ``options.max_steps`` steps and return it (unwrapped, in train mode).

    Args:
        accelerator: From :func:`make_accelerator` (it must exist before the sampler learns its rank).
        model: The encoder; gradient checkpointing, if wanted, is already enabled.
        loss: Built on ``model``; re-pointed at the wrapped model here.
        loader: ``loader(epoch, start_step)`` returns the DataLoader of that epoch from that step on.
        sampler: Its ``steps_per_epoch`` drives epoch roll-over.
        options: Optimisation and bookkeeping.
        resume: Continue from the newest checkpoint under ``output_dir/checkpoints``.
        evaluator: Called every ``options.eval_every`` steps and after the last one; its scores are logged.
    """
    optimizer = torch.optim.AdamW(_param_groups(model, options.weight_decay), lr=options.learning_rate)
    scheduler = get_scheduler(options.scheduler, optimizer, options.warmup_steps, options.max_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    loss.use_model(wrapped)
    state = TrainState()
    # The scheduler is not prepared: a prepared one steps once per process per step.
    objects = TrainingObjects(wrapped, optimizer, scheduler)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.register_for_checkpointing(scheduler)
    if resume:
        _resume(accelerator, objects, state, options.output_dir)
    wrapped.train()
    meter = _Meter(options, accelerator.device)
    bar = tqdm(total=options.max_steps, initial=state.step, disable=not (options.progress and distributed.is_main()))
    while state.step < options.max_steps:
        for batch in loader(state.epoch, state.step_in_epoch):
            value = _step(accelerator, wrapped, loss, optimizer, scheduler, batch, options)
            state.step += 1
            state.step_in_epoch += 1
            if state.step_in_epoch == sampler.steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
            meter.add(value, batch)
            if state.step % options.log_every == 0 or state.step == options.max_steps:
                epoch = state.step / sampler.steps_per_epoch
                meter.flush(state.step, epoch, scheduler.get_last_lr()[0], batch.dataset, bar)
            bar.update(1)
            if evaluator and options.eval_every and _due(state.step, options.eval_every, options.max_steps):
                _evaluate(accelerator, evaluator, wrapped, state.step, meter)
            if options.save_every and state.step % options.save_every == 0 and state.step < options.max_steps:
                save_checkpoint(
                    accelerator,
                    objects,
                    options.output_dir,
                    state.state_dict(),
                    keep=options.save_total_limit,
                    config=options.run_config,
                )
            if state.step >= options.max_steps:
                break
    bar.close()
    meter.close()
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(wrapped)


def _resume(accelerator: Accelerator, objects: TrainingObjects, state: TrainState, output_dir: Path) -> None:
    """Restore the newest checkpoint that loads, warning about each newer broken one; cut the log back to it.

    Raises:
        FileNotFoundError: No checkpoint loads.
    """
    for path, record in intact_checkpoints(output_dir):
        try:
            load_checkpoint(accelerator, objects, path)
        except CheckpointError as err:
            log.warning("skipping broken checkpoint %s: %s", path.name, err)
            continue
        state.load_state_dict(record)
        if distributed.is_main():
            _truncate_log(output_dir / LOG_FILE, state.step)
        log.info("resumed from %s at step %d (epoch %d)", path, state.step, state.epoch)
        return
    raise FileNotFoundError(
        f"--resume: no checkpoint to resume from under {output_dir / CHECKPOINTS} (broken ones are named above)"
    )


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after the resumed checkpoint, so the log reads as one run."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(kept))


def _due(step: int, every: int, max_steps: int) -> bool:
    return step % every == 0 or step == max_steps


def _evaluate(
    accelerator: Accelerator, evaluator: StepEvaluator, wrapped: torch.nn.Module, step: int, meter: _Meter
) -> None:
    """Dev scores on the main process while the other ranks wait; logged like the training curves."""
    if distributed.is_main():
        scores = evaluator(accelerator.unwrap_model(wrapped), step)
        meter.log_scores(step, scores)
    accelerator.wait_for_everyone()


def _step(
    accelerator: Accelerator,
    wrapped: torch.nn.Module,
    loss: HybridLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: TrainBatch,
    options: LoopOptions,
) -> torch.Tensor:
    batch = batch.to(accelerator.device)
    with accelerator.autocast():
        value = loss(batch)
    accelerator.backward(value)
    if options.max_grad_norm > 0:
        accelerator.clip_grad_norm_(wrapped.parameters(), options.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return value.detach()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (the usual BERT fine-tuning split)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Meter:
    """Window averages for the JSONL log (and TensorBoard): loss, learning rate, records/s and tokens/s.

    TensorBoard event files go to ``output_dir/tensorboard``, so ``tensorboard --logdir runs/`` shows every run.
    """

    def __init__(self, options: LoopOptions, device: torch.device) -> None:
        self.path = options.output_dir / LOG_FILE
        self.device = device
        self.writer = _tensorboard_writer(options.output_dir) if options.tensorboard and distributed.is_main() else None
        self._reset()

    def log_scores(self, step: int, scores: Mapping[str, float]) -> None:
        """Write evaluation scores (0-1) as one log line and TensorBoard scalars."""
        entry = {"step": step, **{name: round(value, 6) for name, value in scores.items()}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        for name, value in scores.items():
            self._scalar(name, value, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()

    def _scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.records = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, value: torch.Tensor, batch: TrainBatch) -> None:
        self.losses.append(value)
        self.records += batch.num_records
        self.tokens += batch.num_tokens

    def flush(self, step: int, epoch: float, lr: float, dataset: str, bar: tqdm) -> None:
        totals = torch.tensor([float(self.records), float(self.tokens)], device=self.device)
        totals = distributed.all_reduce_mean(totals) * distributed.world_size()
        loss = distributed.all_reduce_mean(torch.stack(self.losses).float().mean()).item()
        seconds = max(time.perf_counter() - self.started, 1e-9)
        entry = {
            "step": step,
            "epoch": round(epoch, 4),
            "dataset": dataset,
            "loss": round(loss, 6),
            "lr": lr,
            "pairs_per_s": round(totals[0].item() / seconds, 2),
            "tokens_per_s": round(totals[1].item() / seconds, 1),
        }
        if distributed.is_main():
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            for name in ("loss", "lr", "pairs_per_s", "tokens_per_s"):
                self._scalar(f"train/{name}", entry[name], step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            log.info("step %d loss %.4f lr %.2e %.1f pairs/s", step, loss, lr, entry["pairs_per_s"])
        self._reset()


def _tensorboard_writer(output_dir: Path) -> Any:
    """A SummaryWriter, or a clear error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "training.tensorboard needs the tensorboard package: pip install 'piccolo-embed[tensorboard]'"
        ) from err
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))
