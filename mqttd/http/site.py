"""
The C{protocol = http} listener's site: the dashboard at C{/}, the REST API at C{/api/v1/},
Prometheus' C{/metrics}.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mqttd.broker import Broker
from mqttd.config import ListenerConfig
from mqttd.http.api import ApiResource
from mqttd.http.apikeys import ApiKeys
from mqttd.http.auth import Guard
from mqttd.http.management import HISTORY_INTERVAL, Management
from mqttd.http.metrics import ReactorLag, metricsResource
from mqttd.http.request import MAX_BODY

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# Everything the dashboard loads is its own: no inline script, nothing from elsewhere, and no
# other site may frame it (clickjacking).
_CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"


class DashboardFiles(Resource):
    """The dashboard's static files (shipped in the package: no build step)."""

    isLeaf = True

    def __init__(self, directory: Path = DASHBOARD) -> None:
        super().__init__()
        self.files = {
            p.name.encode(): p for p in directory.iterdir() if p.suffix in _TYPES and p.is_file()
        }

    def render_GET(self, request: Request) -> bytes:
        postpath = request.postpath or []
        name = postpath[0] if postpath and postpath[0] else b"index.html"
        path = self.files.get(name) if len(postpath) <= 1 else None
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if path is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found"
        request.setHeader(b"content-type", _TYPES[path.suffix])
        request.setHeader(b"cache-control", b"no-cache")
        return path.read_bytes()


class BoundedRequest(Request):
    """
    A request whose body may hold at most L{MAX_BODY} bytes.  A larger one is answered 413 and
    its connection closed as soon as it is known to be too large, before it is read whole: no
    one, logged in or not, can make the broker buffer an upload of any size.
    """

    _bodyBytes = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            super().gotLength(0)
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        if self._bodyBytes > MAX_BODY:
            self._refuse()
        elif not self._refused:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        transport = self.channel.transport
        assert transport is not None
        body = b'{"code":"TOO_LARGE","message":"a request body is at most %d bytes"}' % MAX_BODY
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.channel.loseConnection()


class Root(Resource):
    """
    C{/api} goes to the API, C{/metrics} (a child put here) to Prometheus' endpoint, anything
    else to the dashboard's files.
    """

    def __init__(self, api: ApiResource, dashboard: Resource) -> None:
        super().__init__()
        self.api = api
        self.dashboard = dashboard

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"api":
            return self.api
        # The dashboard resource is a leaf: give it back the segment it is to serve.
        assert request.postpath is not None and request.prepath is not None
        request.postpath.insert(0, path)
        request.prepath.pop()
        return self.dashboard


class ProbingSite(Site):
    """
    A L{Site} that runs the reactor lag probe of C{/metrics} while it listens, so the probe
    costs nothing on a broker without an HTTP listener.
    """

    def __init__(self, root: Resource, lag: ReactorLag) -> None:
        super().__init__(root)
        self.lag = lag

    def startFactory(self) -> None:
        super().startFactory()
        self.lag.start()

    def stopFactory(self) -> None:
        self.lag.stop()
        super().stopFactory()


def makeHttpSite(
    broker: Broker,
    listener: ListenerConfig,
    clock: IReactorTime,
    plugins: Mapping[str, Any],
) -> tuple[Site, Management, TimerService]:
    """
    The site of an HTTP listener, the L{Management} it works on, and the service sampling the
    numbers the dashboard charts.
    """
    management = Management.fromPlugins(broker, clock, plugins, listener.admins)
    guard = Guard(
        clock,
        ApiKeys(listener.api_keys) if listener.api_keys is not None else None,
        broker.listenerAuthenticators.get(listener.name, broker.authenticators),
        frozenset(listener.admins),
        listener.name,
        secure=listener.certificate is not None or listener.endpoint.startswith("ssl:"),
    )
    root = Root(ApiResource(management, guard), DashboardFiles())
    lag = ReactorLag(clock)
    # Open as every Prometheus exporter is (scrapers rarely hold credentials): it tells counts,
    # never a client id or a topic.
    root.putChild(b"metrics", metricsResource(broker, lag, clock))
    site = ProbingSite(root, lag)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    sampler = TimerService(HISTORY_INTERVAL, management.sample)
    sampler.clock = clock
    return site, management, sampler
