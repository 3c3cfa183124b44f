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


def test_namedPluginAloneIsLoaded(tmp_path: Path) -> None:
    """
    A configuration naming one plugin (virtual groups, whose factory's attribute is not its
    name) loads that plugin's modules, not every shipped plugin's with an HTTP client and Redis.
    """
    config = LISTENER + "[selectors]\nchain = virtual_groups\n[plugin:virtual_groups]\n"
    assert loaded(tmp_path, config) == ["sqlite3"]


# What the broker's start may add to what twistd and its reactor loaded before it, besides
# mqttd's own modules: configparser (the configuration), resource (the $SYS memory figures),
# twisted.internet.endpoints (listeners are endpoint strings; it brings stdio and systemd).
STARTUP_EXTRAS = {
    "configparser",
    "resource",
    "twisted.internet._posixstdio",
    "twisted.internet.endpoints",
    "twisted.internet.stdio",
    "twisted.python.systemd",
}

# twistd's modules and its reactor (without OpenSSL, as mqttd.footprint refuses it for a
# configuration without TLS) first, then the broker built and started as twistd would: what
# the start added.
ADDED = """
import json, sys
sys.modules["OpenSSL"] = None
import twisted.scripts.twistd
from twisted.internet import reactor
before = set(sys.modules)
from mqttd.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options).startService()
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def added(tmp_path: Path, probe: str, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


def test_startAddsNothingHeavy(tmp_path: Path) -> None:
    """
    Started with the default configuration (one plain TCP listener, memory store), the broker
    imports its own modules and the few listed in STARTUP_EXTRAS beyond what twistd and the
    reactor already hold: anything else imported at start (a store, a protocol layer, a
    plugin, an HTTP client) is memory every idle broker pays, and fails here.
    """
    (tmp_path / "mqttd.ini").write_text(LISTENER)
    modules = added(tmp_path, ADDED, "--config", str(tmp_path / "mqttd.ini"))
    assert "mqttd.broker" in modules
    assert [m for m in modules if m.split(".")[0] != "mqttd" and m not in STARTUP_EXTRAS] == []


# twistd imports every module in twisted/plugins/ on each run, whatever it runs: mqttd's
# drop-in must cost nothing beyond the ServiceMaker it names.
# Loaded from its path: an installed mqttd's copy may come first in twisted.plugins.
DROP_IN = """
import importlib.util, json, sys
import twisted.application.service, twisted.plugins
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("twisted.plugins.mqttd_plugin", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_dropInImportsNothing(tmp_path: Path) -> None:
    """Loading mqttd's twistd drop-in imports nothing but itself: the broker loads on use."""
    dropIn = ROOT / "twisted" / "plugins" / "mqttd_plugin.py"
    assert added(tmp_path, DROP_IN, str(dropIn)) == ["twisted.plugins.mqttd_plugin"]


@pytest.mark.parametrize(
    "config",
    [
        "[listener:a]\nendpoint = ssl:8883:privateKey=k.pem\n",
        "[listener:a]\nendpoint = tcp:8883\ncertificate = c.pem\nprivate_key = k.pem\n",
        "[auth]\nchain = http_auth\n[plugin:http_auth]\nurl = https://auth.example/\n",
        "[bridge:up]\naddress = tcp:broker.example:1883\n",
        "[plugins]\npaths = /etc/mqttd/plugins\n",
        "[store]\nplugin = redis\n[plugin:redis]\nurl = redis://127.0.0.1:6379/0\n",
    ],
)
def test_needsTLS(tmp_path: Path, config: str) -> None:
    """
    TLS is kept for anything that may use it: mqttd's TLS keys, ssl: endpoints, https URLs,
    bridges, plugin directories and the Redis store (its client imports Twisted's TLS);
    comments do not count, and an unreadable file keeps it.
    """
    path = tmp_path / "mqttd.ini"
    path.write_text(LISTENER + config)
    assert needsTLS(str(path))
    path.write_text(LISTENER + "; TLS: set certificate and private_key to use https\n")
    assert not needsTLS(str(path))
    assert needsTLS(str(tmp_path / "missing.ini"))
    assert not needsTLS(None)
