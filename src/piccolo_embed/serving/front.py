"""The front door every request passes: API key, body size, request metrics, and a short path for embeddings.

The short path serves well-formed embedding requests without FastAPI's per-request machinery (exception and
exit-stack middleware, routing, dependency solving, response wrapping). Why: with closed-loop clients the model
waits while the event loop answers one pass's requests and parses the next, so event-loop time per request is
model time lost (numbers in docs/performance.md).

It serves only a JSON body that parses and validates against the route's pydantic model (the same
``json.loads`` plus python-mode validation FastAPI does). Anything else (bad JSON, invalid fields, another
content type) is replayed through the FastAPI route, so every error response is FastAPI's own; the tests
compare both paths on the whole bad-input matrix. The FastAPI routes stay registered: they document the API
(``/docs``) and serve those replays.

Whatever the path, the gatekeeper reads every request body itself, stopping at ``max_request_bytes`` (413)
whatever the framing, and while the request is answered it watches for the client leaving: the handler is then
cancelled (its texts are dropped before encoding) and the request counted with status ``cancelled``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from piccolo_embed.serving.errors import ApiError

if TYPE_CHECKING:
    from piccolo_embed.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = frozenset({"/health"})


@dataclass(frozen=True)
class FastRoute:
    """A ``POST`` route the short path serves: its body model and a handler returning the JSON response body.

    The same handler backs the FastAPI route, so both paths compute the same response.
    """

    body: type[BaseModel]
    handler: Callable[[Any], Awaitable[bytes]]


class GatedFastAPI(FastAPI):
    """FastAPI whose outermost layer is ``front`` (a :class:`Gatekeeper`), outside FastAPI's own middleware.

    Why: ``add_middleware`` would put the gatekeeper inside FastAPI's error, telemetry and body-limit layers,
    which every request (short path included) would then cross too, at a cost measured in docs/performance.md.
    The short path catches handler errors itself, as FastAPI's error layer would.
    """

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's stack, wrapped in ``front`` when set."""
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


class Gatekeeper:
    """Counts and times every request, checks the API key, reads bodies within the limit, serves the short path.

    Written as plain ASGI (not ``BaseHTTPMiddleware``) so it adds no task or body copy per request, and so
    refusals happen before FastAPI reads or parses anything.

    Args:
        app: The FastAPI app (or the rest of its middleware stack).
        metrics: Where request counts, latencies and refusals go.
        api_key: Required as ``Authorization: Bearer <key>`` on every route but ``/health``; ``None``: open.
        max_request_bytes: Larger bodies get a 413: at once by ``Content-Length``, else as soon as they grow past it.
        known_routes: Paths reported under their own name in metrics (others count as ``other``).
        fast_routes: Paths served by the short path; empty sends everything through FastAPI.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        api_key: str | None,
        max_request_bytes: int,
        known_routes: frozenset[str],
        fast_routes: Mapping[str, FastRoute],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.max_request_bytes = max_request_bytes
        self.known = known_routes
        self.fast_routes = dict(fast_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection event."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.known else "other"
        outcome = _Outcome(send)
        started = time.perf_counter()
        try:
            headers = dict(scope["headers"])
            if (refusal := self._refusal(scope, headers)) is not None:
                await self._error(refusal, route)(scope, receive, outcome.send)
            elif b"content-length" in headers or b"transfer-encoding" in headers:
                await self._with_body(scope, headers, receive, outcome)
            else:
                await self.app(scope, receive, outcome.send)
        finally:
            self.metrics.requests.inc(labels={"route": route, "status": outcome.status})
            self.metrics.latency.observe(time.perf_counter() - started, labels={"route": route})

    async def _with_body(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, outcome: _Outcome) -> None:
        """Read the body within the size limit whatever its framing, then answer unless the client leaves."""
        try:
            body = await _read_body(receive, self.max_request_bytes)
        except _BodyTooLargeError as err:
            message = f"request body of more than {err.limit} bytes; that is the most allowed"
            refusal = ApiError(413, message, code="request_too_large", headers={"Connection": "close"})
            await self._error(refusal, scope["path"])(scope, receive, outcome.send)
            return
        if body is None:  # the client left before sending its whole body
            outcome.cancelled = True
            return
        fast = self._fast_route(scope, headers)
        if fast is not None:
            work = self._serve_fast(fast, body, scope, receive, outcome.send)
        else:
            work = self.app(scope, _replay(body, receive), outcome.send)
        outcome.cancelled = not await _unless_client_leaves(work, receive, outcome)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> ApiError | None:
        if self.api_key is not None and scope["path"] not in OPEN_ROUTES:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                message = "missing or wrong API key; send 'Authorization: Bearer <key>'"
                return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_request_bytes:
            message = f"request body of {int(length)} bytes is larger than the {self.max_request_bytes} allowed"
            return ApiError(413, message, code="request_too_large", headers={"Connection": "close"})
        return None

    def _fast_route(self, scope: Scope, headers: dict[bytes, bytes]) -> FastRoute | None:
        """The short-path route for a JSON ``POST`` (its body was read within the limit), else ``None``."""
        if scope["method"] != "POST":
            return None
        media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        return self.fast_routes.get(scope["path"]) if media_type == b"application/json" else None

    async def _serve_fast(self, fast: FastRoute, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = fast.body.model_validate(json.loads(body))
        # Bad JSON (nested too deeply for json.loads included), invalid fields, anything else the short path
        # cannot take: the FastAPI route parses it again and words the error, as it would have anyway.
        except Exception:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            response = Response(await fast.handler(request), media_type="application/json")
        except ApiError as err:
            response = self._error(err, scope["path"])
        except Exception:  # as FastAPI's catch-all handler does: log it, answer in the error shape
            log.exception("unhandled error on %s", scope["path"])
            response = self._error(ApiError(500, "internal server error", code="internal_error"), scope["path"])
        await response(scope, receive, send)

    def _error(self, err: ApiError, route: str) -> Response:
        self.metrics.errors.inc(labels={"route": route, "code": str(err.code)})
        return err.response()


class _BodyTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class _Outcome:
    """What a request came to, for metrics: the status sent, or ``cancelled`` when the client left first."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.code = 500  # nothing sent: an error escaped
        self.answering = False
        self.cancelled = False

    @property
    def status(self) -> str:
        """The metric label."""
        return "cancelled" if self.cancelled else str(self.code)

    async def send(self, message: Message) -> None:
        """Pass ``message`` on, noting the status."""
        if message["type"] == "http.response.start":
            self.code = message["status"]
            self.answering = True
        await self._send(message)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` if the client disconnected first.

    Raises:
        _BodyTooLargeError: The body grew past ``limit`` bytes; reading stops there (chunked bodies have no
            ``Content-Length`` to refuse them by).
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _unless_client_leaves(work: Awaitable[None], receive: Receive, outcome: _Outcome) -> bool:
    """Run ``work`` in this task, cancelling it if the client disconnects before an answer starts.

    Returns whether ``work`` ran to the end. Cancelling the handler cancels the future it awaits, so the
    batcher drops the request's texts before encoding them.
    """
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        if not outcome.answering:  # uvicorn also reports a disconnect once the answer is complete
            left = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()
        return False
    finally:
        watcher.cancel()
    return True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the next app, then passes through (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
