"""The FastAPI app factory: ``build_app(model, settings)`` wires routes, errors, metrics and the batcher.

Routes:
    ``POST /v1/embeddings``: OpenAI-compatible (``input``, ``model``, ``encoding_format``, ``dimensions``,
    ``user``) plus an optional ``role``; ``model`` ``<name>-query`` / ``<name>-passage`` picks the role, so a
    stock OpenAI client needs no extra field. ``GET /v1/models``: those names, for OpenAI clients.
    ``POST /embed``: native (``texts``, ``role``, ``normalize``, ``truncate``, ``long``, ``dimensions``).
    ``GET /health`` (never needs the API key), ``GET /info``, ``GET /metrics`` (Prometheus text).

Handlers never touch the model: they validate, submit to the :class:`DynamicBatcher` (whose worker thread
runs the model; see its module docstring for how) and await the result. Well-formed embedding
requests skip FastAPI's router (:mod:`piccolo_embed.serving.front` says why); the FastAPI routes run the
same handlers and word every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from piccolo_embed import __version__
from piccolo_embed.chunking import LongMode
from piccolo_embed.serving import protocol as wire
from piccolo_embed.serving.batcher import (
    BatcherClosedError,
    BatchModel,
    DynamicBatcher,
    Embedded,
    InputTooLongError,
    NonFiniteOutputError,
    QueueFullError,
)
from piccolo_embed.serving.errors import ApiError, install_error_handlers
from piccolo_embed.serving.front import FastRoute, GatedFastAPI, Gatekeeper
from piccolo_embed.serving.long import MeanOfChunks, SubmitChunks, TooManyChunksError
from piccolo_embed.serving.metrics import CONTENT_TYPE, ServerMetrics
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

if TYPE_CHECKING:
    from piccolo_embed.types import RoleSpec

ROUTES = ("/v1/embeddings", "/v1/models", "/embed", "/health", "/info", "/metrics", "/docs", "/openapi.json")
_SURROGATE = re.compile("[\ud800-\udfff]")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": wire.ErrorResponse} for code in (400, 401, 413, 429, 500, 503)
}


class ServedModel(BatchModel, Protocol):
    """What the server needs from a model; :class:`~piccolo_embed.Embedder` satisfies it."""

    name: str
    roles: dict[Role, RoleSpec]

    @property
    def dim(self) -> int:
        """Embedding size."""
        ...

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face fast tokenizer: ``"long": "mean"`` chunks documents with a copy of it."""
        ...

    def count_tokens(self, texts: Sequence[str], role: Role | str | None = None, *, truncate: bool = True) -> list[int]:
        """Tokens per text with the role's prefix; ``truncate=False`` counts past the role's max length."""
        ...


