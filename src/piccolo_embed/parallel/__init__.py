"""Encoding beyond one process: a worker pool on one machine, and (optional extra ``ray``) a Ray cluster."""

from piccolo_embed.parallel.pool import (
    EmbedderLoader,
    EncoderPool,
    QuietEmbedder,
    WorkerError,
    length_sorted_shards,
    parse_devices,
)

__all__ = [
    "EmbedderLoader",
    "EncoderPool",
    "QuietEmbedder",
    "WorkerError",
    "length_sorted_shards",
    "parse_devices",
]
