"""
The command lines of docs/mqtt-sn.md, run for real: C{twistd mqttd} with the document's
C{protocol = mqtt-sn} listener, mqtt-sn-12's C{mqtt_sn_pub} and C{mqtt_sn_sub}, and paho.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import e2e
from .test_twistd import TIMEOUT, freePort, twistdCommand, waitForPort

TOOLS = Path(sys.executable).parent

# The listener section docs/mqtt-sn.md shows, with the test's ports.
SN_SECTION = """
[listener:sn]
endpoint = udp:{port}:interface=127.0.0.1
protocol = mqtt-sn
allow_anonymous = true
predefined_topics =
    1 = sensors/temperature
    2 = sensors/humidity
"""


def freeUDPPort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_documented_command_lines(tmp_path: Path) -> None:
    """
    twistd serves MQTT-SN on the configured UDP port beside MQTT: mqtt_sn_sub receives a retained
    message paho published (the topic registered by the gateway on delivery), mqtt_sn_pub
    publishes at QoS -1 to pre-defined topic 1 and at QoS 1 to a topic name, and paho receives
    both; SIGTERM stops twistd, closing the UDP port.
    """
    port, snPort = freePort(), freeUDPPort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        SN_SECTION.format(port=snPort)
        + f"\n[listener:mqtt]\nendpoint = tcp:{port}:interface=127.0.0.1\nallow_anonymous = true\n"
    )
    log = tmp_path / "twistd.log"
    command, env = twistdCommand(tmp_path, "--config", str(config))
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        waitForPort(process, port, log)
        # Both listeners are bound before either accepts; the log says so for the UDP one.
        deadline = time.monotonic() + TIMEOUT
        while "MQTT-SN 1.2 over UDP" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        paho = e2e.Client(port, "paho")
        try:
            paho.publish("sensors/room1", b"22", 1, retain=True)
            sub = subprocess.run(
                [str(TOOLS / "mqtt_sn_sub"), "-p", str(snPort), "-t", "sensors/#", "-q", "1", "-1"],
                env=env,
                capture_output=True,
                timeout=TIMEOUT,
                check=True,
            )
            assert sub.stdout.decode().split() == ["22"], sub
            paho.subscribe("sensors/#", 1)
            paho.wait_for(1)  # the retained message
            for args in (
                ["-q", "-1", "-T", "1", "-m", "21.5"],
                ["-q", "1", "-t", "sensors/room2", "-m", "hello"],
            ):
                pub = [str(TOOLS / "mqtt_sn_pub"), "-p", str(snPort), *args]
                subprocess.run(pub, env=env, timeout=TIMEOUT, check=True)
            got = paho.wait_for(2)
            assert [(m.topic, m.payload) for m in got] == [
                ("sensors/temperature", b"21.5"),
                ("sensors/room2", b"hello"),
            ]
        finally:
            paho.close()
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Server Shut Down." in text and "Traceback" not in text, text
