"""sandbox.commands against a live service."""

from __future__ import annotations

import threading
import time

import pytest

from warren import CommandExitError, CommandNotFoundError, CommandResult, Sandbox, WarrenTimeoutError


def test_exit_codes_and_check(sandbox: Sandbox) -> None:
    ok = sandbox.commands.run("true")
    assert isinstance(ok, CommandResult)
    assert ok.exit_code == 0 and ok.ok and not ok.timed_out and ok.signal is None
    assert ok.check() is ok

    failed = sandbox.commands.run("echo oops >&2; exit 3")
    assert failed.exit_code == 3 and not failed.ok
    assert failed.stderr == "oops\n"
    with pytest.raises(CommandExitError) as err:
        failed.check()
    assert err.value.exit_code == 3 and "oops" in str(err.value)

    with pytest.raises(CommandExitError) as err:
        sandbox.commands.run("echo partial; exit 7", check=True)
    assert err.value.exit_code == 7 and err.value.stdout == "partial\n"


def test_stdout_stderr_and_argv(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr) == ("out\n", "err\n")

    r = sandbox.commands.run(["printf", "%s|", "a b", "c"])
    assert r.stdout == "a b|c|"

    # UTF-8 is decoded whole; invalid bytes become U+FFFD.
    r = sandbox.commands.run(r"printf 'caf\303\251 \377'")
    assert r.stdout == "café \ufffd"

    r = sandbox.commands.run("cat", stdin="fed through stdin")
    assert r.stdout == "fed through stdin"
    # Without stdin the command reads EOF instead of hanging.
    assert sandbox.commands.run("cat", timeout=20).stdout == ""


def test_callbacks_receive_output_while_running(sandbox: Sandbox) -> None:
    seen: list[tuple[float, str, str]] = []
    script = "for i in 1 2 3; do echo line$i; echo warn$i >&2; sleep 1; done"
    r = sandbox.commands.run(
        script,
        on_stdout=lambda s: seen.append((time.monotonic(), "out", s)),
        on_stderr=lambda s: seen.append((time.monotonic(), "err", s)),
    )
    ended = time.monotonic()
    assert r.exit_code == 0
    assert r.stdout == "line1\nline2\nline3\n"
    assert r.stderr == "warn1\nwarn2\nwarn3\n"
    assert "".join(s for _, k, s in seen if k == "out") == r.stdout
    assert "".join(s for _, k, s in seen if k == "err") == r.stderr
    first_out = next(t for t, k, s in seen if k == "out" and "line1" in s)
    first_err = next(t for t, k, s in seen if k == "err" and "warn1" in s)
    # line1 arrives about 2 s before the command ends (two more sleeps).
    assert ended - first_out > 1.0, ended - first_out
    assert ended - first_err > 1.0, ended - first_err


def test_envs_cwd_user(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(
        'echo "$A-$B"; pwd; id -un',
        envs={"A": "1", "B": "two words"},
        cwd="/tmp",
        user="user",
    )
    assert r.stdout == "1-two words\n/tmp\nuser\n", r
    assert sandbox.commands.run("id -un").stdout == "root\n"
    assert sandbox.commands.run("id -u", user="user").stdout == "1000\n"


def test_timeout(sandbox: Sandbox) -> None:
    started = time.monotonic()
    r = sandbox.commands.run("echo before; sleep 60", timeout=2)
    elapsed = time.monotonic() - started
    assert r.timed_out
    assert not r.ok and r.exit_code != 0
    assert r.stdout == "before\n"
    assert elapsed < 20, elapsed
    with pytest.raises(CommandExitError):
        r.check()


def test_command_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(CommandNotFoundError) as err:
        sandbox.commands.run(["/no/such/program", "x"])
    assert err.value.code == "command_not_found"
    # Through the shell it is an ordinary exit status.
    assert sandbox.commands.run("no-such-program-xyz").exit_code == 127


def test_large_output(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' a; echo", timeout=120)
    assert r.exit_code == 0
    assert len(r.stdout) == 3_000_001 and r.stdout.startswith("aaaa")


def test_background_stdin_list_kill_wait(sandbox: Sandbox, unique: str) -> None:
    lines: list[str] = []
    got = threading.Event()

    def on_stdout(text: str) -> None:
        lines.append(text)
        if "got:hello" in "".join(lines):
            got.set()

    handle = sandbox.commands.run(
        f"echo {unique} >/dev/null; while read line; do echo got:$line; done",
        background=True,
        on_stdout=on_stdout,
    )
    assert handle.pid > 0
    procs = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in procs, procs
    assert procs[handle.pid].running
    assert unique in procs[handle.pid].cmd

    handle.send_stdin("hello\n")
    assert got.wait(30), lines

    assert handle.kill() is True
    result = handle.wait(timeout=30)
    assert not result.ok
    assert result.signal == 9 or result.exit_code not in (0, None), result
    assert "got:hello" in result.stdout
    after = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid not in after or not after[handle.pid].running
    # Killing again is not an error.
    assert handle.kill() in (True, False)


def test_background_wait_iterate_close_stdin(sandbox: Sandbox) -> None:
    h = sandbox.commands.run("for i in 1 2 3; do echo n$i; sleep 0.2; done; echo e >&2", background=True)
    chunks = list(h)
    assert "".join(t for s, t in chunks if s == "stdout") == "n1\nn2\nn3\n"
    assert "".join(t for s, t in chunks if s == "stderr") == "e\n"
    r = h.wait(timeout=30)
    assert r.exit_code == 0 and r.stdout == "n1\nn2\nn3\n"

    cat = sandbox.commands.run("cat; echo eof", background=True)
    cat.send_stdin(b"bytes \x00in\n")
    cat.close_stdin()
    r = cat.wait(timeout=30)
    assert r.exit_code == 0 and r.stdout == "bytes \x00in\neof\n"

    # A trailing incomplete UTF-8 sequence is delivered at the end.
    seen: list[str] = []
    tail = sandbox.commands.run(r"printf 'a\303'", background=True, on_stdout=seen.append)
    assert tail.wait(timeout=30).stdout == "a\ufffd"
    assert "".join(seen) == "a\ufffd"

    # A background command's own timeout is enforced by the service.
    slow = sandbox.commands.run("sleep 60", background=True, timeout=1)
    r = slow.wait(timeout=30)
    assert not r.ok

    # wait() with a client timeout leaves the process running.
    long = sandbox.commands.run("sleep 60", background=True)
    with pytest.raises(WarrenTimeoutError):
        long.wait(timeout=0.5)
    assert long.kill()
    assert not long.wait(timeout=30).ok


def test_connect_to_process_from_second_client(sandbox: Sandbox) -> None:
    h = sandbox.commands.run("echo early; sleep 2; echo late", background=True)
    other = Sandbox.connect(sandbox.sandbox_id)
    try:
        attached = other.commands.connect(h.pid)
        r = attached.wait(timeout=30)
        assert r.exit_code == 0
        assert r.stdout == "early\nlate\n"  # replayed from the start
    finally:
        other.close()
    assert sandbox.commands.kill(999_999) is False
