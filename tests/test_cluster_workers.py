"""
C{[cluster] workers = N} (docs/cluster.md): C{twistd mqttd} starts N processes on one port
with SO_REUSEPORT, each a node C{NODE-i} on the same Redis, and stops them all.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mqttd.config import ConfigError, load_config
from mqttd.service import makeBrokerService
from tests import e2e
from tests.redisserver import Start, redis_servers
from tests.test_redisserver import command
from tests.test_twistd import freePort, startTwistd

__all__ = ["redis_servers"]


def members(port: int, key: str) -> list[bytes]:
    """The elements of a Redis set or the fields of a hash, from its raw RESP reply."""
    kind = b"HKEYS" if key == "mqttd:nodes" else b"SMEMBERS"
    reply = command(port, kind.decode(), key)
    return [line for line in reply.split(b"\r\n")[2::2] if line]


def test_workersShareOnePort(tmp_path: Path, redis_servers: Start) -> None:
    """
    Two workers accept on one port: they join as w-1 and w-2, connections land on both (the
    kernel spreads them), a message published on one reaches subscribers on both, and
    SIGTERM to the process started stops both, each leaving the cluster cleanly.
    """
    redis = redis_servers()
    port = freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:mqtt]\nendpoint = tcp:{port}:interface=127.0.0.1\nallow_anonymous = true\n"
        f"[cluster]\nredis = {redis.url}\nnode = w\nworkers = 2\nheartbeat = 0.5\n"
        "node_timeout = 5\n"
    )
    process = startTwistd(tmp_path, config, port)
    subscribers: list[e2e.Client] = []
    try:
        e2e.wait_until(
            lambda: sorted(members(redis.port, "mqttd:nodes")) == [b"w-1", b"w-2"],
            "both workers to join",
            timeout=30,
        )
        for i in range(20):
            subscriber = e2e.Client(port, f"s{i}")
            subscribers.append(subscriber)
            subscriber.subscribe("w/#", 1)
        routes = command(redis.port, "KEYS", "mqttd:routes:*").split(b"\r\n")[2::2]
        holders = {key.split(b":")[2] for key in routes if members(redis.port, key.decode())}
        assert holders == {b"w-1", b"w-2"}, "the 20 connections all landed on one worker"
        publisher = e2e.Client(port, "pub")
        publisher.publish("w/x", b"hello", 1)
        for subscriber in subscribers:
            assert [m.payload for m in subscriber.wait_for(1)] == [b"hello"]
        publisher.close()
    finally:
        for subscriber in subscribers:
            subscriber.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == -signal.SIGTERM, (tmp_path / "twistd.log").read_text()
    assert members(redis.port, "mqttd:nodes") == []


@pytest.mark.parametrize(
    "endpoint, why",
    [
        ("tcp:0:interface=127.0.0.1", "one fixed port"),
        ("unix:/tmp/x.sock", "tcp: and tcp6: listeners only"),
    ],
)
def test_workersNeedOneTcpPort(tmp_path: Path, endpoint: str, why: str) -> None:
    """Workers cannot share an ephemeral port or a non-TCP listener: a ConfigError says so."""
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[listener:m]\nendpoint = {endpoint}\n[cluster]\nredis = redis://127.0.0.1:1\n"
        "workers = 2\n"
    )
    with pytest.raises(ConfigError) as caught:
        makeBrokerService(load_config(str(config)), e2e.reactor)
    assert (caught.value.section, caught.value.key) == ("listener:m", "endpoint")
    assert why in caught.value.why
