"""Sandbox lifecycle, configuration and API errors against a live service."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

import warren
from warren import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    NotFoundError,
    Sandbox,
    SandboxState,
    Warren,
)

from .conftest import Server


def test_create_get_list_kill(server: Server, unique: str) -> None:
    sbx = Sandbox.create(
        template="debian",
        cpus=1,
        memory_mib=384,
        timeout=120,
        metadata={"suite": "sdk-python", "case": unique},
        envs={"GREETING": "hi from env"},
    )
    try:
        info = sbx.info
        assert info.sandbox_id == sbx.sandbox_id and sbx.sandbox_id.startswith("sb-")
        assert info.template == "debian"
        assert info.state == SandboxState.RUNNING and info.is_running
        assert (info.cpus, info.memory_mib) == (1, 384)
        assert info.metadata == {"suite": "sdk-python", "case": unique}
        assert info.envs == {"GREETING": "hi from env"}
        assert info.timeout_secs == 120
        assert info.created_at is not None and info.expires_at is not None
        assert abs((info.expires_at - info.created_at) - timedelta(seconds=120)) < timedelta(seconds=5)
        assert info.stopped_at is None and info.stop_reason is None

        # Sandbox-level environment reaches commands.
        assert sbx.commands.run("echo $GREETING").stdout == "hi from env\n"

        fresh = sbx.get_info()
        assert fresh.sandbox_id == sbx.sandbox_id and fresh.state == "running"

        listed = Sandbox.list(metadata={"case": unique})
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(metadata={"case": unique, "suite": "sdk-python"})[0].sandbox_id == sbx.sandbox_id
        assert Sandbox.list(metadata={"case": unique + "-other"}) == []
        assert sbx.sandbox_id in {s.sandbox_id for s in Sandbox.list(state="running")}
        assert sbx.sandbox_id not in {s.sandbox_id for s in Sandbox.list(state=SandboxState.STOPPED)}

        assert sbx.kill() is True
        stopped = sbx.get_info()
        assert stopped.state == SandboxState.STOPPED
        assert stopped.stop_reason == "killed"
        assert stopped.stopped_at is not None
        assert sbx.sandbox_id in {s.sandbox_id for s in Sandbox.list(state="stopped")}
        assert not sbx.is_running()

        # A stopped sandbox refuses work with a conflict, and a second kill
        # is harmless.
        with pytest.raises(ConflictError):
            sbx.commands.run("true")
        sbx.kill()
    finally:
        sbx.kill()
        sbx.close()


def test_context_manager_kills_on_exit_and_set_timeout(server: Server) -> None:
    with Sandbox.create(timeout=60) as sbx:
        sandbox_id = sbx.sandbox_id
        assert sbx.commands.run("echo ready").stdout == "ready\n"

        before = time.time()
        info = sbx.set_timeout(600)
        assert info.timeout_secs == 600
        assert info.expires_at is not None
        remaining = info.expires_at.timestamp() - before
        assert 590 <= remaining <= 610, remaining
        assert sbx.get_info().expires_at == info.expires_at


    other = Sandbox.connect(sandbox_id)
    try:
        info = other.get_info()
        assert info.state == SandboxState.STOPPED and info.stop_reason == "killed"
    finally:
        other.close()


# A background Python process that keeps a random value in memory only and
# tells it when asked (a file appears): after a pause and resume it must
# still be the same process with the same value.
_KEEPER = """
import os, secrets, time
value = secrets.token_hex(8)
with open('/tmp/keeper-value', 'w') as f:
    f.write(value)
while True:
    if os.path.exists('/tmp/keeper-ask'):
        os.remove('/tmp/keeper-ask')
        with open('/tmp/keeper-answer.tmp', 'w') as f:
            f.write(value)
        os.rename('/tmp/keeper-answer.tmp', '/tmp/keeper-answer')
    time.sleep(0.1)
