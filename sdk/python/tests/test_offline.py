"""The parts of the SDK that need no service: configuration and error
mapping. (Everything that talks to the service is tested live.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import warren
from warren import ConfigError, ConnectionConfig
from warren.errors import error_from_body


def test_config_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WARREN_HOME", str(tmp_path))
    (tmp_path / "service.json").write_text(json.dumps({"url": "http://127.0.0.1:7711/", "pid": 1}))
    (tmp_path / "admin.key").write_text("wrn_fromfile\n")
    monkeypatch.delenv("WARREN_URL", raising=False)
    monkeypatch.delenv("WARREN_API_KEY", raising=False)
    cfg = ConnectionConfig.resolve()
    assert (cfg.base_url, cfg.api_key) == ("http://127.0.0.1:7711", "wrn_fromfile")
    assert cfg.ws_base_url == "ws://127.0.0.1:7711"
    assert "wrn_fromfile" not in repr(cfg)

    monkeypatch.setenv("WARREN_URL", "https://warren.example:8443")
    monkeypatch.setenv("WARREN_API_KEY", "wrn_fromenv")
    cfg = ConnectionConfig.resolve()
    assert (cfg.base_url, cfg.api_key) == ("https://warren.example:8443", "wrn_fromenv")
    assert cfg.ws_base_url == "wss://warren.example:8443"

    cfg = ConnectionConfig.resolve(base_url="http://h:1", api_key="wrn_arg", request_timeout=5)
    assert (cfg.base_url, cfg.api_key, cfg.request_timeout) == ("http://h:1", "wrn_arg", 5)


def test_config_error_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WARREN_HOME", str(tmp_path))
    monkeypatch.delenv("WARREN_URL", raising=False)
    monkeypatch.delenv("WARREN_API_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        ConnectionConfig.resolve()
    text = str(err.value)
    assert "service.json" in text and "admin.key" in text
    assert "WARREN_URL" in text and "WARREN_API_KEY" in text and "warren up" in text

    (tmp_path / "service.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ConnectionConfig.resolve(api_key="k")
    with pytest.raises(ConfigError, match="http://"):
        ConnectionConfig.resolve(base_url="127.0.0.1:7700", api_key="k")


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", warren.InvalidRequestError),
        (401, "unauthorized", warren.AuthenticationError),
        (404, "not_found", warren.NotFoundError),
        (409, "conflict", warren.ConflictError),
        (413, "payload_too_large", warren.PayloadTooLargeError),
        (422, "invalid", warren.InvalidRequestError),
        (422, "command_not_found", warren.CommandNotFoundError),
        (422, "disk_full", warren.DiskFullError),
        (422, "permission_denied", warren.PermissionDeniedError),
        (429, "limit_exceeded", warren.RateLimitError),
        (500, "internal", warren.ServerError),
        (501, "not_implemented", warren.NotImplementedFeatureError),
        (503, "capacity", warren.CapacityError),
        (507, "disk_full", warren.HostDiskFullError),
        (507, None, warren.HostDiskFullError),
        (418, "teapot", warren.InvalidRequestError),
        (502, None, warren.ServerError),
    ],
)
def test_error_mapping(status: int, code: str | None, cls: type[warren.WarrenError]) -> None:
    err = error_from_body(status, {"code": code, "message": "it broke", "hint": "do this"})
    assert type(err) is cls
    assert isinstance(err, warren.WarrenError)
    assert (err.status_code, err.code, err.message, err.hint) == (status, code, "it broke", "do this")
    assert str(err) == "it broke (hint: do this)"


def test_host_disk_full_is_both_disk_full_and_capacity() -> None:
    err = error_from_body(507, {"code": "disk_full", "message": "no space left"})
    assert isinstance(err, warren.DiskFullError) and isinstance(err, warren.CapacityError)
    # The sandbox's own full disk stays a plain DiskFullError (422).
    guest = error_from_body(422, {"code": "disk_full", "message": "no space left"})
    assert type(guest) is warren.DiskFullError and not isinstance(guest, warren.CapacityError)


def test_pause_and_snapshot_results_parse() -> None:
    sandbox = {
        "id": "sb-1",
        "template": "debian",
        "state": "paused",
        "cpus": 1,
        "memory_mib": 512,
        "auto_pause": True,
        "auto_resume": True,
        "timeout_secs": 0,
        "created_at": "2026-01-01T00:00:00Z",
    }
    result = warren.PauseResult.from_json(
        {"sandbox": sandbox, "memory_bytes": 1234, "full": True, "chain_length": 1, "merged": False, "duration_ms": 850}
    )
    assert result.sandbox.sandbox_id == "sb-1" and result.sandbox.is_paused
    assert result.sandbox.auto_pause and result.sandbox.auto_resume
    assert (result.memory_bytes, result.full, result.chain_length, result.merged, result.duration_ms) == (
        1234,
        True,
        1,
        False,
        850,
    )
    snap = warren.SnapshotInfo.from_json(
        {
            "name": "base",
            "source_sandbox": "sb-1",
            "cpus": 1,
            "memory_mib": 512,
            "memory_bytes": 10,
            "disk_bytes": 20,
            "used_by": ["sb-2"],
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    assert (snap.name, snap.source_sandbox, snap.used_by) == ("base", "sb-1", ["sb-2"])
    assert snap.created_at is not None
    # An older service without auto_resume.
    del sandbox["auto_resume"]
    assert warren.SandboxInfo.from_json(sandbox).auto_resume is False


def test_error_without_json_body() -> None:
    err = error_from_body(502, None, "HTTP 502: Bad Gateway")
    assert isinstance(err, warren.ServerError) and "502" in str(err)


def test_command_result_check() -> None:
    ok = warren.CommandResult(exit_code=0, stdout="x", stderr="")
    assert ok.ok and ok.check() is ok
    bad = warren.CommandResult(exit_code=2, stdout="", stderr="boom\n")
    with pytest.raises(warren.CommandExitError, match="exited with code 2: boom") as err:
        bad.check("make")
    assert err.value.result is bad and err.value.exit_code == 2
    killed = warren.CommandResult(exit_code=None, stdout="", stderr="", signal=9)
    with pytest.raises(warren.CommandExitError, match="signal 9"):
        killed.check()
    timed = warren.CommandResult(exit_code=None, stdout="", stderr="", signal=9, timed_out=True)
    with pytest.raises(warren.CommandExitError, match="timed out"):
        timed.check()
