"""
An idle broker loads only what its configuration uses: TLS (pyOpenSSL and cryptography, which
Twisted would otherwise import whenever they are installed), WebSocket, SQLite and each plugin's
code only for a configuration that needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mqttd.footprint import needsTLS
from tests.test_twistd import ROOT

WATCHED = ("OpenSSL", "cryptography", "wsproto", "sqlite3", "twisted.web.client", "txredisapi")

# Builds the service as twistd does (options parsed, then makeService), in a fresh interpreter,
# and says which of the watched modules were imported.
PROBE = """
import json, sys
from mqttd.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options)
watched = sys.stdin.read().split()
print(json.dumps(sorted(m for m in watched if sys.modules.get(m) is not None)))
"""


def loaded(tmp_path: Path, config: str | None) -> list[str]:
    args = []
    if config is not None:
        (tmp_path / "mqttd.ini").write_text(config)
        args = ["--config", str(tmp_path / "mqttd.ini")]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        input=" ".join(WATCHED),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


LISTENER = "[listener:local]\nendpoint = tcp:0:interface=127.0.0.1\nallow_anonymous = true\n"


def test_defaultConfigurationLoadsNone(tmp_path: Path) -> None:
    """The default configuration (one plain TCP listener, memory store) loads none of them."""
    assert loaded(tmp_path, None) == []
    assert loaded(tmp_path, LISTENER) == []


def test_whatIsUsedIsLoaded(tmp_path: Path) -> None:
    """A WebSocket listener loads WebSocket, the SQLite store SQLite; still no TLS."""
    config = (
        LISTENER
        + "[listener:web]\nendpoint = tcp:0:interface=127.0.0.1\nprotocol = websocket\n"
        + "[store]\nplugin = sqlite\n[plugin:sqlite]\npath = mqttd.db\n"
    )
    assert loaded(tmp_path, config) == ["sqlite3", "wsproto"]


@pytest.mark.parametrize(
    "config",
    [
        "[listener:a]\nendpoint = ssl:8883:privateKey=k.pem\n",
        "[listener:a]\nendpoint = tcp:8883\ncertificate = c.pem\nprivate_key = k.pem\n",
        "[auth]\nchain = http_auth\n[plugin:http_auth]\nurl = https://auth.example/\n",
        "[bridge:up]\naddress = tcp:broker.example:1883\n",
        "[plugins]\npaths = /etc/mqttd/plugins\n",
    ],
)
def test_needsTLS(tmp_path: Path, config: str) -> None:
    """
    TLS is kept for anything that may use it: mqttd's TLS keys, ssl: endpoints, https URLs,
    bridges and plugin directories; comments do not count, and an unreadable file keeps it.
    """
    path = tmp_path / "mqttd.ini"
    path.write_text(LISTENER + config)
    assert needsTLS(str(path))
    path.write_text(LISTENER + "; TLS: set certificate and private_key to use https\n")
    assert not needsTLS(str(path))
    assert needsTLS(str(tmp_path / "missing.ini"))
    assert not needsTLS(None)