"""


def _wait_for_file(sbx: Sandbox, path: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sbx.files.read(path)
        except NotFoundError:
            assert time.monotonic() < deadline, f"{path} did not appear"
            time.sleep(0.2)


def test_pause_and_resume_keep_files_and_processes(server: Server) -> None:
    with Sandbox.create(template="debian", memory_mib=256, timeout=600) as sbx:
        assert not sbx.info.auto_resume
        sbx.files.write("/home/user/before-pause.txt", "still here\n")
        keeper = sbx.commands.run(["python3", "-c", _KEEPER], background=True, stdin=False)
        value = _wait_for_file(sbx, "/tmp/keeper-value")
        assert len(value) == 16

        result = sbx.pause()
        assert result.sandbox.sandbox_id == sbx.sandbox_id
        assert result.sandbox.state == SandboxState.PAUSED and result.sandbox.is_paused
        assert result.full and result.chain_length >= 1
        assert result.memory_bytes > 0 and result.duration_ms >= 0
        assert sbx.info.state == SandboxState.PAUSED
        assert sbx.get_info().state == SandboxState.PAUSED and not sbx.is_running()
        assert sbx.sandbox_id in {s.sandbox_id for s in Sandbox.list(state="paused")}
        # Without auto_resume, work on a paused sandbox is refused; so is a
        # second pause. Its console log can still be read.
        with pytest.raises(ConflictError):
            sbx.commands.run("true")
        with pytest.raises(ConflictError):
            sbx.pause()
        assert isinstance(sbx.logs(), str)

        info = sbx.resume()
        assert info.state == SandboxState.RUNNING and sbx.is_running()
        with pytest.raises(ConflictError):
            sbx.resume()
        assert sbx.files.read("/home/user/before-pause.txt") == "still here\n"
        # The same process, with the same value in its memory.
        assert sbx.commands.run(f"kill -0 {keeper.pid}").exit_code == 0
        sbx.files.write("/tmp/keeper-ask", "")
        assert _wait_for_file(sbx, "/tmp/keeper-answer") == value
        keeper.kill()

        kinds = {e.kind for e in sbx.events()}
        assert {"sandbox.paused", "sandbox.resumed"} <= kinds, kinds


def test_sandbox_expires_after_timeout(server: Server) -> None:
    with Sandbox.create(timeout=120) as sbx:
        sbx.set_timeout(2)
        deadline = time.monotonic() + 60
        while sbx.get_info().state != SandboxState.STOPPED:
            assert time.monotonic() < deadline, "sandbox did not expire"
            time.sleep(0.5)
        info = sbx.get_info()
        assert info.stop_reason == "timeout"
        kinds = {e.kind for e in sbx.events()}
        assert {"sandbox.created", "sandbox.timeout"} <= kinds, kinds


def test_connect_from_second_client(server: Server, sandbox: Sandbox, unique: str) -> None:
    second = Sandbox.connect(sandbox.sandbox_id, base_url=server.url, api_key=server.admin_key)
    try:
        assert second.sandbox_id == sandbox.sandbox_id
        assert second.info.state == "running"
        path = f"/tmp/{unique}-from-second"
        second.commands.run(f"echo shared > {path}", check=True)
        assert sandbox.files.read(path) == "shared\n"
    finally:
        second.close()  # closes connections only
    assert sandbox.is_running()


def test_logs_contain_kernel_console(sandbox: Sandbox, unique: str) -> None:
    # The guest kernel boots with `quiet`, so the console may hold no boot
    # messages; a message logged at KERN_ERR is always printed there.
    marker = f"warren-sdk-marker-{unique}"
    sandbox.commands.run(f"echo '<3>{marker}' > /dev/kmsg", check=True)
    deadline = time.monotonic() + 15
    logs = sandbox.logs()
    while marker not in logs:
        assert time.monotonic() < deadline, f"{marker} not in logs: {logs[-2000:]!r}"
        time.sleep(0.5)
        logs = sandbox.logs()
    # Kernel console lines carry the kernel's timestamp.
    line = next(l for l in logs.splitlines() if marker in l)
    assert line.lstrip().startswith("["), line
    tail = sandbox.logs(tail_bytes=200)
    assert 0 < len(tail.encode()) <= 200
    assert logs.endswith(tail)


def test_wrong_key_is_authentication_error(server: Server) -> None:
    bad = "wrn_" + "x" * 40
    with pytest.raises(AuthenticationError) as err:
        Sandbox.list(api_key=bad)
    assert err.value.status_code == 401 and err.value.code == "unauthorized"
    assert err.value.message
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_key="not-a-key")
    with pytest.raises(AuthenticationError):
        Sandbox.connect("sb-whatever", api_key=bad)


def test_unknown_sandbox_is_not_found(server: Server) -> None:
    with pytest.raises(NotFoundError) as err:
        Sandbox.connect("sb-doesnotexist")
    assert err.value.status_code == 404
    assert "sb-doesnotexist" in str(err.value)
    assert Sandbox.kill("sb-doesnotexist") is False
    assert Sandbox.kill_by_id("sb-doesnotexist") is False


def test_invalid_create_is_invalid_request(server: Server) -> None:
    with pytest.raises(warren.InvalidRequestError) as err:
        Sandbox.create(memory_mib=0)
    assert err.value.status_code in (400, 422)
    # Unknown templates: 422 from the service (the docs do not say which).
    with pytest.raises((NotFoundError, warren.InvalidRequestError)) as unknown:
        Sandbox.create(template="no-such-template")
    assert "no-such-template" in str(unknown.value)


def test_service_client(server: Server) -> None:
    with Warren() as w:
        health = w.health()
        assert health.status == "ok" and health.version
        assert health.accel in ("kvm", "tcg")
        templates = w.templates()
        assert "debian" in {t.template_id for t in templates}
        assert w.get_template("debian").kind == "image"
        with pytest.raises(NotFoundError):
            w.get_template("no-such-template")

        key = w.create_key(f"sdk-test-{time.monotonic_ns()}")
        assert key.key and key.key.startswith("wrn_") and key.prefix
        assert key.key_id in {k.key_id for k in w.keys()}
        # The new key works...
        assert isinstance(Sandbox.list(api_key=key.key), list)
        w.revoke_key(key.key_id)
        # ...until it is revoked.
        with pytest.raises(AuthenticationError):
            Sandbox.list(api_key=key.key)


def test_local_discovery(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WARREN_URL")
    monkeypatch.delenv("WARREN_API_KEY")
    monkeypatch.setenv("WARREN_HOME", str(server.home))
    cfg = warren.ConnectionConfig.resolve()
    assert cfg.base_url.rstrip("/").endswith(server.url.rsplit(":", 1)[1])
    assert cfg.api_key == server.admin_key
    assert isinstance(Sandbox.list(), list)

    monkeypatch.setenv("WARREN_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        Sandbox.list()
    text = str(err.value)
    assert "WARREN_URL" in text and "warren up" in text and str(tmp_path) in text

    # Arguments beat everything.
    assert isinstance(Sandbox.list(base_url=server.url, api_key=server.admin_key), list)
    assert os.environ["WARREN_HOME"] == str(tmp_path)
