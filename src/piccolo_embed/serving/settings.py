"""Server settings: one frozen dataclass, built once by the CLI (or a test) and passed to ``build_app``."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.types import Role

API_KEY_ENV = "PICCOLO_EMBED_API_KEY"
ZERO_ALLOWED = frozenset({"max_wait_ms", "drain_s"})


@dataclass(frozen=True)
class ServerSettings:
    """Limits, batching knobs and access control of the embedding server.

    Attributes:
        model_name: Name reported in responses and ``/info``; empty means the embedder's own name.
        default_role: Role used when a request names none. ``none`` (no instruction) matches
            ``Embedder.encode``'s default, so a vector from the server equals one from the Python API
            called the same way, and OpenAI clients, which cannot send a role, embed queries and documents
            symmetrically.
        max_inputs_per_request: Most texts in one request.
        max_chars_per_text: Most characters in one text; checked before tokenising so a huge text
            cannot stall the event loop.
        max_request_bytes: Most bytes in a request body (by ``Content-Length``), refused before parsing.
        max_batch_size: Most texts in one forward pass.
        max_batch_tokens: Most padded tokens (texts x longest) in one forward pass.
        max_wait_ms: How long the worker lets a lone request wait for company before running it. Under load
            the queue refills while the model runs, so batches fill without waiting; this only matters when
            requests arrive in bursts, as they do from closed-loop clients.
        max_queue_texts: Most texts waiting for the model; beyond it requests get 429 at once.
        request_timeout_s: Longest a request waits for its vectors before a 503.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_connections: Most open connections; over it, the one waiting longest for client bytes is closed
            (see :mod:`piccolo_embed.serving.server`).
        max_header_bytes: Most bytes in a request line plus headers (431 beyond).
        max_headers: Most request headers (431 beyond).
        header_timeout_s: Longest wait for a request's head, from connect or its first byte (408 after).
        body_timeout_s: Longest wait for a request's body once its head is in (the connection closes after).
        drain_s: On SIGTERM/SIGINT, how long queued work keeps running before it is answered 503.
    """

    model_name: str = ""
    default_role: Role = Role.NONE
    max_inputs_per_request: int = 256
    max_chars_per_text: int = 8192
    max_request_bytes: int = 8 * 1024 * 1024
    max_batch_size: int = BATCH_SIZE
    max_batch_tokens: int = MAX_BATCH_TOKENS
    max_wait_ms: float = 5.0
    max_queue_texts: int = 4096
    request_timeout_s: float = 60.0
    api_key: str | None = None
    max_connections: int = 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    drain_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_role", Role.coerce(self.default_role))
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type not in ("int", "float"):
                continue
            # NaN passes every comparison, and an infinite wait never ends: refuse both up front.
            if not math.isfinite(value) or value < 0 or (value == 0 and item.name not in ZERO_ALLOWED):
                least = ">= 0" if item.name in ZERO_ALLOWED else "positive"
                raise ValueError(f"{item.name} must be a finite number, {least}; got {value!r}")
        if self.max_inputs_per_request > self.max_queue_texts:
            # Otherwise a request at the input limit could never be admitted and would always get 429.
            raise ValueError("max_inputs_per_request must not exceed max_queue_texts")
        if self.api_key == "":
            object.__setattr__(self, "api_key", None)

    @classmethod
    def api_key_from_env(cls) -> str | None:
        """The API key from ``$PICCOLO_EMBED_API_KEY`` (keeps it out of ``ps`` output), or ``None``."""
        return os.environ.get(API_KEY_ENV) or None

    def limits(self) -> dict[str, int | float]:
        """Public limits for ``/info`` (never the API key)."""
        public = asdict(self)
        for private in ("api_key", "model_name", "default_role"):
            public.pop(private)
        return public
