"""Snapshot templates and their clones against a live service."""

from __future__ import annotations

import contextlib

import pytest

from warren import ConflictError, InvalidRequestError, NotFoundError, Sandbox, SandboxState, Warren

from .conftest import Server


def test_snapshot_clone_and_delete(server: Server, unique: str) -> None:
    name = f"snap-{unique}"
    source = Sandbox.create(template="debian", memory_mib=256, timeout=600)
    clone: Sandbox | None = None
    w = Warren()
    try:
        source.files.write("/home/user/from-source.txt", "made before the snapshot\n")
        snap = source.snapshot(name)
        assert snap.name == name and snap.source_sandbox == source.sandbox_id
        assert (snap.cpus, snap.memory_mib) == (1, 256)
        assert snap.memory_bytes > 0 and snap.used_by == []
        # A running sandbox is resumed after the copy.
        assert source.get_info().state == SandboxState.RUNNING

        assert name in {s.name for s in w.snapshots()}
        assert w.get_snapshot(name).source_sandbox == source.sandbox_id
        template = w.get_template(name)
        assert (template.kind, template.cpus, template.memory_mib) == ("snapshot", 1, 256)
        with pytest.raises(ConflictError):
            source.snapshot(name)
        with pytest.raises(InvalidRequestError):
            source.snapshot("not a valid name!")
        with pytest.raises(InvalidRequestError):
            Sandbox.create(template=name, memory_mib=512)

        # The clone starts where the source was, and goes its own way.
        clone = Sandbox.create(template=name, auto_resume=True)
        assert clone.info.template == name and clone.info.memory_mib == 256
        assert clone.info.auto_resume
        assert clone.files.read("/home/user/from-source.txt") == "made before the snapshot\n"
        clone.files.write("/home/user/clone-only.txt", "x")
        with pytest.raises(NotFoundError):
            source.files.read("/home/user/clone-only.txt")
        assert w.get_snapshot(name).used_by == [clone.sandbox_id]

        # auto_resume: work on the paused clone resumes it.
        assert clone.pause().sandbox.state == SandboxState.PAUSED
        assert clone.files.read("/home/user/clone-only.txt") == "x"
        assert clone.get_info().state == SandboxState.RUNNING

        # In use: the snapshot cannot go.
        with pytest.raises(ConflictError) as err:
            w.delete_snapshot(name)
        assert clone.sandbox_id in str(err.value)
        assert clone.kill() is True
        w.delete_snapshot(name)
        with pytest.raises(NotFoundError):
            w.get_snapshot(name)
        assert name not in {s.name for s in w.snapshots()}
    finally:
        if clone is not None:
            clone.kill()
            clone.close()
        source.kill()
        source.close()
        with contextlib.suppress(NotFoundError, ConflictError):
            w.delete_snapshot(name)
        w.close()


def test_snapshot_of_a_paused_sandbox_keeps_it_paused(server: Server, unique: str) -> None:
    name = f"paused-{unique}"
    with Sandbox.create(template="tiny", memory_mib=128, timeout=600) as sbx, Warren() as w:
        sbx.pause()
        try:
            snap = sbx.snapshot(name)
            assert snap.name == name
            assert sbx.get_info().state == SandboxState.PAUSED
        finally:
            with contextlib.suppress(NotFoundError):
                w.delete_snapshot(name)
        assert sbx.resume().state == SandboxState.RUNNING
        assert sbx.commands.run("echo back").stdout == "back\n"
