"""The front door every request passes: API key, body size, request metrics, and a short path for embeddings.

Why a short path: the embedding routes are what clients call thousands of times a second, and FastAPI's
per-request machinery (exception and exit-stack middleware, routing, dependency solving, response wrapping)
took most of the event loop's time per request. That time is not just latency: with closed-loop clients the
model waits while the loop answers one pass's requests and parses the next ones, so on the 2-core benchmark
box 32 one-text clients kept the model busy 85% of the time through FastAPI and 89-90% through this path
(``docs/performance.md``).

The short path serves only well-formed requests: a JSON body with a ``Content-Length`` that parses and
validates against the route's pydantic model (the same ``json.loads`` plus python-mode validation FastAPI
does). Anything else (bad JSON, invalid fields, another content type, a chunked body) is replayed through the
FastAPI route, so every error response is FastAPI's own; the tests compare both paths on the whole bad-input
matrix. The FastAPI routes stay registered: they document the API (``/docs``) and serve those replays.
"""

from __future__ import annotations

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

    ``add_middleware`` would put the gatekeeper inside FastAPI's error, telemetry and body-limit layers, which
    every request (short path included) would then cross too: with a model that costs nothing, 32 clients
    got 6.6-6.8k requests/s that way and 7.7-8.2k with the gatekeeper outermost. Its short path catches
    handler errors itself, as FastAPI's error layer would.
    """

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's stack, wrapped in ``front`` when set."""
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


class Gatekeeper:
    """Counts and times every request, checks the API key, refuses oversized bodies, serves the short path.

    Written as plain ASGI (not ``BaseHTTPMiddleware``) so it adds no task or body copy per request, and so
    refusals happen before FastAPI reads or parses anything.

    Args:
        app: The FastAPI app (or the rest of its middleware stack).
        metrics: Where request counts, latencies and refusals go.
        api_key: Required as ``Authorization: Bearer <key>`` on every route but ``/health``; ``None``: open.
        max_request_bytes: Larger ``Content-Length`` values get a 413 before the body is read.
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
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            headers = dict(scope["headers"])
            if (refusal := self._refusal(scope, headers)) is not None:
                await self._error(refusal, route)(scope, receive, send_and_record)
            elif (fast := self._fast_route(scope, headers)) is not None:
                await self._serve_fast(fast, scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.inc(labels={"route": route, "status": str(status)})
            self.metrics.latency.observe(time.perf_counter() - started, labels={"route": route})

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> ApiError | None:
        if self.api_key is not None and scope["path"] not in OPEN_ROUTES:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                message = "missing or wrong API key; send 'Authorization: Bearer <key>'"
                return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_request_bytes:
            message = f"request body of {int(length)} bytes is larger than the {self.max_request_bytes} allowed"
            return ApiError(413, message, code="request_too_large")
        return None

    def _fast_route(self, scope: Scope, headers: dict[bytes, bytes]) -> FastRoute | None:
        """The short-path route for a JSON ``POST`` with a known length (its size was checked), else ``None``."""
        if scope["method"] != "POST" or not headers.get(b"content-length", b"").isdigit():
            return None
        media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        return self.fast_routes.get(scope["path"]) if media_type == b"application/json" else None

    async def _serve_fast(self, fast: FastRoute, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its body: nobody to answer
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


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the next app, then passes through (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
