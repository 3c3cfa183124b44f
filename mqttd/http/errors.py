"""The one error the HTTP API answers with: a status, a code, a message and the field at fault."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """
    A request the API refuses, answered as C{{"code": ..., "message": ..., "field": ...}}.

    @ivar field: the request's field at fault (a JSON key, a query parameter, a path part), or
        L{None} when the request as a whole is.
    @ivar headers: extra response headers, e.g. C{WWW-Authenticate} or C{Retry-After}.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


def badField(field: str, message: str) -> ApiError:
    """A 400 naming C{field}."""
    return ApiError(400, "BAD_REQUEST", f"{field}: {message}", field)


def notFound(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"no {what}")
