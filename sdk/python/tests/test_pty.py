"""sandbox.pty against a live service."""

from __future__ import annotations

import threading
import time

import pytest

from warren import Sandbox, WarrenTimeoutError


class Screen:
    """Collects terminal output; waits for text to appear."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._cond:
            self._data.extend(data)
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._data.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in self._data.decode(errors="replace"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{needle!r} not seen in terminal output: {bytes(self._data)[-1000:]!r}")
                self._cond.wait(remaining)


def test_pty_echo_resize_exit(sandbox: Sandbox) -> None:
    screen = Screen()
    term = sandbox.pty.create(cols=80, rows=24, on_data=screen)
    try:
        # Quotes keep the typed (echoed) line from matching.
        term.send_input(b"echo hel''lo\n")
        screen.wait_for("hello\r\n")
        term.send_input("stty size\n")
        screen.wait_for("24 80")
        term.resize(100, 30)
        term.send_input("stty size\n")
        screen.wait_for("30 100")
        term.send_input("tty; exit 3\n")
        status = term.wait(timeout=30)
        assert status.exit_code == 3, (status, screen.text)
        assert "/dev/pts/" in screen.text
        assert term.exited and b"30 100" in term.output
    finally:
        term.kill()


def test_pty_cmd_user_kill(sandbox: Sandbox) -> None:
    screen = Screen()
    with sandbox.pty.create(cols=40, rows=10, on_data=screen, cmd="/bin/bash", user="user") as term:
        term.send_input("id -un; echo $((6*7))\n")
        screen.wait_for("42")
        assert "user" in screen.text
        with pytest.raises(WarrenTimeoutError):
            term.wait(timeout=0.5)
        term.kill()
        status = term.wait(timeout=10)
        assert not status.ok
