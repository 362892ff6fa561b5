"""A running piccolo-embed server as an :class:`~piccolo_embed.Encoder`, over its native ``POST /embed``.

Why ``/embed`` and not ``/v1/embeddings``: it always carries the role, returns float JSON (no base64 round
trip) and its errors name the text at fault. Requests are split into batches the server accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from piccolo_embed.errors import RemoteError
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.types import Role

DEFAULT_BATCH_SIZE = 64  # well under the server's default of 256 texts per request


class RemoteEncoder:
    """``encode(texts, *, role)`` answered by a piccolo-embed server.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is ignored).
        api_key: Sent as ``Authorization: Bearer``; needed when the server was started with one.
        timeout: Seconds to wait for each request.
        batch_size: Most texts per request (the server refuses more than its ``--max-inputs``).
    """

    thread_safe = True  # httpx clients may be shared between threads; local models are guarded instead

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._async_options: dict[str, Any] = {"base_url": self.base_url, "headers": headers, "timeout": timeout}
        self._info: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The served model's name, as ``/info`` reports it."""
        return str(self.info()["model"])

    @property
    def dim(self) -> int:
        """Embedding size, as ``/info`` reports it."""
        return int(self.info()["dimension"])

    def info(self) -> dict[str, Any]:
        """The server's ``GET /info`` (model, dimension, roles, limits), fetched once."""
        if self._info is None:
            self._info = _json_or_raise(self._request("GET", "/info"), "GET /info")
        return self._info

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """float32 ``(len(texts), dim)``, unit rows in input order, embedded by the server for ``role``."""
        texts = validate_texts(texts)
        rows = [self._embed(self._request("POST", "/embed", json=body)) for body in self._bodies(texts, role)]
        return self._stack(rows)

    async def aencode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """:meth:`encode` without blocking the event loop."""
        texts = validate_texts(texts)
        async with httpx.AsyncClient(**self._async_options) as client:
            rows = []
            for body in self._bodies(texts, role):
                try:
                    response = await client.post("/embed", json=body)
                except httpx.TransportError as err:
                    raise self._unreachable(err) from err
                rows.append(self._embed(response))
        return self._stack(rows)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _bodies(self, texts: list[str], role: Role | str | None) -> list[dict[str, Any]]:
        role_value = None if role is None else Role.coerce(role).value  # None: the server's default role
        return [
            {"texts": texts[start : start + self.batch_size], "role": role_value}
            for start in range(0, len(texts), self.batch_size)
        ]

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **options)
        except httpx.TransportError as err:
            raise self._unreachable(err) from err

    def _unreachable(self, err: Exception) -> RemoteError:
        return RemoteError(f"cannot reach the piccolo-embed server at {self.base_url}: {err}; is it running?")

    def _stack(self, rows: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    @staticmethod
    def _embed(response: httpx.Response) -> np.ndarray:
        body = _json_or_raise(response, "POST /embed")
        return np.asarray(body["embeddings"], dtype=np.float32)


def _json_or_raise(response: httpx.Response, what: str) -> dict[str, Any]:
    """The response's JSON, or a :class:`RemoteError` with the server's own message (OpenAI error shape)."""
    if response.is_success:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise RemoteError(f"{what} failed with HTTP {response.status_code}: {message}")
