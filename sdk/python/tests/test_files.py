"""sandbox.files against a live service."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from warren import FileType, InvalidRequestError, NotFoundError, Sandbox, WarrenError


def test_binary_round_trip_20_mib(sandbox: Sandbox, unique: str, tmp_path: Path) -> None:
    size = 20 * 1024 * 1024
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    path = f"/tmp/{unique}/big.bin"

    # Streamed from a file object.
    info = sandbox.files.write(path, io.BytesIO(data))
    assert info.path == path and info.name == "big.bin"
    assert info.type == FileType.FILE and info.size == size

    remote = sandbox.commands.run(f"sha256sum {path}", timeout=120, check=True).stdout.split()[0]
    assert remote == digest

    assert hashlib.sha256(sandbox.files.read(path, format="bytes")).hexdigest() == digest

    h = hashlib.sha256()
    n_chunks = 0
    for chunk in sandbox.files.read(path, format="stream"):
        h.update(chunk)
        n_chunks += 1
    assert h.hexdigest() == digest and n_chunks > 1

    local = tmp_path / "down.bin"
    assert sandbox.files.download(path, local) == size
    assert hashlib.sha256(local.read_bytes()).hexdigest() == digest

    up = tmp_path / "up.bin"
    up.write_bytes(data[: 1024 * 1024])
    assert sandbox.files.upload(up, f"/tmp/{unique}/up.bin").size == 1024 * 1024
    sandbox.files.remove(f"/tmp/{unique}", recursive=True)


def test_text_write_read_and_info(sandbox: Sandbox, unique: str) -> None:
    path = f"/home/user/{unique}.txt"
    info = sandbox.files.write(path, "héllo\nwörld\n", user="user", mode=0o640)
    assert info.size == len("héllo\nwörld\n".encode())
    assert info.mode & 0o777 == 0o640
    assert info.owner == "user"
    assert sandbox.files.read(path) == "héllo\nwörld\n"
    assert sandbox.files.read(path, format="bytes") == "héllo\nwörld\n".encode()

    stat = sandbox.files.get_info(path)
    assert stat.name == f"{unique}.txt" and stat.is_file and stat.owner == "user"
    assert stat.modified_at is not None
    assert sandbox.commands.run(f"stat -c '%U %a' {path}").stdout == "user 640\n"

    # Replacing keeps nothing of the old content; text file objects stream.
    sandbox.files.write(path, io.StringIO("short"))
    assert sandbox.files.read(path) == "short"
    sandbox.files.write(path, b"")
    assert sandbox.files.read(path) == "" and sandbox.files.stat(path).size == 0


def test_dirs_list_exists_rename_remove(sandbox: Sandbox, unique: str) -> None:
    root = f"/tmp/{unique}-tree"
    made = sandbox.files.make_dir(f"{root}/a/b")
    assert made.is_dir and made.path == f"{root}/a/b"
    sandbox.files.write(f"{root}/one.txt", "1")
    sandbox.files.write(f"{root}/a/two.txt", "22")

    names = {e.name: e for e in sandbox.files.list(root)}
    assert set(names) >= {"a", "one.txt"}
    assert names["a"].type == FileType.DIR and names["one.txt"].size == 1
    assert names["one.txt"].path == f"{root}/one.txt"
    deep = {e.path for e in sandbox.files.list(root, depth=3)}
    assert f"{root}/a/two.txt" in deep and f"{root}/a/b" in deep

    assert sandbox.files.exists(f"{root}/one.txt")
    assert sandbox.files.exists(f"{root}/a")
    assert not sandbox.files.exists(f"{root}/missing")

    moved = sandbox.files.rename(f"{root}/one.txt", f"{root}/a/uno.txt")
    assert moved.path == f"{root}/a/uno.txt" and moved.size == 1
    assert not sandbox.files.exists(f"{root}/one.txt")
    assert sandbox.files.read(f"{root}/a/uno.txt") == "1"
    with pytest.raises(WarrenError):
        sandbox.files.rename(f"{root}/a/uno.txt", f"{root}/a/two.txt")
    sandbox.files.rename(f"{root}/a/uno.txt", f"{root}/a/two.txt", overwrite=True)
    assert sandbox.files.read(f"{root}/a/two.txt") == "1"

    sandbox.files.remove(f"{root}/a/two.txt")
    assert not sandbox.files.exists(f"{root}/a/two.txt")
    with pytest.raises(WarrenError):
        sandbox.files.remove(root)  # not empty, not recursive
    sandbox.files.remove(root, recursive=True)
    assert not sandbox.files.exists(root)


def test_file_errors(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError) as err:
        sandbox.files.read("/no/such/file")
    assert err.value.status_code == 404
    with pytest.raises(NotFoundError):
        sandbox.files.read("/no/such/file", format="stream")
    with pytest.raises(NotFoundError):
        sandbox.files.get_info("/no/such/file")
    with pytest.raises(NotFoundError):
        sandbox.files.list("/no/such/dir")

    with pytest.raises(InvalidRequestError) as bad:
        sandbox.files.read("relative/path.txt")
    assert bad.value.status_code == 422
    with pytest.raises(InvalidRequestError):
        sandbox.files.write("relative.txt", "x")
    with pytest.raises(InvalidRequestError):
        sandbox.files.write("/tmp/x", "x", user="no-such-user")
    with pytest.raises(InvalidRequestError):
        sandbox.files.make_dir("../etc")
