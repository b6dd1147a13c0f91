"""warren: Python SDK for self-hosted Linux microVM sandboxes for AI agents.

Quick start::

    from warren import Sandbox

    with Sandbox.create() as sbx:
        result = sbx.commands.run("echo hello")
        print(result.stdout)

The service URL and API key come from ``base_url=`` / ``api_key=``, else
``WARREN_URL`` / ``WARREN_API_KEY``, else the files ``warren up`` writes
to ``$WARREN_HOME`` on this machine.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import ConnectionConfig, warren_home
from .client import Warren
from .commands import CommandHandle, Commands
from . import errors as _errors
from .errors import *  # noqa: F403 (errors.__all__ names them, once)
from .files import Files
from .models import (
    ApiKey,
    CommandResult,
    Event,
    ExitStatus,
    FileInfo,
    FileType,
    Health,
    NetworkPolicy,
    OutputChunk,
    PauseResult,
    ProcessInfo,
    SandboxInfo,
    SandboxState,
    SnapshotInfo,
    Template,
)
from .pty import Pty, PtyHandle
from .sandbox import Sandbox

__all__ = [
    "__version__",
    # entry points
    "Sandbox",
    "Warren",
    "ConnectionConfig",
    "warren_home",
    # sandbox modules
    "Commands",
    "CommandHandle",
    "Files",
    "Pty",
    "PtyHandle",
    # models
    "ApiKey",
    "CommandResult",
    "Event",
    "ExitStatus",
    "FileInfo",
    "FileType",
    "Health",
    "NetworkPolicy",
    "OutputChunk",
    "PauseResult",
    "ProcessInfo",
    "SandboxInfo",
    "SandboxState",
    "SnapshotInfo",
    "Template",
]
__all__ += _errors.__all__
