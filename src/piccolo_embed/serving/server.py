"""The HTTP server around the app: uvicorn with a guarded connection protocol and a bounded shutdown drain.

Why our own protocol class: uvicorn (0.55, httptools) buffers request lines and headers of any size and number,
and has no timeout while it waits for headers or a body, so slow or huge heads hold connections and memory
before the app (and its API-key check) sees anything. :class:`GuardedHttpToolsProtocol` adds, per connection:

* caps on head bytes (request line plus headers) and on the number of headers: 431 and close;
* a deadline for the head (from connect or the first byte of a request) and one for the body: 408 and close
  for a late head, close for a late body (the app sees a disconnect);
* a cap on open connections: when a new one would exceed it, the connection that has waited longest for
  client bytes (a slow head or body; idle keep-alives that were already answered only after those) is closed
  to make room, so slow clients cannot lock out ``/health`` or well-behaved callers; only when every
  connection has a request being answered is the newcomer refused (503).

:class:`DrainingServer` starts the batcher's drain when uvicorn begins to shut down (SIGTERM, SIGINT): what is
queued keeps running for ``drain_s`` seconds, then gets 503, so a backlog cannot hold shutdown hostage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    import socket

    from fastapi import FastAPI

    from piccolo_embed.serving.settings import ServerSettings

log = logging.getLogger(__name__)

# Time given to answers (the drain's 503s included) to go out after the drain, before uvicorn cancels them.
SHUTDOWN_GRACE_S = 2.0


class _RefusedError(Exception):
    """Raised from a parser callback to stop parsing a connection that was refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits, read deadlines and a connection cap (module docstring).

    Subclasses made by :func:`guarded_protocol` set :attr:`limits` and :attr:`on_refusal`.
    """

    limits: ClassVar[ServerSettings]
    on_refusal: ClassVar[Callable[[str], None]] = staticmethod(lambda reason: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Register the connection, make room under the cap, and start the head deadline."""
        self._refused = False  # answered with an error and closing: ignore further bytes
        self._head_error: tuple[int, str, str] | None = None  # set by a parser callback that stops parsing
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._header_count = 0
        self._parsing_head = False
        self._waiting_since: float | None = time.monotonic()  # waiting for client bytes since (None: answering)
        self._answered = False  # a request on this connection was answered
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()
        self._arm(self.limits.header_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline timer, then let uvicorn clean up."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then refuse a head that has grown past the byte cap."""
        if self._refused:
            return
        super().data_received(data)
        if self._parsing_head and not self._refused:
            # A chunk that began the head may hold the previous request's tail too: a slight overcount.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(*self._too_large())

    def on_message_begin(self) -> None:
        """A request head begins: count its bytes and headers, and give it a deadline."""
        super().on_message_begin()
        self._parsing_head, self._head_bytes, self._header_count = True, 0, 0
        self._waiting_since = self._waiting_since or time.monotonic()
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._head_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count headers; past the cap, stop parsing (answered 431 by :meth:`send_400_response`)."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._head_error = (431, "too_many_headers", f"more than {self.limits.max_headers} request headers")
            raise _RefusedError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: refuse it if too large, else give the body (if any) its own deadline."""
        self._parsing_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:  # a head that came in one chunk was not counted as it grew
            self._head_error = self._too_large()
            raise _RefusedError
        self._arm(self.limits.body_timeout_s, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: no deadline while the app answers, and not evictable."""
        self._disarm()
        self._waiting_since = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Answered: the connection now waits for client bytes again (uvicorn's keep-alive timeout applies)."""
        self._waiting_since = time.monotonic()
        self._answered = True
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """Uvicorn's answer to a parse error, or ours when a callback refused the request."""
        if self._head_error is None:
            super().send_400_response(msg)
        else:
            self._refuse(*self._head_error)

    def _too_large(self) -> tuple[int, str, str]:
        return 431, "header_too_large", f"request line and headers exceed {self.limits.max_header_bytes} bytes"

    def _make_room(self) -> None:
        """Over the cap: close the connection waiting longest for client bytes, or refuse this one."""
        waiting = [c for c in self.connections if c is not self and getattr(c, "_waiting_since", None) is not None]
        if not waiting:
            self._refuse(503, "too_many_connections", "too many open connections; retry shortly")
            return
        # Connections that never completed a request go first (slow heads), then idle keep-alives; oldest first.
        oldest = min(waiting, key=lambda connection: (connection._answered, connection._waiting_since))
        oldest._close("evicted")

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(408, "header_timeout", f"request head not received within {self.limits.header_timeout_s:g} s")

    def _body_late(self) -> None:
        self._deadline = None
        self._close("body_timeout")

    def _close(self, reason: str) -> None:
        if not self.transport.is_closing():
            self.on_refusal(reason)
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` with an OpenAI-shaped error and close, before the app sees the request."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._disarm()
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": reason}}
        )
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(STATUS_LINE[status] + head + body.encode())
        self._close(reason)


def guarded_protocol(settings: ServerSettings, on_refusal: Callable[[str], None]) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` class bound to ``settings`` (uvicorn instantiates it per connection)."""
    attributes = {"limits": settings, "on_refusal": staticmethod(on_refusal)}
    return type("BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins so it can bound its drain."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        """Wrap ``config``; ``on_shutdown`` runs on the event loop as shutdown starts."""
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Start the drain, then uvicorn's shutdown (stop listening, wait for answers, lifespan)."""
        self._on_shutdown()
        await super().shutdown(sockets)
        self._captured_signals.clear()  # the signal was handled: do not re-raise it once uvicorn returns


def server_config(app: FastAPI, settings: ServerSettings, **uvicorn_options: Any) -> uvicorn.Config:
    """Uvicorn's config for ``app`` with the guarded protocol and a shutdown bounded by the drain."""
    metrics = app.state.metrics
    protocol = guarded_protocol(settings, lambda reason: metrics.refused.inc(labels={"reason": reason}))
    return uvicorn.Config(
        app, http=protocol, timeout_graceful_shutdown=settings.drain_s + SHUTDOWN_GRACE_S, **uvicorn_options
    )


def serve(app: FastAPI, settings: ServerSettings, **uvicorn_options: Any) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then end the process (``uvicorn_options``: host, port, log_level, ...).

    Why the process ends here, without the interpreter's own finalisation: after serving, its last garbage
    collection hung (seen with SIGINT and a drained backlog: the process never exited). By then every request
    is answered, the batcher is joined and the logs are flushed, so nothing is lost.
    """
    drain = settings.drain_s
    server = DrainingServer(server_config(app, settings, **uvicorn_options), lambda: app.state.batcher.drain(drain))
    server.run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if server.started else 1)
