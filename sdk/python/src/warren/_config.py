"""Where the SDK finds the service and its API key.

Order, for the URL and the key independently:

1. the ``base_url`` / ``api_key`` arguments;
2. the environment: ``WARREN_URL`` / ``WARREN_API_KEY``;
3. local discovery, as written by ``warren up``: ``$WARREN_HOME/service.json``
   (``{"url": ...}``) and ``$WARREN_HOME/admin.key``. ``$WARREN_HOME``
   defaults to ``/var/lib/warren`` for root, else ``~/.local/share/warren``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_REQUEST_TIMEOUT = 60.0
"""Seconds for an ordinary API request."""

ENV_URL = "WARREN_URL"
ENV_API_KEY = "WARREN_API_KEY"
ENV_HOME = "WARREN_HOME"


def warren_home() -> Path:
    """``$WARREN_HOME``, else the default data directory of ``warren up``."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/warren")
    return Path.home() / ".local" / "share" / "warren"


def _discover_url(home: Path) -> tuple[str | None, str | None]:
    """(url, problem): the URL from service.json, or why it is unusable."""
    path = home / "service.json"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    try:
        doc = json.loads(raw)
    except ValueError:
        return None, f"{path} is not valid JSON"
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str) or not url:
        return None, f'{path} has no "url"'
    return url, None


def _discover_key(home: Path) -> tuple[str | None, str | None]:
    path = home / "admin.key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except PermissionError:
        return None, f"{path} is not readable by this user (it is mode 0600, owned by the user running `warren up`)"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    if not key:
        return None, f"{path} is empty"
    return key, None


@dataclass(frozen=True)
class ConnectionConfig:
    """A resolved service URL and API key.

    Build one with :meth:`resolve`; it is shared by everything that talks to
    the same service.
    """

    base_url: str
    api_key: str
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    def __repr__(self) -> str:
        # Never print the key.
        shown = self.api_key[:8] + "..." if len(self.api_key) > 8 else "***"
        return (
            f"ConnectionConfig(base_url={self.base_url!r}, api_key={shown!r}, "
            f"request_timeout={self.request_timeout!r})"
        )

    @property
    def ws_base_url(self) -> str:
        """The base URL with the WebSocket scheme."""
        if self.base_url.startswith("https://"):
            return "wss://" + self.base_url[len("https://") :]
        if self.base_url.startswith("http://"):
            return "ws://" + self.base_url[len("http://") :]
        return self.base_url

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        """Resolves the URL and key from arguments, environment, then local
        discovery. Raises :class:`ConfigError` saying how to fix it when
        either is missing."""
        url = base_url or os.environ.get(ENV_URL) or None
        key = api_key or os.environ.get(ENV_API_KEY) or None
        url_problem = key_problem = None
        home = warren_home()
        if url is None:
            url, url_problem = _discover_url(home)
        if key is None:
            key, key_problem = _discover_key(home)
        if url is None or key is None:
            missing = []
            if url is None:
                missing.append(f"the service URL ({url_problem})")
            if key is None:
                missing.append(f"an API key ({key_problem})")
            raise ConfigError(
                "warren: cannot find " + " nor ".join(missing),
                code="config",
                hint=(
                    f"pass base_url=/api_key= , or set {ENV_URL} and {ENV_API_KEY}, "
                    f"or start the service on this machine with `warren up` "
                    f"(it writes service.json and admin.key to $WARREN_HOME, here {home})"
                ),
            )
        url = url.strip().rstrip("/")
        if not (url.startswith("http://") or url.startswith("https://")):
            raise ConfigError(
                f"warren: invalid service URL {url!r}",
                code="config",
                hint="the URL must start with http:// or https://, e.g. http://127.0.0.1:7700",
            )
        return cls(
            base_url=url,
            api_key=key.strip(),
            request_timeout=DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout,
        )
