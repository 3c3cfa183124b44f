"""
The HTTP listener, API keys and webhooks as an operator sets them up: an ini file, C{mqttd apikey
--config}, and C{twistd mqttd} in its own process, with the HTTP listener on TLS.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import e2e, listeners
from tests.test_twistd import freePort, twistdCommand, waitForPort


class _Hook(BaseHTTPRequestHandler):
    events: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.events.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A plain http.server taking webhook POSTs in a thread; yields its port and the events."""
    events: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"events": events})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], events
    server.shutdown()
    server.server_close()


def test_twistdServesTheApiOverTLSAndPostsWebhooks(
    tmp_path: Path, pki: listeners.PKI, receiver: tuple[int, list[dict[str, Any]]]
) -> None:
    """
    twistd mqttd with an HTTPS listener (the listener's certificate keys) answers a key made by
    mqttd apikey --config, and refuses no key; a user created through the API connects over
    MQTT at once; the webhook observer configured in [observers] posts the connection; mqttd
    ctl reaches it with --cafile and refuses it without.
    """
    mqttPort, httpPort = freePort(), freePort()
    hookPort, events = receiver
    (tmp_path / "passwd").write_text("")
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"""
[listener:mqtt]
endpoint = tcp:{mqttPort}:interface=127.0.0.1
[listener:http]
endpoint = tcp:{httpPort}:interface=127.0.0.1
protocol = http
api_keys = apikeys
admins = admin
certificate = {pki.server.certificate}
private_key = {pki.server.key}
[auth]
chain = passwordfile
[plugin:passwordfile]
file = passwd
[observers]
chain = webhook
[plugin:webhook]
url = http://127.0.0.1:{hookPort}/events
events = client.connected
"""
    )
    keys = subprocess.run(
        [sys.executable, "-m", "mqttd", "apikey", "--config", str(config), "add", "ops"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = keys.stdout.strip()
    command, env = twistdCommand(tmp_path, "--config", str(config))
    log = tmp_path / "twistd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        waitForPort(process, httpPort, log)
        context = ssl.create_default_context(cafile=str(pki.ca.path))
        url = f"https://localhost:{httpPort}/api/v1"

        def call(method: str, path: str, body: Any = None, key: str | None = token) -> Any:
            headers = {"Content-Type": "application/json"}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(url + path, data, headers, method=method)
            with urllib.request.urlopen(request, timeout=e2e.TIMEOUT, context=context) as r:
                return json.loads(r.read() or b"null")

        assert call("GET", "/status")["connections"] == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            call("GET", "/status", key=None)
        assert refused.value.code == 401
        call("POST", "/users", {"username": "kim", "password": "pw"})
        kim = e2e.Client(mqttPort, "kim-1", setup=lambda c: c.username_pw_set("kim", "pw"))
        assert call("GET", "/clients/kim-1")["username"] == "kim"
        e2e.wait_until(lambda: len(events) == 1, "the webhook's POST")
        assert (events[0]["event"], events[0]["clientid"]) == ("client.connected", "kim-1")
        kim.close()
        assert "HTTP API and dashboard" in log.read_text()
        ctl = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqttd",
                "ctl",
                "--url",
                f"https://localhost:{httpPort}",
                "--cafile",
                str(pki.ca.path),
                "clients",
                "list",
            ],
            env={**env, "MQTTD_API_KEY": token},
            capture_output=True,
            text=True,
        )
        assert (ctl.returncode, ctl.stdout) == (0, ""), ctl.stderr
        untrusted = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqttd",
                "ctl",
                "--url",
                f"https://localhost:{httpPort}",
                "status",
            ],
            env={**env, "MQTTD_API_KEY": token},
            capture_output=True,
            text=True,
        )
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        process.terminate()
        process.wait(e2e.TIMEOUT)
