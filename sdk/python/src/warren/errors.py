"""Exceptions raised by the warren SDK.

Every error the service returns has a JSON body ``{"code", "message", "hint"}``
and a matching HTTP status; :func:`error_from_response` maps it onto the
hierarchy below. All SDK exceptions derive from :class:`WarrenError`.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import CommandResult

__all__ = [
    "WarrenError",
    "ConfigError",
    "WarrenConnectionError",
    "WarrenTimeoutError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "InvalidRequestError",
    "CommandNotFoundError",
    "PermissionDeniedError",
    "DiskFullError",
    "HostDiskFullError",
    "PayloadTooLargeError",
    "RateLimitError",
    "NotImplementedFeatureError",
    "CapacityError",
    "ServerError",
    "CommandExitError",
]


class WarrenError(Exception):
    """Base class of every error raised by the SDK.

    Attributes:
        message: what went wrong (the server's ``message`` for API errors).
        code: the API error code (``not_found``, ``invalid``...), if any.
        hint: what to do about it, if known.
        status_code: the HTTP status, for errors that come from the API.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.hint = hint
        self.status_code = status_code
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} (hint: {self.hint})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"hint={self.hint!r}, status_code={self.status_code!r})"
        )


class ConfigError(WarrenError):
    """No usable service URL or API key could be found."""


class WarrenConnectionError(WarrenError, builtins.ConnectionError):
    """The service could not be reached (refused, reset, DNS...)."""


class WarrenTimeoutError(WarrenError, builtins.TimeoutError):
    """A client-side timeout expired (HTTP request, WebSocket, or waiting
    for a command). Server-side command timeouts are not errors: they come
    back as ``CommandResult.timed_out``."""


class AuthenticationError(WarrenError):
    """401: the API key is missing, malformed, unknown or revoked."""


class NotFoundError(WarrenError):
    """404: the sandbox, file, process, template or key does not exist
    (or belongs to another team)."""


class ConflictError(WarrenError):
    """409: the operation is not valid in the current state (e.g. exec in a
    stopped sandbox)."""


class InvalidRequestError(WarrenError):
    """400 or 422: the request is malformed or was refused (bad path,
    memory 0, unknown user...)."""


class CommandNotFoundError(InvalidRequestError):
    """422 ``command_not_found``: the program to execute does not exist in
    the sandbox."""


class PermissionDeniedError(InvalidRequestError):
    """422 ``permission_denied``: the sandbox's user may not do this (e.g.
    write to a root-owned directory)."""


class DiskFullError(InvalidRequestError):
    """``disk_full``: a disk is full. 422: the sandbox's own disk (free
    space in it); 507: the host's disk (see :class:`HostDiskFullError`)."""


class PayloadTooLargeError(InvalidRequestError):
    """413: the request body is larger than the service accepts."""


class RateLimitError(WarrenError):
    """429: a limit was reached (e.g. maximum sandboxes per team)."""


class NotImplementedFeatureError(WarrenError):
    """501: the service does not implement this."""


class CapacityError(WarrenError):
    """503: the host is out of capacity (memory), e.g. to resume a paused
    sandbox."""


class HostDiskFullError(DiskFullError, CapacityError):
    """507 ``disk_full``: the host's disk is full, so a pause or snapshot
    could not be written (a sandbox being paused keeps running). Both a
    :class:`DiskFullError` and a :class:`CapacityError`."""


class ServerError(WarrenError):
    """500 or any other unexpected status: a bug or failure in the service."""


class CommandExitError(WarrenError):
    """A command did not succeed: non-zero exit, killed by a signal, or timed
    out. Raised by :meth:`CommandResult.check` and ``run(..., check=True)``.

    The full result is available as :attr:`result`.
    """

    def __init__(self, result: CommandResult, command: str | None = None) -> None:
        self.result = result
        self.command = command
        what = f"command {command!r}" if command else "command"
        if result.timed_out:
            reason = "timed out"
        elif result.signal is not None:
            reason = f"was killed by signal {result.signal}"
        else:
            reason = f"exited with code {result.exit_code}"
        message = f"{what} {reason}"
        tail = (result.stderr or result.stdout).strip()
        if tail:
            if len(tail) > 2000:
                tail = "..." + tail[-2000:]
            message = f"{message}: {tail}"
        super().__init__(message, code="command_exit")

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def signal(self) -> int | None:
        return self.result.signal


_BY_CODE: dict[str, type[WarrenError]] = {
    "command_not_found": CommandNotFoundError,
    "disk_full": DiskFullError,
    "permission_denied": PermissionDeniedError,
    "payload_too_large": PayloadTooLargeError,
    "unauthorized": AuthenticationError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "bad_request": InvalidRequestError,
    "invalid": InvalidRequestError,
    "limit_exceeded": RateLimitError,
    "not_implemented": NotImplementedFeatureError,
    "capacity": CapacityError,
    "internal": ServerError,
}

_BY_STATUS: dict[int, type[WarrenError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    501: NotImplementedFeatureError,
    503: CapacityError,
    507: HostDiskFullError,
}


def error_class(status_code: int | None, code: str | None) -> type[WarrenError]:
    """The exception class for an API error: the code decides when known,
    else the status (507 is always the host's full disk)."""
    if status_code == 507:
        return HostDiskFullError
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status_code is not None:
        if status_code in _BY_STATUS:
            return _BY_STATUS[status_code]
        if 400 <= status_code < 500:
            return InvalidRequestError
    return ServerError


def error_from_body(status_code: int | None, body: Any, fallback: str = "") -> WarrenError:
    """Builds the exception for an error body (already decoded JSON, or
    anything else when the body was not the documented shape)."""
    code: str | None = None
    hint: str | None = None
    message = fallback
    if isinstance(body, dict):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, str) else None
        raw_message = body.get("message")
        if isinstance(raw_message, str) and raw_message:
            message = raw_message
        raw_hint = body.get("hint")
        hint = raw_hint if isinstance(raw_hint, str) and raw_hint else None
    if not message:
        message = f"HTTP {status_code}" if status_code else "unknown error"
    cls = error_class(status_code, code)
    return cls(message, code=code, hint=hint, status_code=status_code)
