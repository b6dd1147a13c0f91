"""Service-level API: health, templates, snapshots, API keys, events."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from ._config import ConnectionConfig
from ._http import ApiClient, _transport_error, raise_for_response
from .models import ApiKey, Event, Health, SandboxInfo, SnapshotInfo, Template

__all__ = ["Warren"]


def _items(doc: Any, key: str) -> list[dict[str, Any]]:
    items = doc.get(key, []) if isinstance(doc, dict) else []
    return [i for i in items if isinstance(i, dict)]


class Warren:
    """A client for the service itself (as opposed to one sandbox)::

        from warren import Warren

        with Warren() as w:
            print(w.health().version, [t.name for t in w.templates()])

    Configuration as for :class:`~warren.Sandbox`: arguments, else
    ``WARREN_URL`` / ``WARREN_API_KEY``, else local discovery.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.config = ConnectionConfig.resolve(base_url=base_url, api_key=api_key, request_timeout=request_timeout)
        self._api = ApiClient(self.config)

    def health(self) -> Health:
        """``GET /health`` (needs no key)."""
        try:
            response = httpx.get(self.config.base_url + "/health", timeout=self.config.request_timeout)
        except httpx.HTTPError as e:
            raise _transport_error(e, self.config.base_url) from e
        raise_for_response(response)
        return Health.from_json(response.json())

    def sandboxes(self, *, state: str | None = None, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        """Sandboxes of the caller's team (see :meth:`Sandbox.list`)."""
        params: dict[str, str | list[str] | None] = {"state": state}
        if metadata:
            params["metadata"] = [f"{k}:{v}" for k, v in metadata.items()]
        return [SandboxInfo.from_json(s) for s in _items(self._api.get_json("/v1/sandboxes", params=params), "sandboxes")]

    def templates(self) -> list[Template]:
        return [Template.from_json(t) for t in _items(self._api.get_json("/v1/templates"), "templates")]

    def get_template(self, template_id: str) -> Template:
        return Template.from_json(self._api.get_json(f"/v1/templates/{template_id}"))

    def snapshots(self) -> list[SnapshotInfo]:
        """The team's snapshot templates, oldest first (take one with
        :meth:`Sandbox.snapshot <warren.Sandbox.snapshot>`)."""
        return [SnapshotInfo.from_json(s) for s in _items(self._api.get_json("/v1/snapshots"), "snapshots")]

    def get_snapshot(self, name: str) -> SnapshotInfo:
        """One snapshot template (:class:`~warren.NotFoundError` if there is
        none by that name)."""
        return SnapshotInfo.from_json(self._api.get_json(f"/v1/snapshots/{name}"))

    def delete_snapshot(self, name: str) -> None:
        """Deletes a snapshot template. :class:`~warren.ConflictError` while
        sandboxes created from it exist (see :attr:`SnapshotInfo.used_by`)."""
        self._api.request("DELETE", f"/v1/snapshots/{name}")

    def create_key(self, name: str, *, team: str | None = None) -> ApiKey:
        """Creates an API key; its secret is in ``.key``, shown only now.
        ``team`` (admin keys only) puts it in another team, created if new."""
        body: dict[str, Any] = {"name": name}
        if team is not None:
            body["team"] = team
        return ApiKey.from_json(self._api.post_json("/v1/keys", body))

    def keys(self) -> list[ApiKey]:
        return [ApiKey.from_json(k) for k in _items(self._api.get_json("/v1/keys"), "keys")]

    def revoke_key(self, key_id: str) -> None:
        """Revokes a key: it stops working at once."""
        self._api.request("DELETE", f"/v1/keys/{key_id}")

    def events(self, *, sandbox_id: str | None = None, limit: int | None = None) -> list[Event]:
        """Audit events, newest first."""
        doc = self._api.get_json("/v1/events", params={"sandbox_id": sandbox_id, "limit": limit})
        return [Event.from_json(e) for e in _items(doc, "events")]

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Warren:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