def build_app(model: ServedModel, settings: ServerSettings | None = None, *, fast_routes: bool = True) -> FastAPI:
    """Create the app; the batching worker starts with the app's lifespan (or on the first request).

    Args:
        model: What to serve.
        settings: Limits, batching and the API key; defaults when ``None``.
        fast_routes: Serve well-formed embedding requests without FastAPI's router. ``False`` sends every
            request through FastAPI: the reference the tests hold the short path to.
    """
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    batcher = DynamicBatcher(
        model,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_texts=settings.max_queue_texts,
        count_tokens=functools.partial(model.count_tokens, truncate=False),  # runs on the worker, like the model
        observer=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = GatedFastAPI(title="piccolo-embed", version=__version__, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.known_paths = frozenset(ROUTES)
    install_error_handlers(app)
    name = settings.model_name or model.name or "piccolo-embed"
    routes = _add_embedding_routes(app, model, settings, batcher, name)
    _add_status_routes(app, model, settings, name)
    app.front = functools.partial(
        Gatekeeper,
        metrics=metrics,
        api_key=settings.api_key,
        max_request_bytes=settings.max_request_bytes,
        known_routes=app.state.known_paths,
        fast_routes=routes if fast_routes else {},
    )
    return app


def _add_embedding_routes(
    app: FastAPI, model: ServedModel, settings: ServerSettings, batcher: DynamicBatcher, name: str
) -> dict[str, FastRoute]:
    """Register the embedding routes on ``app``; return their handlers for the short path."""
    dim = model.dim  # read once: sentence-transformers walks its modules on every call
    timeout = settings.request_timeout_s
    names = model_names(name)
    # Built on first use: it copies the tokenizer (startup stays as fast, and scripted test models have none).
    mean = functools.cache(lambda: MeanOfChunks(model.roles, model.tokenizer, max_chunks=settings.max_queue_texts))

    async def run(texts: list[str], role: Role, dims: int | None, *, truncate: bool, param: str) -> Embedded:
        _check_request(texts, dims, settings=settings, dim=dim, param=param)
        return await _submit(batcher, texts, role, truncate=truncate, param=param, timeout=timeout)

    async def chunks(texts: list[str], role: Role) -> Embedded:
        return await _submit(batcher, texts, role, truncate=True, param="texts", timeout=timeout)

    async def openai_json(body: wire.OpenAIEmbeddingRequest) -> bytes:
        role = _openai_role(body, names, settings.default_role)
        result = await run(body.input, role, body.dimensions, truncate=True, param="input")
        vectors = resize(result.vectors, body.dimensions, normalize=True)
        served = body.model if body.model in names else name
        return wire.openai_response_json(vectors, result.token_counts, served, body.encoding_format)

    async def embed_json(body: wire.EmbedRequest) -> bytes:
        role = body.role or settings.default_role
        if body.long is LongMode.MEAN:
            _check_request(body.texts, body.dimensions, settings=settings, dim=dim, param="texts")
            result = await _long_mean(mean(), body.texts, role, chunks)
        else:
            result = await run(body.texts, role, body.dimensions, truncate=body.truncate, param="texts")
        vectors = resize(result.vectors, body.dimensions, normalize=body.normalize)
        return wire.embed_response_json(vectors, result.token_counts, name, role)

    @app.post("/v1/embeddings", response_model=wire.OpenAIEmbeddingResponse, responses=ERROR_RESPONSES)
    async def openai_embeddings(body: wire.OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible embeddings; ``role`` defaults to the server's default role."""
        return Response(await openai_json(body), media_type="application/json")

    @app.post("/embed", response_model=wire.EmbedResponse, responses=ERROR_RESPONSES)
    async def embed(body: wire.EmbedRequest) -> Response:
        """Native embeddings with ``normalize`` and ``truncate`` control."""
        return Response(await embed_json(body), media_type="application/json")

    return {
        "/v1/embeddings": FastRoute(wire.OpenAIEmbeddingRequest, openai_json),
        "/embed": FastRoute(wire.EmbedRequest, embed_json),
    }


def _add_status_routes(app: FastAPI, model: ServedModel, settings: ServerSettings, name: str) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: 200 while the batching worker runs, 503 once it has stopped."""
        ok = app.state.batcher.alive
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/info", response_model=wire.InfoResponse)
    async def info() -> wire.InfoResponse:
        """Model, dimension, roles and limits, so clients can size their requests."""
        roles = {role.value: wire.RoleInfo(**spec.to_dict()) for role, spec in model.roles.items()}
        return wire.InfoResponse(
            model=name, dimension=model.dim, default_role=settings.default_role, roles=roles, limits=settings.limits()
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model's names in OpenAI's model-list shape: plain, ``-query`` and ``-passage``."""
        entries = [
            {"id": served, "object": "model", "created": 0, "owned_by": "piccolo-embed"} for served in model_names(name)
        ]
        return {"object": "list", "data": entries}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE)


def model_names(name: str) -> dict[str, Role | None]:
    """The model names ``/v1/embeddings`` knows, each with the role it selects (``None``: the default role)."""
    return {name: None, f"{name}-{Role.QUERY.value}": Role.QUERY, f"{name}-{Role.PASSAGE.value}": Role.PASSAGE}


def _openai_role(body: wire.OpenAIEmbeddingRequest, names: dict[str, Role | None], default: Role) -> Role:
    """The role an OpenAI request asks for: its ``role`` field, else its model name's, else the default.

    Other model names are accepted, with the default role, as before role names existed.
    """
    named = names.get(body.model) if body.model else None
    if body.role is not None and named is not None and body.role is not named:
        message = f"model {body.model!r} selects role {named.value}, but the request's role is {body.role.value}"
        raise ApiError(400, message, param="role", code="conflicting_role")
    return body.role or named or default


async def _long_mean(mean: MeanOfChunks, texts: list[str], role: Role, submit: SubmitChunks) -> Embedded:
    """``long: mean`` embeddings, with chunking errors as HTTP errors (batcher errors are already)."""
    try:
        return await mean.embed(texts, role, submit)
    except TooManyChunksError as err:
        message = f"texts: {err}; send fewer or shorter texts"
        raise ApiError(413, message, param="texts", code="too_many_chunks") from None
    except (ValueError, TypeError) as err:
        raise ApiError(400, f"texts: {err}", param="texts", code="invalid_input") from None


def _check_request(texts: list[str], dims: int | None, *, settings: ServerSettings, dim: int, param: str) -> None:
    """Limits that depend on settings or the model, so they cannot live in the static wire models."""
    if dims is not None and dims > dim:
        raise ApiError(
            400, f"dimensions: {dims} is larger than the model's {dim}", param="dimensions", code="invalid_dimensions"
        )
    if len(texts) > settings.max_inputs_per_request:
        message = f"{param}: {len(texts)} texts, more than the {settings.max_inputs_per_request} allowed per request"
        raise ApiError(400, message, param=param, code="too_many_inputs")
    for index, text in enumerate(texts):
        where = f"{param}[{index}]"
        if not text or text.isspace():  # as OpenAI does: an empty text has no meaning to embed
            raise ApiError(400, f"{where}: empty or only whitespace", param=where, code="empty_text")
        if len(text) > settings.max_chars_per_text:
            message = f"{where}: {len(text)} characters, more than the {settings.max_chars_per_text} allowed"
            raise ApiError(413, message, param=where, code="text_too_long")
        if not text.isascii() and _SURROGATE.search(text):  # JSON allows "\ud800"; tokenizers reject it
            raise ApiError(400, f"{where}: not valid Unicode (lone surrogate)", param=where, code="invalid_text")


async def _submit(
    batcher: DynamicBatcher, texts: list[str], role: Role, *, truncate: bool, param: str, timeout: float
) -> Embedded:
    """Await the batcher, turning its exceptions into HTTP errors."""
    try:
        return await _within(batcher.submit(texts, role, truncate=truncate), timeout)
    except QueueFullError as err:
        raise ApiError(429, f"server busy: {err}", code="queue_full", headers={"Retry-After": "1"}) from None
    except InputTooLongError as err:
        where = f"{param}[{err.index}]"
        message = (
            f"{where} has {err.tokens} tokens, more than the {err.limit} allowed for role {role.value}; "
            'shorten it, send truncate=true, or send long="mean" for the mean of its chunks\' vectors'
        )
        raise ApiError(413, message, param=where, code="input_too_long") from None
    except (ValueError, TypeError) as err:
        raise ApiError(400, f"{param}: {err}", param=param, code="invalid_input") from None
    except TimeoutError:
        raise ApiError(503, f"no result within {timeout:g} s; the server is overloaded", code="timeout") from None
    except BatcherClosedError as err:
        raise ApiError(503, str(err), code="shutting_down") from None
    except NonFiniteOutputError as err:
        raise ApiError(500, f"{err}; no vectors were sent", code="non_finite_output") from None
    except Exception as err:  # the model failed on this batch; the worker logged it and lives on
        raise ApiError(500, f"the model failed: {type(err).__name__}", code="model_error") from None


async def _within(future: asyncio.Future[Embedded], timeout: float) -> Embedded:
    """Await ``future``, failing it with ``TimeoutError`` after ``timeout`` seconds.

    Why not ``asyncio.wait_for``: before Python 3.12 it wraps the future in a second one and resolves it one
    event-loop turn later, work the loop repeats for every request between two forward passes. A future
    that timed out is done, so the batcher drops its texts, as it does for a cancelled one.
    """
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Embedded]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def resize(vectors: np.ndarray, dims: int | None, *, normalize: bool) -> np.ndarray:
    """Keep the first ``dims`` components (Matryoshka-style) and, if asked, rescale rows to unit length.

    Only models trained with a Matryoshka loss keep their quality when cut; others still work, but worse.
    """
    if dims is None or dims >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dims]
    if not normalize:
        return cut
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)
