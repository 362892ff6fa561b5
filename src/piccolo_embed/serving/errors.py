"""Every failure becomes an OpenAI-style JSON error (``{"error": {message, type, param, code}}``).

Validation errors name the offending field (``input[3]``, ``dimensions``) so a client can fix its request
without reading server logs; model or worker failures are the only 5xx responses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from piccolo_embed.serving.protocol import ErrorDetail, ErrorResponse

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

log = logging.getLogger(__name__)

INVALID = "invalid_request_error"

_TYPES_BY_STATUS = {
    401: "authentication_error",
    404: "not_found_error",
    405: INVALID,
    413: INVALID,
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error response: HTTP status, message, and the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _TYPES_BY_STATUS.get(status, INVALID if status < 500 else "server_error")
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        detail = ErrorDetail(message=self.message, type=self.kind, param=self.param, code=self.code)
        return JSONResponse(ErrorResponse(error=detail).model_dump(), self.status, headers=self.headers)


def _param(loc: Sequence[str | int]) -> str | None:
    """``("body", "input", 3)`` -> ``"input[3]"``; a location that names no field -> ``None``."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    if not parts or not isinstance(parts[0], str):
        return None
    name = parts[0]
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def from_validation_error(err: RequestValidationError) -> ApiError:
    """The first pydantic/FastAPI validation error as a 400 naming its field."""
    first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": (), "type": "invalid"}
    kind = str(first.get("type", "invalid"))
    param = _param(first.get("loc", ()))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if kind == "json_invalid":
        error = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"request body is not valid JSON ({error})", code="invalid_json")
    if kind == "missing" and param is None:
        return ApiError(400, "request body is required (a JSON object)", code="missing_body")
    if kind == "extra_forbidden":
        message = "unknown field"
    if kind == "model_attributes_type" and param is None:
        message = "request body must be a JSON object, sent with Content-Type: application/json"
        return ApiError(400, message, code="invalid_body")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code=kind)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the app can see to the JSON error shape and count it."""

    async def on_api_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ApiError)
        state = request.app.state
        route = request.url.path if request.url.path in state.known_paths else "other"
        state.metrics.errors.inc(labels={"route": route, "code": str(err.code)})
        return err.response()

    async def on_validation(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        return await on_api_error(request, from_validation_error(err))

    async def on_http(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        # FastAPI raises a bare 400 when the body cannot be decoded at all (e.g. invalid UTF-8)
        code = {400: "invalid_body", 404: "not_found"}.get(err.status_code, f"http_{err.status_code}")
        headers = dict(err.headers) if err.headers else None
        return await on_api_error(request, ApiError(err.status_code, str(err.detail), code=code, headers=headers))

    async def on_unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=err)
        return await on_api_error(request, ApiError(500, "internal server error", code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
