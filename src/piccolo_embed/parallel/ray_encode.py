"""Encode a corpus on a Ray cluster (optional extra ``ray``): a Ray Dataset of blocks, one model per actor.

The driver scans the file once for line offsets (no parsing) and plans blocks of lines; each actor call reads,
parses and validates one block (a bad line fails naming the file and line), gives every record its row number
and adds the vectors. Reading happens inside the actor rather than in separate read tasks: parsing costs
microseconds per line against milliseconds to encode it, and a read task that reserves a CPU of its own
deadlocks a cluster whose CPUs the actors have all taken (the CLI's default 2 actors x 1 CPU on a 2-core
machine, or one actor given every core). Ray restarts an actor that dies and retries its block, and the
dataset keeps input order, so the driver receives rows in order and writes them with the same chunked,
checkpointed code as a local build. Every row carries its number, and the driver checks that each arrives
exactly once: a retried block cannot duplicate a row, and a lost one is an error, not a silent gap.

Locally, ``ray.init()`` starts a single-machine cluster, so the same command runs on a laptop; an address
(``ray://head:10001`` or ``auto``) joins an existing cluster, whose nodes must see the corpus at the same path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piccolo_embed.index.build import check_vectors
from piccolo_embed.index.corpus import Passage, parse_passage
from piccolo_embed.parallel.pool import EncoderLoader
from piccolo_embed.types import Role

log = logging.getLogger(__name__)

LOCAL = "local"

# Parses one planned block (see plan_blocks) into records with "row", "line", "id", "text" and "title".
Reader = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    Attributes:
        address: ``local`` starts a cluster on this machine; otherwise passed to ``ray.init(address=...)``.
        actors: Encoder actors (models loaded at once).
        cpus_per_actor: CPUs each actor reserves (its torch threads: whole CPUs, at least one).
        gpus_per_actor: GPUs each actor reserves (1 for one model per GPU; 0 on CPU).
        block_lines: Corpus lines per actor call (the unit that is balanced, retried and kept in order).
        init_options: Extra ``ray.init`` keyword arguments (tests cap ``num_cpus``).
    """

    address: str = LOCAL
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    block_lines: int = 256
    init_options: dict[str, Any] = field(default_factory=dict)


def ensure_ray(options: RayOptions) -> Any:
    """Import Ray and connect (or start a local cluster) once per process."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("Ray support needs the extra: pip install 'piccolo-embed[ray]'") from err
    if not ray.is_initialized():
        address = None if options.address == LOCAL else options.address
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **options.init_options)
    return ray


def plan_blocks(path: Path, start_line: int, block_lines: int, *, count_blank: bool = False) -> list[dict[str, int]]:
    """Byte ranges of ``block_lines`` lines each after ``start_line``, with each block's first line and row.

    Rows count the records before a block (blank lines are not records unless ``count_blank``), so a read
    task numbers its records without seeing the rest of the file.
    """
    blocks, offset, rows, first_line, first_row, start, in_block = [], 0, 0, 0, 0, 0, 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no > start_line:
                if in_block == 0:
                    first_line, first_row, start = line_no, rows, offset
                in_block += 1
                if in_block == block_lines:
                    blocks.append(_block(start, offset + len(raw), first_line, first_row))
                    in_block = 0
            offset += len(raw)
            rows += 1 if (count_blank or raw.strip()) and line_no > start_line else 0
    if in_block:
        blocks.append(_block(start, offset, first_line, first_row))
    return blocks


def _block(start: int, end: int, first_line: int, first_row: int) -> dict[str, int]:
    return {"start": start, "end": end, "first_line": first_line, "first_row": first_row}


def read_texts(block: dict[str, Any], path: str, field: str | None) -> list[dict[str, Any]]:
    """Parse one planned block of a ``.txt`` (``field`` None: every line) or ``.jsonl`` file, as ``encode`` reads."""
    import json

    with Path(path).open("rb") as handle:
        handle.seek(int(block["start"]))
        data = handle.read(int(block["end"]) - int(block["start"]))
    out, row = [], int(block["first_row"])
    for index, raw in enumerate(data.decode("utf-8").split("\n")[: _lines(data)]):
        line, text = int(block["first_line"]) + index, raw.rstrip("\r")
        if field is not None:
            if not text.strip():
                continue
            obj = json.loads(text)
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{line}: field {field!r} must be a string")
            text = obj[field]
        out.append({"row": row, "line": line, "id": "", "text": text, "title": ""})
        row += 1
    return out


def _lines(data: bytes) -> int:
    """Lines in a block (the last may lack its newline at the end of the file)."""
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def read_passages(block: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """Parse one planned block of a corpus file into ``{"row", "line", "id", "text", "title"}`` records."""
    import json

    from piccolo_embed.data.records import RecordError

    with Path(path).open("rb") as handle:
        handle.seek(int(block["start"]))
        data = handle.read(int(block["end"]) - int(block["start"]))
    out, row = [], int(block["first_row"])
    for index, raw in enumerate(data.decode("utf-8").splitlines()):
        line = int(block["first_line"]) + index
        if not raw.strip():
            continue
        try:
            passage = parse_passage(json.loads(raw), path, line)
        except json.JSONDecodeError as err:
            raise RecordError(path, line, "<json>", f"invalid JSON ({err.msg})") from err
        out.append({"row": row, "line": line, "id": passage.id or "", "text": passage.text, "title": passage.title})
        row += 1
    return out


class EncodeActor:
    """Ray actor body: loads one model, then reads, numbers and encodes each planned block it is given."""

    def __init__(self, loader: EncoderLoader, role: str, threads: int, device: str, reader: Reader) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = loader(device)
        self.role = role
        self.reader = reader

    def __call__(self, plans: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The records of the planned blocks as columns, with a ``vector`` for ``title text`` (or ``text``)."""
        keys = ("start", "end", "first_line", "first_row")
        records = [r for i in range(len(plans["start"])) for r in self.reader({k: plans[k][i] for k in keys})]
        texts = [Passage(None, r["text"], r["title"]).embed_text for r in records]
        # A block of blank lines still returns (0, dim) vectors, so that blocks concatenate.
        vectors = np.asarray(self.encoder.encode(texts or ["probe"], role=self.role), dtype=np.float32)
        vectors = vectors[: len(texts)]
        columns = {name: np.array([r[name] for r in records], dtype=object) for name in ("id", "text", "title")}
        rows = {name: np.array([r[name] for r in records], dtype=np.int64) for name in ("row", "line")}
        return {**rows, **columns, "vector": vectors}


