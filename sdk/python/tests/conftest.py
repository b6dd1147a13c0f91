"""Fixtures: a real `warren up` for the whole session, and shared sandboxes.

Nothing here is mocked: every test talks HTTP/WebSocket to the service,
which boots real microVMs under QEMU.

Environment:
  WARREN_BIN          the warren binary (default target/debug/warren, else
                      target/release/warren, relative to the repository)
  WARREN_IMAGE_CACHE  shared guest image cache (default /var/lib/warren/test-images)
  WARREN_GUEST_AGENT  passed through to the service (default: the static
                      target/x86_64-unknown-linux-gnu/release/warren-guest
                      when it exists)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from warren import Sandbox

REPO = Path(__file__).resolve().parents[3]
HEALTH_WAIT_SECS = 120.0
STOP_WAIT_SECS = 30.0


@dataclass(frozen=True)
class Server:
    url: str
    admin_key: str
    home: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


def _warren_bin() -> Path:
    env = os.environ.get("WARREN_BIN")
    if env:
        return Path(env)
    for candidate in (REPO / "target/debug/warren", REPO / "target/release/warren"):
        if candidate.is_file():
            return candidate
    return REPO / "target/debug/warren"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def qemu_processes_mentioning(text: str) -> list[str]:
    """Command lines of running qemu-system processes that contain text."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if "qemu-system" in cmdline and text in cmdline:
            found.append(f"{entry.name}: {cmdline[:300]}")
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_WAIT_SECS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = _warren_bin()
    if not binary.is_file():
        pytest.fail(f"warren binary not found at {binary}: build it (cargo build -p warren-cli) or set WARREN_BIN")
    home = Path(tempfile.mkdtemp(prefix="warren-sdk-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["WARREN_HOME"] = str(home)
    env["WARREN_IMAGE_CACHE"] = os.environ.get("WARREN_IMAGE_CACHE", "/var/lib/warren/test-images")
    if "WARREN_GUEST_AGENT" not in env:
        # The static guest agent ./dev.sh builds (a debug build next to the
        # warren binary is dynamically linked and cannot be /init).
        static_guest = REPO / "target/x86_64-unknown-linux-gnu/release/warren-guest"
        if static_guest.is_file():
            env["WARREN_GUEST_AGENT"] = str(static_guest)
    # The SDK under test must not pick up a developer's own service.
    env.pop("WARREN_URL", None)
    env.pop("WARREN_API_KEY", None)
    log_path = home / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        # Tests end with nothing left: sandboxes die with the service.
        [str(binary), "up", "--listen", f"127.0.0.1:{port}", "--on-shutdown", "kill"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    srv: Server | None = None
    try:
        deadline = time.monotonic() + HEALTH_WAIT_SECS
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"`warren up` exited with {process.returncode} before it was healthy:\n{tail}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"`warren up` not healthy after {HEALTH_WAIT_SECS:.0f} s:\n{tail}")
            time.sleep(0.2)
        key_path = home / "admin.key"
        key_deadline = time.monotonic() + 10
        while not key_path.is_file() and time.monotonic() < key_deadline:
            time.sleep(0.1)
        admin_key = key_path.read_text().strip()
        srv = Server(url=url, admin_key=admin_key, home=home, log_path=log_path, process=process)
        saved = {k: os.environ.get(k) for k in ("WARREN_URL", "WARREN_API_KEY")}
        # The SDK's own configuration path (environment) is what tests use.
        os.environ["WARREN_URL"] = url
        os.environ["WARREN_API_KEY"] = admin_key
        try:
            yield srv
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        _stop(process)
        log.close()
        # QEMU processes are killed by the service; give the kernel a moment
        # to reap them before checking.
        leftovers: list[str] = []
        deadline = time.monotonic() + 5
        while True:
            leftovers = qemu_processes_mentioning(str(home))
            if not leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for line in leftovers:
            pid = int(line.split(":", 1)[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if srv is not None and os.environ.get("WARREN_SDK_KEEP_HOME") is None:
            shutil.rmtree(home, ignore_errors=True)
        assert not leftovers, "QEMU processes survived `warren up`:\n" + "\n".join(leftovers)


@pytest.fixture(scope="session")
def sandbox(server: Server) -> Iterator[Sandbox]:
    """One sandbox shared by the tests that only run commands, move files or
    open terminals in it (each uses its own paths)."""
    sbx = Sandbox.create(template="debian", timeout=900, metadata={"suite": "sdk-python", "role": "shared"})
    try:
        yield sbx
    finally:
        sbx.kill()
        sbx.close()


@pytest.fixture
def unique() -> str:
    """A short unique name for paths and metadata."""
    return f"t{time.monotonic_ns() % 10**12:x}"
