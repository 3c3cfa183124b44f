"""
End-to-end tests of C{twistd mqttd}: the real command, a real socket and a real MQTT client.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqttd import tap

ROOT = Path(__file__).resolve().parent.parent
# The twistd of the interpreter running the tests, so the venv under test is the one used.
TWISTD = str(Path(sys.executable).parent / "twistd")
TIMEOUT = 30.0


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago: twistd cannot report the port C{tcp:0}
    picked, so the test picks it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def twistdCommand(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """
    The command line and environment for C{twistd -n mqttd ARGS}, with the pid file in C{tmp_path}
    so that no run leaves a C{twistd.pid} behind or is refused because of one.
    """
    env = dict(os.environ)
    # The working tree, not whatever copy of mqttd is installed: the test is about this code.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        TWISTD,
        "--nodaemon",
        "--pidfile",
        str(tmp_path / "twistd.pid"),
        "--logfile=-",
        "mqttd",
        *args,
    ]
    return command, env


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """
    A running C{twistd mqttd} with one anonymous listener on a free loopback port; yields the
    process, the port and the file holding its log.  The process is killed if a test leaves it
    running.
    """
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:e2e]\nendpoint = tcp:{port}:interface=127.0.0.1\nallow_anonymous = true\n"
    )
    process = startTwistd(tmp_path, config, port)
    try:
        yield process, port, tmp_path / "twistd.log"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def startTwistd(directory: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """
    C{twistd mqttd --config CONFIG} started in C{directory} (its output added to
    C{directory/twistd.log}), once it listens on C{port}; killed, and the test failed, if it
    does not.
    """
    log = directory / "twistd.log"
    command, env = twistdCommand(directory, "--config", str(config))
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        waitForPort(process, port, log)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return process


def waitForPort(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"twistd exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return
    pytest.fail(f"twistd did not listen on {port} within {TIMEOUT}s:\n{log.read_text()}")


def test_publishSubscribe(broker: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    """
    C{twistd mqttd --config FILE} serves MQTT 3.1.1 on the configured listener: a paho client
    subscribes at QoS 1, publishes at QoS 1, gets its PUBACK and receives its own message; the
    listener is announced in the log, and SIGTERM stops twistd cleanly.
    """
    process, port, log = broker
    connected = threading.Event()
    subscribed: queue.Queue[list[int]] = queue.Queue()
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def onConnect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reasonCode: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reasonCode.is_failure:
            connected.set()

    def onSubscribe(
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasonCodes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        subscribed.put([code.value for code in reasonCodes])

    def onMessage(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received.put(message)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mqttd-e2e", protocol=mqtt.MQTTv311)
    client.on_connect = onConnect
    client.on_subscribe = onSubscribe
    client.on_message = onMessage
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT), log.read_text()
        client.subscribe("mqttd/e2e/#", qos=1)
        assert subscribed.get(timeout=TIMEOUT) == [1]
        published = client.publish("mqttd/e2e/hello", b"over twistd", qos=1)
        published.wait_for_publish(TIMEOUT)
        assert published.is_published()
        message = received.get(timeout=TIMEOUT)
        assert (message.topic, message.payload, message.qos) == (
            "mqttd/e2e/hello",
            b"over twistd",
            1,
        )
    finally:
        client.disconnect()
        client.loop_stop()

    process.terminate()
    # twistd ends itself with the signal it received once it has shut down, as a shell expects.
    assert process.wait(TIMEOUT) == -signal.SIGTERM, log.read_text()
    output = log.read_text()
    assert f"mqttd listener e2e on 127.0.0.1:{port}" in output
    assert "Server Shut Down." in output
    assert "Traceback" not in output


def test_badConfig(tmp_path: Path) -> None:
    """
    A bad value makes twistd exit non-zero before listening, saying only which file, section and
    key are wrong and why: one line, no traceback.
    """
    config = tmp_path / "mqttd.ini"
    config.write_text(
        "[broker]\nmax_inflight = abc\n[listener:e2e]\nendpoint = tcp:1883:interface=127.0.0.1\n"
    )
    command, env = twistdCommand(tmp_path, "--config", str(config))
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert (result.stdout + result.stderr).strip() == (
        f"twistd mqttd: {config}: [broker] max_inflight: expected a positive integer, got 'abc'"
    )
    assert not (tmp_path / "twistd.pid").exists()


def test_help(tmp_path: Path) -> None:
    """
    C{twistd mqttd --help} documents C{--config} and the loopback-only default used without it.
    """
    command, env = twistdCommand(tmp_path, "--help")
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "--config=" in result.stdout
    assert "tcp:1883:interface=127.0.0.1" in result.stdout


def test_collectorTunedForTheBrokerProcess(tmp_path: Path) -> None:
    """
    C{twistd mqttd} freezes what start-up built out of the cyclic collector and makes its passes
    rarer (bench S4 and S7 spent up to a fifth of the broker's CPU in them).
    """
    ini = tmp_path / "mqttd.ini"
    ini.write_text("[listener:a]\nendpoint = tcp:0:interface=127.0.0.1\nallow_anonymous = true\n")
    options = tap.Options()
    options.parseOptions(["--config", str(ini)])
    before = gc.get_threshold()
    try:
        tap.makeService(options)
        assert gc.get_threshold() == tap.COLLECTOR_THRESHOLDS
        assert gc.get_threshold()[0] > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
