"""A sandbox's network through the SDK against a live service: the egress
policy (set at create, read, changed while running, bad rules refused) and
a server in the sandbox reached through both port forms.

Traffic goes only to loopback (warren's listener); the guest's server is
reached through warren's port proxy, never directly.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest

from warren import InvalidRequestError, NetworkPolicy, Sandbox

from .conftest import Server


def _listener(server: Server) -> str:
    """warren's listener as host:port (where every port form arrives)."""
    return urlsplit(server.url).netloc


def _get_via_host(server: Server, host: str, path: str = "/", **headers: str) -> httpx.Response:
    """A request to warren's listener that names `host` (how a browser that
    resolves ``*.localhost`` to loopback sends it)."""
    return httpx.get(f"{server.url}{path}", headers={"Host": host, **headers}, timeout=30, follow_redirects=False)


def _wait_for_server(sbx: Sandbox, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = sbx.commands.run(
            f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'",
        )
        if probe.exit_code == 0:
            return
        time.sleep(0.3)
    pytest.fail(f"the server on port {port} in the sandbox did not start")


def test_policy_is_set_at_create_read_and_changed(server: Server) -> None:
    policy = NetworkPolicy(internet=False, allow_out=["PyPI.org.", "198.51.100.7/32"], deny_out=["0.0.0.0/0"])
    with Sandbox.create(template="tiny", network=policy, timeout=120) as sbx:
        # Rules come back in their normal form.
        got = sbx.get_network()
        assert got == NetworkPolicy(internet=False, allow_out=["pypi.org", "198.51.100.7"], deny_out=["0.0.0.0/0"])

        changed = sbx.set_network(NetworkPolicy(deny_out=["*.example.com"]))
        assert changed.internet is True and changed.deny_out == ["*.example.com"] and changed.allow_out == []
        assert sbx.get_network() == changed

        with pytest.raises(InvalidRequestError) as bad:
            sbx.set_network(NetworkPolicy(allow_out=["10.0.0.0/99"]))
        assert "10.0.0.0/99" in str(bad.value)
        # A refused change leaves the policy as it was.
        assert sbx.get_network() == changed

    with pytest.raises(InvalidRequestError) as bad_create:
        Sandbox.create(template="tiny", network=NetworkPolicy(deny_out=["not a rule!"]))
    assert "not a rule!" in str(bad_create.value)


def test_a_server_in_the_sandbox_is_reached_through_both_port_forms(server: Server) -> None:
    with Sandbox.create(template="debian", timeout=300) as sbx:
        sbx.commands.run("mkdir -p /srv/www && echo 'hello from the sandbox' > /srv/www/index.txt").check()
        sbx.commands.run("cd /srv/www && exec python3 -m http.server 8000 --bind 0.0.0.0", background=True)
        _wait_for_server(sbx, 8000)

        host = sbx.get_host(8000)
        assert host == f"8000-{sbx.sandbox_id}.localhost:{urlsplit(server.url).port}"
        token = sbx.info.access_token
        assert token and token.startswith("wat_")

        # Host form: with the sandbox's access token, not without.
        opened = _get_via_host(server, host, "/index.txt", **{"X-Warren-Access-Token": token})
        assert opened.status_code == 200, opened.text
        assert opened.text == "hello from the sandbox\n"
        refused = _get_via_host(server, host, "/index.txt")
        assert refused.status_code == 401, refused.text
        assert "not public" in refused.json()["message"]
        wrong = _get_via_host(server, host, "/index.txt", **{"X-Warren-Access-Token": "wat_wrong"})
        assert wrong.status_code == 401

        # A browser opens get_url: the token moves into a cookie of that
        # host, and the app never sees it.
        url = urlsplit(sbx.get_url(8000))
        assert url.netloc == host and url.query == f"warren_token={token}"
        first = _get_via_host(server, host, f"/index.txt?{url.query}&x=1")
        assert first.status_code == 303
        assert first.headers["location"] == "/index.txt?x=1"
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"warren_token={token};") and "HttpOnly" in cookie and "Domain" not in cookie
        again = _get_via_host(server, host, "/index.txt?x=1", Cookie=f"warren_token={token}")
        assert again.status_code == 200 and again.text == "hello from the sandbox\n"

        # Path form, with the API key.
        path_form = httpx.get(
            f"{server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8000/index.txt",
            headers={"Authorization": f"Bearer {server.admin_key}"},
            timeout=30,
        )
        assert path_form.status_code == 200 and path_form.text == "hello from the sandbox\n"

        # A public port needs nothing; making it private again closes it.
        info = sbx.set_public_ports([8000])
        assert info.public_ports == [8000]
        assert sbx.get_url(8000) == f"http://{host}/"
        assert _get_via_host(server, host, "/index.txt").status_code == 200
        sbx.set_public_ports([])
        assert _get_via_host(server, host, "/index.txt").status_code == 401

        # Nothing listening is a clear 502, not a hang.
        silent = _get_via_host(server, sbx.get_host(8001), **{"X-Warren-Access-Token": token})
        assert silent.status_code == 502
        assert "nothing answers on port 8001" in silent.json()["message"]

    # The listener itself still serves the API and the console.
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert _listener(server)
