"""Interactive terminals in a sandbox: ``sandbox.pty``."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from ._http import ApiClient
from ._ws import closed_early, error_from_event, parse_event, recv_message, send_json
from .errors import WarrenConnectionError, WarrenError, WarrenTimeoutError
from .models import ExitStatus

__all__ = ["Pty", "PtyHandle"]

DataCallback = Callable[[bytes], object]

SIGKILL = 9


class PtyHandle:
    """A terminal session: a shell (or ``cmd``) on a pseudo-terminal.

    Output (raw terminal bytes) goes to the ``on_data`` callback, called on
    a background thread. Closing the session (:meth:`kill`, or leaving a
    ``with`` block) ends the processes on the terminal.
    """

    def __init__(self, ws: ClientConnection, on_data: DataCallback | None) -> None:
        self._ws = ws
        self._on_data = on_data
        self._done = threading.Event()
        self._exit: ExitStatus | None = None
        self._error: WarrenError | None = None
        self._killed = False
        self._send_lock = threading.Lock()
        self._output = bytearray()
        self._output_lock = threading.Lock()
        self._thread = threading.Thread(target=self._reader, name="warren-pty", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<PtyHandle {'exited ' + repr(self._exit) if self._exit else 'open'}>"

    def _reader(self) -> None:
        try:
            while True:
                message = recv_message(self._ws, None)
                if message is None:
                    if self._exit is None and not self._killed:
                        self._error = closed_early("the terminal session ended")
                    return
                if isinstance(message, bytes):
                    with self._output_lock:
                        self._output.extend(message)
                    if self._on_data is not None:
                        try:
                            self._on_data(message)
                        except Exception:  # a callback's bug must not stop the reader
                            traceback.print_exc()
                    continue
                event = parse_event(message)
                if event is None:
                    continue
                kind = event.get("type")
                if kind == "exit":
                    code = event.get("exit_code")
                    sig = event.get("signal")
                    self._exit = ExitStatus(
                        exit_code=code if isinstance(code, int) else None,
                        signal=sig if isinstance(sig, int) else None,
                    )
                    return
                if kind == "error":
                    self._error = error_from_event(event)
                    return
        except WarrenError as e:
            self._error = e
        except Exception as e:  # noqa: BLE001 - reported through wait()
            self._error = WarrenError(f"terminal session failed: {e!r}")
        finally:
            self._done.set()
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass

    @property
    def output(self) -> bytes:
        """Everything the terminal printed so far."""
        with self._output_lock:
            return bytes(self._output)

    @property
    def exited(self) -> bool:
        return self._done.is_set()

    def send_input(self, data: str | bytes) -> None:
        """Types into the terminal (str is UTF-8 encoded): ``b"ls\\n"``,
        ``b"\\x03"`` for Ctrl-C, ``b"\\x04"`` for Ctrl-D..."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        with self._send_lock:
            try:
                self._ws.send(payload)
            except ConnectionClosed as e:
                raise WarrenConnectionError("the terminal session is closed", code="connection") from e

    def resize(self, cols: int, rows: int) -> None:
        """Changes the terminal size."""
        with self._send_lock:
            send_json(self._ws, {"type": "resize", "cols": int(cols), "rows": int(rows)})

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Waits for the terminal's process to end. Raises
        :class:`WarrenTimeoutError` if ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            raise WarrenTimeoutError(
                f"terminal still running after {timeout} s", code="client_timeout", hint="send exit, or kill()"
            )
        if self._exit is not None:
            return self._exit
        if self._killed:
            return ExitStatus(exit_code=None, signal=SIGKILL)
        assert self._error is not None
        raise self._error

    def kill(self) -> None:
        """Ends the session: the service kills the terminal's processes
        when its connection closes. :meth:`wait` then reports SIGKILL
        unless the process had already exited."""
        if self._done.is_set():
            return
        self._killed = True
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001
            pass
        self._done.wait(10)

    close = kill

    def __enter__(self) -> PtyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Pty:
    """``sandbox.pty``: interactive terminals."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._path = f"/v1/sandboxes/{sandbox_id}/pty"

    def create(
        self,
        cols: int = 80,
        rows: int = 24,
        *,
        on_data: DataCallback | None = None,
        cmd: str | None = None,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> PtyHandle:
        """Opens a terminal running ``cmd`` (default: the user's login
        shell) as ``user`` (default root)."""
        ws = self._api.websocket(
            self._path,
            params={"cols": int(cols), "rows": int(rows), "cmd": cmd, "user": user},
            open_timeout=request_timeout,
        )
        return PtyHandle(ws, on_data)

