"""The :class:`Sandbox` class: create, connect to, and control sandboxes."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from ._config import ConnectionConfig
from ._http import ApiClient
from .commands import Commands
from .errors import ConflictError, NotFoundError, WarrenError
from .files import Files
from .models import Event, NetworkPolicy, PauseResult, SandboxInfo, SandboxState, SnapshotInfo
from .pty import Pty

__all__ = ["Sandbox"]

DEFAULT_CREATE_TIMEOUT = 600.0
"""Seconds ``Sandbox.create`` waits for the service: it answers once the
guest agent is up, and the first sandbox of a template may build its
image."""

_T = TypeVar("_T")


def _slow_timeout(api: ApiClient) -> float:
    """Timeout of the calls that write or load a sandbox's memory (pause,
    resume, snapshot): like create's, never below the configured one."""
    return max(DEFAULT_CREATE_TIMEOUT, api.config.request_timeout or 0.0)


def _api(
    api_key: str | None, base_url: str | None, request_timeout: float | None
) -> ApiClient:
    return ApiClient(ConnectionConfig.resolve(base_url=base_url, api_key=api_key, request_timeout=request_timeout))


def _kill_by_id(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    request_timeout: float | None = None,
) -> bool:
    with _api(api_key, base_url, request_timeout) as api:
        return _delete(api, sandbox_id)


def _delete(api: ApiClient, sandbox_id: str) -> bool:
    try:
        api.request("DELETE", f"/v1/sandboxes/{sandbox_id}")
    except (NotFoundError, ConflictError):
        return False
    return True


class _KillDescriptor(Generic[_T]):
    """``Sandbox.kill(sandbox_id)`` on the class, ``sandbox.kill()`` on an
    instance (as in E2B)."""

    @overload
    def __get__(self, obj: None, owner: type[_T]) -> Callable[..., bool]: ...

    @overload
    def __get__(self, obj: _T, owner: type[_T]) -> Callable[[], bool]: ...

    def __get__(self, obj: _T | None, owner: type[_T]) -> Callable[..., bool]:
        if obj is None:
            return _kill_by_id
        sandbox: Sandbox = obj  # type: ignore[assignment]
        return sandbox._kill


