"""The HTTP and WebSocket transport shared by every SDK object."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import httpx
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from . import __version__
from ._config import ConnectionConfig
from .errors import (
    WarrenConnectionError,
    WarrenError,
    WarrenTimeoutError,
    error_from_body,
)

USER_AGENT = f"warren-python/{__version__}"

class _Unset:
    """Marks an argument left out (``None`` already means "no timeout")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final[_Unset] = _Unset()
Timeout = float | None | _Unset
"""Seconds; None for no timeout; UNSET for the configured default."""


def _apply_timeout(kwargs: dict[str, Any], timeout: Timeout) -> None:
    if not isinstance(timeout, _Unset):
        kwargs["timeout"] = httpx.Timeout(timeout)


QueryValue = str | int | bool | None
Query = Mapping[str, QueryValue | list[str]]


def _clean_query(params: Query | None) -> httpx.QueryParams:
    """Drops None values, renders bools as true/false, repeats lists."""
    out: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, list):
            out.extend((key, v) for v in value)
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, str(value)))
    return httpx.QueryParams(out)


def raise_for_response(response: httpx.Response) -> None:
    """Raises the matching :class:`WarrenError` for a non-2xx response
    (reading the body first if it was streamed)."""
    if response.is_success:
        return
    try:
        response.read()
    except httpx.HTTPError:
        pass
    body: Any = None
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        body = None
    fallback = ""
    if body is None:
        try:
            fallback = response.text.strip()[:500]
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            fallback = ""
        fallback = f"HTTP {response.status_code}: {fallback}" if fallback else f"HTTP {response.status_code}"
    raise error_from_body(response.status_code, body, fallback)


def _transport_error(e: httpx.HTTPError, base_url: str) -> WarrenError:
    if isinstance(e, httpx.TimeoutException):
        return WarrenTimeoutError(
            f"request to warren at {base_url} timed out ({type(e).__name__})",
            code="client_timeout",
            hint="raise request_timeout, or check that the service is not overloaded",
        )
    if isinstance(e, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return WarrenConnectionError(
            f"cannot reach warren at {base_url}: {e}",
            code="connection",
            hint="is `warren up` running? Check WARREN_URL / base_url",
        )
    return WarrenError(f"HTTP error talking to warren at {base_url}: {e}", code="transport")


class ApiClient:
    """A thread-safe HTTP client bound to one service and key.

    One is created per :class:`~warren.Sandbox` (or shared, when passed in);
    close it with :meth:`close`.
    """

    def __init__(self, config: ConnectionConfig, *, http_client: httpx.Client | None = None) -> None:
        self.config = config
        self._owns_client = http_client is None
        self._http = http_client or httpx.Client(
            base_url=config.base_url,
            headers=self._headers(),
            timeout=httpx.Timeout(config.request_timeout),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._closed = False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}", "User-Agent": USER_AGENT}

    # -- HTTP ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        json_body: Any = None,
        timeout: Timeout = UNSET,
        **kwargs: Any,
    ) -> httpx.Response:
        """Sends a request and raises on an error status. ``timeout``:
        seconds, None for none, or omitted for the configured default."""
        extra: dict[str, Any] = dict(kwargs)
        if json_body is not None:
            extra["json"] = json_body
        _apply_timeout(extra, timeout)
        try:
            response = self._http.request(method, path, params=_clean_query(params), **extra)
        except httpx.HTTPError as e:
            raise _transport_error(e, self.config.base_url) from e
        raise_for_response(response)
        return response

    def get_json(self, path: str, *, params: Query | None = None, timeout: Timeout = UNSET) -> Any:
        return self.request("GET", path, params=params, timeout=timeout).json()

    def post_json(self, path: str, body: Any = None, *, timeout: Timeout = UNSET) -> Any:
        response = self.request("POST", path, json_body=body if body is not None else {}, timeout=timeout)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        timeout: Timeout = UNSET,
        **kwargs: Any,
    ) -> Iterator[httpx.Response]:
        """A streamed response (checked for errors before it is yielded)."""
        extra: dict[str, Any] = dict(kwargs)
        _apply_timeout(extra, timeout)
        try:
            with self._http.stream(method, path, params=_clean_query(params), **extra) as response:
                raise_for_response(response)
                yield response
        except httpx.HTTPError as e:
            raise _transport_error(e, self.config.base_url) from e

    def open_stream(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        timeout: Timeout = UNSET,
    ) -> httpx.Response:
        """Like :meth:`stream`, but the caller must close the response."""
        extra: dict[str, Any] = {}
        _apply_timeout(extra, timeout)
        try:
            request = self._http.build_request(method, path, params=_clean_query(params), **extra)
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise _transport_error(e, self.config.base_url) from e
        try:
            raise_for_response(response)
        except BaseException:
            response.close()
            raise
        return response

    # -- WebSocket ----------------------------------------------------------

    def websocket(
        self,
        path: str,
        *,
        params: Query | None = None,
        open_timeout: float | None = None,
    ) -> ClientConnection:
        """Opens a WebSocket to ``path``; HTTP errors during the handshake
        are mapped like any API error."""
        url = self.config.ws_base_url + path
        query = _clean_query(params)
        if query:
            url += "?" + str(query)
        try:
            connection = ws_connect(
                url,
                additional_headers=self._headers(),
                open_timeout=open_timeout if open_timeout is not None else self.config.request_timeout,
                close_timeout=5,
                max_size=None,
                user_agent_header=USER_AGENT,
            )
            # Entering marks the connection as managed by us (websockets >= 17
            # warns otherwise); we close it ourselves.
            return connection.__enter__()
        except InvalidStatus as e:
            resp = e.response
            body: Any = None
            fallback = ""
            raw = resp.body or b""
            try:
                body = json.loads(raw)
            except ValueError:
                fallback = raw.decode("utf-8", "replace").strip()[:500]
            raise error_from_body(resp.status_code, body, fallback or f"HTTP {resp.status_code}") from e
        except TimeoutError as e:
            raise WarrenTimeoutError(
                f"opening a WebSocket to {url} timed out",
                code="client_timeout",
                hint="is the service overloaded? raise request_timeout",
            ) from e
        except (OSError, InvalidURI, WebSocketException) as e:
            raise WarrenConnectionError(
                f"cannot open a WebSocket to {url}: {e}",
                code="connection",
                hint="is `warren up` running? Check WARREN_URL / base_url",
            ) from e

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
