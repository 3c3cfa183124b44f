"""
The documentation works as written: the set-up of C{docs/virtual-groups.md} runs under the real
C{twistd} and delivers to a group; the configuration in C{docs/examples/region_groups.py} loads;
the README names what the tests need; C{etc/mqttd.ini} says only what is true.
"""

from __future__ import annotations

import configparser
import queue
import re
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet.testing import MemoryReactorClock

from mqttd.config import ListenerConfig, load_config
from mqttd.service import makeBrokerService
from tests.test_twistd import TIMEOUT, freePort, twistdCommand, waitForPort

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def iniBlock(text: str, after: str) -> str:
    """The first ```ini block of C{text} after the heading or line C{after}."""
    start = text.index(after)
    match = re.search(r"```ini\n(.*?)```", text[start:], re.S)
    assert match is not None, f"no ini block after {after!r}"
    return match.group(1)


def test_virtualGroupsSetUpWorksAsWritten(tmp_path: Path) -> None:
    """
    The "Set up" configuration of docs/virtual-groups.md, saved as mqttd.ini (only its port
    made free for the test), starts C{twistd -n mqttd} (it had no listener and stopped
    start-up), and the doc's example works: alice's message to C{$group/friends/hello} reaches
    bob, a static member, as C{friends/hello}.
    """
    block = iniBlock((DOCS / "virtual-groups.md").read_text(), "## Set up")
    port = freePort()
    assert "tcp:1883:interface=127.0.0.1" in block
    config = tmp_path / "mqttd.ini"
    config.write_text(block.replace("tcp:1883:", f"tcp:{port}:"))
    command, env = twistdCommand(tmp_path, "--config", str(config))
    log = tmp_path / "twistd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    clients: list[mqtt.Client] = []
    try:
        waitForPort(process, port, log)
        for clientId in ("bob", "alice"):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=clientId)
            client.on_message = lambda c, u, message: received.put(message)
            client.connect("127.0.0.1", port)
            client.loop_start()
            clients.append(client)
        bob, alice = clients
        subscribed = bob.subscribe("friends/#", qos=1)
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
        alice.publish("$group/friends/hello", b"hi all", qos=1).wait_for_publish(TIMEOUT)
        message = received.get(timeout=TIMEOUT)
        assert (message.topic, message.payload) == ("friends/hello", b"hi all")
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        process.terminate()
        process.wait(TIMEOUT)
    assert "Traceback" not in log.read_text()


def test_regionGroupsExampleConfigLoads(tmp_path: Path) -> None:
    """
    The configuration in docs/examples/region_groups.py's docstring, with its paths pointed at
    this checkout and a real users table, loads and builds (its inline comments used to end up
    in the values and fail with a misleading error): the group C{region-beijing} is there.
    """
    source = (DOCS / "examples" / "region_groups.py").read_text()
    docstring = source.split('"""')[1]
    ini = "\n".join(
        line[4:] for line in docstring.splitlines() if line.startswith("    ") or not line
    )
    database = tmp_path / "users.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE users (username TEXT, region TEXT)")
        db.execute("INSERT INTO users VALUES ('alice', 'beijing')")
        db.commit()
    ini = ini.replace("/etc/mqttd/plugins", str(DOCS / "examples"))
    ini = ini.replace("/srv/app/users.db", str(database))
    config = tmp_path / "mqttd.ini"
    config.write_text("[listener:l]\nendpoint = tcp:0\n" + ini)
    service: Any = makeBrokerService(load_config(str(config)), MemoryReactorClock())
    (selector,) = service.broker.selectors
    (source,) = selector.sources
    group = source.group("region-beijing")
    assert group is not None and set(group.members) == {"alice"}


def test_readmeNamesWhatTheTestsNeed() -> None:
    """The README's test instructions name mosquitto_passwd, which the password tests run."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Run the tests") : readme.index("## Configuration")]
    assert "mosquitto_passwd" in section


def test_shippedConfigCommentsAreTrue() -> None:
    """
    C{etc/mqttd.ini} no longer says authentication does not exist, and every commented-out
    listener example uses only keys a listener has, so uncommenting one cannot fail on a key.
    """
    text = (ROOT / "etc" / "mqttd.ini").read_text()
    assert "no way to authenticate" not in text
    commented = "\n".join(
        line[1:] for line in text.splitlines() if line.startswith("#") and not line.startswith("# ")
    )
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(commented)
    known = {f.name for f in fields(ListenerConfig)}
    listeners = [s for s in parser.sections() if s.startswith("listener:")]
    assert listeners
    for section in listeners:
        assert set(parser[section]) <= known, section
