"""Typed training configuration: four groups (model, data, loss, training) read once from YAML plus ``--set``.

Only the CLI and :mod:`piccolo_embed.training.run` see these classes; everything below them takes explicit
arguments. Parsing is strict so that a typo fails before any model is loaded: an unknown key names the valid
keys, a bad value names its dotted path (``data.datasets[2].kind``) and the expected type or choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from piccolo_embed.data.records import RecordKind
from piccolo_embed.errors import ConfigError
from piccolo_embed.losses import ContrastiveObjective
from piccolo_embed.textfiles import read_utf8
from piccolo_embed.types import HelpfulEnum, Precision, TaskKind


class Scheduler(HelpfulEnum):
    """Learning-rate schedule after warm-up (names as in ``transformers.get_scheduler``)."""

    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant_with_warmup"


@dataclass(frozen=True)
class ModelConfig:
    """The encoder to train and how its inputs are prepared.

    Attributes:
        name: Local directory, hub id or ``starter``.
        query_prefix: Instruction for the query side of ``s2p`` data (piccolo: ``"查询: "``).
        passage_prefix: Instruction for the passage side of ``s2p`` data (piccolo: ``"结果: "``).
        query_max_length: Token budget of queries.
        passage_max_length: Token budget of passages.
        s2s_max_length: Token budget of both sides of ``s2s`` and scored data (no instruction).
        gradient_checkpointing: Trade compute for activation memory.
        trim_vocab: Train on the vocabulary of the training texts only (on CPU a 250k-row embedding matrix
            dominates the step time of small models); the saved model gets the base's whole vocabulary back,
            with the trained rows written in.
    """

    name: str
    query_prefix: str = "查询: "
    passage_prefix: str = "结果: "
    query_max_length: int = 64
    passage_max_length: int = 512
    s2s_max_length: int = 512
    gradient_checkpointing: bool = False
    trim_vocab: bool = False


@dataclass(frozen=True)
class DatasetEntry:
    """One training file.

    Attributes:
        file: JSONL path, relative to the working directory, or ``resource:NAME`` for a bundled file.
        name: Label in logs (default: the file's stem).
        kind: ``s2p`` gets instructions, ``s2s`` none.
        records: ``triplet`` (query/pos/neg), ``scored`` (sentence1/sentence2/score, CoSENT) or ``labelled``
            (classification records: query/pos/neg/label, trained against their own negatives only).
        weight: Multiplies this dataset's sampling weight.
        cap: Most records drawn from it per epoch (``None``: no cap).
        num_negatives: Negatives per record for this dataset (``None``: ``data.num_negatives``).
    """

    file: str
    name: str = ""
    kind: TaskKind = TaskKind.S2P
    records: RecordKind = RecordKind.TRIPLET
    weight: float = 1.0
    cap: int | None = None
    num_negatives: int | None = None

    @property
    def label(self) -> str:
        """The dataset's name for logs."""
        return self.name or Path(self.file.removeprefix("resource:")).stem


@dataclass(frozen=True)
class DataConfig:
    """The dataset mixture and how batches are drawn from it.

    Attributes:
        datasets: The training files.
        alpha: A dataset is chosen with probability proportional to ``weight * size**alpha`` (1: by size).
        s2p_oversample: Extra factor on the weight of ``s2p`` datasets.
        num_negatives: Hard negatives drawn per triplet record (0: in-batch negatives only).
        skip_bad_records: Skip and count malformed lines instead of failing on the first one.
        cache_dir: Where the Arrow caches go (default: ``$PICCOLO_EMBED_CACHE/arrow`` or ``~/.cache``).
    """

    datasets: tuple[DatasetEntry, ...]
    alpha: float = 1.0
    s2p_oversample: float = 1.0
    num_negatives: int = 0
    skip_bad_records: bool = False
    cache_dir: str | None = None


@dataclass(frozen=True)
class LossConfig:
    """Which losses, and their temperatures (sentence-transformers' ``scale`` is ``1 / temperature``).

    Attributes:
        contrastive: Loss of triplet datasets.
        temperature: InfoNCE/GTE temperature (piccolo2: 0.01).
        cosent_temperature: CoSENT temperature for scored datasets (0.05 = sentence-transformers' scale 20).
        label_temperature: Temperature of the label contrast of labelled datasets (``None``: ``temperature``).
        cosent_weight: Factor on the CoSENT loss against the contrastive loss's 1 (piccolo2: 0.04).
        label_weight: Factor on the label-contrast loss against the contrastive loss's 1 (piccolo2: 0.2).
        mini_batch_size: Turn on GradCache with this many texts per forward pass (``None``: off).
        gather_across_devices: Share in-batch negatives across all ranks (no-op on one process).
        matryoshka_dims: Also train these truncated dimensions (empty: off).
    """

    contrastive: ContrastiveObjective = ContrastiveObjective.INFONCE
    temperature: float = 0.01
    cosent_temperature: float = 0.05
    label_temperature: float | None = None
    cosent_weight: float = 1.0
    label_weight: float = 1.0
    mini_batch_size: int | None = None
    gather_across_devices: bool = True
    matryoshka_dims: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvalConfig:
    """Dev evaluation during training (``training.eval``).

    Attributes:
        tasks: Task folders, or folders of task folders, in ``piccolo-embed eval``'s format (empty: off).
        every: Steps between evaluations; the last step is always evaluated.
        max_per_task: Seeded subsample per task, to keep evaluation short (``None``: whole tasks).
    """

    tasks: tuple[str, ...] = ()
    every: int = 100
    max_per_task: int | None = 200


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, checkpoints and logging.

    Attributes:
        output_dir: Final model, checkpoints and ``log.jsonl`` go here.
        batch_size: Records per device per step (global batch = this × world size).
        learning_rate: Peak learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_steps: Linear warm-up steps.
        scheduler: Schedule after warm-up.
        epochs: Passes over the mixture (an epoch is as many steps as one pass at alpha 1).
        max_steps: Stop after this many steps (overrides ``epochs``).
        max_grad_norm: Gradient clipping (0: off).
        precision: ``fp32``, or ``fp16``/``bf16`` autocast (bf16 on CPU needs AMX; ``auto``: the fastest the
            machine supports).
        seed: Seeds sampling, initialisation and dropout.
        log_every: Steps between log lines.
        save_every: Steps between checkpoints (0: only the final model).
        save_total_limit: Checkpoints kept on disk.
        deepspeed: Path to a DeepSpeed JSON config (needs ``deepspeed``; launch with ``accelerate``).
        eval: Dev tasks scored during training; the best model by their average is kept in ``best/``.
        tensorboard: Also log to TensorBoard under ``output_dir/tensorboard`` (needs the ``tensorboard`` extra).
    """

    output_dir: str
    batch_size: int = 32
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    scheduler: Scheduler = Scheduler.LINEAR
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    precision: Precision = Precision.FP32
    seed: int = 42
    log_every: int = 10
    save_every: int = 0
    save_total_limit: int = 2
    deepspeed: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    tensorboard: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run reads (one YAML file): model, data, training and loss sections.

    Named apart from :class:`TrainingConfig`, which is only its ``training:`` section.
    """

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        _check_ranges(self)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Self:
        """Build and validate from plain data (parsed YAML)."""
        return _build(cls, raw, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> Self:
        """Read ``path`` and apply ``key=value`` overrides (values are YAML: ``--set loss.temperature=0.02``)."""
        raw = _parse_yaml(read_utf8(Path(path)), str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_mapping(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as strings), e.g. to store next to checkpoints."""
        return _plain(dataclasses.asdict(self))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (list items by index: ``data.datasets.0.weight=2``) in ``raw``."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        node = node[_index(part, len(node), where)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {key}: {where} is a value, not a section")
    value = _parse_yaml(text, f"--set {key}")
    if isinstance(node, list):
        node[_index(parts[-1], len(node), key)] = value
    else:
        node[parts[-1]] = value


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` whose errors become one line: ``where:line:column: problem``."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {err}") from None


def _index(part: str, size: int, where: str) -> int:
    if not part.isdigit() or int(part) >= size:
        raise ConfigError(f"--set {where}: expected a list index below {size}")
    return int(part)


def _build(cls: type, raw: object, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path or 'config'}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        where = f"{path}.{name}" if path else name
        if name in raw:
            values[name] = _convert(hints[name], raw[name], where)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key is missing")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or 'config'}: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:  # noqa: PLR0911 - one branch per supported type
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, HelpfulEnum):
        try:
            return hint.parse(value)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")


def _check_ranges(config: RunConfig) -> None:
    checks = [
        (not config.data.datasets, "data.datasets", "needs at least one dataset"),
        (config.data.alpha < 0, "data.alpha", "must be >= 0"),
        (config.data.s2p_oversample <= 0, "data.s2p_oversample", "must be > 0"),
        (config.data.num_negatives < 0, "data.num_negatives", "must be >= 0"),
        (config.loss.temperature <= 0, "loss.temperature", "must be > 0"),
        (config.loss.cosent_temperature <= 0, "loss.cosent_temperature", "must be > 0"),
        (_below(config.loss.label_temperature, 0, inclusive=True), "loss.label_temperature", "must be > 0"),
        (config.loss.cosent_weight < 0, "loss.cosent_weight", "must be >= 0"),
        (config.loss.label_weight < 0, "loss.label_weight", "must be >= 0"),
        (_below(config.loss.mini_batch_size, 1), "loss.mini_batch_size", "must be >= 1"),
        (any(d < 1 for d in config.loss.matryoshka_dims), "loss.matryoshka_dims", "must be positive"),
        (config.training.batch_size < 1, "training.batch_size", "must be >= 1"),
        (config.training.learning_rate <= 0, "training.learning_rate", "must be > 0"),
        (config.training.warmup_steps < 0, "training.warmup_steps", "must be >= 0"),
        (config.training.weight_decay < 0, "training.weight_decay", "must be >= 0"),
        (config.training.epochs < 1, "training.epochs", "must be >= 1"),
        (_below(config.training.max_steps, 1), "training.max_steps", "must be >= 1"),
        (config.training.log_every < 1, "training.log_every", "must be >= 1"),
        (config.training.save_every < 0, "training.save_every", "must be >= 0"),
        (config.training.save_total_limit < 1, "training.save_total_limit", "must be >= 1"),
        (config.training.eval.every < 1, "training.eval.every", "must be >= 1"),
        (_below(config.training.eval.max_per_task, 1), "training.eval.max_per_task", "must be >= 1"),
        (config.model.query_max_length < 2, "model.query_max_length", "must be >= 2"),
        (config.model.passage_max_length < 2, "model.passage_max_length", "must be >= 2"),
        (config.model.s2s_max_length < 2, "model.s2s_max_length", "must be >= 2"),
    ]
    for index, entry in enumerate(config.data.datasets):
        checks.append((entry.weight <= 0, f"data.datasets[{index}].weight", "must be > 0"))
        checks.append((_below(entry.cap, 1), f"data.datasets[{index}].cap", "must be >= 1"))
        checks.append((_below(entry.num_negatives, 0), f"data.datasets[{index}].num_negatives", "must be >= 0"))
    labels = [entry.label for entry in config.data.datasets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    checks.append((bool(duplicates), "data.datasets", f"duplicate names {duplicates}; set 'name' to tell apart"))
    for failed, where, message in checks:
        if failed:
            raise ConfigError(f"{where}: {message}")


def _below(value: float | None, bound: float, *, inclusive: bool = False) -> bool:
    """Whether an optional setting is set and below ``bound`` (or at it, when ``inclusive``): 0 is a value."""
    return value is not None and (value <= bound if inclusive else value < bound)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, HelpfulEnum):
        return value.value
    return value
