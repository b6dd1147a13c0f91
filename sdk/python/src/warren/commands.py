"""Running commands in a sandbox: ``sandbox.commands``."""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from websockets.sync.client import ClientConnection

from ._http import ApiClient
from ._ws import (
    unb64,
    OutputCallback,
    StreamDecoder,
    b64,
    closed_early,
    error_from_event,
    parse_event,
    recv_message,
    send_json,
)
from .errors import ConflictError, NotFoundError, WarrenError, WarrenTimeoutError
from .models import CommandResult, OutputChunk, ProcessInfo

__all__ = ["Commands", "CommandHandle"]

DEFAULT_COMMAND_TIMEOUT = 60.0
"""Seconds a foreground ``run`` may take unless told otherwise."""

_CLIENT_GRACE = 30.0
"""Extra seconds the client waits past a command's own timeout (the
service enforces the timeout; this only guards against a lost connection)."""

_STDIN_CHUNK = 64 * 1024

SIGKILL = 9
SIGTERM = 15


class _Default:
    """Marks an argument left out."""


_DEFAULT = _Default()


def _timeout_secs(timeout: float | None) -> int:
    """Seconds as the API wants them: a whole number, 0 for none."""
    if timeout is None or timeout <= 0:
        return 0
    return max(1, math.ceil(timeout))


def _exec_request(
    cmd: str | Sequence[str],
    *,
    envs: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
    timeout: float | None,
) -> dict[str, Any]:
    req: dict[str, Any] = {}
    if isinstance(cmd, str):
        req["cmd"] = cmd
    else:
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("argv must not be empty")
        req["argv"] = argv
    if envs:
        req["env"] = {str(k): str(v) for k, v in envs.items()}
    if cwd is not None:
        req["cwd"] = cwd
    if user is not None:
        req["user"] = user
    req["timeout_secs"] = _timeout_secs(timeout)
    return req


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _describe(cmd: str | Sequence[str]) -> str:
    return cmd if isinstance(cmd, str) else " ".join(cmd)


