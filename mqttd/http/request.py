"""
Reading an API request: its query parameters, its JSON body and that body's typed fields, and
the page of a listing it asks for.  Each reader raises L{badField} naming what is wrong, so a
handler states what it expects and the client learns which field missed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.web.server import Request

from mqttd.http.auth import Caller
from mqttd.http.errors import ApiError, badField

# A request body larger than this is refused before it is parsed.
MAX_BODY = 1024 * 1024
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

GET, POST, PUT, DELETE = b"GET", b"POST", b"PUT", b"DELETE"

Handler = Callable[[Request, Caller, dict[str, str]], Any]
"""An endpoint: the request, who sent it, the parts of the path it named; returns the answer's
JSON value, a C{(status, value)} pair, or a Deferred of either."""

Routes = list[tuple[bytes, str, Handler]]
"""An area's endpoints: method, path under C{/api/v1/} (C{{name}} a part, C{{name*}} the rest),
handler."""


def query(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise badField(name, "not UTF-8") from None


def intQuery(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = query(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise badField(name, f"expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise badField(name, f"expected {low} to {high}, got {value}")
    return value


def jsonBody(request: Request) -> Any:
    contentType = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if contentType != "application/json":
        # Also what keeps HTML forms of other sites out: they cannot send this type.
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, "TOO_LARGE", f"a request body is at most {MAX_BODY} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise badField("body", f"not JSON: {e}") from None


def jsonObject(value: Any, where: str = "body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise badField(where, "expected a JSON object")
    return value


def objectBody(request: Request) -> dict[str, Any]:
    """The request's JSON body, which must be an object: what most endpoints that change take."""
    return jsonObject(jsonBody(request))


def stringField(obj: Mapping[str, Any], key: str, where: str = "", required: bool = True) -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise badField(where + key, "expected a non-empty string")
    return value


def qosField(obj: Mapping[str, Any], key: str = "qos", where: str = "", default: int = 0) -> int:
    value = obj.get(key, default)
    if value not in (0, 1, 2) or isinstance(value, bool):
        raise badField(where + key, f"expected 0, 1 or 2, got {value!r}")
    return int(value)


def boolField(obj: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise badField(where + key, f"expected true or false, got {value!r}")
    return value


def paged(request: Request, items: Sequence[Any]) -> dict[str, Any]:
    number = intQuery(request, "page", 1, 1, 1 << 30)
    limit = intQuery(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    start = (number - 1) * limit
    return {
        "data": list(items[start : start + limit]),
        "meta": {"page": number, "limit": limit, "count": len(items)},
    }
