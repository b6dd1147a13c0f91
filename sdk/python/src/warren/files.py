"""The sandbox filesystem: ``sandbox.files``."""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from typing import IO, Any, Literal, overload

from ._http import ApiClient, Timeout, UNSET
from .models import FileInfo

__all__ = ["Files", "WriteData"]

WriteData = str | bytes | bytearray | memoryview | IO[bytes] | IO[str]
"""What :meth:`Files.write` accepts: text (UTF-8 encoded), bytes, or a
readable file-like object (binary or text), streamed."""

_CHUNK = 256 * 1024


class _EncodingReader(io.RawIOBase):
    """A binary reader over a text file-like object (UTF-8), so text
    streams can be uploaded without reading them whole."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = self._text.read(_CHUNK)
            if not chunk:
                return 0
            self._pending = chunk.encode("utf-8")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _mode_str(mode: int | str | None) -> str | None:
    if mode is None:
        return None
    if isinstance(mode, int):
        return format(mode, "o")
    return mode


class Files:
    """``sandbox.files``: read, write and manage files in the sandbox.

    Paths must be absolute (the service answers
    :class:`~warren.InvalidRequestError` otherwise)."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}/files"

    # -- read ---------------------------------------------------------------

    @overload
    def read(
        self, path: str, format: Literal["text"] = "text", *, encoding: str = "utf-8", request_timeout: Timeout = UNSET
    ) -> str: ...

    @overload
    def read(
        self, path: str, format: Literal["bytes"], *, encoding: str = "utf-8", request_timeout: Timeout = UNSET
    ) -> bytes: ...

    @overload
    def read(
        self, path: str, format: Literal["stream"], *, encoding: str = "utf-8", request_timeout: Timeout = UNSET
    ) -> Iterator[bytes]: ...

    def read(
        self,
        path: str,
        format: Literal["text", "bytes", "stream"] = "text",
        *,
        encoding: str = "utf-8",
        request_timeout: Timeout = UNSET,
    ) -> str | bytes | Iterator[bytes]:
        """Reads a file.

        ``format``: ``"text"`` (a str, decoded with ``encoding``),
        ``"bytes"``, or ``"stream"``: an iterator of byte chunks that keeps
        the download open until it is exhausted or closed (errors such as
        :class:`~warren.NotFoundError` are raised by this call, not while
        iterating).
        """
        if format == "stream":
            return self._stream(path, request_timeout)
        if format not in ("text", "bytes"):
            raise ValueError(f"format must be 'text', 'bytes' or 'stream', not {format!r}")
        response = self._api.request("GET", self._base, params={"path": path}, timeout=request_timeout)
        data = response.content
        return data.decode(encoding) if format == "text" else data

    def _stream(self, path: str, request_timeout: Timeout) -> Iterator[bytes]:
        response = self._api.open_stream("GET", self._base, params={"path": path}, timeout=request_timeout)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.iter_bytes(_CHUNK)
            finally:
                response.close()

        return chunks()

    def download(self, path: str, local_path: str | os.PathLike[str], *, request_timeout: Timeout = UNSET) -> int:
        """Streams a file of the sandbox to ``local_path``; returns the
        number of bytes written."""
        total = 0
        with open(local_path, "wb") as out:
            for chunk in self._stream(path, request_timeout):
                out.write(chunk)
                total += len(chunk)
        return total

    # -- write --------------------------------------------------------------

    def write(
        self,
        path: str,
        data: WriteData,
        *,
        user: str | None = None,
        mode: int | str | None = None,
        create_parents: bool = True,
        request_timeout: Timeout = UNSET,
    ) -> FileInfo:
        """Writes a file (replacing it atomically once the upload is
        complete) and returns its info.

        ``data``: str (UTF-8), bytes, or a readable file-like object,
        streamed as a multipart upload. ``user`` owns the new file
        (default: the service's default user); ``mode`` is an int
        (``0o644``) or an octal string (``"644"``); missing parent
        directories are created unless ``create_parents=False``.
        """
        fields: dict[str, str] = {"path": path}
        mode_s = _mode_str(mode)
        if mode_s is not None:
            fields["mode"] = mode_s
        if user is not None:
            fields["user"] = user
        if create_parents:
            fields["create_parents"] = "true"
        payload: Any
        if isinstance(data, str):
            payload = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
        elif isinstance(data, io.TextIOBase):
            payload = _EncodingReader(data)
        elif hasattr(data, "read"):
            payload = data
        else:
            raise TypeError(f"cannot upload {type(data).__name__}: pass str, bytes or a readable file object")
        name = posixpath.basename(path) or "file"
        response = self._api.request(
            "POST",
            self._base,
            data=fields,
            files={"file": (name, payload, "application/octet-stream")},
            timeout=request_timeout,
        )
        return FileInfo.from_json(response.json())

    def upload(
        self,
        local_path: str | os.PathLike[str],
        path: str,
        *,
        user: str | None = None,
        mode: int | str | None = None,
        create_parents: bool = True,
        request_timeout: Timeout = UNSET,
    ) -> FileInfo:
        """Streams a local file into the sandbox at ``path``."""
        with open(local_path, "rb") as f:
            return self.write(
                path, f, user=user, mode=mode, create_parents=create_parents, request_timeout=request_timeout
            )

    # -- metadata -----------------------------------------------------------

    def list(self, path: str, depth: int | None = None) -> list[FileInfo]:
        """The entries of a directory (``depth`` levels below it, as the
        service counts them; the service's default when None)."""
        doc = self._api.get_json(f"{self._base}/list", params={"path": path, "depth": depth})
        entries = doc.get("entries", []) if isinstance(doc, dict) else []
        return [FileInfo.from_json(e) for e in entries if isinstance(e, dict)]

    def get_info(self, path: str) -> FileInfo:
        """Information about a file or directory; :class:`~warren.NotFoundError`
        if it does not exist."""
        return FileInfo.from_json(self._api.get_json(f"{self._base}/stat", params={"path": path}))

    stat = get_info

    def exists(self, path: str) -> bool:
        """Whether a file, directory or link exists at ``path``."""
        from .errors import NotFoundError

        try:
            self.get_info(path)
        except NotFoundError:
            return False
        return True

    def make_dir(self, path: str, *, parents: bool = True) -> FileInfo:
        """Creates a directory (and missing parents, unless
        ``parents=False``); returns its info."""
        return FileInfo.from_json(self._api.post_json(f"{self._base}/mkdir", {"path": path, "parents": parents}))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, or a directory (non-empty ones need
        ``recursive=True``)."""
        self._api.request("DELETE", self._base, params={"path": path, "recursive": recursive})

    def rename(self, old_path: str, new_path: str, *, overwrite: bool = False) -> FileInfo:
        """Renames/moves ``old_path`` to ``new_path`` and returns the moved
        entry's info. Refuses to replace an existing target unless
        ``overwrite=True``."""
        self._api.post_json(f"{self._base}/rename", {"from": old_path, "to": new_path, "overwrite": overwrite})
        return self.get_info(new_path)

