"""Wire a :class:`RunConfig` into model, data, sampler, collator, loss and loop: the only reader of the config."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import set_seed

from piccolo_embed import distributed
from piccolo_embed.atomic import (
    move_files_into,
    remove_stale_staging,
    replace_dir,
    staging_dir,
    write_json_atomic,
)
from piccolo_embed.data.collator import RoleAwareCollator
from piccolo_embed.data.records import OnError, RecordKind
from piccolo_embed.data.sampler import OneDatasetBatchSampler
from piccolo_embed.data.sources import (
    SourceMixture,
    SourceSpec,
    TrainSource,
    load_sources,
    resolve_data_file,
)
from piccolo_embed.errors import CheckpointError
from piccolo_embed.inference.embedder import Embedder
from piccolo_embed.losses import build_hybrid_loss
from piccolo_embed.modeling.loading import load_sentence_transformer, resolve_model_dir
from piccolo_embed.modeling.trim import read_trim_map, restore_vocabulary
from piccolo_embed.training.checkpoint import CHECKPOINTS, DEEPSPEED_REFUSAL, checkpoints, intact_checkpoints
from piccolo_embed.training.dev_eval import BEST_FILE, DevEvaluator
from piccolo_embed.training.loop import LOG_FILE, LoopOptions, fit, make_accelerator
from piccolo_embed.training.resume import check_resume_config
from piccolo_embed.types import Role, RoleSpec, RoleSpecs, TaskKind

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from piccolo_embed.training.config import DataConfig, ModelConfig, RunConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
TRIMMED_BASE = "trimmed-base"
# The files that make a directory load as a model: removed first and written last when a model is replaced.
MODEL_MARKERS = ("modules.json", "config.json")


def source_specs(data: DataConfig) -> list[SourceSpec]:
    """Dataset entries as :class:`SourceSpec` (s2p oversampling folded into the weight)."""
    return [
        SourceSpec(
            name=entry.label,
            path=resolve_data_file(entry.file),
            kind=entry.kind,
            records=entry.records,
            weight=entry.weight * (data.s2p_oversample if entry.kind is TaskKind.S2P else 1.0),
            cap=entry.cap,
            num_negatives=entry.num_negatives,
        )
        for entry in data.datasets
    ]


def role_specs(model: ModelConfig, limit: int) -> RoleSpecs:
    """Training roles: instructions for ``s2p`` sides, none for ``s2s``; lengths capped at the model's limit."""
    return {
        Role.QUERY: RoleSpec(model.query_prefix, min(model.query_max_length, limit)),
        Role.PASSAGE: RoleSpec(model.passage_prefix, min(model.passage_max_length, limit)),
        Role.NONE: RoleSpec("", min(model.s2s_max_length, limit)),
    }


