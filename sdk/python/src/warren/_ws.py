"""Helpers for the JSON-over-WebSocket protocols (exec/ws, attach)."""

from __future__ import annotations

import base64
import codecs
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from .errors import WarrenConnectionError, WarrenError, WarrenTimeoutError, error_class

OutputCallback = Callable[[str], object]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(data: Any) -> bytes:
    if not isinstance(data, str):
        return b""
    try:
        return base64.b64decode(data)
    except ValueError:
        return b""


def send_json(ws: ClientConnection, message: Mapping[str, Any]) -> None:
    try:
        ws.send(json.dumps(message))
    except ConnectionClosed as e:
        raise WarrenConnectionError(
            f"the connection to the sandbox closed: {e}", code="connection"
        ) from e


def recv_message(ws: ClientConnection, deadline: float | None) -> str | bytes | None:
    """The next frame; None when the connection closed. Raises
    WarrenTimeoutError when the deadline (time.monotonic()) passes."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return ws.recv(timeout=timeout)
    except TimeoutError as e:
        raise WarrenTimeoutError(
            "timed out waiting for the sandbox", code="client_timeout"
        ) from e
    except ConnectionClosed:
        return None


def error_from_event(event: Mapping[str, Any]) -> WarrenError:
    """The exception for a ``{"type":"error","code","message"}`` event."""
    code = event.get("code")
    code = code if isinstance(code, str) else None
    message = event.get("message")
    message = message if isinstance(message, str) and message else f"error {code or 'unknown'}"
    hint = event.get("hint")
    hint = hint if isinstance(hint, str) and hint else None
    status = event.get("status")
    status = status if isinstance(status, int) else None
    return error_class(status, code)(message, code=code, hint=hint, status_code=status)


class StreamDecoder:
    """Incremental, lossy UTF-8 decoding of one output stream (a multi-byte
    character split across two chunks is decoded whole)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []

    def feed(self, data: bytes) -> str:
        text = self._decoder.decode(data)
        if text:
            self._parts.append(text)
        return text

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        if text:
            self._parts.append(text)
        return text

    @property
    def text(self) -> str:
        return "".join(self._parts)


def parse_event(message: str | bytes) -> dict[str, Any] | None:
    """A JSON text frame as a dict; None for anything else."""
    if isinstance(message, bytes):
        return None
    try:
        event = json.loads(message)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def closed_early(what: str) -> WarrenConnectionError:
    return WarrenConnectionError(
        f"the connection closed before {what}",
        code="connection",
        hint="the sandbox may have been killed or timed out; check sandbox.get_info() and sandbox.logs()",
    )
