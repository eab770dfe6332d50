"""Every failure a client can see, in one tree, rendered as one AEP-style envelope.

The envelope is `{type, status, title, detail, requestId}`; validation errors add
`report.errors`, a list of `{path, message}` naming each bad field. Gateway errors (token, API key,
org header) also carry IMS's `error_code` and `message`, which gateway clients look for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One bad field: a JSON-pointer-like path into the request and what is wrong with it."""

    path: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class PlatformError(Exception):
    """Base of every error a client may receive. Subclasses fix the status and title."""

    status: int = 500
    title: str = "Internal Server Error"
    service: str = "OPENPROFILE"
    code: str = "0000"

    def __init__(
        self,
        detail: str,
        *,
        fields: list[FieldError] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or []
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"http://ns.adobe.com/aep/errors/{self.service}-{self.code}-{self.status}",
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
            "requestId": request_id,
        }
        if self.fields:
            body["report"] = {"errors": [f.as_json() for f in self.fields]}
        body.update(self.extra)
        return body


class BadRequest(PlatformError):
    status = 400
    title = "Bad Request"
    code = "1000"


class ValidationFailed(BadRequest):
    """The body or query is well-formed but some fields are wrong; `fields` names each."""

    code = "1001"


class MalformedJSON(BadRequest):
    code = "1002"


class NotFound(PlatformError):
    status = 404
    title = "Not Found"
    code = "1404"


class Conflict(PlatformError):
    status = 409
    title = "Conflict"
    code = "1409"


class PayloadTooLarge(PlatformError):
    status = 413
    title = "Payload Too Large"
    code = "1413"


class UnsupportedMediaType(PlatformError):
    status = 415
    title = "Unsupported Media Type"
    code = "1415"


class Unprocessable(PlatformError):
    status = 422
    title = "Unprocessable Entity"
    code = "1422"


class RangeNotSatisfiable(PlatformError):
    status = 416
    title = "Range Not Satisfiable"
    code = "1416"


class MethodNotAllowed(PlatformError):
    status = 405
    title = "Method Not Allowed"
    code = "1405"


class GatewayError(PlatformError):
    """An error raised before the request reaches a service, in IMS's `{error_code, message}` form too."""

    service = "GATEWAY"

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message, code=error_code)
        self.status = status
        self.title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(
            status, "Forbidden"
        )
        self.error_code = error_code
        self.message = message

    def body(self, request_id: str) -> dict[str, Any]:
        body = super().body(request_id)
        body["error_code"] = self.error_code
        body["message"] = self.message
        return body