class Sandbox:
    """A sandbox: a Linux microVM with an agent inside.

    Create one with :meth:`create` (ideally in a ``with`` block, which kills
    it on exit) or attach to an existing one with :meth:`connect`::

        from warren import Sandbox

        with Sandbox.create(template="debian") as sbx:
            print(sbx.commands.run("uname -a").stdout)

    Attributes:
        sandbox_id: the sandbox's id (``sb-...``).
        commands: run commands and manage processes (:class:`~warren.Commands`).
        files: the filesystem (:class:`~warren.Files`).
        pty: interactive terminals (:class:`~warren.Pty`).
    """

    def __init__(self, info: SandboxInfo, api: ApiClient, *, owns_api: bool = True) -> None:
        """Internal: use :meth:`create` or :meth:`connect`."""
        self.sandbox_id = info.sandbox_id
        self._info = info
        self._api = api
        self._owns_api = owns_api
        self.commands = Commands(api, info.sandbox_id)
        self.files = Files(api, info.sandbox_id)
        self.pty = Pty(api, info.sandbox_id)

    def __repr__(self) -> str:
        return f"<Sandbox {self.sandbox_id} template={self._info.template!r}>"

    @property
    def id(self) -> str:
        return self.sandbox_id

    @property
    def info(self) -> SandboxInfo:
        """The sandbox as last seen by this object (refresh with
        :meth:`get_info`)."""
        return self._info

    @property
    def connection_config(self) -> ConnectionConfig:
        return self._api.config

    # -- constructors -------------------------------------------------------

    @classmethod
    def create(
        cls,
        template: str | None = None,
        *,
        cpus: int | None = None,
        memory_mib: int | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        auto_pause: bool = False,
        auto_resume: bool = False,
        keep_disk: bool = False,
        network: NetworkPolicy | None = None,
        public_ports: Iterable[int] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Boots a sandbox and returns once its agent answers.

        Unset options take the service's defaults (template ``debian``, 1
        CPU, 512 MiB, timeout 300 s). ``template`` may name a snapshot (see
        :meth:`snapshot`): the new sandbox is then a clone of the
        snapshotted one, with its CPUs and memory (leave ``cpus`` and
        ``memory_mib`` unset, or give the snapshot's). ``timeout``: seconds
        until the service kills the sandbox (0 for never; extend it with
        :meth:`set_timeout`); with ``auto_pause`` it is paused instead.
        ``auto_resume``: while paused, any operation on the sandbox
        (commands, files, terminals) resumes it first. ``keep_disk``: if
        its VM is lost before it has a snapshot to fall back to (a crash),
        the host keeps its disk under ``<data>/kept/`` instead of deleting it.
        ``network``: its egress policy (default: internet on, no rules;
        change it later with :meth:`set_network`). ``public_ports``: ports
        anyone may open through warren with no key or token (see
        :meth:`get_host`).
        ``envs`` are set for every command. ``api_key`` / ``base_url``
        override ``WARREN_API_KEY`` / ``WARREN_URL`` and local discovery;
        ``request_timeout`` is the default for this sandbox's API calls.
        """
        body: dict[str, Any] = {}
        if template is not None:
            body["template"] = template
        if cpus is not None:
            body["cpus"] = cpus
        if memory_mib is not None:
            body["memory_mib"] = memory_mib
        if timeout is not None:
            body["timeout_secs"] = 0 if timeout <= 0 else max(1, math.ceil(timeout))
        if metadata is not None:
            body["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        if envs is not None:
            body["env"] = {str(k): str(v) for k, v in envs.items()}
        if auto_pause:
            body["auto_pause"] = True
        if auto_resume:
            body["auto_resume"] = True
        if keep_disk:
            body["keep_disk"] = True
        if network is not None:
            body["network"] = network.to_json()
        if public_ports is not None:
            body["public_ports"] = [int(p) for p in public_ports]
        api = _api(api_key, base_url, request_timeout)
        try:
            create_timeout = max(DEFAULT_CREATE_TIMEOUT, request_timeout or 0.0)
            doc = api.post_json("/v1/sandboxes", body, timeout=create_timeout)
            info = SandboxInfo.from_json(doc)
        except BaseException:
            api.close()
            raise
        return cls(info, api)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        resume: bool = True,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attaches to an existing sandbox (created by this or another
        client of the same team). Raises :class:`~warren.NotFoundError` if
        it does not exist. A paused sandbox is resumed, unless ``resume``
        is False (then call :meth:`resume` when needed)."""
        api = _api(api_key, base_url, request_timeout)
        try:
            info = SandboxInfo.from_json(api.get_json(f"/v1/sandboxes/{sandbox_id}"))
            if resume and info.state == SandboxState.PAUSED:
                info = SandboxInfo.from_json(
                    api.post_json(f"/v1/sandboxes/{sandbox_id}/resume", timeout=_slow_timeout(api))
                )
        except BaseException:
            api.close()
            raise
        return cls(info, api)

    @staticmethod
    def list(
        *,
        state: str | SandboxState | None = None,
        metadata: Mapping[str, str] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> list[SandboxInfo]:
        """Sandboxes of the caller's team, optionally filtered by ``state``
        and by ``metadata`` (every key/value must match)."""
        params: dict[str, str | list[str] | None] = {
            "state": str(state) if state is not None else None,
        }
        if metadata:
            params["metadata"] = [f"{k}:{v}" for k, v in metadata.items()]
        with _api(api_key, base_url, request_timeout) as api:
            doc = api.get_json("/v1/sandboxes", params=params)
        items = doc.get("sandboxes", []) if isinstance(doc, dict) else []
        return [SandboxInfo.from_json(s) for s in items if isinstance(s, dict)]

    kill = _KillDescriptor["Sandbox"]()
    """``sandbox.kill()`` kills this sandbox; ``Sandbox.kill(sandbox_id,
    api_key=..., base_url=...)`` kills one by id. Both return False if there
    is no such sandbox (killing a stopped one is a no-op that returns True).
    The record stays, with state ``stopped``."""

    kill_by_id = staticmethod(_kill_by_id)

    # -- instance operations -------------------------------------------------

    def _kill(self) -> bool:
        killed = _delete(self._api, self.sandbox_id)
        return killed

    def get_info(self) -> SandboxInfo:
        """The sandbox's current state (fresh from the service)."""
        self._info = SandboxInfo.from_json(self._api.get_json(f"/v1/sandboxes/{self.sandbox_id}"))
        return self._info

    def is_running(self) -> bool:
        """Whether the sandbox is running (False once it is paused, stopped
        or gone)."""
        try:
            return self.get_info().state == SandboxState.RUNNING
        except NotFoundError:
            return False

    def set_timeout(self, timeout: float) -> SandboxInfo:
        """Sets the sandbox to expire ``timeout`` seconds from now (0: never)."""
        secs = 0 if timeout <= 0 else max(1, math.ceil(timeout))
        self._info = SandboxInfo.from_json(
            self._api.post_json(f"/v1/sandboxes/{self.sandbox_id}/timeout", {"timeout_secs": secs})
        )
        return self._info

    def pause(self) -> PauseResult:
        """Pauses the sandbox to disk: its memory and disk are saved and its
        VM ends (no RAM or CPU used while paused); :meth:`resume` continues
        exactly where it was, running processes included. Returns what was
        written (``.sandbox`` is the paused sandbox).

        :class:`~warren.ConflictError` unless it is running;
        :class:`~warren.HostDiskFullError` when the host's disk is full
        (the sandbox then keeps running).
        """
        result = PauseResult.from_json(
            self._api.post_json(f"/v1/sandboxes/{self.sandbox_id}/pause", timeout=_slow_timeout(self._api))
        )
        self._info = result.sandbox
        return result

    def resume(self) -> SandboxInfo:
        """Resumes a paused sandbox where it was paused.
        :class:`~warren.ConflictError` unless it is paused;
        :class:`~warren.CapacityError` when the host lacks the memory."""
        self._info = SandboxInfo.from_json(
            self._api.post_json(f"/v1/sandboxes/{self.sandbox_id}/resume", timeout=_slow_timeout(self._api))
        )
        return self._info

    def snapshot(self, name: str) -> SnapshotInfo:
        """Turns the sandbox (running or paused) into a snapshot template
        called ``name``; ``Sandbox.create(template=name)`` then makes clones
        of it. A running sandbox is paused for the copy and resumed; a
        paused one stays paused. :class:`~warren.ConflictError` if the name
        is taken or the sandbox is stopped,
        :class:`~warren.InvalidRequestError` for an invalid name (letters,
        digits, ``-``, ``_``, ``.``)."""
        return SnapshotInfo.from_json(
            self._api.post_json(
                f"/v1/sandboxes/{self.sandbox_id}/snapshots",
                {"name": name},
                timeout=_slow_timeout(self._api),
            )
        )

    # -- network -------------------------------------------------------------

    def get_network(self) -> NetworkPolicy:
        """The egress policy in force (rules in their normal form).
        :class:`~warren.ConflictError` unless the sandbox is running, or if
        it has no network card (a clone of a template from before
        networks)."""
        return NetworkPolicy.from_json(self._api.get_json(f"/v1/sandboxes/{self.sandbox_id}/network"))

    def set_network(self, policy: NetworkPolicy) -> NetworkPolicy:
        """Replaces the egress policy of the running sandbox in one step:
        new connections follow it at once, open ones stay open. Returns
        the policy in force; :class:`~warren.InvalidRequestError` names a
        rule that is not an address, CIDR, domain or ``*.domain``."""
        response = self._api.request("PUT", f"/v1/sandboxes/{self.sandbox_id}/network", json_body=policy.to_json())
        return NetworkPolicy.from_json(response.json())

    def get_host(self, port: int) -> str:
        """The host name port ``port`` of this sandbox is served at through
        warren (``{port}-{id}.{domain}``, with the listener's port): an app
        that must sit at ``/`` works there. Without an API key, a request
        needs the port to be public (:meth:`set_public_ports`) or the
        sandbox's :attr:`SandboxInfo.access_token`; :meth:`get_url` gives
        a URL a browser can open."""
        if not 0 < port < 65536:
            raise ValueError(f"{port} is not a TCP port (1 to 65535)")
        if self._info.domain is None:
            raise WarrenError("the service does not serve sandbox ports by host name (it is older than this SDK)")
        return f"{port}-{self.sandbox_id}.{self._info.domain}"

    def get_url(self, port: int) -> str:
        """A URL a browser opens port ``port`` at: :meth:`get_host` with the
        service's scheme, and the access token once in the query unless
        the port is public (the service then keeps it in a cookie of that
        host only)."""
        scheme = "https" if self._api.config.base_url.startswith("https:") else "http"
        url = f"{scheme}://{self.get_host(port)}/"
        if port not in self._info.public_ports and self._info.access_token:
            url += f"?warren_token={self._info.access_token}"
        return url

    def set_public_ports(self, ports: Iterable[int]) -> SandboxInfo:
        """Replaces the ports anyone may open with no key or token (an
        empty list makes every port need one again)."""
        response = self._api.request(
            "PUT", f"/v1/sandboxes/{self.sandbox_id}/public-ports", json_body={"ports": [int(p) for p in ports]}
        )
        self._info = SandboxInfo.from_json(response.json())
        return self._info

    def logs(self, tail_bytes: int | None = None) -> str:
        """The guest's serial console (kernel and init messages), the last
        ``tail_bytes`` of it (service default: 64 KiB)."""
        response = self._api.request("GET", f"/v1/sandboxes/{self.sandbox_id}/logs", params={"tail_bytes": tail_bytes})
        return response.text

    def events(self) -> builtins.list[Event]:
        """The sandbox's audit events."""
        doc = self._api.get_json(f"/v1/sandboxes/{self.sandbox_id}/events")
        items = doc.get("events", []) if isinstance(doc, dict) else []
        return [Event.from_json(e) for e in items if isinstance(e, dict)]

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Releases this object's connections; the sandbox keeps running."""
        if self._owns_api:
            self._api.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._kill()
        except WarrenError:
            if exc is None:
                raise
            # Do not hide the error that ended the block.
        finally:
            self.close()