class CommandHandle:
    """A command running in the background (``run(..., background=True)``
    or ``commands.connect(pid)``).

    The process keeps running when the handle is dropped or
    :meth:`disconnect`-ed; stop it with :meth:`kill`. Its output is
    received by a background thread once something needs it (callbacks,
    :meth:`wait`, iteration); callbacks run on that thread.
    Iterating yields :class:`~warren.OutputChunk` ``(stream, text)`` pairs
    until the process ends.
    """

    def __init__(
        self,
        commands: Commands,
        pid: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        command: str | None = None,
    ) -> None:
        self._commands = commands
        self.pid = pid
        self.command = command
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._stdout = StreamDecoder()
        self._stderr = StreamDecoder()
        self._chunks: queue.Queue[OutputChunk | None] = queue.Queue()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ws: ClientConnection | None = None
        self._result: CommandResult | None = None
        self._error: WarrenError | None = None
        self._disconnected = False

    def __repr__(self) -> str:
        state = "done" if self._result is not None else "running?"
        return f"<CommandHandle pid={self.pid} {state}>"

    # -- output -------------------------------------------------------------

    def _attach(self) -> None:
        """Starts receiving output (idempotent). Errors while opening the
        connection are raised here, in the caller's thread."""
        with self._lock:
            if self._thread is not None or self._done.is_set():
                return
            try:
                ws = self._commands._api.websocket(
                    f"{self._commands._base}/processes/{self.pid}/attach",
                    params={"replay": True},
                )
            except NotFoundError:
                # The service may refuse to attach to a process that has
                # already ended while its process table still has the exit
                # status: use that (the output is then unknown).
                info = self._commands._find(self.pid)
                if info is None or info.running:
                    raise
                self._result = CommandResult(
                    exit_code=info.exit_code, stdout=self.stdout, stderr=self.stderr, signal=info.signal
                )
                self._chunks.put(None)
                self._done.set()
                return
            self._ws = ws
            self._thread = threading.Thread(
                target=self._reader, args=(ws,), name=f"warren-attach-{self.pid}", daemon=True
            )
            self._thread.start()

    def _emit(self, stream: str, data: bytes) -> None:
        decoder = self._stdout if stream == "stdout" else self._stderr
        self._deliver(stream, decoder.feed(data))

    def _flush(self) -> None:
        """Delivers what the decoders still hold (an incomplete character)."""
        self._deliver("stdout", self._stdout.flush())
        self._deliver("stderr", self._stderr.flush())

    def _deliver(self, stream: str, text: str) -> None:
        if not text:
            return
        self._chunks.put(OutputChunk(stream, text))
        callback = self._on_stdout if stream == "stdout" else self._on_stderr
        if callback is not None:
            try:
                callback(text)
            except Exception:  # a callback's bug must not kill the reader
                traceback.print_exc()

    def _reader(self, ws: ClientConnection) -> None:
        try:
            while True:
                message = recv_message(ws, None)
                if message is None:
                    if not self._disconnected:
                        self._error = closed_early(f"process {self.pid} ended")
                    return
                event = parse_event(message)
                if event is None:
                    continue
                kind = event.get("type")
                if kind in ("stdout", "stderr"):
                    self._emit(str(kind), unb64(event.get("data")))
                elif kind == "exit":
                    self._finish(event)
                    return
                elif kind == "error":
                    self._error = error_from_event(event)
                    return
        except WarrenError as e:
            self._error = e
        except Exception as e:  # noqa: BLE001 - reported through wait()
            self._error = WarrenError(f"receiving output of process {self.pid} failed: {e!r}")
        finally:
            self._flush()
            self._chunks.put(None)
            self._done.set()
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass

    def _finish(self, event: Mapping[str, Any]) -> None:
        self._flush()
        self._result = CommandResult(
            exit_code=event.get("exit_code") if isinstance(event.get("exit_code"), int) else None,
            stdout=self._stdout.text,
            stderr=self._stderr.text,
            signal=event.get("signal") if isinstance(event.get("signal"), int) else None,
            timed_out=bool(event.get("timed_out", False)),
        )

    def __iter__(self) -> Iterator[OutputChunk]:
        self._attach()
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                self._chunks.put(None)  # later iterations end at once too
                return
            yield chunk

    @property
    def stdout(self) -> str:
        """Standard output received so far."""
        return self._stdout.text

    @property
    def stderr(self) -> str:
        """Standard error received so far."""
        return self._stderr.text

    @property
    def exit_code(self) -> int | None:
        """The exit code once the process ended and its end was received."""
        return self._result.exit_code if self._result else None

    @property
    def result(self) -> CommandResult | None:
        """The result once the process ended and its end was received."""
        return self._result

    # -- control ------------------------------------------------------------

    def wait(
        self,
        timeout: float | None = None,
        *,
        check: bool = False,
    ) -> CommandResult:
        """Waits for the process to end and returns its result (with all
        output since it started, as far as the service replays it).

        Raises :class:`WarrenTimeoutError` if ``timeout`` seconds pass first
        (the process keeps running), :class:`CommandExitError` with
        ``check=True`` when it did not succeed.
        """
        if self._result is None:
            self._attach()
            if not self._done.wait(timeout):
                raise WarrenTimeoutError(
                    f"process {self.pid} still running after {timeout} s",
                    code="client_timeout",
                    hint="wait longer, or stop it with kill()",
                )
            if self._result is None:
                self._result = self._poll_result(timeout)
        assert self._result is not None
        if check:
            self._result.check(self.command)
        return self._result

    def _poll_result(self, timeout: float | None) -> CommandResult:
        """Fallback when the output stream ended without an exit event:
        the process table still knows how it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            info = self._commands._find(self.pid)
            if info is not None and not info.running:
                return CommandResult(
                    exit_code=info.exit_code,
                    stdout=self._stdout.text,
                    stderr=self._stderr.text,
                    signal=info.signal,
                )
            if info is None or self._disconnected:
                if self._error is not None:
                    raise self._error
                raise NotFoundError(f"process {self.pid} is gone and its exit status is unknown")
            if deadline is not None and time.monotonic() > deadline:
                raise WarrenTimeoutError(f"process {self.pid} still running after {timeout} s", code="client_timeout")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def kill(self, signal: int = SIGKILL) -> bool:
        """Sends ``signal`` (default SIGKILL). False if the process was
        already gone."""
        return self._commands.kill(self.pid, signal)

    def send_signal(self, signal: int) -> None:
        self._commands.send_signal(self.pid, signal)

    def send_stdin(self, data: str | bytes) -> None:
        self._commands.send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        self._commands.close_stdin(self.pid)

    def disconnect(self) -> None:
        """Stops receiving output; the process keeps running."""
        self._disconnected = True
        with self._lock:
            if self._thread is None:
                self._chunks.put(None)  # nothing will ever arrive
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass
        self._done.set()


class Commands:
    """``sandbox.commands``: run commands and manage processes."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._sandbox_id = sandbox_id
        self._base = f"/v1/sandboxes/{sandbox_id}"

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str | bytes | None = None,
        check: bool = False,
        request_timeout: float | None = None,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str | bytes | bool | None = None,
        tag: str | None = None,
        request_timeout: float | None = None,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None | _Default = _DEFAULT,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str | bytes | bool | None = None,
        check: bool = False,
        tag: str | None = None,
        request_timeout: float | None = None,
    ) -> CommandResult | CommandHandle:
        """Runs a command in the sandbox.

        ``cmd`` is a shell line (run with ``/bin/sh -c``) or an argv list.

        In the foreground (default) it waits for the command and returns a
        :class:`CommandResult`; a non-zero exit is *not* an error unless
        ``check=True`` (then :class:`CommandExitError`). Output is streamed
        as it comes to ``on_stdout`` / ``on_stderr`` (decoded text).
        ``timeout`` (seconds, default 60; 0 or None for none) is enforced
        by the service: the process is killed and the result has
        ``timed_out=True``. ``stdin`` is fed to the process, then closed
        (without it, stdin is closed at once).

        With ``background=True`` it returns a :class:`CommandHandle` as soon
        as the process started; ``timeout`` defaults to none there, and
        stdin stays open for :meth:`CommandHandle.send_stdin` (close it
        with :meth:`CommandHandle.close_stdin`) unless ``stdin=False``; a
        str/bytes ``stdin`` is written first, then stdin is closed.
        ``tag`` labels the process in :meth:`list`.
        """
        if background:
            bg_timeout = None if isinstance(timeout, _Default) else timeout
            return self._start(
                cmd,
                envs=envs,
                cwd=cwd,
                user=user,
                timeout=bg_timeout,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                stdin=stdin,
                tag=tag,
                request_timeout=request_timeout,
            )
        if isinstance(stdin, bool):
            raise TypeError("stdin=True/False is for background commands; pass the input as str or bytes")
        fg_timeout = DEFAULT_COMMAND_TIMEOUT if isinstance(timeout, _Default) else timeout
        result = self._run_ws(
            cmd,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=fg_timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            stdin=stdin,
            request_timeout=request_timeout,
        )
        if check:
            result.check(_describe(cmd))
        return result

    def _run_ws(
        self,
        cmd: str | Sequence[str],
        *,
        envs: Mapping[str, str] | None,
        cwd: str | None,
        user: str | None,
        timeout: float | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        stdin: str | bytes | None,
        request_timeout: float | None,
    ) -> CommandResult:
        start = {"type": "start", **_exec_request(cmd, envs=envs, cwd=cwd, user=user, timeout=timeout)}
        data = _as_bytes(stdin) if stdin is not None else b""
        # The service takes "stdin": false for "no stdin pipe" (the process
        # reads EOF); input, when there is some, is streamed as messages.
        start["stdin"] = bool(data)
        ws = self._api.websocket(f"{self._base}/exec/ws", open_timeout=request_timeout)
        stdout, stderr = StreamDecoder(), StreamDecoder()
        try:
            send_json(ws, start)
            if data:
                for i in range(0, len(data), _STDIN_CHUNK):
                    send_json(ws, {"type": "stdin", "data": b64(data[i : i + _STDIN_CHUNK])})
                send_json(ws, {"type": "close_stdin"})
            secs = _timeout_secs(timeout)
            deadline = time.monotonic() + secs + _CLIENT_GRACE if secs else None
            while True:
                message = recv_message(ws, deadline)
                if message is None:
                    raise closed_early(f"the command {_describe(cmd)!r} ended")
                event = parse_event(message)
                if event is None:
                    continue
                kind = event.get("type")
                if kind == "stdout":
                    text = stdout.feed(unb64(event.get("data")))
                    if text and on_stdout is not None:
                        on_stdout(text)
                elif kind == "stderr":
                    text = stderr.feed(unb64(event.get("data")))
                    if text and on_stderr is not None:
                        on_stderr(text)
                elif kind == "exit":
                    for decoder, callback in ((stdout, on_stdout), (stderr, on_stderr)):
                        tail = decoder.flush()
                        if tail and callback is not None:
                            callback(tail)
                    exit_code = event.get("exit_code")
                    signal = event.get("signal")
                    return CommandResult(
                        exit_code=exit_code if isinstance(exit_code, int) else None,
                        stdout=stdout.text,
                        stderr=stderr.text,
                        signal=signal if isinstance(signal, int) else None,
                        timed_out=bool(event.get("timed_out", False)),
                    )
                elif kind == "error":
                    raise error_from_event(event)
        finally:
            # Closing early (error, Ctrl-C, callback exception) kills the
            # process on the service's side.
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass

    def _start(
        self,
        cmd: str | Sequence[str],
        *,
        envs: Mapping[str, str] | None,
        cwd: str | None,
        user: str | None,
        timeout: float | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        stdin: str | bytes | bool | None,
        tag: str | None,
        request_timeout: float | None,
    ) -> CommandHandle:
        body = _exec_request(cmd, envs=envs, cwd=cwd, user=user, timeout=timeout)
        if tag is not None:
            body["tag"] = tag
        # The service keeps a stdin pipe for background processes only when
        # asked ("stdin": true); the data, if any, follows via /stdin.
        body["stdin"] = stdin is not False
        kw: dict[str, Any] = {}
        if request_timeout is not None:
            kw["timeout"] = request_timeout
        doc = self._api.post_json(f"{self._base}/processes", body, **kw)
        pid = doc.get("pid") if isinstance(doc, dict) else None
        if not isinstance(pid, int):
            raise WarrenError(f"the service answered without a pid: {doc!r}")
        handle = CommandHandle(self, pid, on_stdout=on_stdout, on_stderr=on_stderr, command=_describe(cmd))
        if isinstance(stdin, (str, bytes)):
            self._write_stdin(pid, stdin, close=True)
        if on_stdout is not None or on_stderr is not None:
            handle._attach()
        return handle

    def list(self) -> list[ProcessInfo]:
        """Processes started through the API (running, and recently ended)."""
        doc = self._api.get_json(f"{self._base}/processes")
        items = doc.get("processes", []) if isinstance(doc, dict) else []
        return [ProcessInfo.from_json(p) for p in items if isinstance(p, dict)]

    def _find(self, pid: int) -> ProcessInfo | None:
        for p in self.list():
            if p.pid == pid:
                return p
        return None

    def connect(
        self,
        pid: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CommandHandle:
        """Attaches to a running process (started by this or another
        client). Raises :class:`NotFoundError` if there is no such process."""
        handle = CommandHandle(self, pid, on_stdout=on_stdout, on_stderr=on_stderr)
        handle._attach()
        return handle

    def _write_stdin(self, pid: int, data: str | bytes, *, close: bool) -> None:
        body: dict[str, Any] = {"close": close}
        if isinstance(data, str):
            body["data"] = data
        else:
            body["data_base64"] = b64(data)
        self._api.post_json(f"{self._base}/processes/{pid}/stdin", body)

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Writes to a background process's standard input."""
        self._write_stdin(pid, data, close=False)

    def close_stdin(self, pid: int) -> None:
        """Closes a background process's standard input (it reads EOF)."""
        self._write_stdin(pid, b"", close=True)

    def send_signal(self, pid: int, signal: int) -> None:
        """Sends a signal (a number, e.g. 15 for SIGTERM)."""
        self._api.post_json(f"{self._base}/processes/{pid}/signal", {"signal": int(signal)})

    def kill(self, pid: int, signal: int = SIGKILL) -> bool:
        """Kills a process (SIGKILL by default). False if it was already
        gone."""
        try:
            self.send_signal(pid, signal)
        except (NotFoundError, ConflictError):
            return False
        return True
