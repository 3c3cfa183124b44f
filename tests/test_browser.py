"""
A real browser as the client: headless Chromium runs MQTT.js (the npm package C{mqtt}, its
browser bundle) against a WebSocket listener.  Chromium refuses a WebSocket whose server does not
echo the subprotocol it offered, so this proves the upgrade the way browsers judge it.

Chromium and npm must be installed (C{.ci/run} installs them); without them the test fails, with
what to install, rather than skipping: a skipped browser test would pass CI unseen.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests import e2e
from tests.listeners import Listen, tcpListener

BROWSER = Path(__file__).resolve().parent / "browser"
BUNDLE = BROWSER / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
# The major version the page is written for; npm picks its newest release.
MQTT_JS = "mqtt@5"
# Chromium starting, loading the page and the bundle, then one round trip: generous for a slow CI.
BROWSER_TIMEOUT = 30.0


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "the browser test needs Chromium: apt-get install chromium (Debian), then run the"
            " tests again",
            pytrace=False,
        )
    return path


def _mqttJs() -> Path:
    """The MQTT.js browser bundle, installed with npm into tests/browser (ignored by git)."""
    if BUNDLE.exists():
        return BUNDLE
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "the browser test needs npm to fetch MQTT.js: apt-get install npm (Debian), then run"
            " the tests again",
            pytrace=False,
        )
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(BROWSER),
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            MQTT_JS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 or not BUNDLE.exists():
        pytest.fail(
            f"npm install {MQTT_JS} into {BROWSER} failed:\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return BUNDLE


class _Files(Resource):
    """Two fixed files; twisted.web.static would do, but warns of deprecations on import."""

    isLeaf = True

    def __init__(self, files: dict[bytes, tuple[bytes, Path]]) -> None:
        super().__init__()
        self.files = files

    def render_GET(self, request: Request) -> bytes:
        found = self.files.get(request.path)
        if found is None:
            request.setResponseCode(404)
            return b"not found"
        contentType, path = found
        request.setHeader(b"content-type", contentType)
        return path.read_bytes()


@pytest.fixture
def pageServer(twisted_reactor: None) -> Iterator[int]:
    """tests/browser/page.html and the MQTT.js bundle over HTTP on 127.0.0.1; yields the port."""
    site = Site(
        _Files(
            {
                b"/page.html": (b"text/html; charset=utf-8", BROWSER / "page.html"),
                b"/mqtt.min.js": (b"text/javascript", _mqttJs()),
            }
        )
    )
    port = e2e.in_reactor(
        lambda: serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(site)
    )
    yield port.getHost().port
    e2e.in_reactor(port.stopListening)


def test_mqttJsInChromium(listen: Listen, pageServer: int, tmp_path: Path) -> None:
    """
    Headless Chromium loads a page that connects with MQTT.js over WebSocket, subscribes,
    publishes, receives its own message and publishes what it received to browser/result, where
    a paho-mqtt client reads it: the whole exchange ran in the browser.
    """
    chromium = _chromium()
    started = listen(tcpListener(protocol="websocket"))
    watcher = e2e.Client(
        started.port,
        "watcher",
        transport="websockets",
        setup=lambda client: client.ws_set_options(path="/mqtt"),
    )
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"http://{e2e.HOST}:{pageServer}/page.html?port={started.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        watcher.subscribe("browser/result", 1)
        try:
            (result,) = watcher.wait_for(1, timeout=BROWSER_TIMEOUT)
        except AssertionError:
            browser.kill()
            _, stderr = browser.communicate(timeout=e2e.TIMEOUT)
            raise AssertionError(
                "no result from the page; Chromium said:\n" + stderr.decode(errors="replace")
            ) from None
        assert result.topic == "browser/result"
        assert result.payload.startswith(b"received: hello from ")
        assert b"HeadlessChrome" in result.payload
    finally:
        browser.terminate()
        try:
            browser.wait(e2e.TIMEOUT)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        watcher.close()