def train_from_config(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, allow_changes: Collection[str] = ()
) -> Path:
    """Run the whole recipe and write the model (sentence-transformers layout + role settings) to ``output_dir``.

    Args:
        config: The whole run.
        resume: Continue from the newest intact checkpoint in ``output_dir``.
        overwrite: Start afresh in an ``output_dir`` that holds a finished model or checkpoints (they are replaced).
        allow_changes: Config keys (of ``resume.RESUMABLE_CHANGES``) that may differ from the checkpoint's.

    Raises:
        FileExistsError: ``output_dir`` holds a model or checkpoints, and neither ``resume`` nor ``overwrite``.
        ValueError: On resume, the config differs from the checkpoint's in a key not allowed to change.
    """
    output_dir = Path(config.training.output_dir)
    _prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
    if resume:
        _check_resume(output_dir, config, allow_changes)
    accelerator = make_accelerator(
        config.training.precision,
        deepspeed_config=config.training.deepspeed,
        micro_batch_size=config.training.batch_size,
    )
    set_seed(config.training.seed)
    on_error = OnError.SKIP if config.data.skip_bad_records else OnError.RAISE
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else None
    sources = load_sources(source_specs(config.data), cache_dir=cache_dir, on_error=on_error)
    base_dir = resolve_model_dir(config.model.name)
    model_dir = _trimmed_base(base_dir, sources, config.model, output_dir) if config.model.trim_vocab else base_dir
    model = load_sentence_transformer(model_dir, device="cpu")
    roles = role_specs(config.model, int(model.max_seq_length or 512))
    _freeze_pooler(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    mixture = SourceMixture(sources)
    sampler = _sampler(config, sources)
    collator = RoleAwareCollator(
        model.tokenizer, roles, num_negatives=config.data.num_negatives, seed=config.training.seed
    )
    loss = build_hybrid_loss(
        model,
        objective=config.loss.contrastive,
        temperature=config.loss.temperature,
        cosent_temperature=config.loss.cosent_temperature,
        label_temperature=config.loss.label_temperature,
        weights={RecordKind.SCORED: config.loss.cosent_weight, RecordKind.LABELLED: config.loss.label_weight},
        mini_batch_size=config.loss.mini_batch_size,
        gather_across_devices=config.loss.gather_across_devices and distributed.world_size() > 1,
        matryoshka_dims=config.loss.matryoshka_dims,
    )

    def loader(epoch: int, start_step: int) -> torch.utils.data.DataLoader:
        sampler.set_epoch(epoch, start_step)
        # A private generator: a DataLoader otherwise draws its base seed from the global RNG on every new
        # iterator, which would shift the dropout stream of a resumed run against an uninterrupted one.
        generator = torch.Generator().manual_seed(config.training.seed)
        return torch.utils.data.DataLoader(mixture, batch_sampler=sampler, collate_fn=collator, generator=generator)

    def save(trained: SentenceTransformer, target: Path) -> None:
        with staging_dir(target) as tmp:
            Embedder(trained, roles).save_pretrained(tmp)
            if config.model.trim_vocab:
                restore_vocabulary(tmp, base_dir, read_trim_map(model_dir) or [])
            if target == output_dir:  # the run directory also holds checkpoints and logs
                move_files_into(tmp, target, last=MODEL_MARKERS)
            else:
                replace_dir(tmp, target)

    evaluator = _dev_evaluator(config, roles, output_dir, save)
    options = _loop_options(config, output_dir, sampler.steps_per_epoch)
    _log_plan(sources, sampler, options.max_steps)
    trained = fit(accelerator, model, loss, loader, sampler, options, resume=resume, evaluator=evaluator)
    if distributed.is_main():
        save(trained, output_dir)
        if config.model.trim_vocab:  # a training intermediate: the saved model has the whole vocabulary
            shutil.rmtree(output_dir / TRIMMED_BASE, ignore_errors=True)
        write_json_atomic(output_dir / CONFIG_FILE, config.to_dict())
        log.info("saved the trained model to %s", output_dir)
    distributed.barrier()
    return output_dir


def _check_resume(output_dir: Path, config: RunConfig, allow_changes: Collection[str]) -> None:
    """Compare ``config`` with the newest intact checkpoint's, before any data or model is loaded.

    A DeepSpeed run is refused here already (``load_checkpoint`` would refuse each checkpoint in turn): the
    config must equal the checkpoint's, so a resumable DeepSpeed checkpoint means a DeepSpeed config now.
    """
    if config.training.deepspeed:
        raise CheckpointError(f"--resume: {DEEPSPEED_REFUSAL}")
    newest = next(intact_checkpoints(output_dir), None)
    if newest is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume from under {output_dir / CHECKPOINTS}")
    check_resume_config(newest[1].get("config"), config.to_dict(), allow_changes)


def _dev_evaluator(
    config: RunConfig, roles: RoleSpecs, output_dir: Path, save: Callable[[SentenceTransformer, Path], None]
) -> DevEvaluator | None:
    """The dev evaluator of ``training.eval`` (tasks are loaded and checked now, before any training step)."""
    settings = config.training.eval
    if not settings.tasks or not distributed.is_main():
        return None
    return DevEvaluator(settings.tasks, roles, output_dir, save, max_per_task=settings.max_per_task)


def _sampler(config: RunConfig, sources: list[TrainSource]) -> OneDatasetBatchSampler:
    return OneDatasetBatchSampler(
        [len(source) for source in sources],
        config.training.batch_size,
        weights=[source.spec.weight for source in sources],
        caps=[source.spec.cap for source in sources],
        alpha=config.data.alpha,
        seed=config.training.seed,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )


def _freeze_pooler(model: torch.nn.Module) -> None:
    """Freeze BERT's pooler: mean pooling never reads it, and DDP fails on parameters that get no gradient."""
    pooler = getattr(getattr(model[0], "auto_model", None), "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def _loop_options(config: RunConfig, output_dir: Path, steps_per_epoch: int) -> LoopOptions:
    training = config.training
    return LoopOptions(
        output_dir=output_dir,
        max_steps=training.max_steps or steps_per_epoch * training.epochs,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps,
        scheduler=training.scheduler.value,
        max_grad_norm=training.max_grad_norm,
        log_every=training.log_every,
        save_every=training.save_every,
        save_total_limit=training.save_total_limit,
        eval_every=training.eval.every if training.eval.tasks else 0,
        tensorboard=training.tensorboard,
        run_config=config.to_dict(),
    )


def _prepare_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier run silently; a fresh run starts its own log and best score.

    With ``overwrite`` the old checkpoints go now (a resume must not mix runs), while the old model stays until
    the new one replaces it at the end of training. Staging that a killed save left (of the final model, of
    ``best/``, of ``trimmed-base``) is removed now, rather than when the same save comes round again.
    """
    if not resume and not overwrite:
        if checkpoints(output_dir):
            raise FileExistsError(
                f"{output_dir} already holds checkpoints: pass --resume to continue, --overwrite to start afresh, "
                "or choose another output_dir"
            )
        if any((output_dir / name).exists() for name in (CONFIG_FILE, *MODEL_MARKERS)):
            raise FileExistsError(
                f"{output_dir} already holds a trained model: pass --overwrite to replace it, "
                "or choose another output_dir"
            )
    if not distributed.is_main():
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for directory in (output_dir.parent, output_dir):
        remove_stale_staging(directory)
    if not resume:
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
        for name in (LOG_FILE, BEST_FILE):
            (output_dir / name).unlink(missing_ok=True)


def _log_plan(sources: list[TrainSource], sampler: OneDatasetBatchSampler, max_steps: int) -> None:
    for source, quota in zip(sources, sampler.quotas, strict=True):
        log.info(
            "dataset %s (%s, %s): %d records, %d batches per epoch",
            source.spec.name,
            source.spec.kind.value,
            source.spec.records.value,
            len(source),
            quota,
        )
    log.info(
        "%d steps of %d records (%d per rank × %d ranks); %d steps per epoch",
        max_steps,
        sampler.global_batch,
        sampler.batch_size,
        sampler.world_size,
        sampler.steps_per_epoch,
    )


def _trimmed_base(model_dir: Path, sources: list[TrainSource], model: ModelConfig, output_dir: Path) -> Path:
    """Trim the base model's vocabulary to the training texts, as the collator will build them, once per run.

    A ``trimmed-base`` already there is reused only if it was trimmed from this base (weights and tokenizer
    fingerprint) and these texts; otherwise it is rebuilt beside and swapped in.

    Only training texts: the saved model gets the base's whole vocabulary back, so evaluation texts need not be
    known in advance.
    """
    from piccolo_embed.modeling.trim import trim_matches, trim_vocabulary

    target = output_dir / TRIMMED_BASE
    if distributed.is_main():
        texts = [model.query_prefix, model.passage_prefix]
        for source in sources:
            texts.extend(_embedded_texts(source, model))
        if trim_matches(target, model_dir, texts):
            log.info("reusing %s: trimmed from this base model and these texts", target)
        else:
            with staging_dir(target) as tmp:
                report = trim_vocabulary(model_dir, texts, tmp)
                replace_dir(tmp, target)
            log.info("trimmed the vocabulary to the training texts: %s", report)
    distributed.barrier()
    return target


def _embedded_texts(source: TrainSource, model: ModelConfig) -> list[str]:
    prefixes = {Role.QUERY: model.query_prefix, Role.PASSAGE: model.passage_prefix, Role.NONE: ""}
    first, second = (prefixes[role] for role in source.spec.kind.roles)
    table = source.table
    if "score" in table.column_names:  # scored pairs
        return [first + t for t in table["sentence1"]] + [second + t for t in table["sentence2"]]
    docs = [second + t for column in ("pos", "neg") for texts in table[column] for t in texts]
    return [first + t for t in table["query"]] + docs
