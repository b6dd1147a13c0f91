"""Typed results of the warren API.

Parsing is lenient: unknown fields are ignored and missing optional fields
get defaults, so a newer service does not break an older SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from .errors import CommandExitError

__all__ = [
    "SandboxState",
    "SandboxInfo",
    "NetworkPolicy",
    "PauseResult",
    "SnapshotInfo",
    "CommandResult",
    "ExitStatus",
    "OutputChunk",
    "ProcessInfo",
    "FileType",
    "FileInfo",
    "Template",
    "Event",
    "ApiKey",
    "Health",
]


def _dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


class SandboxState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the service describes it (``GET /v1/sandboxes/{id}``)."""

    sandbox_id: str
    template: str
    state: str
    """``running``, ``paused`` or ``stopped`` (compare with :class:`SandboxState`)."""
    cpus: int
    memory_mib: int
    metadata: dict[str, str]
    envs: dict[str, str]
    auto_pause: bool
    timeout_secs: int
    """0 means no timeout."""
    created_at: datetime | None
    expires_at: datetime | None
    stopped_at: datetime | None
    stop_reason: str | None
    """When stopped: ``killed``, ``timeout``, ``vm_exited``, ``host_restart`` or
    ``host_shutdown``."""
    auto_resume: bool = False
    """While paused, any operation (commands, files, terminals) resumes it
    first."""
    domain: str | None = None
    """Where its ports are served by host name: port P is
    ``{P}-{sandbox_id}.{domain}`` (see :meth:`Sandbox.get_host`)."""
    access_token: str | None = None
    """Opens this sandbox's ports (and nothing else) without an API key:
    the ``X-Warren-Access-Token`` header, or ``?warren_token=`` once in a
    browser."""
    public_ports: list[int] = field(default_factory=list)
    """Ports anyone may open through warren, with no key or token."""

    @property
    def is_running(self) -> bool:
        return self.state == SandboxState.RUNNING

    @property
    def is_paused(self) -> bool:
        return self.state == SandboxState.PAUSED

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SandboxInfo:
        return cls(
            sandbox_id=_str(d.get("id")),
            template=_str(d.get("template")),
            state=_str(d.get("state")),
            cpus=_int(d.get("cpus")),
            memory_mib=_int(d.get("memory_mib")),
            metadata=_str_map(d.get("metadata")),
            envs=_str_map(d.get("env")),
            auto_pause=bool(d.get("auto_pause", False)),
            timeout_secs=_int(d.get("timeout_secs")),
            created_at=_dt(d.get("created_at")),
            expires_at=_dt(d.get("expires_at")),
            stopped_at=_dt(d.get("stopped_at")),
            stop_reason=_opt_str(d.get("stop_reason")),
            auto_resume=bool(d.get("auto_resume", False)),
            domain=_opt_str(d.get("domain")),
            access_token=_opt_str(d.get("access_token")),
            public_ports=[p for p in d.get("public_ports") or [] if isinstance(p, int)],
        )


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's egress policy. ``allow_out`` wins over ``deny_out``, and
    both over ``internet`` (the default for what no rule names), so
    ``NetworkPolicy(deny_out=["0.0.0.0/0"], allow_out=["pypi.org"])``
    reaches pypi.org and nothing else. Rules are IPv4 addresses, CIDRs,
    domain names, or ``*.domain``. Whatever it says, a sandbox never
    reaches the host, link-local and metadata addresses, or another
    sandbox."""

    internet: bool = True
    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"internet": self.internet, "allow_out": list(self.allow_out), "deny_out": list(self.deny_out)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NetworkPolicy:
        return cls(
            internet=bool(d.get("internet", True)),
            allow_out=[str(r) for r in d.get("allow_out") or []],
            deny_out=[str(r) for r in d.get("deny_out") or []],
        )


@dataclass(frozen=True)
class PauseResult:
    """What :meth:`Sandbox.pause <warren.Sandbox.pause>` did: the paused
    sandbox, and what was written to disk."""

    sandbox: SandboxInfo
    """The sandbox, now paused."""
    memory_bytes: int
    """Memory written by this pause (bytes on disk)."""
    full: bool
    """A full snapshot (the first pause) rather than the changes since the
    previous one."""
    chain_length: int
    """Generations in the sandbox's memory chain."""
    merged: bool
    """Whether the chain was merged into one generation."""
    duration_ms: int
    """How long the pause took."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PauseResult:
        sandbox = d.get("sandbox")
        return cls(
            sandbox=SandboxInfo.from_json(sandbox if isinstance(sandbox, Mapping) else {}),
            memory_bytes=_int(d.get("memory_bytes")),
            full=bool(d.get("full", False)),
            chain_length=_int(d.get("chain_length")),
            merged=bool(d.get("merged", False)),
            duration_ms=_int(d.get("duration_ms")),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot template: a sandbox's memory and disk, frozen. Sandboxes
    created with ``template=<name>`` are clones of it."""

    name: str
    """Its name, also its template id."""
    source_sandbox: str | None
    """The sandbox it was taken from."""
    cpus: int
    """vCPUs its clones get."""
    memory_mib: int
    """Memory its clones get."""
    memory_bytes: int
    """Allocated bytes of its memory on disk."""
    disk_bytes: int
    """Allocated bytes of its disk layer."""
    used_by: list[str]
    """Ids of the sandboxes (running or paused) created from it; it cannot
    be deleted while there are any."""
    created_at: datetime | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SnapshotInfo:
        used_by = d.get("used_by")
        return cls(
            name=_str(d.get("name")),
            source_sandbox=_opt_str(d.get("source_sandbox")),
            cpus=_int(d.get("cpus")),
            memory_mib=_int(d.get("memory_mib")),
            memory_bytes=_int(d.get("memory_bytes")),
            disk_bytes=_int(d.get("disk_bytes")),
            used_by=[str(u) for u in used_by] if isinstance(used_by, list) else [],
            created_at=_dt(d.get("created_at")),
        )


