"""
mqttd ctl against a running broker's HTTP listener: each command's effect is checked on the MQTT
side or through the API, and its output as printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqttd import cli
from tests import e2e
from tests.httpapi import HttpBroker, detachGroups, startHttpBroker


@pytest.fixture
def http(twisted_reactor: None, tmp_path: Path) -> Iterator[HttpBroker]:
    e2e.REACTOR.takeErrors()
    running = startHttpBroker(tmp_path)
    yield running
    detachGroups(running)()
    running.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


Run = Callable[..., tuple[int, str]]


@pytest.fixture
def ctl(http: HttpBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """C{ctl("clients", "list")} runs mqttd ctl with the admin key; returns (status, stdout)."""
    keyFile = tmp_path / "key"
    keyFile.write_text(http.token + "\n")

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        status = cli.main(["ctl", "--url", http.url, "--key-file", str(keyFile), *argv])
        return status, capsys.readouterr().out

    yield run


def test_clientsListShowKick(http: HttpBroker, ctl: Run) -> None:
    """clients list prints each connected client; show prints one as JSON; kick disconnects it."""
    run = ctl
    device = e2e.Client(http.broker.port, "device-1")
    other = e2e.Client(http.broker.port, "other")
    status, out = run("clients", "list", "--clientid", "device")
    assert status == 0
    assert out.splitlines() == [f"device-1\t\t{e2e.HOST}\t4"]
    status, out = run("clients", "show", "device-1")
    assert json.loads(out)["clientid"] == "device-1"
    assert run("clients", "kick", "device-1")[0] == 0
    assert device.disconnected.wait(e2e.TIMEOUT)
    assert http.broker.is_connected("other")
    device.close()
    other.close()


def test_publishAndSubscribeOnBehalf(http: HttpBroker, ctl: Run) -> None:
    """subscriptions add subscribes a client server-side; publish reaches it at the QoS given."""
    run = ctl
    device = e2e.Client(http.broker.port, "dev")
    assert run("subscriptions", "add", "dev", "cmd/#", "--qos", "1")[0] == 0
    assert run("subscriptions", "list")[1].splitlines() == ["dev\tcmd/#\t1"]
    assert run("publish", "cmd/led", "on", "--qos", "1", "--retain")[0] == 0
    (got,) = device.wait_for(1)
    assert (got.topic, got.payload, got.qos) == ("cmd/led", b"on", 1)
    assert run("retained", "list")[1].splitlines() == ["cmd/led\t1\ton"]
    assert run("retained", "delete", "cmd/led")[0] == 0
    assert run("retained", "list")[1] == ""
    assert run("subscriptions", "remove", "dev", "cmd/#")[0] == 0
    assert run("subscriptions", "list")[1] == ""
    device.close()


def test_groupsAndUsers(http: HttpBroker, ctl: Run) -> None:
    """groups and users commands change the same stores the API and MQTT clients see."""
    run = ctl
    assert run("groups", "create", "crew", "a", "b:1", "--owners", "a")[0] == 0
    assert run("groups", "add", "crew", "c")[0] == 0
    assert run("groups", "role", "crew", "c", "owner")[0] == 0
    assert run("groups", "remove", "crew", "a")[0] == 0
    assert run("groups", "list", "crew")[0] == 0
    out = run("groups", "list", "crew")[1]
    assert json.loads(out)["members"] == {"b": 1, "c": 2}
    assert json.loads(out)["owners"] == ["c"]
    assert run("groups", "list")[1].splitlines() == ["crew\t2"]
    assert run("users", "add", "zoe", "pw1")[0] == 0
    e2e.Client(http.broker.port, "z1", setup=lambda c: c.username_pw_set("zoe", "pw1")).close()
    assert run("users", "passwd", "zoe", "pw2")[0] == 0
    e2e.Client(http.broker.port, "z2", setup=lambda c: c.username_pw_set("zoe", "pw2")).close()
    assert run("users", "list")[1].splitlines() == ["zoe\tpasswordfile\t"]
    assert run("users", "delete", "zoe")[0] == 0
    assert run("groups", "delete", "crew")[0] == 0
    assert run("groups", "list")[1] == ""
    assert json.loads(run("status")[1])["connections"] == 0


def test_errorsAreOneLine(http: HttpBroker, tmp_path: Path) -> None:
    """
    The installed command reads the key from $MQTTD_API_KEY; a refusal (a wrong key, a missing
    client) or an unreachable broker is one line on stderr and status 1.
    """
    base = [sys.executable, "-m", "mqttd", "ctl", "--url", http.url]
    environment = {**os.environ, "MQTTD_API_KEY": http.token}
    ok = subprocess.run([*base, "status"], env=environment, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["version"]
    missing = subprocess.run(
        [*base, "clients", "kick", "ghost"], env=environment, capture_output=True, text=True
    )
    assert (missing.returncode, missing.stderr) == (
        1,
        "mqttd ctl: 404: no connected client 'ghost'\n",
    )
    wrongKey = {**os.environ, "MQTTD_API_KEY": "mqttd_wrong"}
    refused = subprocess.run([*base, "status"], env=wrongKey, capture_output=True, text=True)
    assert (refused.returncode, refused.stderr) == (1, "mqttd ctl: 401: unknown API key\n")
    down = subprocess.run(
        [sys.executable, "-m", "mqttd", "ctl", "--url", "http://127.0.0.1:9", "status"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert down.returncode == 1 and down.stderr.startswith("mqttd ctl: cannot reach")
