"""What every HTTP route shares: request ids, size limits, the error envelope, body parsing, tenancy.

Routes raise `PlatformError`s; the handlers here turn them, FastAPI's validation errors and any
unexpected exception into the one envelope of `errors.py`. No stack trace ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openprofile.core import ids
from openprofile.core.errors import (
    BadRequest,
    FieldError,
    MalformedJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PlatformError,
    UnsupportedMediaType,
    ValidationFailed,
)

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)
UPLOAD_PATH_MARK = "/files/"
UPLOAD_PREFIX = "/data/foundation/import/batches/"


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "")) or ids.request_id()


def error_response(request_id: str, error: PlatformError) -> JSONResponse:
    headers = {"x-request-id": request_id, **error.headers}
    return JSONResponse(error.body(request_id), status_code=error.status, headers=headers)


class RequestContextMiddleware:
    """Assigns and echoes `x-request-id`, and refuses oversized headers and bodies with 413."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int, max_json_body_bytes: int,
                 max_upload_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_json_body_bytes = max_json_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or ids.request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        is_upload = path.startswith(UPLOAD_PREFIX) and UPLOAD_PATH_MARK in path
        limit = self.max_upload_bytes if is_upload else self.max_json_body_bytes
        header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
        error: PlatformError | None = None
        if header_bytes > self.max_header_bytes:
            error = PayloadTooLarge(f"Request headers are {header_bytes} bytes; at most {self.max_header_bytes}.")
        else:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                error = PayloadTooLarge(f"Request body is {length} bytes; at most {limit} for this endpoint.")
        if error is not None:
            await error_response(request_id, error)(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"Request body exceeds {limit} bytes for this endpoint.")
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in raw):
                    raw.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = raw
            await send(message)

        await self.app(scope, limited_receive, send_with_id)


def _pointer(loc: tuple[Any, ...]) -> str:
    where, *rest = loc if loc else ("body",)
    path = "/".join(str(p) for p in rest)
    return f"/{path}" if where == "body" else (path or str(where))


def _message(error: Any) -> str:
    """Pydantic's message, naming the offending value when it is a scalar the message does not show."""
    message = str(error.get("msg", "invalid"))
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and not isinstance(value, bool) and repr(value) not in message:
        message += f" (got {value!r})"
    return message


def fields_from_pydantic(errors: list[Any], where: tuple[str, ...] = ()) -> list[FieldError]:
    """Pydantic errors as fields; `where` prefixes locations that lack FastAPI's ("body", ...) or ("query", ...)."""
    return [FieldError(_pointer(where + tuple(e.get("loc", ()))), _message(e)) for e in errors]


def malformed_json(body: bytes, position: int, reason: str) -> MalformedJSON:
    text = body.decode("utf-8", errors="replace")
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return MalformedJSON(
        f"Malformed JSON at line {line}, column {column} (character {position}): {reason}.",
        fields=[FieldError("/", f"line {line}, column {column}: {reason}")],
    )


def parse_json_bytes(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("The request body is empty; a JSON document is required.")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise malformed_json(body, exc.pos, exc.msg) from None
    except UnicodeDecodeError:
        raise MalformedJSON("The request body is not valid UTF-8 JSON.") from None


def check_json_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and not (content_type == "application/json" or content_type.endswith("+json")):
        raise UnsupportedMediaType(
            f"Content-Type '{content_type}' is not supported here; send application/json.",
            fields=[FieldError("Content-Type", "must be application/json")],
        )


async def json_body(request: Request, model: type[Model]) -> Model:
    """Parse and validate a JSON body: 415 for a wrong type, 400 with position or with each bad field."""
    check_json_content_type(request)
    data = parse_json_bytes(await request.body())
    return validate(model, data)


def validate(model: type[Model], data: Any) -> Model:
    """Validate a parsed JSON body; each bad field is reported as a JSON pointer into the body."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = fields_from_pydantic(list(exc.errors()), ("body",))
        names = ", ".join(f"{f.path} ({f.message})" for f in fields)
        raise ValidationFailed(f"Invalid request: {names}", fields=fields) from None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PlatformError)
    async def _platform(request: Request, exc: PlatformError) -> JSONResponse:
        return error_response(request_id_of(request), exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        for e in errors:
            if e.get("type") == "json_invalid":
                loc = tuple(e.get("loc", ()))
                pos = int(loc[1]) if len(loc) > 1 and isinstance(loc[1], int) else 0
                reason = str((e.get("ctx") or {}).get("error", "invalid JSON"))
                return error_response(request_id_of(request), malformed_json(await request.body(), pos, reason))
        fields = fields_from_pydantic(errors)
        names = ", ".join(f"{f.path} ({f.message})" for f in fields)
        return error_response(request_id_of(request), ValidationFailed(f"Invalid request: {names}", fields=fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: PlatformError
        if exc.status_code == 404:
            error = NotFound(f"No such resource: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = PlatformError(str(exc.detail))
            error.status = exc.status_code
            error.title = str(exc.detail)
        return error_response(request_id_of(request), error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request_id_of(request),
            PlatformError("The server could not complete the request; it has been logged with this requestId."),
        )


def int_param(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    """A whole-number query parameter (`limit`, `start`, `page`, `offset`): `default` when absent, else a 400
    naming it when it is not a whole number or lies outside [low, high]."""
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"-?\d{1,18}", text):
        raise ValidationFailed(f"{name} '{raw}' is not a whole number", fields=[FieldError(name, "a whole number")])
    value = int(text)
    if not low <= value <= high:
        raise ValidationFailed(f"{name} {value} is out of range: use {low} to {high}",
                               fields=[FieldError(name, f"between {low} and {high}")])
    return value


async def bulk_get(request: Request, fetch: Callable[[str], Any], *, bare_list: bool = False) -> JSONResponse:
    """AEP's bulk-get: `{"ids": [{"id": ...}]}` (with `bare_list`, also the list alone, as aepp sends segment
    definitions) → 207 `{"results": {id: item}}`, where `fetch` renders one item or raises `NotFound`, which
    becomes that id's error entry."""
    check_json_content_type(request)
    body = parse_json_bytes(await request.body())
    wanted = body.get("ids") if isinstance(body, dict) else body if bare_list else None
    if not isinstance(wanted, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in wanted):
        raise ValidationFailed("bulk-get takes {\"ids\": [{\"id\": ...}]}", fields=[FieldError("/ids", "required")])
    results: dict[str, Any] = {}
    for item in wanted:
        try:
            results[item["id"]] = fetch(item["id"])
        except NotFound as exc:
            results[item["id"]] = {"errors": {"404": [{"code": 404, "message": exc.detail}]}}
    return JSONResponse({"results": results}, status_code=207)