@dataclass(frozen=True)
class CommandResult:
    """How a command ended, with its whole output (lossy UTF-8).

    ``exit_code`` is None when the process was killed by a signal (then
    ``signal`` is set) or when the service could not tell.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    signal: int | None = None
    timed_out: bool = False
    truncated: bool = False
    """True when the service cut the output (``POST /exec`` keeps at most
    16 MiB per stream)."""

    @property
    def ok(self) -> bool:
        """Exited normally with code 0."""
        return self.exit_code == 0 and self.signal is None and not self.timed_out

    def check(self, command: str | None = None) -> CommandResult:
        """Returns self if :attr:`ok`, else raises :class:`CommandExitError`."""
        if not self.ok:
            raise CommandExitError(self, command)
        return self

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CommandResult:
        return cls(
            exit_code=_opt_int(d.get("exit_code")),
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            signal=_opt_int(d.get("signal")),
            timed_out=bool(d.get("timed_out", False)),
            truncated=bool(d.get("truncated", False)),
        )


@dataclass(frozen=True)
class ExitStatus:
    """How a terminal (PTY) session ended."""

    exit_code: int | None
    signal: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.signal is None


class OutputChunk(NamedTuple):
    """One piece of a command's output, as yielded by iterating a
    :class:`~warren.CommandHandle`: ``for stream, text in handle: ...``."""

    stream: str
    """``stdout`` or ``stderr``."""
    text: str


@dataclass(frozen=True)
class ProcessInfo:
    """A process started through the API (``GET /processes``)."""

    pid: int
    argv: list[str]
    tag: str
    pty: bool
    running: bool
    exit_code: int | None
    signal: int | None

    @property
    def cmd(self) -> str:
        """The command line: the shell line for ``sh -c LINE``, else argv joined."""
        if len(self.argv) == 3 and self.argv[1] == "-c" and self.argv[0].endswith("sh"):
            return self.argv[2]
        return " ".join(self.argv)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProcessInfo:
        argv = d.get("argv")
        return cls(
            pid=_int(d.get("pid")),
            argv=[str(a) for a in argv] if isinstance(argv, list) else [],
            tag=_str(d.get("tag")),
            pty=bool(d.get("pty", False)),
            running=bool(d.get("running", False)),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_int(d.get("signal")),
        )


class FileType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class FileInfo:
    """A file, directory or link inside a sandbox."""

    path: str
    name: str
    type: FileType
    size: int
    mode: int
    """Permission bits (e.g. ``0o644``)."""
    owner: str
    group: str
    modified_at: datetime | None
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == FileType.DIR

    @property
    def is_file(self) -> bool:
        return self.type == FileType.FILE

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileInfo:
        raw_type = _str(d.get("type"), "other")
        try:
            ftype = FileType(raw_type)
        except ValueError:
            ftype = FileType.OTHER
        path = _str(d.get("path"))
        return cls(
            path=path,
            name=_str(d.get("name")) or path.rstrip("/").rsplit("/", 1)[-1],
            type=ftype,
            size=_int(d.get("size")),
            mode=_int(d.get("mode")),
            owner=_str(d.get("owner")),
            group=_str(d.get("group")),
            modified_at=_dt(d.get("modified_at")),
            symlink_target=_opt_str(d.get("symlink_target")),
        )


@dataclass(frozen=True)
class Template:
    """A template sandboxes are created from (a built-in image, or a
    snapshot: see :class:`SnapshotInfo`)."""

    template_id: str
    name: str
    kind: str
    """``image`` (built-in) or ``snapshot``."""
    description: str
    cpus: int | None
    memory_mib: int | None
    created_at: datetime | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Template:
        return cls(
            template_id=_str(d.get("id")),
            name=_str(d.get("name")),
            kind=_str(d.get("kind")),
            description=_str(d.get("description")),
            cpus=_opt_int(d.get("cpus")),
            memory_mib=_opt_int(d.get("memory_mib")),
            created_at=_dt(d.get("created_at")),
        )


@dataclass(frozen=True)
class Event:
    """An audit event (``sandbox.created``, ``key.revoked``...)."""

    event_id: str
    sandbox_id: str | None
    kind: str
    actor: str | None
    at: datetime | None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        detail = d.get("detail")
        return cls(
            event_id=_str(d.get("id")),
            sandbox_id=_opt_str(d.get("sandbox_id")),
            kind=_str(d.get("kind")),
            actor=_opt_str(d.get("actor")),
            at=_dt(d.get("at")),
            detail=dict(detail) if isinstance(detail, Mapping) else {},
        )


@dataclass(frozen=True)
class ApiKey:
    """An API key. ``key`` (the secret) is set only in the answer to
    :meth:`~warren.Warren.create_key`."""

    key_id: str
    name: str
    team: str
    prefix: str
    created_at: datetime | None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ApiKey:
        return cls(
            key_id=_str(d.get("id")),
            name=_str(d.get("name")),
            team=_str(d.get("team")),
            prefix=_str(d.get("prefix")),
            created_at=_dt(d.get("created_at")),
            last_used_at=_dt(d.get("last_used_at")),
            revoked_at=_dt(d.get("revoked_at")),
            key=_opt_str(d.get("key")),
        )


@dataclass(frozen=True)
class Health:
    """``GET /health``."""

    status: str
    version: str
    accel: str
    sandboxes_running: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Health:
        return cls(
            status=_str(d.get("status")),
            version=_str(d.get("version")),
            accel=_str(d.get("accel")),
            sandboxes_running=_int(d.get("sandboxes_running")),
        )
