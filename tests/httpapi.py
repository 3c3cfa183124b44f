"""
Helpers for the HTTP API tests: a broker with its HTTP listener on the e2e harness's reactor, and a
blocking JSON client for the test thread.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort

from mqttd.config import ListenerConfig
from mqttd.http.apikeys import ApiKeys
from mqttd.http.management import Management
from mqttd.http.site import makeHttpSite
from mqttd.interfaces import PluginContext
from mqttd.plugin_loader import findPlugins
from tests import e2e


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpBroker:
    """A broker (MQTT on C{broker.port}) and its HTTP listener on C{port}."""

    broker: e2e.RunningBroker
    port: int
    listening: IListeningPort
    management: Management
    token: str
    viewerToken: str
    passwd: Path
    plugins: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{e2e.HOST}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        """
        C{method} C{path} with C{body} as JSON; C{token} "" means the admin key, L{None} none.
        """
        sent = dict(headers or {})
        if token == "":
            token = self.token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.url + path, data, sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=e2e.TIMEOUT) as answer:
                return Response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read())

    def stop(self) -> None:
        e2e.in_reactor(self.listening.stopListening)
        self.broker.stop()


def startHttpBroker(
    tmp: Path, *, admins: tuple[str, ...] = ("admin",), groups: bool = True, scram: bool = False
) -> HttpBroker:
    """
    A broker whose clients log in with a password file (anonymous clients allowed too), and with
    C{scram} by SCRAM-SHA-256 too, with the virtual groups plugin, and its HTTP listener with an
    admin and a viewer API key.
    """
    e2e.start_reactor()
    passwd = tmp / "passwd"
    passwd.write_text("")
    keys = ApiKeys(str(tmp / "apikeys"))
    token = keys.add("ops")
    viewerToken = keys.add("grafana", "viewer")
    available = findPlugins()
    context = PluginContext(reactor=e2e.reactor, configDirectory=str(tmp), brokerConfig=None)
    plugins: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        plugins["passwordfile"] = available["passwordfile"].build({"file": str(passwd)}, context)
        if scram:
            (tmp / "scram").write_text("")
            plugins["scram"] = available["scram"].build({"file": str(tmp / "scram")}, context)
        chain = {"authenticators": [p for n, p in plugins.items() if n != "virtual_groups"]}
        if groups:
            plugins["virtual_groups"] = available["virtual_groups"].build(
                {"path": str(tmp / "groups.db"), "poll_interval": "0.1"}, context
            )
            return {**chain, "selectors": [plugins["virtual_groups"]]}
        return chain

    listener = ListenerConfig(
        name="http",
        endpoint=f"tcp:0:interface={e2e.HOST}",
        protocol="http",
        api_keys=str(tmp / "apikeys"),
        admins=admins,
    )
    # The $SYS tree is published once at the start; a test updates it when it wants to.
    broker = e2e.start_broker(plugins=build, sys_interval=3600)
    if groups:
        e2e.in_reactor(plugins["virtual_groups"].attach, broker.broker)

    def listen() -> Any:
        site, management, _ = makeHttpSite(broker.broker, listener, e2e.reactor, plugins)
        management.sample()
        d = serverFromString(e2e.reactor, listener.endpoint).listen(site)
        return d.addCallback(lambda port: (port, management))

    port, management = e2e.in_reactor(listen)
    return HttpBroker(
        broker, port.getHost().port, port, management, token, viewerToken, passwd, plugins
    )


def detachGroups(http: HttpBroker) -> Callable[[], None]:
    return lambda: e2e.in_reactor(http.plugins["virtual_groups"].detach)