def encoded_dataset(
    path: Path,
    start_line: int,
    role: Role,
    loader: EncoderLoader,
    options: RayOptions,
    *,
    text_field: str | None = None,
) -> Any:
    """The corpus after ``start_line`` as a Ray Dataset of records with vectors, in input order.

    ``text_field`` reads the file as ``encode`` does (``.txt`` lines, or that field of ``.jsonl`` objects)
    instead of as a corpus of passages.
    """
    ray = ensure_ray(options)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the index writer commits rows in order, chunk by chunk
    is_txt = text_field is not None and path.suffix.lower() not in (".jsonl", ".json")
    blocks = plan_blocks(path, start_line, options.block_lines, count_blank=is_txt)
    if not blocks:
        return None
    if text_field is None:
        reader = functools.partial(read_passages, path=str(path))
    else:
        reader = functools.partial(read_texts, path=str(path), field=None if is_txt else text_field)
    device = "cuda:0" if options.gpus_per_actor else "cpu"  # Ray gives each GPU actor its own visible device
    # Ray Data's actor pools restart a dead actor and rerun its block on the replacement by default
    # (max_restarts=-1, max_task_retries=-1); tests/parallel/test_parallel_ray.py kills one to prove it.
    return ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        EncodeActor,
        fn_constructor_kwargs={
            "loader": loader,
            "role": role.value,
            "threads": int(options.cpus_per_actor),
            "device": device,
            "reader": reader,
        },
        batch_size=1,  # one planned block per call
        concurrency=options.actors,
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor,
    )


@dataclass
class RayChunks:
    """A :class:`~piccolo_embed.index.build.ChunkSource` that encodes on a Ray cluster.

    Attributes:
        loader: Builds each actor's encoder (e.g. :class:`~piccolo_embed.parallel.EmbedderLoader`).
        options: Cluster address and actor pool size.
    """

    loader: EncoderLoader
    options: RayOptions = field(default_factory=RayOptions)

    def __call__(
        self, source: str | Path | Iterable[Passage], *, start_line: int, role: Role, dim: int, chunk_size: int
    ) -> Iterator[tuple[list[Passage], np.ndarray]]:
        """See :class:`~piccolo_embed.index.build.ChunkSource`; ``source`` must be a corpus file."""
        if not isinstance(source, str | Path):
            raise TypeError("encoding on Ray needs a corpus file that the cluster can read, not an iterable")
        dataset = encoded_dataset(Path(source), start_line, role, self.loader, self.options)
        if dataset is None:
            return
        batches = dataset.iter_batches(batch_size=chunk_size, batch_format="numpy")
        for batch, keep in exactly_once(batches, str(source)):
            yield _passages(batch, keep), check_vectors(batch["vector"][keep], int(keep.sum()), dim)


def exactly_once(batches: Iterable[dict[str, np.ndarray]], where: str) -> Iterator[tuple[dict, np.ndarray]]:
    """Pass batches of numbered rows through with a mask that drops repeats; raise on a missing row.

    Rows are numbered from 0 in input order; a retried batch could deliver some twice, and a lost one would
    leave a gap that the index must not paper over.
    """
    next_row = 0
    for batch in batches:
        keep = np.ones(len(batch["row"]), dtype=bool)
        for index, row in enumerate(batch["row"].tolist()):
            if row < next_row:
                keep[index] = False
            elif row > next_row:
                raise RuntimeError(f"{where}: rows {next_row}..{row - 1} never came back from Ray")
            else:
                next_row += 1
        if keep.any():
            yield batch, keep


def _passages(batch: dict[str, np.ndarray], keep: np.ndarray) -> list[Passage]:
    columns = [batch[name][keep] for name in ("id", "text", "title", "line")]
    return [
        Passage(id=str(pid) or None, text=str(text), title=str(title), line=int(line))
        for pid, text, title, line in zip(*columns, strict=True)
    ]
