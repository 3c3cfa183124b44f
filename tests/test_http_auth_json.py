"""
C{http_auth} reading EMQX 5's JSON answers over real HTTP: C{{"result": "allow" | "deny" |
"ignore", "is_superuser": bool}}, with a body that says deny always denying.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mqttd.interfaces import Action, Allow, ClientInfo, Deny
from mqttd.plugin_loader import buildPlugin
from tests import e2e
from tests.test_auth_plugins import ask, context, credentials

# User name -> (status, body) the service answers a login with.
ANSWERS: dict[str, tuple[int, bytes]] = {
    "allowed": (200, b'{"result": "allow", "is_superuser": false}'),
    "denied": (200, b'{"result": "deny"}'),
    "ignored": (200, b'{"result": "ignore"}'),
    "root": (200, b'{"result": "allow", "is_superuser": true}'),
    "unreadable": (200, b'{"result": "maybe"}'),
    "plain": (200, b"OK"),
    "nocontent": (204, b""),
    "forbidden": (403, b'{"result": "allow"}'),
}


class EMQXStyle(Resource):
    """Answers logins from L{ANSWERS}; ACL requests allow topic C{ok/...}, deny the rest."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        body = json.loads(request.content.read())  # type: ignore[union-attr]
        if "topic" in body:
            allowed = body["topic"].startswith("ok/")
            return json.dumps({"result": "allow" if allowed else "deny"}).encode()
        status, answer = ANSWERS[body["username"]]
        request.setResponseCode(status)
        return answer


@pytest.fixture
def plugin(twisted_reactor: None, tmp_path: Path) -> Iterator[Any]:
    """An http_auth plugin (no cache) asking an EMQX-style service on a loopback port."""
    port = e2e.in_reactor(lambda: e2e.reactor.listenTCP(0, Site(EMQXStyle()), interface=e2e.HOST))
    url = f"http://{e2e.HOST}:{port.getHost().port}/"
    yield buildPlugin(
        "http_auth",
        {"url": url, "acl_url": url, "cache_seconds": "0"},
        context(tmp_path, e2e.reactor),
        file="f",
        section="auth",
    )
    e2e.in_reactor(port.stopListening)


def login(plugin: Any, username: str) -> Any:
    return ask(lambda: plugin.authenticate(credentials(username, b"pw")))


def test_jsonResultDecidesLogin(plugin: Any) -> None:
    """
    A 200 whose body says deny refuses (EMQX 5's contract; it used to let the client in), allow
    allows, ignore abstains so the next authenticator decides, and a result the plugin cannot
    read refuses; without a JSON body the status decides as before (200 and 204 allow); a 4xx
    refuses even with a body saying allow.
    """
    assert login(plugin, "allowed") == Allow("allowed")
    assert login(plugin, "denied") == Deny(4, "refused by the HTTP service")
    assert login(plugin, "ignored") is None
    assert isinstance(login(plugin, "unreadable"), Deny)
    assert login(plugin, "plain") == Allow("plain")
    assert login(plugin, "nocontent") == Allow("nocontent")
    assert isinstance(login(plugin, "forbidden"), Deny)


def test_jsonResultDecidesACL(plugin: Any) -> None:
    """The ACL endpoint's JSON result decides too: a 200 saying deny denies."""
    client = ClientInfo("c", "allowed", "", "l")
    assert ask(lambda: plugin.authorize(client, Action.PUBLISH, "ok/t")) is True
    assert ask(lambda: plugin.authorize(client, Action.PUBLISH, "secret/t")) is False


def test_superuserSkipsACL(plugin: Any) -> None:
    """
    A login answered with C{is_superuser: true} makes every later ACL question for that client
    allowed by the plugin without asking; another user's login does not.
    """
    root = ClientInfo("c", "root", "", "l")
    assert ask(lambda: plugin.authorize(root, Action.PUBLISH, "secret/t")) is False
    assert login(plugin, "root") == Allow("root")
    assert ask(lambda: plugin.authorize(root, Action.PUBLISH, "secret/t")) is True
    allowed = ClientInfo("c", "allowed", "", "l")
    assert login(plugin, "allowed") == Allow("allowed")
    assert ask(lambda: plugin.authorize(allowed, Action.PUBLISH, "secret/t")) is False
