"""The registry's error codes: one table, shared by the server and the client.

The table mirrors the OCI Distribution Spec ("Error Codes", code-1 .. code-14) plus the
codes CNCF Distribution adds that Docker clients understand (``RANGE_INVALID``,
``TAG_INVALID``, ``PAGINATION_NUMBER_INVALID``, ``UNAVAILABLE``, ``UNKNOWN``).

::

    RegistryError          raised by handlers, rendered once by the error middleware
    └── carries an ErrorCode (code, HTTP status, default message) + message + detail

The wire format (spec "Error Codes")::

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": ...}]}

:func:`decode_errors` turns such a body back into :class:`RegistryError` objects, so the
client raises the same exceptions the server raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "CODES",
    "DENIED",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "PAGINATION_NUMBER_INVALID",
    "RANGE_INVALID",
    "SIZE_INVALID",
    "TAG_INVALID",
    "TOOMANYREQUESTS",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "UNKNOWN",
    "UNSUPPORTED",
    "ErrorCode",
    "RegistryError",
    "decode_errors",
    "encode_errors",
]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of the table: the wire identifier, its HTTP status and a default message."""

    code: str
    status: int
    message: str

    def __call__(
        self,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> RegistryError:
        """Build the exception to raise: ``raise BLOB_UNKNOWN("...", detail={...})``."""
        return RegistryError(self, message or self.message, detail, status, headers)


class RegistryError(Exception):
    """An error the registry reports to the client in the spec's JSON error format.

    ``status`` overrides the code's HTTP status where the spec asks for another one
    (e.g. ``SIZE_INVALID`` for an oversized manifest is 413 Payload Too Large).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status if status is not None else code.status
        # Extra response headers the error needs (e.g. WWW-Authenticate, Content-Range).
        self.headers = dict(headers or {})
        # Further errors reported in the same response (spec: "one or more" errors).
        self.others: tuple[RegistryError, ...] = ()

    def all(self) -> tuple[RegistryError, ...]:
        return (self, *self.others)

    @classmethod
    def many(cls, errors: list[RegistryError]) -> RegistryError:
        """One exception reporting all of ``errors`` (status and headers of the first)."""
        first = errors[0]
        first.others = tuple(errors[1:])
        return first

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code.code, "message": self.message}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def _row(code: str, status: int, message: str) -> ErrorCode:
    return ErrorCode(code, status, message)


# The spec's table (code-1 .. code-14), with Distribution's HTTP statuses.
BLOB_UNKNOWN = _row("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = _row("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = _row("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = _row("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = _row(
    "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"
)
MANIFEST_INVALID = _row("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = _row("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = _row("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = _row("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = _row("SIZE_INVALID", 400, "provided length did not match content length")
UNAUTHORIZED = _row("UNAUTHORIZED", 401, "authentication required")
DENIED = _row("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = _row("UNSUPPORTED", 405, "the operation is unsupported")
TOOMANYREQUESTS = _row("TOOMANYREQUESTS", 429, "too many requests")
# Codes CNCF Distribution adds (the spec allows clients to meet them).
RANGE_INVALID = _row("RANGE_INVALID", 416, "invalid content range")
TAG_INVALID = _row("TAG_INVALID", 400, "manifest tag did not match URI")
PAGINATION_NUMBER_INVALID = _row(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)
UNAVAILABLE = _row("UNAVAILABLE", 503, "service unavailable")
UNKNOWN = _row("UNKNOWN", 500, "unknown error")

CODES: dict[str, ErrorCode] = {
    c.code: c
    for c in (
        BLOB_UNKNOWN,
        BLOB_UPLOAD_INVALID,
        BLOB_UPLOAD_UNKNOWN,
        DIGEST_INVALID,
        MANIFEST_BLOB_UNKNOWN,
        MANIFEST_INVALID,
        MANIFEST_UNKNOWN,
        NAME_INVALID,
        NAME_UNKNOWN,
        SIZE_INVALID,
        UNAUTHORIZED,
        DENIED,
        UNSUPPORTED,
        TOOMANYREQUESTS,
        RANGE_INVALID,
        TAG_INVALID,
        PAGINATION_NUMBER_INVALID,
        UNAVAILABLE,
        UNKNOWN,
    )
}


def encode_errors(*errors: RegistryError) -> bytes:
    """The spec's JSON error body for ``errors``."""
    return json.dumps({"errors": [e.to_json() for e in errors]}).encode()


def decode_errors(status: int, body: bytes) -> list[RegistryError]:
    """Parse an error response back into :class:`RegistryError` objects.

    A body that is not the spec's JSON (the spec allows any format for 4xx) becomes one
    error whose code is chosen from the HTTP status, with the body text as its message.
    Codes not in the table keep their identifier (as an ad-hoc :class:`ErrorCode`).
    """
    try:
        doc = json.loads(body)
        items = doc["errors"]
        if not isinstance(items, list):
            raise TypeError("errors is not a list")
    except (ValueError, TypeError, KeyError):
        text = body.decode("utf-8", "replace").strip()[:500]
        code = _code_for_status(status)
        return [RegistryError(code, text or code.message, None, status)]
    out: list[RegistryError] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        name = str(item.get("code", "UNKNOWN"))
        code = CODES.get(name) or ErrorCode(name, status, name.lower().replace("_", " "))
        message = item.get("message") or code.message
        out.append(RegistryError(code, str(message), item.get("detail"), status))
    if not out:
        code = _code_for_status(status)
        out.append(RegistryError(code, code.message, None, status))
    return out


def _code_for_status(status: int) -> ErrorCode:
    return {
        401: UNAUTHORIZED,
        403: DENIED,
        404: NAME_UNKNOWN,
        405: UNSUPPORTED,
        416: RANGE_INVALID,
        429: TOOMANYREQUESTS,
        503: UNAVAILABLE,
    }.get(status, UNKNOWN)
